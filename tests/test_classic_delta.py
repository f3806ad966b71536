"""The offline store's Delta writes on classic JVM PySpark with Delta Lake's jars
(`mode="classic"` with `featureplane.cluster.delta_conf`): a window replaced and the others
kept, time travel to the version before, and delta-rs reading what JVM Delta wrote."""

import os
from datetime import UTC, datetime, timedelta

import pandas as pd
from classic import run_on_classic
from deltalake import DeltaTable

START = datetime(2026, 10, 1, tzinfo=UTC)
ROOT = "FEATUREPLANE_CLASSIC_DELTA_ROOT"
USERS = 5


def rows(spark, days, clicks: int):
    """`USERS` users' clicks at noon of each of `days` (offsets from START)."""
    from pyspark.sql import functions as F

    from featureplane.compute.transform import PARTITION_COLUMN

    frame = pd.DataFrame(
        [
            {"user_id": user, "ts": START + timedelta(days=day, hours=12), "clicks": clicks * user}
            for day in days
            for user in range(USERS)
        ]
    )
    return spark.createDataFrame(frame).withColumn(PARTITION_COLUMN, F.to_date("ts"))


def offline_writes(spark):
    """Three days written, then the second replaced; the table now and at its first write."""
    from featureplane.compute.window import TimeWindow
    from featureplane.offline_store import OfflineStore

    store = OfflineStore(os.environ[ROOT])
    uri = store.table_uri("features", "clicks")
    store.write_window(rows(spark, range(3), 1), uri, TimeWindow(START, START + timedelta(3)), "ts")
    day_two = TimeWindow(START + timedelta(days=1), START + timedelta(days=2))
    store.write_window(rows(spark, [1], 10), uri, day_two, "ts")
    first = spark.read.format("delta").option("versionAsOf", 1).load(uri)
    return {"latest": store.read(spark, uri), "first": first}


def frame(table) -> list[tuple]:
    data = table.to_pandas() if not isinstance(table, pd.DataFrame) else table
    data = data.assign(day=(pd.to_datetime(data["ts"], utc=True) - START).dt.days)
    return sorted(zip(data["day"], data["user_id"], data["clicks"], strict=True))


def test_classic_spark_with_delta_replaces_one_window_and_keeps_its_history(tmp_path, monkeypatch):
    monkeypatch.setenv(ROOT, str(tmp_path / "offline"))
    outputs = run_on_classic("test_classic_delta:offline_writes", tmp_path / "out", delta=True)
    expected = [(d, u, (10 if d == 1 else 1) * u) for d in range(3) for u in range(USERS)]
    assert frame(outputs["latest"][1]) == sorted(expected)
    assert frame(outputs["first"][1]) == sorted((d, u, u) for d in range(3) for u in range(USERS))
    table = DeltaTable(str(tmp_path / "offline" / "features" / "clicks"))
    assert frame(table.to_pandas()) == sorted(expected), "delta-rs reads what JVM Delta wrote"
    history = table.history()
    assert len(history) == 3  # the empty table, the first write, the replacement
    assert all("Apache-Spark" in entry.get("engineInfo", "") for entry in history), history
