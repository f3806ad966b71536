"""A Spark standalone cluster on this machine with a Spark Connect server: the JVM reference
engine that Sail is held against, started from the pinned pyspark distribution's own jars.

`start` runs a master, workers (one core each) and the Connect server with Delta Lake, each a
JVM in a session of its own that outlives the starting process, logging to `<home>/logs`; the
pids and ports go to `<home>/cluster.json`, which `status` and `stop` read. Delta's jars are
resolved from Maven Central on the first start into the jar cache (`$FEATUREPLANE_JARS_DIR`,
default `.jars/`), which later starts reuse offline. Every process the cluster runs (executors
and their Python workers included) carries `FEATUREPLANE_CLUSTER=<home>` in its environment,
which is how `stop` makes sure that none is left.

Python code that runs on executors (pandas views, UDFs) imports the starting process's modules:
workers run its interpreter with its `sys.path`, as a user's own nodes would have the project
installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pyspark

from featureplane import s3a
from featureplane.errors import ClusterError
from featureplane.settings import offline_root

SPARK_HOME = Path(pyspark.__file__).parent
DELTA_PACKAGE = "io.delta:delta-spark_4.2_2.13:4.4.0"
"""Delta Lake for Spark 4.2: the newest delta-spark jar built for it (4.4.1 exists only on PyPI)."""
PROVIDED = (
    "org.apache.hadoop:hadoop-client-api",
    "org.apache.hadoop:hadoop-client-runtime",
    "org.apache.parquet:parquet-column",
    "org.apache.parquet:parquet-common",
    "org.apache.parquet:parquet-encoding",
    "org.apache.parquet:parquet-format-structures",
    "org.apache.parquet:parquet-hadoop",
    "org.apache.parquet:parquet-jackson",
    "org.apache.logging.log4j:log4j-api",
    "org.apache.logging.log4j:log4j-core",
    "org.apache.logging.log4j:log4j-slf4j2-impl",
    "org.slf4j:slf4j-api",
    "com.fasterxml.jackson.core:jackson-annotations",
    "com.fasterxml.jackson.core:jackson-core",
    "com.fasterxml.jackson.core:jackson-databind",
    "com.github.luben:zstd-jni",
    "org.xerial.snappy:snappy-java",
    "org.roaringbitmap:RoaringBitmap",
)
"""Delta's dependencies that Spark ships in newer versions: older copies would shadow them."""
DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}
CONNECT_SERVER = "org.apache.spark.sql.connect.service.SparkConnectServer"
MARKER = "FEATUREPLANE_CLUSTER"
STATE = "cluster.json"
DEFAULT_CONNECT_PORT = 15002


def jars_dir() -> Path:
    """The jar cache: `$FEATUREPLANE_JARS_DIR`, or `.jars/` under the working directory."""
    return Path(os.environ.get("FEATUREPLANE_JARS_DIR", ".jars")).resolve()


def delta_conf(jars: Path, s3: bool | None = None) -> dict[str, str]:
    """The conf that gives a JVM Spark application Delta Lake, its jars from the cache, and
    with `s3` (by default: when the offline root is an `s3://` URI) S3A and Delta's commits on
    S3 as `featureplane.s3a` configures them."""
    if s3 is None:
        s3 = offline_root().startswith("s3://")
    packages, excludes = [DELTA_PACKAGE], [*PROVIDED]
    if s3:
        packages += s3a.PACKAGES
        excludes += s3a.EXCLUDES
    return {
        "spark.jars.packages": ",".join(packages),
        "spark.jars.excludes": ",".join(excludes),
        "spark.jars.ivy": str(jars),
        **DELTA_CONF,
        **(s3a.spark_conf(jars, DELTA_PACKAGE.rsplit(":", 1)[1]) if s3 else {}),
    }


