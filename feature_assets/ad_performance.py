"""Daily delivery and click-through per ad (Spark SQL)."""

from datetime import timedelta

from pandera.pyspark import Check, Column, DataFrameSchema

from feature_assets.entities import ad
from feature_assets.sources import FIRST_DAY, ad_clicks, ad_impressions
from featureplane import Field, Float64, Int64, batch_feature_view
from featureplane.quality import row_check, row_count


@batch_feature_view(
    sources=[ad_impressions, ad_clicks],
    entities=[ad],
    mode="spark_sql",
    schema=[
        Field("impressions_1d", Int64, "Distinct impressions of the ad that day."),
        Field("clicks_1d", Int64, "Distinct clicks on the ad that day."),
        Field("ctr_1d", Float64, "clicks_1d / impressions_1d (null without impressions)."),
    ],
    timestamp_field="ts",
    feature_start_time=FIRST_DAY,
    ttl=timedelta(days=3),
    owner="team:ads-ml",
    tags={"domain": "ads"},
    expectations=DataFrameSchema(
        {
            "impressions_1d": Column(checks=Check.ge(0)),
            "clicks_1d": Column(checks=Check.ge(0)),
            "ctr_1d": Column(nullable=True, checks=Check.in_range(0, 1)),
        },
        checks=[
            row_check("clicks_1d <= impressions_1d", name="clicks at most impressions"),
            row_count(min=1, warn=True),  # a day without any ad delivered is worth a look
        ],
    ),
)
def ad_daily_performance(ad_impressions: str, ad_clicks: str) -> str:
    """Impressions, clicks and CTR per ad and day, deduplicated by impression id."""
    return f"""
        WITH events AS (
            SELECT ad_id, ts, 1 AS is_impression, 0 AS is_click
            FROM (SELECT DISTINCT impression_id, ad_id, ts FROM {ad_impressions})
            UNION ALL
            SELECT ad_id, ts, 0 AS is_impression, 1 AS is_click
            FROM (SELECT DISTINCT impression_id, ad_id, ts FROM {ad_clicks})
        )
        SELECT
            ad_id,
            max(ts) AS ts,
            CAST(sum(is_impression) AS BIGINT) AS impressions_1d,
            CAST(sum(is_click) AS BIGINT) AS clicks_1d,
            CAST(sum(is_click) AS DOUBLE) / NULLIF(sum(is_impression), 0) AS ctr_1d
        FROM events
        GROUP BY ad_id, to_date(ts)
    """
