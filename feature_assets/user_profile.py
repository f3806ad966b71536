"""Profile attributes per user (pandas, run per user on Spark), recomputed weekly."""

from datetime import timedelta

import pandas as pd
from pandera.pyspark import Check, Column, DataFrameSchema

from feature_assets.entities import user
from feature_assets.sources import FIRST_SIGNUP, users
from featureplane import Field, Int64, String, batch_feature_view

AGE_BUCKETS = [0, 18, 25, 35, 50, 65, 200]
AGE_LABELS = ["<18", "18-24", "25-34", "35-49", "50-64", "65+"]


@batch_feature_view(
    sources=[users],
    entities=[user],
    mode="pandas",
    schema=[
        Field("country", String, "ISO country code, 'unknown' when not given."),
        Field("age_bucket", String, "Age band, 'unknown' when not given."),
        Field("account_age_days", Int64, "Days from sign-up to this profile version."),
    ],
    timestamp_field="updated_at",
    feature_start_time=FIRST_SIGNUP,
    batch_schedule=timedelta(days=7),
    owner="team:growth-ml",
    tags={"domain": "profile"},
    expectations=DataFrameSchema(
        {
            "country": Column(checks=Check.str_matches(r"[A-Z]{2}$|unknown$")),
            "age_bucket": Column(checks=Check.isin([*AGE_LABELS, "unknown"])),
            "account_age_days": Column(checks=Check.in_range(0, 3650, raise_warning=True)),
        }
    ),
)
def user_profile(users: pd.DataFrame) -> pd.DataFrame:
    """One row per profile version, valid from its update time."""
    buckets = pd.cut(users["age"], bins=AGE_BUCKETS, labels=AGE_LABELS, right=False)
    return pd.DataFrame(
        {
            "user_id": users["user_id"],
            "updated_at": users["updated_at"],
            "country": users["country"].fillna("unknown"),
            "age_bucket": buckets.astype("string").fillna("unknown"),
            "account_age_days": (users["updated_at"] - users["signup_ts"]).dt.days.astype("int64"),
        }
    )
