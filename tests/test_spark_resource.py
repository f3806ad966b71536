"""The Spark resource's modes, outside Dagster (notebooks, CLI) and inside a Dagster run."""

import os
import socket
import subprocess
import sys

import pytest
from counting_proxy import CountingProxy
from dagster import asset, materialize
from pysail.spark import SparkConnectServer
from pyspark.sql import SparkSession

from featureplane.errors import SettingError
from featureplane.spark_session import spark_session
from resources import SparkResource


def timezone(spark) -> str:
    return spark.sql("SELECT current_timezone() AS tz").collect()[0]["tz"]


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_local_mode_starts_sail_on_loopback_and_stops_it():
    with SparkResource().open() as spark:
        host, port = spark.client.host, spark.client._builder.url.port
        assert host == "127.0.0.1"
        assert port_open(port)
        assert timezone(spark) == "UTC"
        assert spark.range(5).count() == 5
    assert not port_open(port)


def test_connect_mode_uses_an_existing_server_in_utc():
    server = SparkConnectServer("127.0.0.1", 0)
    server.start(background=True)
    try:
        host, port = server.listening_address
        resource = SparkResource(mode="connect", url=f"sc://{host}:{port}")
        with resource.open() as spark:
            assert timezone(spark) == "UTC"
            assert spark.range(3).count() == 3
    finally:
        server.stop()


def test_connect_mode_needs_an_sc_url():
    with pytest.raises(ValueError, match="sc:// url"), SparkResource(mode="connect").open():
        pass


def test_inside_dagster_one_session_serves_the_step():
    @asset
    def numbers(spark: SparkResource) -> int:
        return spark.session.range(7).count()

    result = materialize([numbers], resources={"spark": SparkResource()})
    assert result.output_for_node("numbers") == 7


IDLE_SESSION = """
import os, time
from featureplane.spark_session import spark_session
with spark_session() as spark:
    spark.range(1).count()
    time.sleep(3)
    try:
        spark.range(1).count()
        print("alive", os.environ["SAIL_SPARK__SESSION_TIMEOUT_SECS"])
    except Exception:
        print("ended")
"""


@pytest.mark.parametrize(("timeout", "outcome"), [("1", "ended"), (None, f"alive {7 * 86400}")])
def test_an_idle_local_session_lives_as_long_as_its_owner(timeout, outcome):
    """Sail ends sessions idle for longer than its session timeout (shown with 1 s); a local
    session keeps its server's default of a week unless the environment says otherwise."""
    env = {k: v for k, v in os.environ.items() if k != "SAIL_SPARK__SESSION_TIMEOUT_SECS"}
    if timeout:
        env["SAIL_SPARK__SESSION_TIMEOUT_SECS"] = timeout
    ran = subprocess.run(
        [sys.executable, "-c", IDLE_SESSION], env=env, capture_output=True, text=True, timeout=120
    )
    assert ran.stdout.strip().splitlines()[-1] == outcome, ran.stderr[-2000:]


def test_the_settings_choose_the_connect_server_or_sail(monkeypatch):
    monkeypatch.delenv("FEATUREPLANE_SPARK_REMOTE", raising=False)
    assert SparkResource.from_settings() == SparkResource(mode="local")
    monkeypatch.setenv("FEATUREPLANE_SPARK_REMOTE", "sc://127.0.0.1:15002")
    assert SparkResource.from_settings() == SparkResource(
        mode="connect", url="sc://127.0.0.1:15002"
    )
    monkeypatch.setenv("FEATUREPLANE_SPARK_REMOTE", "http://127.0.0.1:15002")
    with pytest.raises(SettingError, match="must be an sc:// URL, got 'http://127.0.0.1:15002'"):
        SparkResource.from_settings()


def test_results_come_uncompressed_where_sail_would_gzip_them():
    """A 10 MB result of one repeated string, collected through a byte-counting proxy: all of
    it crosses the wire on the session's channel; on pyspark's default channel Sail gzips it
    to a sliver, which is what costs a collect seconds of one core (`UNCOMPRESSED`)."""
    server = SparkConnectServer("127.0.0.1", 0)
    server.start(background=True)
    proxy = CountingProxy(server.listening_address[1])
    query = "SELECT repeat('x', 100) AS text FROM range(100000)"
    try:
        with spark_session("connect", proxy.url) as spark:
            size = spark.sql(query).toArrow().nbytes
            ours, proxy.received = proxy.received, 0
        default = SparkSession.builder.remote(proxy.url).create()
        default.sql(query).toArrow()
        theirs = proxy.received
        default.stop()
    finally:
        proxy.close()
        server.stop()
    assert size >= 10_000_000 and ours >= size
    assert theirs < size / 20, "Sail compresses unless the channel says otherwise"
