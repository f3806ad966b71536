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
from typing import Literal

from pyspark.sql import SparkSession

from featureplane.s3 import configure_s3
from featureplane.settings import spark_remote

SparkMode = Literal["local", "connect", "classic"]
BASE_CONF = {"spark.sql.session.timeZone": "UTC"}
SESSION_TIMEOUT_SECS = 7 * 24 * 3600


def local_shuffle_partitions() -> int:
    """Partitions of a shuffle on one machine: two per core keep both busy, and few enough that
    Sail's buffers (inputs x outputs) stay small; Spark's 200 costs gigabytes there."""
    return 2 * max(os.cpu_count() or 1, 2)


def _builder(conf: Mapping[str, str]) -> SparkSession.Builder:
    builder = SparkSession.builder
    for key, value in {**conf, **BASE_CONF}.items():
        builder = builder.config(key, value)
    return builder


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
        session = _builder(conf).remote(f"sc://{host}:{port}").create()
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
        session = _builder(conf).remote(url).create()
        try:
            yield session
        finally:
            session.stop()
    elif mode == "classic":
        conf.setdefault("spark.master", "local[*]")
        session = _builder(conf).getOrCreate()
        try:
            yield session
        finally:
            session.stop()
    else:
        raise ValueError(f"unknown Spark mode {mode!r}: use local, connect or classic")
