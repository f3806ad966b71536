"""The demo views compute the same rows on classic JVM PySpark as on Sail, and what pandas expects.

Inputs are small in-memory pandas frames (tests/compat_cases.py): several days around a 3-day
window, with nulls (also in join keys), duplicate rows, events exactly at midnight and at the
window bounds. Classic PySpark cannot run in this process once the Sail session of conftest is
open (pyspark then routes every builder and column function to Spark Connect), so its side runs
in a subprocess that writes each view's output as parquet; the Sail side runs here.
"""

from __future__ import annotations

import compat_cases as runner
import pandas as pd
import pyarrow as pa
import pytest
from classic import results, run_on_classic

VIEWS = {view.name: view for view in runner.demo_views()}
START, END, DAY = runner.START, runner.END, runner.DAY
NULLABLE = {
    pa.int64(): pd.Int64Dtype(),
    pa.int32(): pd.Int32Dtype(),
    pa.float64(): pd.Float64Dtype(),
    pa.string(): pd.StringDtype(),
    pa.large_string(): pd.StringDtype(),
}


def canonical(table: pa.Table) -> pd.DataFrame:
    """Rows as pandas in a fixed order: nullable dtypes, timestamps as microseconds in UTC."""
    frame = table.to_pandas(types_mapper=NULLABLE.get)
    for name, dtype in zip(table.column_names, table.schema.types, strict=True):
        if pa.types.is_timestamp(dtype):
            column = frame[name].dt
            utc = column.tz_convert("UTC") if dtype.tz else column.tz_localize("UTC")
            frame[name] = utc.astype("datetime64[us, UTC]")
    return frame.sort_values(list(frame.columns), na_position="first").reset_index(drop=True)


def assert_rows_equal(actual: pa.Table, expected: pa.Table) -> None:
    pd.testing.assert_frame_equal(
        canonical(actual), canonical(expected), check_exact=False, rtol=1e-12, atol=0
    )


@pytest.fixture(scope="module")
def classic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[list, pa.Table]]:
    """The views' outputs on classic PySpark (local[2]), computed in a subprocess."""
    try:
        return run_on_classic("compat_cases:outputs", tmp_path_factory.mktemp("classic"))
    except AssertionError as failure:
        pytest.fail(str(failure))


@pytest.fixture(scope="module")
def sail(spark) -> dict[str, tuple[list, pa.Table]]:
    """The views' outputs on Sail (the session-wide Spark Connect fixture)."""
    return results(runner.outputs(spark))


@pytest.fixture(scope="module")
def data() -> dict[str, pd.DataFrame]:
    return runner.inputs()


def in_window(frame: pd.DataFrame, column: str = "ts") -> pd.DataFrame:
    return frame[(frame[column] >= START) & (frame[column] < END)]


def as_table(rows: pd.DataFrame, like: pa.Table) -> pa.Table:
    """Expected rows with the Spark output's Arrow schema (so types must be convertible)."""
    return pa.Table.from_pandas(rows[like.column_names], schema=like.schema, preserve_index=False)


@pytest.mark.parametrize("name", list(VIEWS))
def test_classic_pyspark_matches_sail(name, classic, sail):
    classic_fields, classic_rows = classic[name]
    sail_fields, sail_rows = sail[name]
    assert sail_fields == classic_fields  # names, Spark types and nullability
    assert sail_rows.schema.remove_metadata() == classic_rows.schema.remove_metadata()
    assert sail_rows.num_rows > 5
    assert_rows_equal(sail_rows, classic_rows)


def test_daily_page_views_match_pandas(sail, data):
    views = in_window(data["page_views"]).drop_duplicates("event_id")
    views = views.assign(day=views["ts"].dt.floor("D"))
    rows = [
        {
            "user_id": user,
            "ts": group["ts"].max(),
            "page_views_1d": len(group),
            "distinct_categories_1d": group["category"].nunique(),
            "last_category": group.loc[group["ts"].idxmax(), "category"],
            "event_date": day.date(),
        }
        for (user, day), group in views.groupby(["user_id", "day"], dropna=False)
    ]
    actual = sail["user_daily_page_views"][1]
    assert any(pd.isna(row["user_id"]) for row in rows)  # rows without a user: never written
    assert any(row["last_category"] is None for row in rows)
    kept = pd.DataFrame([row for row in rows if not pd.isna(row["user_id"])])
    assert_rows_equal(actual, as_table(kept, actual))


