"""Click-through training data: every ad impression, labelled, with the features of that moment."""

from datetime import timedelta

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from feature_assets.ad_delivery import ad_delivery
from feature_assets.ad_performance import ad_daily_performance
from feature_assets.ctr_features import ctr_features
from feature_assets.entities import ad, user
from feature_assets.sources import FIRST_DAY, ad_clicks, ad_impressions
from feature_assets.user_activity import user_daily_page_views
from feature_assets.user_ad_activity import user_ad_activity
from feature_assets.user_click_sessions import user_click_sessions
from feature_assets.user_profile import user_profile
from featureplane import (
    Bool,
    FeatureService,
    Field,
    Int32,
    Int64,
    Timestamp,
    TrainingDataset,
    batch_feature_view,
)


@batch_feature_view(
    sources=[ad_impressions, ad_clicks],
    entities=[user, ad],
    mode="pyspark",
    schema=[
        Field("impression_id", Int64, "The labelled impression."),
        Field("position", Int32, "Slot the ad was shown in."),
        Field("clicked", Bool, "Whether the impression was clicked (the label)."),
        Field("request_ts", Timestamp, "The impression time: the request field of ctr_features."),
    ],
    timestamp_field="ts",
    feature_start_time=FIRST_DAY,
    online=False,
    owner="team:ads-ml",
    tags={"domain": "ads", "kind": "labels"},
)
def impression_labels(ad_impressions: DataFrame, ad_clicks: DataFrame) -> DataFrame:
    """One row per distinct impression; clicked when a click on it landed in the same window.

    Its time is repeated as `request_ts`, the request field the served model's requests carry.
    """
    clicks = ad_clicks.select("impression_id").distinct().withColumn("clicked", F.lit(True))
    return (
        ad_impressions.dropDuplicates(["impression_id"])
        .join(clicks, "impression_id", "left")
        .select(
            "user_id",
            "ad_id",
            "ts",
            "impression_id",
            "position",
            F.coalesce("clicked", F.lit(False)).alias("clicked"),
            F.col("ts").alias("request_ts"),
        )
    )


ctr = FeatureService(
    "ctr",
    features=[
        user_daily_page_views,
        user_profile[["country", "age_bucket", "account_age_days"]],
        user_click_sessions,
        ad_daily_performance,
        user_ad_activity,
        ad_delivery,
        ctr_features,
    ],
    description="Features of the click-through-rate model, served per (user, ad) request.",
    owner="team:ads-ml",
)

ctr_training = TrainingDataset(
    "ctr_training",
    spine=impression_labels,
    features=ctr,
    description="Impressions with their click label and the ctr features as of impression time.",
    owner="team:ads-ml",
    schedule=timedelta(days=1),  # rebuilt daily, once its inputs changed
)
