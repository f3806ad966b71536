"""Raw event and profile tables, landed as Delta tables by the product's logging pipelines."""

from datetime import UTC, datetime

from pandera.pyspark import Check, Column, DataFrameSchema

from featureplane import BatchSource

FIRST_DAY = datetime(2026, 10, 1, tzinfo=UTC)
"""The first day of logged events: event-based feature views start computing here."""

PAGE_CATEGORIES = [
    *("news", "sports", "finance", "tech", "autos", "travel", "food", "fashion", "beauty"),
    *("health", "home", "garden", "music", "movies", "gaming", "books", "kids", "pets", "jobs"),
    "realty",
]
"""The product's page categories; a page without one logs null."""

FIRST_SIGNUP = datetime(2025, 9, 29, tzinfo=UTC)
"""Profiles go back a year before the first logged event (a Monday: weekly partitions start)."""

page_views = BatchSource(
    "page_views",
    path="raw/page_views",
    timestamp_field="ts",
    description="Product page views: user, page, page category. Late and duplicate events occur.",
    owner="team:data-platform",
    expectations=DataFrameSchema(
        {
            "page_id": Column(checks=Check.gt(0)),
            "category": Column(nullable=True, checks=Check.isin(PAGE_CATEGORIES)),
        }
    ),
)

ad_impressions = BatchSource(
    "ad_impressions",
    path="raw/ad_impressions",
    timestamp_field="ts",
    description="Ads shown to users, with slot position. Duplicates share an impression_id.",
    owner="team:ads-platform",
    expectations=DataFrameSchema({"position": Column(nullable=True, checks=Check.in_range(1, 10))}),
)

ad_clicks = BatchSource(
    "ad_clicks",
    path="raw/ad_clicks",
    timestamp_field="ts",
    description="Clicks on shown ads, keyed by the impression they belong to.",
    owner="team:ads-platform",
)

users = BatchSource(
    "users",
    path="raw/users",
    timestamp_field="updated_at",
    description="User profile changes (sign-up and later edits): country, age.",
    owner="team:data-platform",
    quiet_period=None,  # profiles change rarely: the latest change says nothing of completeness
)