@dataclass(frozen=True)
class Cluster:
    """A started cluster: its processes and addresses, as `cluster.json` records them."""

    home: str
    master_url: str
    master_ui: str
    connect_url: str
    pids: dict[str, int]
    started_seconds: float

    @classmethod
    def load(cls, home: Path) -> Cluster | None:
        path = home / STATE
        if not path.exists():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as error:
            raise ClusterError(f"{path} is not a cluster state file ({error}): remove it") from None

    def alive(self) -> dict[str, bool]:
        """Which of the cluster's daemons still run."""
        return {name: _ours(pid, self.home) for name, pid in self.pids.items()}

    def workers(self) -> int:
        """Workers registered alive with the master (0 when its UI does not answer)."""
        try:
            with urllib.request.urlopen(f"{self.master_ui}/json/", timeout=2) as response:
                return int(json.load(response)["aliveworkers"])
        except (OSError, ValueError, KeyError):
            return 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _ours(pid: int, home: str) -> bool:
    """Whether `pid` is a live process of the cluster at `home` (not a reused pid)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and f"{MARKER}={home}".encode() in _environ(pid).split(b"\0")


def processes(home: Path | str) -> list[int]:
    """Every live process of the cluster at `home`: daemons, executors, Python workers."""
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    return [pid for pid in pids if _ours(pid, str(home))]


def _environment(home: Path) -> dict[str, str]:
    path = [p for p in sys.path if p and Path(p).is_dir()]
    return {
        **os.environ,
        "SPARK_HOME": str(SPARK_HOME),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_LOG_DIR": str(home / "logs"),
        "SPARK_WORKER_DIR": str(home / "work"),
        "SPARK_LOCAL_DIRS": str(home / "work"),
        "SPARK_DAEMON_MEMORY": "512m",
        "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false",
        "PYSPARK_PYTHON": sys.executable,
        "PYTHONPATH": os.pathsep.join(path),
        MARKER: str(home),
    }


def _spawn(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with log.open("ab") as out:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # the cluster outlives the command that started it
        )
    return process


def _wait(ready, what: str, log: Path, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            raise ClusterError(f"the {what} exited while starting: see {log}")
        if time.monotonic() > deadline:
            raise ClusterError(f"the {what} was not ready after {timeout:.0f}s: see {log}")
        time.sleep(0.25)


def start(
    home: Path,
    jars: Path | None = None,
    workers: int = 2,
    worker_memory: str = "1g",
    connect_port: int = DEFAULT_CONNECT_PORT,
    timeout: float = 300,
) -> Cluster:
    """Start a master, `workers` workers of one core and `worker_memory`, and a Spark Connect
    server with Delta on them (port 0: a free one); return once the Connect port answers.

    A failed start stops whatever it had started and raises ClusterError naming the log."""
    home = home.resolve()
    jars = (jars or jars_dir()).resolve()
    existing = Cluster.load(home)
    if existing is not None and any(existing.alive().values()):
        raise ClusterError(f"a cluster already runs from {home}: `featureplane cluster stop`")
    for folder in (home / "logs", home / "work", jars):
        folder.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    env = _environment(home)
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    master_port, ui_port = _free_port(), _free_port()
    connect_port = connect_port or _free_port()
    if _listening(connect_port):
        raise ClusterError(f"port {connect_port} on 127.0.0.1 is taken: choose another")
    master_url = f"spark://127.0.0.1:{master_port}"
    cluster = Cluster(
        str(home),
        master_url,
        f"http://127.0.0.1:{ui_port}",
        f"sc://127.0.0.1:{connect_port}",
        {},
        0.0,
    )
    pids = cluster.pids
    try:
        log = home / "logs" / "master.log"
        master = _spawn(
            [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1"]
            + ["--port", str(master_port), "--webui-port", str(ui_port)],
            log,
            env,
        )
        pids["master"] = master.pid
        _wait(lambda: _listening(master_port), "master", log, master, timeout)
        for i in range(1, workers + 1):
            worker = [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1"]
            worker += ["--cores", "1", "--memory", worker_memory]
            worker += ["--webui-port", str(_free_port()), master_url]
            pids[f"worker-{i}"] = _spawn(worker, home / "logs" / f"worker-{i}.log", env).pid
        log = home / "logs" / "connect.log"
        connect = _spawn(_connect_command(master_url, connect_port, jars), log, env)
        pids["connect"] = connect.pid
        _wait(lambda: _listening(connect_port), "Connect server", log, connect, timeout)
        _wait(lambda: cluster.workers() == workers, "workers", log, connect, timeout)
    except BaseException:
        _stop_processes(cluster)
        raise
    cluster = Cluster(**{**asdict(cluster), "started_seconds": time.monotonic() - began})
    (home / STATE).write_text(json.dumps(asdict(cluster), indent=2))
    return cluster


def _connect_command(master_url: str, port: int, jars: Path) -> list[str]:
    conf = {
        "spark.master": master_url,
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.driver.memory": "1g",
        "spark.executor.memory": "512m",
        "spark.executor.cores": "1",
        "spark.ui.enabled": "false",
        "spark.connect.grpc.binding.address": "127.0.0.1",
        "spark.connect.grpc.binding.port": str(port),
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": "4",  # two per core, as Sail's default
        "spark.default.parallelism": "2",
        "spark.databricks.delta.snapshotPartitions": "2",  # 50 tasks per table read otherwise
        "spark.locality.wait": "0s",  # every executor is on this machine: never wait for one
        # UTC-adjusted microseconds, as Sail and delta-rs write them, not legacy INT96
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        **delta_conf(jars),
    }
    command = [str(SPARK_HOME / "bin" / "spark-submit"), "--class", CONNECT_SERVER]
    command += ["--name", "featureplane Connect server"]
    for key, value in conf.items():
        command += ["--conf", f"{key}={value}"]
    return command


def _stop_processes(cluster: Cluster, timeout: float = 30) -> None:
    """SIGTERM the daemons, Connect server first, then SIGKILL whatever of the cluster is
    left after `timeout` (executors and Python workers included)."""
    for name in ("connect", *sorted(n for n in cluster.pids if n.startswith("worker")), "master"):
        pid = cluster.pids.get(name)
        if pid is not None and _ours(pid, cluster.home):
            os.kill(pid, signal.SIGTERM)
            _gone([pid], cluster.home, timeout / 3)
    left = processes(cluster.home)
    for pid in left:
        os.kill(pid, signal.SIGTERM)
    if not _gone(left, cluster.home, timeout / 3):
        for pid in processes(cluster.home):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _gone(processes(cluster.home), cluster.home, timeout / 3)


def _gone(pids: list[int], home: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(_ours(pid, home) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def stop(home: Path) -> bool:
    """Stop the cluster started from `home`; False where none was recorded there."""
    home = home.resolve()
    cluster = Cluster.load(home)
    if cluster is None:
        return False
    _stop_processes(cluster)
    (home / STATE).unlink()
    return True


@contextlib.contextmanager
def running(home: Path, jars: Path | None = None, **options) -> Iterator[Cluster]:
    """A cluster for the duration of a block (a test session's, a benchmark's)."""
    cluster = start(home, jars, **options)
    try:
        yield cluster
    finally:
        stop(home)
