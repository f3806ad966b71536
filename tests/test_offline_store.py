"""Delta offline store: windows replaced exactly, idempotent reruns, failures lose nothing."""

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

from conftest import read_delta
from featureplane.compute.window import TimeWindow
from featureplane.offline_store import OfflineStore, SchemaChangedError

DAY = timedelta(days=1)
START = datetime(2026, 10, 1, tzinfo=UTC)


def day(n: int) -> TimeWindow:
    return TimeWindow(START + n * DAY, START + (n + 1) * DAY)


def frame(spark, rows: list[tuple[int, datetime, float | None]]):
    pdf = pd.DataFrame(rows, columns=["user_id", "ts", "value"])
    return (
        spark.createDataFrame(pdf, "user_id bigint, ts timestamp, value double")
        .withColumn("event_date", F.to_date("ts"))
        .repartition(2)
    )


def events(days: range, users: int = 5, offset: float = 0.0):
    return [
        (user, START + d * DAY + timedelta(hours=h), float(user * 100 + d + h / 10 + offset))
        for d in days
        for user in range(users)
        for h in (0, 7, 23)
    ]


def stored(uri: str) -> pd.DataFrame:
    df = read_delta(uri)[["user_id", "ts", "value"]]
    return df.sort_values(["user_id", "ts"]).reset_index(drop=True)


def expected(rows) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["user_id", "ts", "value"]).astype(
        {"ts": "datetime64[us, UTC]"}
    )
    return df.sort_values(["user_id", "ts"]).reset_index(drop=True)


@pytest.fixture
def store(tmp_path) -> OfflineStore:
    return OfflineStore(str(tmp_path / "offline"))


def test_window_write_is_idempotent(spark, store):
    uri = store.table_uri("features", "t")
    everything = TimeWindow(START, START + 3 * DAY)
    store.write_window(frame(spark, events(range(3))), uri, everything, "ts")
    first = stored(uri)
    store.write_window(frame(spark, events(range(3))), uri, everything, "ts")
    pd.testing.assert_frame_equal(stored(uri), first)
    pd.testing.assert_frame_equal(first, expected(events(range(3))))


def test_rewriting_one_window_leaves_the_others(spark, store):
    uri = store.table_uri("features", "t")
    store.write_window(
        frame(spark, events(range(3))), uri, TimeWindow(START, START + 3 * DAY), "ts"
    )
    new_day_one = events(range(1, 2), users=2, offset=0.5)
    store.write_window(frame(spark, new_day_one), uri, day(1), "ts")
    kept = [row for row in events(range(3)) if not (day(1).start <= row[1] < day(1).end)]
    pd.testing.assert_frame_equal(stored(uri), expected(kept + new_day_one))


def test_failed_write_leaves_previous_data(spark, store):
    uri = store.table_uri("features", "t")
    store.write_window(
        frame(spark, events(range(2))), uri, TimeWindow(START, START + 2 * DAY), "ts"
    )
    before, version = stored(uri), DeltaTable(uri).version()

    @F.udf("double")
    def explode_on_user_3(user_id, value):
        if user_id == 3:
            raise RuntimeError("transformation failed mid-write")
        return value

    failing = frame(spark, events(range(1, 2))).withColumn(
        "value", explode_on_user_3("user_id", "value")
    )
    with pytest.raises(Exception, match="transformation failed mid-write"):
        store.write_window(failing, uri, day(1), "ts")
    assert DeltaTable(uri).version() == version
    pd.testing.assert_frame_equal(stored(uri), before)
    store.write_window(frame(spark, events(range(1, 2))), uri, day(1), "ts")
    pd.testing.assert_frame_equal(stored(uri), before)


def test_changed_columns_are_refused_and_table_kept(spark, store):
    uri = store.table_uri("features", "t")
    store.write_window(frame(spark, events(range(1))), uri, day(0), "ts")
    before = stored(uri)
    renamed = frame(spark, events(range(1))).withColumnRenamed("value", "amount")
    with pytest.raises(SchemaChangedError, match="amount"):
        store.write_window(renamed, uri, day(0), "ts")
    pd.testing.assert_frame_equal(stored(uri), before)


def test_window_stats_match_pandas(spark, store):
    uri = store.table_uri("features", "t")
    rows = events(range(2))
    rows[3] = (rows[3][0], rows[3][1], None)
    store.write_window(frame(spark, rows), uri, TimeWindow(START, START + 2 * DAY), "ts")
    stats = store.window_stats(spark, uri, day(1), "ts", ["value"])
    oracle = expected(rows)
    oracle = oracle[(oracle["ts"] >= day(1).start) & (oracle["ts"] < day(1).end)]
    assert stats.rows == len(oracle)
    assert stats.event_time_min == oracle["ts"].min().to_pydatetime()
    assert stats.event_time_max == oracle["ts"].max().to_pydatetime()
    value = stats.features["value"]
    assert value["null_fraction"] == pytest.approx(oracle["value"].isna().mean())
    assert (value["min"], value["max"]) == (oracle["value"].min(), oracle["value"].max())
