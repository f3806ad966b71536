"""What each user was shown and clicked over the last hour to week (window aggregations).

Counts of impressions and clicks over five windows, the mean slot the user's ads were shown in
and when they last clicked: one tile per user and hour holds the partials of all of them, so
every window is a merge of the same tiles.
"""

from datetime import timedelta

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from feature_assets.entities import user
from feature_assets.sources import FIRST_DAY, ad_clicks, ad_impressions
from featureplane import Aggregation, Field, Int32, Int64, batch_feature_view

WINDOWS = {
    "1h": timedelta(hours=1),
    "6h": timedelta(hours=6),
    "1d": timedelta(days=1),
    "3d": timedelta(days=3),
    "7d": timedelta(days=7),
}
DAY, WEEK = WINDOWS["1d"], WINDOWS["7d"]


@batch_feature_view(
    sources=[ad_impressions, ad_clicks],
    entities=[user],
    mode="pyspark",
    schema=[
        Field("impression_id", Int64, "Set on impression events."),
        Field("clicked_impression_id", Int64, "Set on click events."),
        Field("position", Int32, "Slot of an impression (null on clicks and when unknown)."),
        Field("click_unix_s", Int64, "Time of a click in seconds since 1970 (null otherwise)."),
    ],
    timestamp_field="ts",
    aggregations=[
        *(Aggregation("impression_id", "count", w, f"impressions_{n}") for n, w in WINDOWS.items()),
        *(
            Aggregation("clicked_impression_id", "count", w, f"clicks_{n}")
            for n, w in WINDOWS.items()
        ),
        Aggregation("position", "mean", DAY, "mean_position_1d"),
        Aggregation("position", "mean", WEEK, "mean_position_7d"),
        Aggregation("click_unix_s", "max", WEEK, "last_click_unix_s_7d"),
    ],
    aggregation_interval=timedelta(hours=1),
    feature_start_time=FIRST_DAY,
    owner="team:ads-ml",
    tags={"domain": "ads"},
)
def user_ad_activity(ad_impressions: DataFrame, ad_clicks: DataFrame) -> DataFrame:
    """One event per distinct impression and per distinct click of the user."""
    impressions = ad_impressions.dropDuplicates(["impression_id"]).select(
        "user_id",
        "ts",
        "impression_id",
        F.lit(None).cast("bigint").alias("clicked_impression_id"),
        "position",
        F.lit(None).cast("bigint").alias("click_unix_s"),
    )
    clicks = ad_clicks.dropDuplicates(["impression_id"]).select(
        "user_id",
        "ts",
        F.lit(None).cast("bigint").alias("impression_id"),
        F.col("impression_id").alias("clicked_impression_id"),
        F.lit(None).cast("int").alias("position"),
        F.unix_seconds("ts").alias("click_unix_s"),
    )
    return impressions.unionByName(clicks)
