"""JVM Spark on the S3 offline store: S3A configured from the AWS environment that Sail and
delta-rs read (`featureplane.s3`), its jars, and Delta commits made as conditional writes.

- `s3://` is served by S3A, so `FEATUREPLANE_OFFLINE_ROOT=s3://…` works unchanged. The endpoint
  (`AWS_ENDPOINT_URL…`), the region and path-style addressing (object_store's default, unless
  `AWS_VIRTUAL_HOSTED_STYLE_REQUEST=true`) come from the environment. Credentials stay out of
  the conf, which shows in `ps` and Spark's UI: S3A's default chain reads the same
  `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`, or the instance role.
- Concurrent writers. delta-spark 4.x commits on S3 through S3SingleDriverLogStore, which checks
  that a version's file is absent and then writes it unconditionally: safe within one driver
  only, and a JVM commit racing one from Sail or delta-rs replaces it (a lost version, seen on
  moto). Its S3DynamoDBLogStore serialises JVM writers in a DynamoDB table that Sail and
  delta-rs 1.x never consult, and delta-spark has no conditional-write log store (delta-io/delta
  #4813). So Delta's log on S3 is written by `featureplane.S3ConditionalLogStore`
  (`jvm/S3ConditionalLogStore.java`), which creates each commit with S3A's conditional create
  (`If-None-Match: *`) and reports S3's refusal as the file existing, upon which Delta commits
  again on top of the winner. Every engine then commits the same way, in any mix. The class is
  compiled once into the jar cache, so JVM Spark on S3 needs a JDK's `javac`.
- Jars: hadoop-aws of pyspark's Hadoop with only the AWS SDK modules that S3A loads, instead of
  the SDK's 600 MB bundle; what Spark ships (HTTP client, codecs) or S3A does not use for Spark
  (the SDK's netty client, OpenSSL) is left out.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import pyspark

from featureplane.errors import SettingError
from featureplane.s3 import configure_s3, endpoint

SPARK_JARS = Path(pyspark.__file__).parent / "jars"
HADOOP_AWS = "org.apache.hadoop:hadoop-aws:3.5.0"
"""The Hadoop of pyspark 4.2 (`pyspark/jars/hadoop-client-api-3.5.0.jar`)."""
AWS_SDK = "2.35.4"
"""The AWS SDK v2 that hadoop-aws 3.5.0 is built with."""
PACKAGES = (
    HADOOP_AWS,
    f"software.amazon.awssdk:s3:{AWS_SDK}",
    f"software.amazon.awssdk:s3-transfer-manager:{AWS_SDK}",
)
EXCLUDES = (
    "software.amazon.awssdk:bundle",
    "software.amazon.awssdk:netty-nio-client",  # only S3A's copyFromLocalFile; netty 4.1
    "org.wildfly.openssl:wildfly-openssl",  # S3A's default TLS is the JDK's
    "org.apache.httpcomponents:httpclient",
    "org.apache.httpcomponents:httpcore",
    "commons-codec:commons-codec",
    "commons-logging:commons-logging",
)
"""Left out of the packages' dependencies: the bundle, and what Spark ships newer or S3A does
not need for Spark's reads and writes."""
LOG_STORE = "featureplane.S3ConditionalLogStore"
SOURCE = Path(__file__).parent / "jvm" / "S3ConditionalLogStore.java"
TRUE = ("1", "true", "yes")


def hadoop_conf() -> dict[str, str]:
    """S3A's and Delta's conf for the offline store on S3, from this process's environment
    (checked as `configure_s3` checks it); a plain-HTTP endpoint off this machine needs
    `AWS_ALLOW_HTTP=true`, as Sail and delta-rs require."""
    configure_s3()
    virtual_hosted = os.environ.get("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "").lower() in TRUE
    conf = {
        "spark.hadoop.fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "spark.hadoop.fs.s3a.path.style.access": str(not virtual_hosted).lower(),
        "spark.hadoop.fs.s3a.create.conditional.enabled": "true",
        "spark.delta.logStore.s3.impl": LOG_STORE,
        "spark.delta.logStore.s3a.impl": LOG_STORE,
    }
    url = endpoint()
    if url:
        allowed = os.environ.get("AWS_ALLOW_HTTP", "").lower() in TRUE
        if urlparse(url).scheme == "http" and not allowed:
            raise SettingError(
                f"the S3 endpoint {url} is plain HTTP and not on this machine: use HTTPS, "
                "or set AWS_ALLOW_HTTP=true deliberately"
            )
        conf["spark.hadoop.fs.s3a.endpoint"] = url
    region = os.environ.get("AWS_REGION")
    if region:
        conf["spark.hadoop.fs.s3a.endpoint.region"] = region
    return conf


def spark_conf(jars: Path, delta_version: str) -> dict[str, str]:
    """`hadoop_conf` with the log store's jar, built in the jar cache `jars` against the
    delta-storage of `delta_version`."""
    return {**hadoop_conf(), "spark.jars": str(log_store_jar(jars, delta_version))}


def _jdk(tool: str) -> str:
    home = os.environ.get("JAVA_HOME")
    found = str(Path(home) / "bin" / tool) if home else shutil.which(tool)
    if not found or not Path(found).exists():
        raise SettingError(
            f"JVM Spark on S3 builds featureplane's Delta log store with a JDK's {tool}, and "
            f"there is none ({'JAVA_HOME=' + home if home else 'not on PATH'}): install a JDK 17"
        )
    return found


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        raise RuntimeError(f"{what} failed: {lines[-1]}")


def log_store_jar(jars: Path, delta_version: str) -> Path:
    """The jar of `S3ConditionalLogStore`, compiled on first use into `jars/featureplane/`
    against delta-storage (fetched alone by Spark's Ivy); named by the source's and Delta's
    versions, so that a change of either builds it again."""
    key = hashlib.sha256(SOURCE.read_bytes() + delta_version.encode()).hexdigest()[:12]
    folder = jars / "featureplane"
    jar = folder / f"s3-conditional-log-store-{key}.jar"
    if jar.exists():
        return jar
    folder.mkdir(parents=True, exist_ok=True)
    storage = folder / f"delta-storage-{delta_version}.jar"
    if not storage.exists():
        ivy = next(SPARK_JARS.glob("ivy-*.jar"))
        fetch = [_jdk("java"), "-jar", str(ivy), "-dependency", "io.delta", "delta-storage"]
        fetch += [delta_version, "-confs", "default", "-notransitive"]
        fetch += [
            "-cache",
            str(folder / "ivy"),
            "-retrieve",
            str(folder / "[artifact]-[revision].[ext]"),
        ]
        _run(fetch, f"fetching io.delta:delta-storage:{delta_version}")
    with tempfile.TemporaryDirectory(dir=folder) as build:
        classpath = os.pathsep.join([str(storage), str(SPARK_JARS / "*")])
        javac = [_jdk("javac"), "--release", "17", "-cp", classpath, "-d", build, str(SOURCE)]
        _run(javac, f"compiling {SOURCE.name}")
        partial = Path(build) / jar.name
        with zipfile.ZipFile(partial, "w") as archive:
            for found in sorted(Path(build).rglob("*.class")):
                archive.write(found, found.relative_to(build).as_posix())
        os.replace(partial, jar)  # whole or absent, for processes starting at once
    return jar
