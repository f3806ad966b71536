"""Ad-click sessions per user and day (pandas: sessionization is natural per user)."""

from datetime import timedelta

import pandas as pd

from feature_assets.entities import user
from feature_assets.sources import FIRST_DAY, ad_clicks
from featureplane import Field, Float64, Int64, batch_feature_view

SESSION_GAP = pd.Timedelta(minutes=30)


@batch_feature_view(
    sources=[ad_clicks],
    entities=[user],
    mode="pandas",
    schema=[
        Field("click_sessions_1d", Int64, "Click sessions (30-minute gaps) that day."),
        Field("clicks_per_session_1d", Float64, "Mean distinct clicks per session that day."),
    ],
    timestamp_field="ts",
    feature_start_time=FIRST_DAY,
    ttl=timedelta(days=2),
    owner="team:ads-ml",
    tags={"domain": "ads"},
)
def user_click_sessions(ad_clicks: pd.DataFrame) -> pd.DataFrame:
    """Sessions split at 30-minute gaps within each day, stamped at the day's last click."""
    clicks = ad_clicks.drop_duplicates("impression_id").sort_values("ts")
    day = clicks["ts"].dt.floor("D")
    new_session = (clicks["ts"].diff() > SESSION_GAP) | (day != day.shift())
    clicks = clicks.assign(day=day, session=new_session.cumsum())
    daily = clicks.groupby("day").agg(
        ts=("ts", "max"), clicks=("ts", "size"), sessions=("session", "nunique")
    )
    return pd.DataFrame(
        {
            "user_id": clicks["user_id"].iloc[0],
            "ts": daily["ts"].to_numpy(),
            "click_sessions_1d": daily["sessions"].astype("int64").to_numpy(),
            "clicks_per_session_1d": (daily["clicks"] / daily["sessions"]).to_numpy(),
        }
    )
