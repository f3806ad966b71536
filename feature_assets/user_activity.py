"""Daily browsing activity per user (PySpark)."""

from datetime import timedelta

from pandera.pyspark import Check, Column, DataFrameSchema
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from feature_assets.entities import user
from feature_assets.sources import FIRST_DAY, PAGE_CATEGORIES, page_views
from featureplane import Field, Int64, String, batch_feature_view
from featureplane.quality import row_check


@batch_feature_view(
    sources=[page_views],
    entities=[user],
    mode="pyspark",
    schema=[
        Field("page_views_1d", Int64, "Page views in the user's day so far."),
        Field("distinct_categories_1d", Int64, "Distinct page categories viewed that day."),
        Field("last_category", String, "Category of the latest page viewed that day."),
    ],
    timestamp_field="ts",
    feature_start_time=FIRST_DAY,
    ttl=timedelta(days=2),
    owner="team:growth-ml",
    tags={"domain": "recommendations"},
    expectations=DataFrameSchema(
        {
            "page_views_1d": Column(
                # more than 100k pages a day looks like a crawler: worth a look, not a block
                checks=[Check.ge(1), Check.le(100_000, raise_warning=True)]
            ),
            "distinct_categories_1d": Column(checks=Check.in_range(0, len(PAGE_CATEGORIES))),
            # null when all of the user's pages that day were uncategorised
            "last_category": Column(nullable=True, checks=Check.isin(PAGE_CATEGORIES)),
        },
        checks=[row_check("distinct_categories_1d <= page_views_1d")],
    ),
)
def user_daily_page_views(page_views: DataFrame) -> DataFrame:
    """How much and how broadly each user browsed per day, stamped at their last view of the day."""
    return (
        page_views.dropDuplicates(["event_id"])
        .groupBy("user_id", F.to_date("ts").alias("day"))
        .agg(
            F.max("ts").alias("ts"),
            F.count(F.lit(1)).alias("page_views_1d"),
            F.countDistinct("category").alias("distinct_categories_1d"),
            F.max_by("category", "ts").alias("last_category"),
        )
        .drop("day")
    )
