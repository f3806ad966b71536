"""Ad impressions and clicks per user over the last hour, day and week (window aggregations)."""

from datetime import timedelta

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from feature_assets.entities import user
from feature_assets.sources import FIRST_DAY, ad_clicks, ad_impressions
from featureplane import Aggregation, Field, Int64, batch_feature_view

WINDOWS = {"1h": timedelta(hours=1), "1d": timedelta(days=1), "7d": timedelta(days=7)}


@batch_feature_view(
    sources=[ad_impressions, ad_clicks],
    entities=[user],
    mode="pyspark",
    schema=[
        Field("impression_id", Int64, "Set on impression events."),
        Field("clicked_impression_id", Int64, "Set on click events."),
    ],
    timestamp_field="ts",
    aggregations=[
        *(Aggregation("impression_id", "count", w, f"impressions_{n}") for n, w in WINDOWS.items()),
        *(
            Aggregation("clicked_impression_id", "count", w, f"clicks_{n}")
            for n, w in WINDOWS.items()
        ),
    ],
    aggregation_interval=timedelta(hours=1),
    feature_start_time=FIRST_DAY,
    owner="team:ads-ml",
    tags={"domain": "ads"},
)
def user_ad_activity(ad_impressions: DataFrame, ad_clicks: DataFrame) -> DataFrame:
    """One event per distinct impression and per distinct click of the user."""
    impressions = ad_impressions.dropDuplicates(["impression_id"]).select(
        "user_id", "ts", "impression_id", F.lit(None).cast("bigint").alias("clicked_impression_id")
    )
    clicks = ad_clicks.dropDuplicates(["impression_id"]).select(
        "user_id",
        "ts",
        F.lit(None).cast("bigint").alias("impression_id"),
        F.col("impression_id").alias("clicked_impression_id"),
    )
    return impressions.unionByName(clicks)
