"""The categories a user browsed most recently: in-product recommendations (window aggregation)."""

from datetime import timedelta

from pyspark.sql import DataFrame

from feature_assets.entities import user
from feature_assets.sources import FIRST_DAY, page_views
from feature_assets.user_activity import user_daily_page_views
from feature_assets.user_profile import user_profile
from featureplane import Aggregation, FeatureService, Field, String, batch_feature_view, last_n


@batch_feature_view(
    sources=[page_views],
    entities=[user],
    mode="pyspark",
    schema=[Field("category", String, "Category of the viewed page (null when unknown).")],
    timestamp_field="ts",
    aggregations=[
        Aggregation("category", last_n(5), timedelta(days=7), "last_5_categories_7d"),
        Aggregation("category", "last", timedelta(days=1), "last_category_1d"),
    ],
    aggregation_interval=timedelta(hours=1),
    feature_start_time=FIRST_DAY,
    owner="team:growth-ml",
    tags={"domain": "recommendations"},
)
def user_recent_categories(page_views: DataFrame) -> DataFrame:
    """One event per distinct page view."""
    return page_views.dropDuplicates(["event_id"]).select("user_id", "ts", "category")


recommendations = FeatureService(
    "recommendations",
    features=[user_recent_categories, user_daily_page_views, user_profile[["age_bucket"]]],
    description="Features of the in-product recommendation ranker, served per user.",
    owner="team:growth-ml",
)
