"""In-memory demo sources and the demo feature views over them, for test_compat_classic.

`outputs` runs the views on a given session: the test runs it on Sail and, through
tests/classic.py, on classic JVM PySpark.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd

from featureplane.compute.transform import run_transformation
from featureplane.compute.window import TimeWindow

DAY = pd.Timedelta(days=1)
DAY0 = pd.Timestamp("2026-10-01", tz="UTC")  # data covers DAY0 .. DAY0 + 5 days
WINDOW = TimeWindow(datetime(2026, 10, 2, tzinfo=UTC), datetime(2026, 10, 5, tzinfo=UTC))
START, END = pd.Timestamp(WINDOW.start), pd.Timestamp(WINDOW.end)
US = pd.Timedelta(microseconds=1)

SCHEMAS = {
    "page_views": "event_id bigint, user_id bigint, category string, page_id bigint, ts timestamp",
    "ad_impressions": (
        "impression_id bigint, user_id bigint, ad_id bigint, advertiser_id bigint, "
        "position int, ts timestamp"
    ),
    "ad_clicks": "impression_id bigint, user_id bigint, ad_id bigint, ts timestamp",
    "users": "user_id bigint, country string, age int, signup_ts timestamp, updated_at timestamp",
}


def demo_views() -> list:
    """The four demo views: pyspark, spark_sql and (twice) pandas mode."""
    from feature_assets.ad_performance import ad_daily_performance
    from feature_assets.user_activity import user_daily_page_views
    from feature_assets.user_click_sessions import user_click_sessions
    from feature_assets.user_profile import user_profile

    return [user_daily_page_views, ad_daily_performance, user_click_sessions, user_profile]


def _unique_times(rng: np.random.Generator, n: int, days: int) -> pd.DatetimeIndex:
    """n distinct whole-millisecond times in DAY0 .. DAY0 + days, sorted (no max_by ties)."""
    ms = np.sort(rng.choice(days * 86_400_000, n, replace=False))
    return DAY0 + pd.to_timedelta(ms, unit="ms")


def _page_views(rng: np.random.Generator) -> pd.DataFrame:
    n = 240
    categories = np.array(["books", "music", "garden", "toys"], dtype=object)
    category = categories[rng.integers(0, 4, n)]
    category[rng.random(n) < 0.1] = None
    random = pd.DataFrame(
        {
            "event_id": np.arange(1, n + 1),
            "user_id": rng.integers(1, 9, n),
            "category": category,
            "page_id": rng.integers(100, 140, n),
            "ts": _unique_times(rng, n, 5),
        }
    )
    edge = pd.DataFrame(
        [
            # at the window start (in), one microsecond before it and at its end (both out)
            (1001, 1, "books", 1, START),
            (1002, 1, "music", 2, START - US),
            (1003, 1, "toys", 3, END),
            (1004, 2, "garden", 4, END - US),
            # a midnight inside the window belongs to the later day
            (1005, 3, "books", 5, START + DAY),
            (1006, 3, "music", 6, START + DAY - US),
            # the latest view of user 4's day has no category; user 5 only views uncategorised
            (1007, 4, "toys", 7, START + pd.Timedelta(hours=20)),
            (1008, 4, None, 8, START + pd.Timedelta(hours=23)),
            (1009, 5, None, 9, START + pd.Timedelta(hours=2)),
            (1010, 5, None, 10, START + pd.Timedelta(hours=3)),
            # anonymous views (null user) still group together
            (1011, None, "books", 11, START + pd.Timedelta(hours=5)),
            (1012, None, "toys", 12, START + pd.Timedelta(hours=6)),
        ],
        columns=random.columns,
    )
    frame = pd.concat([random, edge], ignore_index=True)
    duplicates = frame.iloc[[0, 7, 50, 51, 120, 241, 247, 250]]  # logged twice
    return pd.concat([frame, duplicates, duplicates.iloc[:2]], ignore_index=True)


def _ads(rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    n = 200
    ad_id = rng.integers(1, 7, n)
    position = pd.array(rng.integers(1, 6, n), dtype="Int32")
    position[rng.random(n) < 0.1] = pd.NA
    impressions = pd.DataFrame(
        {
            "impression_id": np.arange(1, n + 1),
            "user_id": rng.integers(1, 6, n),  # users 1-5; user 6 only clicks at edge cases
            "ad_id": ad_id,
            "advertiser_id": (ad_id + 1) // 2,
            "position": position,
            "ts": _unique_times(rng, n, 5),
        }
    )
    clicked = impressions[rng.random(n) < 0.3].copy()
    clicked["ts"] += pd.to_timedelta(rng.integers(2_000, 600_000, len(clicked)), unit="ms")
    clicks = clicked[["impression_id", "user_id", "ad_id", "ts"]]
    session = START + pd.Timedelta(hours=10)
    edge_clicks = pd.DataFrame(
        [
            (901, 1, 9, START),  # its impression is before the window: ad 9's ctr is null
            (902, 1, 9, START + 2 * DAY),  # the click crosses midnight
            # user 6: gaps of exactly 30 minutes stay in a session, 30 minutes + 1 us split it
            (911, 6, 8, session),
            (912, 6, 8, session + pd.Timedelta(minutes=30)),
            (913, 6, 8, session + pd.Timedelta(minutes=60) + US),
            (914, 6, 8, START + 2 * DAY - US),
            (915, 6, 8, START + 2 * DAY),
            (916, 6, 8, END),  # out: at the window end
            # clicks and profiles without a user are grouped under a null key
            (921, None, 3, START + pd.Timedelta(hours=3)),
            (922, None, 3, START + pd.Timedelta(hours=3, minutes=10)),
        ],
        columns=clicks.columns,
    )
    edge_impressions = edge_clicks.assign(
        advertiser_id=lambda f: (f["ad_id"] + 1) // 2,
        position=pd.array([1, None, 2, 3, 4, 5, 1, 2, None, 1], dtype="Int32"),
        ts=lambda f: f["ts"] - pd.Timedelta(seconds=5),
    )[impressions.columns]
    at_bounds = pd.DataFrame(
        [(903, 2, 7, 4, 2, START), (904, 2, 7, 4, 3, END)],  # in, out
        columns=impressions.columns,
    ).astype({"position": "Int32"})
    impressions = pd.concat([impressions, edge_impressions, at_bounds], ignore_index=True)
    clicks = pd.concat([clicks, edge_clicks], ignore_index=True)
    impressions = pd.concat([impressions, impressions.iloc[[3, 90, 201]]], ignore_index=True)
    clicks = pd.concat([clicks, clicks.iloc[[0, 5]], edge_clicks.iloc[[3, 8]]], ignore_index=True)
    return impressions, clicks


def _users() -> pd.DataFrame:
    t = START + pd.Timedelta(hours=7, minutes=13)
    rows = [
        # user, country, age, signup, updated
        (1, "DE", 17, DAY0 - 40 * DAY, DAY0 - 40 * DAY),  # before the window
        (1, "DE", 18, DAY0 - 40 * DAY, START),  # at the window start: in
        (1, "FR", 25, DAY0 - 40 * DAY, t + DAY),
        (2, None, None, START - pd.Timedelta(hours=1), t),  # 0 full days, unknown country/age
        (3, "US", 64, DAY0 - 400 * DAY, t + pd.Timedelta(hours=2)),
        (3, "US", 65, DAY0 - 400 * DAY, END),  # at the window end: out
        (4, "BR", 34, t + DAY, t + DAY),  # signed up in the window
        (4, "BR", 35, t + DAY, END - US),
        (5, "JP", None, DAY0 - 3 * DAY + pd.Timedelta(hours=5), t + 2 * DAY),
        (6, "IN", 120, DAY0 - 10 * DAY, END + DAY),  # after the window
        (None, "DE", 30, START, START + pd.Timedelta(hours=1)),  # no user: a null key
    ]
    frame = pd.DataFrame(rows, columns=["user_id", "country", "age", "signup_ts", "updated_at"])
    frame = frame.astype({"age": "Int32"})
    return pd.concat([frame, frame.iloc[[1, 4]]], ignore_index=True)  # duplicate versions


def inputs() -> dict[str, pd.DataFrame]:
    """The four demo sources: a few days of events around WINDOW with nulls and duplicates."""
    rng = np.random.default_rng(20261001)
    impressions, clicks = _ads(rng)
    frames = {
        "page_views": _page_views(rng),
        "ad_impressions": impressions,
        "ad_clicks": clicks,
        "users": _users(),
    }
    nullable = {"user_id": "Int64", "ts": "datetime64[us, UTC]"}
    return {
        name: frame.astype({k: v for k, v in nullable.items() if k in frame.columns}).reset_index(
            drop=True
        )
        for name, frame in frames.items()
    }


def outputs(spark, views: list | None = None) -> dict:
    """Each demo view's output over WINDOW, from the in-memory inputs."""
    data = inputs()

    def read(spark, source):
        return spark.createDataFrame(data[source.name], schema=SCHEMAS[source.name])

    return {
        view.name: run_transformation(spark, view, WINDOW, read=read)
        for view in views or demo_views()
    }