def test_ad_daily_performance_matches_pandas(sail, data):
    columns = ["impression_id", "ad_id", "ts"]
    impressions = in_window(data["ad_impressions"])[columns].drop_duplicates()
    clicks = in_window(data["ad_clicks"])[columns].drop_duplicates()
    events = pd.concat([impressions.assign(kind="i"), clicks.assign(kind="c")])
    events = events.assign(day=events["ts"].dt.floor("D"))
    rows = []
    for (ad, day), group in events.groupby(["ad_id", "day"]):
        shown, clicked = int((group["kind"] == "i").sum()), int((group["kind"] == "c").sum())
        rows.append(
            {
                "ad_id": ad,
                "ts": group["ts"].max(),
                "impressions_1d": shown,
                "clicks_1d": clicked,
                "ctr_1d": clicked / shown if shown else None,
                "event_date": day.date(),
            }
        )
    actual = sail["ad_daily_performance"][1]
    assert_rows_equal(actual, as_table(pd.DataFrame(rows), actual))
    ad9 = canonical(actual).query("ad_id == 9")
    assert ad9["ctr_1d"].isna().tolist() == [True, False, True]  # clicks without impressions


@pytest.mark.parametrize("name", ["user_click_sessions", "user_profile"])
def test_pandas_views_match_their_function_in_pandas(name, sail, data):
    """Spark's grouping, time conversions and window filter leave the pandas function's result."""
    view = VIEWS[name]
    source = in_window(data[view.source_names[0]], view.sources[0].timestamp_field)
    groups = source.astype({"user_id": "float64"}).groupby("user_id", dropna=False)
    expected = pd.concat(
        [view.function(group.reset_index(drop=True)) for _, group in groups], ignore_index=True
    )
    # Stored rows are one per (keys, event time); among ties the greatest values win.
    keys = [*view.join_keys, view.timestamp_field]
    expected = expected.sort_values(
        [*keys, *view.schema_names], na_position="first"
    ).drop_duplicates(keys, keep="last")
    expected["event_date"] = expected[view.timestamp_field].dt.date
    assert expected["user_id"].isna().any()  # rows without a user: never written
    expected = expected[expected["user_id"].notna()]
    actual = sail[name][1]
    assert_rows_equal(actual, as_table(expected, actual))


def test_edge_cases_are_computed_as_specified(sail):
    sessions = canonical(sail["user_click_sessions"][1]).query("user_id == 6")
    assert sessions["click_sessions_1d"].tolist() == [2, 1, 1]  # 30 min joins, 30 min + 1 us splits
    assert sessions["clicks_per_session_1d"].tolist() == [1.5, 1.0, 1.0]
    assert sessions["ts"].tolist() == [
        START + pd.Timedelta(hours=11, microseconds=1),
        START + 2 * DAY - pd.Timedelta(microseconds=1),
        START + 2 * DAY,  # the click at END is outside the window
    ]
    profile = canonical(sail["user_profile"][1])
    assert profile["updated_at"].min() == START and profile["updated_at"].max() < END
    user2 = profile.query("user_id == 2").iloc[0]
    assert (user2["country"], user2["age_bucket"], user2["account_age_days"]) == (
        "unknown",
        "unknown",
        0,
    )
    # its duplicated profile row is stored once
    assert profile.query("user_id == 1")["age_bucket"].tolist() == ["18-24", "25-34"]
    views = canonical(sail["user_daily_page_views"][1])
    user3 = views.query("user_id == 3")
    assert user3["ts"].iloc[0] == START + DAY - pd.Timedelta(microseconds=1)  # midnight: next day
    dates = views["event_date"].astype(str)
    assert sorted(set(dates)) == ["2026-10-02", "2026-10-03", "2026-10-04"]
