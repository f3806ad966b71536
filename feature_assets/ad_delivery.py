"""How often, where and to how many users each ad was shown over the last week (aggregations)."""

from datetime import timedelta

from pyspark.sql import DataFrame

from feature_assets.entities import ad
from feature_assets.sources import FIRST_DAY, ad_impressions
from featureplane import Aggregation, Field, Int32, Int64, batch_feature_view

WEEK = timedelta(days=7)


@batch_feature_view(
    sources=[ad_impressions],
    entities=[ad],
    mode="pyspark",
    schema=[
        Field("impression_id", Int64, "The impression."),
        Field("position", Int32, "Slot the ad was shown in (null when unknown)."),
        Field("user_id", Int64, "The user it was shown to."),
    ],
    timestamp_field="ts",
    aggregations=[
        Aggregation("impression_id", "count", WEEK, "impressions_7d"),
        Aggregation("position", "mean", WEEK, "mean_position_7d"),
        Aggregation("position", "min", WEEK, "best_position_7d"),
        Aggregation("user_id", "approx_count_distinct", WEEK, "distinct_users_7d"),
    ],
    aggregation_interval=timedelta(days=1),
    feature_start_time=FIRST_DAY,
    owner="team:ads-ml",
    tags={"domain": "ads"},
)
def ad_delivery(ad_impressions: DataFrame) -> DataFrame:
    """One event per distinct impression of the ad."""
    return ad_impressions.dropDuplicates(["impression_id"]).select(
        "ad_id", "ts", "impression_id", "position", "user_id"
    )
