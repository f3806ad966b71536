"""Each demo view (pyspark, spark_sql, pandas modes) against an independent pandas computation."""

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from conftest import TINY, read_delta
from featureplane import Repository
from featureplane.compute.transform import run_transformation
from featureplane.compute.window import TimeWindow

WINDOW = TimeWindow(TINY.start, TINY.start + timedelta(days=TINY.days))
GAP = pd.Timedelta(minutes=30)


@pytest.fixture(scope="module")
def repo(demo_data) -> Repository:
    return Repository.load("feature_assets")


@pytest.fixture(scope="module")
def raw(demo_data):
    def load(name: str) -> pd.DataFrame:
        df = read_delta(demo_data / "raw" / name)
        for column in df.columns:
            if isinstance(df[column].dtype, pd.DatetimeTZDtype):
                df[column] = df[column].dt.tz_convert("UTC").dt.tz_localize(None)
        return df

    return load


def computed(spark, repo: Repository, name: str) -> pd.DataFrame:
    view = repo.feature_view(name)
    out = run_transformation(spark, view, WINDOW).drop("event_date").toPandas()
    return normalise(out, [*view.join_keys, view.timestamp_field])


def normalise(df: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    df = df.sort_values(order).reset_index(drop=True)
    for column in df.columns:
        if pd.api.types.is_datetime64_any_dtype(df[column]):
            df[column] = df[column].astype("datetime64[us]")
        elif pd.api.types.is_integer_dtype(df[column]):
            df[column] = df[column].astype("int64")
        elif df[column].dtype == object or pd.api.types.is_string_dtype(df[column]):
            df[column] = df[column].astype(object).where(df[column].notna(), None)
    return df


def test_pyspark_mode_user_daily_page_views(spark, repo, raw):
    views = raw("page_views").drop_duplicates("event_id")
    views["day"] = views["ts"].dt.floor("D")
    last = views.sort_values("ts").groupby(["user_id", "day"]).tail(1)
    expected = views.groupby(["user_id", "day"]).agg(
        ts=("ts", "max"),
        page_views_1d=("ts", "size"),
        distinct_categories_1d=("category", "nunique"),
    )
    expected = expected.join(last.set_index(["user_id", "day"])["category"]).reset_index()
    expected = expected.rename(columns={"category": "last_category"}).drop(columns="day")
    actual = computed(spark, repo, "user_daily_page_views")
    pd.testing.assert_frame_equal(actual, normalise(expected, ["user_id", "ts"]))


def test_spark_sql_mode_ad_daily_performance(spark, repo, raw):
    columns = ["impression_id", "ad_id", "ts"]
    impressions = raw("ad_impressions")[columns].drop_duplicates().assign(kind="impression")
    clicks = raw("ad_clicks")[columns].drop_duplicates().assign(kind="click")
    events = pd.concat([impressions, clicks])
    events["day"] = events["ts"].dt.floor("D")
    expected = events.groupby(["ad_id", "day"]).agg(
        ts=("ts", "max"),
        impressions_1d=("kind", lambda k: int((k == "impression").sum())),
        clicks_1d=("kind", lambda k: int((k == "click").sum())),
    )
    expected["ctr_1d"] = expected["clicks_1d"] / expected["impressions_1d"].replace(0, np.nan)
    expected = expected.reset_index().drop(columns="day")
    actual = computed(spark, repo, "ad_daily_performance")
    pd.testing.assert_frame_equal(actual, normalise(expected, ["ad_id", "ts"]))


def test_pandas_mode_user_profile(spark, repo, raw):
    users = raw("users")
    users = users[(users["updated_at"] >= WINDOW.start.replace(tzinfo=None))].copy()
    ages = users["age"]
    bucket = np.select(
        [ages < 18, ages < 25, ages < 35, ages < 50, ages < 65, ages >= 65],
        ["<18", "18-24", "25-34", "35-49", "50-64", "65+"],
        default="unknown",
    )
    expected = pd.DataFrame(
        {
            "user_id": users["user_id"],
            "updated_at": users["updated_at"],
            "country": users["country"].fillna("unknown"),
            "age_bucket": np.where(ages.isna(), "unknown", bucket),
            "account_age_days": [
                (u - s) // pd.Timedelta(days=1)
                for u, s in zip(users["updated_at"], users["signup_ts"], strict=True)
            ],
        }
    )
    actual = computed(spark, repo, "user_profile")
    assert len(actual) > 0
    pd.testing.assert_frame_equal(actual, normalise(expected, ["user_id", "updated_at"]))


def test_pandas_mode_user_click_sessions(spark, repo, raw):
    rows = []
    clicks = raw("ad_clicks").drop_duplicates("impression_id")
    clicks["day"] = clicks["ts"].dt.floor("D")
    for (user_id, _), group in clicks.groupby(["user_id", "day"]):
        times = sorted(group["ts"])
        sessions = 1 + sum(b - a > GAP for a, b in zip(times, times[1:], strict=False))
        rows.append((user_id, times[-1], sessions, len(times) / sessions))
    expected = pd.DataFrame(
        rows, columns=["user_id", "ts", "click_sessions_1d", "clicks_per_session_1d"]
    )
    actual = computed(spark, repo, "user_click_sessions")
    pd.testing.assert_frame_equal(actual, normalise(expected, ["user_id", "ts"]))


def test_window_restricts_inputs_and_outputs(spark, repo):
    """A one-day window yields exactly the rows of that day of the full-range computation."""
    view = repo.feature_view("user_daily_page_views")
    day = TimeWindow(WINDOW.start + timedelta(days=1), WINDOW.start + timedelta(days=2))
    one_day = normalise(run_transformation(spark, view, day).toPandas(), ["user_id", "ts"])
    everything = normalise(run_transformation(spark, view, WINDOW).toPandas(), ["user_id", "ts"])
    start, end = (m.replace(tzinfo=None) for m in (day.start, day.end))
    expected = everything[(everything["ts"] >= start) & (everything["ts"] < end)]
    assert len(one_day) > 0
    pd.testing.assert_frame_equal(one_day, expected.reset_index(drop=True))
