"""The offline store's Delta writes on classic JVM PySpark with Delta Lake's jars
(`mode="classic"` with `featureplane.cluster.delta_conf`): a window replaced and the others
kept, time travel to the version before, delta-rs reading what JVM Delta wrote, and writers
of one window racing, whose lost commits are retried as on Sail."""

import os
import threading
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from classic import run_on_classic
from deltalake import DeltaTable

START = datetime(2026, 10, 1, tzinfo=UTC)
ROOT = "FEATUREPLANE_CLASSIC_DELTA_ROOT"
USERS = 5
RACES = 4
"""Rounds of two threads replacing the same day at once."""


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
    """Three days written, then the second replaced; the table now and at its first write.
    Then `racing_writes`."""
    from featureplane.compute.window import TimeWindow
    from featureplane.offline_store import OfflineStore

    store = OfflineStore(os.environ[ROOT])
    uri = store.table_uri("features", "clicks")
    store.write_window(rows(spark, range(3), 1), uri, TimeWindow(START, START + timedelta(3)), "ts")
    day_two = TimeWindow(START + timedelta(days=1), START + timedelta(days=2))
    store.write_window(rows(spark, [1], 10), uri, day_two, "ts")
    first = spark.read.format("delta").option("versionAsOf", 1).load(uri)
    return {"latest": store.read(spark, uri), "first": first, **racing_writes(spark, store)}


def racing_writes(spark, store):
    """`RACES` rounds of two threads replacing the same day of a table: the table, what the
    writes raised, and the lost commit races `write_window` saw (and retried)."""
    from featureplane import offline_store
    from featureplane.compute.window import TimeWindow

    uri = store.table_uri("features", "raced")
    day = TimeWindow(START, START + timedelta(days=1))
    store.write_window(rows(spark, [0], 1), uri, day, "ts")
    races, raised = [], []
    judge = offline_store.lost_commit_race

    def recorded(error):
        if lost := judge(error):
            races.append(f"{type(error).__name__}: {str(error)[:300]}")
        return lost

    offline_store.lost_commit_race = recorded

    def write(clicks):
        try:
            store.write_window(rows(spark, [0], clicks), uri, day, "ts")
        except Exception as error:  # noqa: BLE001 - each is reported
            raised.append(f"{type(error).__name__}: {error}"[:2000])

    for _ in range(RACES):
        writers = [threading.Thread(target=write, args=(clicks,)) for clicks in (2, 3)]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join()
    outcome = [("raised", text) for text in raised] + [("race", text) for text in races]
    return {
        "raced": store.read(spark, uri),
        "outcome": spark.createDataFrame(outcome or [("none", "")], "kind string, text string"),
    }


def frame(table) -> list[tuple]:
    data = table.to_pandas() if not isinstance(table, pd.DataFrame) else table
    data = data.assign(day=(pd.to_datetime(data["ts"], utc=True) - START).dt.days)
    return sorted(zip(data["day"], data["user_id"], data["clicks"], strict=True))


@pytest.fixture(scope="module")
def classic_run(tmp_path_factory):
    """`offline_writes` run once on classic PySpark: its outputs and offline root."""
    root = tmp_path_factory.mktemp("classic_delta")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ROOT, str(root / "offline"))
        outputs = run_on_classic("test_classic_delta:offline_writes", root / "out", delta=True)
    return outputs, root


def test_classic_spark_with_delta_replaces_one_window_and_keeps_its_history(classic_run):
    outputs, tmp_path = classic_run
    expected = [(d, u, (10 if d == 1 else 1) * u) for d in range(3) for u in range(USERS)]
    assert frame(outputs["latest"][1]) == sorted(expected)
    assert frame(outputs["first"][1]) == sorted((d, u, u) for d in range(3) for u in range(USERS))
    table = DeltaTable(str(tmp_path / "offline" / "features" / "clicks"))
    assert frame(table.to_pandas()) == sorted(expected), "delta-rs reads what JVM Delta wrote"
    history = table.history()
    assert len(history) == 3  # the empty table, the first write, the replacement
    assert all("Apache-Spark" in entry.get("engineInfo", "") for entry in history), history


def test_racing_writers_of_a_window_on_classic_spark_are_retried_and_one_of_them_wins(
    classic_run,
):
    """delta-spark's ConcurrentAppendException and its siblings reach classic PySpark as a raw
    Py4JJavaError; they are commit races like Sail's, retried, and nothing else escapes."""
    outputs, tmp_path = classic_run
    outcome = outputs["outcome"][1].to_pylist()
    raised = [o["text"] for o in outcome if o["kind"] == "raised"]
    races = [o["text"] for o in outcome if o["kind"] == "race"]
    assert all("another writer committed at the same time" in text for text in raised), raised
    assert races, "no two writers raced: the test did not try the retry"
    assert all(text.startswith("Py4JJavaError") and "io.delta.exceptions" in text for text in races)
    stored = frame(outputs["raced"][1])
    assert stored in ([(0, u, 2 * u) for u in range(USERS)], [(0, u, 3 * u) for u in range(USERS)])
    table = DeltaTable(str(tmp_path / "offline" / "features" / "raced"))
    assert len(table.history()) == 2 + 2 * RACES - len(raised)  # the empty table, the first
    # write, and one commit per write that was not refused
