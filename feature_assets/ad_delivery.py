"""How often, where and to how many users each ad was shown and clicked (daily aggregations)."""

from datetime import timedelta

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from feature_assets.entities import ad
from feature_assets.sources import FIRST_DAY, ad_clicks, ad_impressions
from featureplane import Aggregation, Field, Int32, Int64, batch_feature_view

WINDOWS = {"1d": timedelta(days=1), "3d": timedelta(days=3), "7d": timedelta(days=7)}
WEEK = WINDOWS["7d"]


@batch_feature_view(
    sources=[ad_impressions, ad_clicks],
    entities=[ad],
    mode="pyspark",
    schema=[
        Field("impression_id", Int64, "Set on impression events."),
        Field("clicked_impression_id", Int64, "Set on click events."),
        Field("position", Int32, "Slot the ad was shown in (null when unknown and on clicks)."),
        Field("user_id", Int64, "The user it was shown to (null on clicks)."),
    ],
    timestamp_field="ts",
    aggregations=[
        *(Aggregation("impression_id", "count", w, f"impressions_{n}") for n, w in WINDOWS.items()),
        *(
            Aggregation("clicked_impression_id", "count", w, f"clicks_{n}")
            for n, w in WINDOWS.items()
        ),
        Aggregation("position", "mean", WEEK, "mean_position_7d"),
        Aggregation("position", "min", WEEK, "best_position_7d"),
        Aggregation("user_id", "approx_count_distinct", WEEK, "distinct_users_7d"),
    ],
    aggregation_interval=timedelta(days=1),
    feature_start_time=FIRST_DAY,
    owner="team:ads-ml",
    tags={"domain": "ads"},
)
def ad_delivery(ad_impressions: DataFrame, ad_clicks: DataFrame) -> DataFrame:
    """One event per distinct impression and per distinct click of the ad."""
    impressions = ad_impressions.dropDuplicates(["impression_id"]).select(
        "ad_id",
        "ts",
        "impression_id",
        F.lit(None).cast("bigint").alias("clicked_impression_id"),
        "position",
        "user_id",
    )
    clicks = ad_clicks.dropDuplicates(["impression_id"]).select(
        "ad_id",
        "ts",
        F.lit(None).cast("bigint").alias("impression_id"),
        F.col("impression_id").alias("clicked_impression_id"),
        F.lit(None).cast("int").alias("position"),
        F.lit(None).cast("bigint").alias("user_id"),
    )
    return impressions.unionByName(clicks)
