"""Spark sessions for every mode the platform runs in, usable from notebooks, tests and Dagster.

- `local` (default): Sail's Spark Connect server started in this process on 127.0.0.1, port 0.
  Sail reads and writes Delta natively and starts in well under a second. Shuffles by key use
  two partitions per core unless the conf says otherwise (`featureplane.compute.shuffle`).
- `connect`: any Spark Connect endpoint (`sc://host:port`, Databricks, OSS Spark 4).
- `classic`: JVM PySpark with the given conf (`featureplane.cluster.delta_conf` gives it Delta).
Without a mode, the settings choose: `$FEATUREPLANE_SPARK_REMOTE` (connect) or Sail (local).
Every session computes in UTC: event times, windows and partitions are all UTC.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

from pyspark.sql import SparkSession

from featureplane.s3 import configure_s3
from featureplane.settings import spark_remote

SparkMode = Literal["local", "connect", "classic"]
BASE_CONF = {"spark.sql.session.timeZone": "UTC"}
SESSION_TIMEOUT_SECS = 7 * 24 * 3600
UNCOMPRESSED = [("grpc.compression_enabled_algorithms_bitset", 1)]
"""Spark Connect channel options: gRPC without compression (bit 0, identity, alone). The Python
client otherwise offers gzip, and Sail gzips every response with it at well under 100 MB/s on
one core: a 62 MB Arrow result took 0.80 s to collect instead of 0.11 s on this machine.
Uncompressed is faster over any link of a gigabit or more, which a Spark cluster has."""


def local_shuffle_partitions() -> int:
    """Partitions of a shuffle on one machine: two per core keep both busy, and few enough that
    Sail's buffers (inputs x outputs) stay small; Spark's 200 costs gigabytes there."""
    return 2 * max(os.cpu_count() or 1, 2)


def _configured(builder: Any, conf: Mapping[str, str]) -> Any:
    """A session builder (classic or Spark Connect) with `conf` and the base conf set."""
    for key, value in {**conf, **BASE_CONF}.items():
        builder = builder.config(key, value)
    return builder


def _connect(url: str, conf: Mapping[str, str]) -> SparkSession:
    """A Spark Connect session to `url`, over a channel without compression."""
    from pyspark.sql.connect.client import DefaultChannelBuilder
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    channel = DefaultChannelBuilder(url, channelOptions=UNCOMPRESSED)
    os.environ["SPARK_CONNECT_MODE_ENABLED"] = "1"  # as `builder.remote` sets it: functions
    # such as `F.col` build Spark Connect columns from then on, not classic ones
    return _configured(ConnectSession.builder.channelBuilder(channel), conf).create()


def configured_mode() -> tuple[SparkMode, str | None]:
    """The mode and URL of the settings: `connect` to `$FEATUREPLANE_SPARK_REMOTE`, else Sail."""
    url = spark_remote()
    return ("connect", url) if url else ("local", None)


@contextmanager
def spark_session(
    mode: SparkMode | None = None, url: str | None = None, conf: Mapping[str, str] | None = None
) -> Iterator[SparkSession]:
    """Open a Spark session in `mode` (default: the settings'), and close it (and any server
    it started) on exit."""
    conf = dict(conf or {})
    if mode is None:
        mode, url = configured_mode()
    if mode == "local":
        conf = {"spark.sql.shuffle.partitions": str(local_shuffle_partitions()), **conf}
        os.environ.setdefault("RUST_LOG", "error")  # Sail logs each session and shutdown
        # Sail ends a session idle for a few minutes; this server belongs to one notebook,
        # process or test run, which may idle far longer and still expect its session.
        os.environ.setdefault("SAIL_SPARK__SESSION_TIMEOUT_SECS", str(SESSION_TIMEOUT_SECS))
        configure_s3()  # Sail's S3 client reads this process's environment
        from pysail.spark import SparkConnectServer

        server = SparkConnectServer("127.0.0.1", 0)
        server.start(background=True)
        host, port = server.listening_address
        session = _connect(f"sc://{host}:{port}", conf)
        # Reattaching survives a lost network link, which an in-process server has none of;
        # its asynchronous releases would only fail noisily once the server has stopped.
        session.client.disable_reattachable_execute()
        try:
            yield session
        finally:
            session.stop()
            server.stop()
    elif mode == "connect":
        if not url or not url.startswith("sc://"):
            raise ValueError(f"connect mode needs an sc:// url, got {url!r}")
        session = _connect(url, conf)
        try:
            yield session
        finally:
            session.stop()
    elif mode == "classic":
        conf.setdefault("spark.master", "local[*]")
        session = _configured(SparkSession.builder, conf).getOrCreate()
        try:
            yield session
        finally:
            session.stop()
    else:
        raise ValueError(f"unknown Spark mode {mode!r}: use local, connect or classic")
