"""The offline store on S3 (moto's server) from classic JVM PySpark with Delta and S3A
(`featureplane.s3a`): JVM windows that delta-rs reads, a delta-rs window that JVM Spark and Sail
read back with the JVM's, time travel, and each JVM commit a conditional write that S3 refuses
where the version exists. And the conf, from the AWS environment, pure."""

import os
from datetime import timedelta

import boto3
import pytest
from classic import run_on_classic
from deltalake import DeltaTable, write_deltalake
from test_classic_delta import START, USERS, frame, rows

from featureplane import s3a
from featureplane.cluster import delta_conf
from featureplane.compute.transform import PARTITION_COLUMN
from featureplane.compute.window import TimeWindow
from featureplane.errors import SettingError
from featureplane.offline_store import OfflineStore

BUCKET = "jvm-lake"
PROBE = "probe/_delta_log/00000000000000000000.json"


def day(n: int) -> TimeWindow:
    return TimeWindow(START + timedelta(days=n), START + timedelta(days=n + 1))


def refused_commit(spark, root: str) -> str:
    """The exception of the log store's commit of a version another writer has just stored:
    the store writes without looking first, so the refusal is S3's (its 412)."""
    boto3.client("s3").put_object(Bucket=BUCKET, Key=f"{root}/{PROBE}", Body=b"{}\n")
    jvm = spark._jvm
    conf = spark._jsc.hadoopConfiguration()
    store = jvm.featureplane.S3ConditionalLogStore(conf)
    commit = jvm.java.util.Collections.singletonList('{"commitInfo":{}}').iterator()
    try:
        store.write(
            jvm.org.apache.hadoop.fs.Path(f"s3://{BUCKET}/{root}/{PROBE}"), commit, False, conf
        )
    except Exception as error:  # py4j's Py4JJavaError
        return error.java_exception.getClass().getName()
    return "written"


def jvm_and_delta_rs_writes(spark):
    """JVM Spark writes three days and replaces the second; delta-rs replaces a fourth; JVM
    Spark reads the table now and as of its own last write and its first."""
    store = OfflineStore(os.environ["FEATUREPLANE_OFFLINE_ROOT"])
    uri = store.table_uri("features", "clicks")
    store.write_window(rows(spark, range(3), 1), uri, TimeWindow(START, day(2).end), "ts")
    store.write_window(rows(spark, [1], 10), uri, day(1), "ts")
    fourth = rows(spark, [3], 100).toArrow()
    window = f"{PARTITION_COLUMN} = '{day(3).start:%Y-%m-%d}'"
    write_deltalake(uri, fourth, mode="overwrite", predicate=window)
    read = spark.read.format("delta")
    return {
        "latest": store.read(spark, uri),
        "jvm_last": read.option("versionAsOf", 2).load(uri),
        "jvm_first": read.option("versionAsOf", 1).load(uri),
        "probe": spark.createDataFrame([(refused_commit(spark, "offline"),)], "error string"),
    }


def clicks(days: dict[int, int]) -> list[tuple]:
    return sorted((d, u, factor * u) for d, factor in days.items() for u in range(USERS))


def test_jvm_spark_sail_and_delta_rs_share_a_table_on_s3(s3, spark, tmp_path, monkeypatch):
    root = f"s3://{s3.bucket(BUCKET)}/offline"
    monkeypatch.setenv("FEATUREPLANE_OFFLINE_ROOT", root)
    outputs = run_on_classic("test_classic_s3:jvm_and_delta_rs_writes", tmp_path, delta=True)
    jvm_last, latest = {0: 1, 1: 10, 2: 1}, {0: 1, 1: 10, 2: 1, 3: 100}
    uri = OfflineStore(root).table_uri("features", "clicks")  # delta-rs configured here too
    assert frame(DeltaTable(uri, version=2).to_pandas()) == clicks(jvm_last), "delta-rs"
    assert frame(outputs["latest"][1]) == clicks(latest), "JVM Spark reads delta-rs's window"
    assert frame(outputs["jvm_last"][1]) == clicks(jvm_last)
    assert frame(outputs["jvm_first"][1]) == clicks({0: 1, 1: 1, 2: 1})
    assert frame(spark.read.format("delta").load(uri).toPandas()) == clicks(latest), "Sail"
    history = sorted(DeltaTable(uri).history(), key=lambda entry: entry["version"])
    engines = [entry.get("engineInfo") or entry.get("clientVersion", "") for entry in history]
    assert [engine.split("/")[0].split(":")[0] for engine in engines] == [
        *["Apache-Spark"] * 3,  # the empty table, the three days, the second replaced
        "delta-rs",
    ], engines
    assert outputs["probe"][1].column("error").to_pylist() == [
        "java.nio.file.FileAlreadyExistsException"
    ]
    assert f"/{BUCKET}/offline/{PROBE}" in s3.refused.read_text().splitlines()


AWS = (
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT",
    "AWS_REGION",
    "AWS_ALLOW_HTTP",
    "AWS_CONDITIONAL_PUT",
    "AWS_VIRTUAL_HOSTED_STYLE_REQUEST",
)


@pytest.fixture
def aws(monkeypatch) -> pytest.MonkeyPatch:
    """No AWS variable but fake credentials; what `configure_s3` sets is undone afterwards."""
    for name in AWS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-in-any-conf")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    return monkeypatch


def test_s3a_conf_comes_from_the_aws_environment_and_holds_no_credentials(aws):
    aws.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    conf = s3a.hadoop_conf()
    assert conf == {
        "spark.hadoop.fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "spark.hadoop.fs.s3a.path.style.access": "true",
        "spark.hadoop.fs.s3a.create.conditional.enabled": "true",
        "spark.delta.logStore.s3.impl": "featureplane.S3ConditionalLogStore",
        "spark.delta.logStore.s3a.impl": "featureplane.S3ConditionalLogStore",
        "spark.hadoop.fs.s3a.endpoint": "http://127.0.0.1:9000",
        "spark.hadoop.fs.s3a.endpoint.region": "eu-west-1",
    }
    aws.setenv("AWS_ENDPOINT_URL_S3", "https://s3.example.net")
    aws.setenv("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "true")
    aws.setenv("AWS_REGION", "eu-central-1")
    conf = s3a.hadoop_conf()
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "https://s3.example.net"
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "false"
    assert conf["spark.hadoop.fs.s3a.endpoint.region"] == "eu-central-1"
    aws.delenv("AWS_ENDPOINT_URL_S3")
    aws.delenv("AWS_ENDPOINT_URL")
    assert "spark.hadoop.fs.s3a.endpoint" not in s3a.hadoop_conf()  # AWS's own, by region
    assert not any("not-in-any-conf" in value for value in conf.values())


@pytest.mark.parametrize(
    "name, value, says",
    [
        ("AWS_ENDPOINT_URL", "http://minio.internal:9000", "AWS_ALLOW_HTTP=true"),
        ("AWS_S3_LOCKING_PROVIDER", "dynamodb", "AWS_S3_LOCKING_PROVIDER"),
    ],
)
def test_unsafe_s3a_settings_are_one_clear_line(aws, name, value, says):
    aws.setenv(name, value)
    with pytest.raises(SettingError, match=says) as raised:
        s3a.hadoop_conf()
    assert "\n" not in str(raised.value)


def test_delta_conf_adds_s3a_where_the_offline_root_is_on_s3(aws, monkeypatch, tmp_path):
    monkeypatch.setattr(s3a, "log_store_jar", lambda jars, version: jars / f"store-{version}.jar")
    monkeypatch.setenv("FEATUREPLANE_OFFLINE_ROOT", str(tmp_path / "offline"))
    local = delta_conf(tmp_path)
    assert local["spark.jars.packages"] == "io.delta:delta-spark_4.2_2.13:4.4.0"
    assert not any(key.startswith(("spark.hadoop.", "spark.delta.")) for key in local)
    monkeypatch.setenv("FEATUREPLANE_OFFLINE_ROOT", "s3://lake/offline")
    conf = delta_conf(tmp_path)
    assert conf["spark.jars.packages"].split(",") == [
        "io.delta:delta-spark_4.2_2.13:4.4.0",
        "org.apache.hadoop:hadoop-aws:3.5.0",
        "software.amazon.awssdk:s3:2.35.4",
        "software.amazon.awssdk:s3-transfer-manager:2.35.4",
    ]
    assert "software.amazon.awssdk:bundle" in conf["spark.jars.excludes"].split(",")
    assert conf["spark.jars"] == str(tmp_path / "store-4.4.0.jar")
    assert conf.items() >= s3a.hadoop_conf().items()


def test_hadoop_aws_is_the_hadoop_that_pyspark_ships():
    (client,) = s3a.SPARK_JARS.glob("hadoop-client-api-*.jar")
    bundled = client.name.removeprefix("hadoop-client-api-").removesuffix(".jar")
    assert s3a.HADOOP_AWS.rsplit(":", 1)[1] == bundled
