"""Click-through features computed at request time: the user's recent CTR and the request hour."""

from feature_assets.user_ad_activity import user_ad_activity
from featureplane import Field, Float64, Int32, RequestSource, Timestamp, on_demand_feature_view

ad_request = RequestSource(
    [Field("request_ts", Timestamp, "When the ad is requested (offline: the impression time).")],
    name="ad_request",
)


@on_demand_feature_view(
    sources=[ad_request, user_ad_activity[["clicks_1d", "impressions_1d"]]],
    schema=[
        Field("user_ctr_1d", Float64, "The user's clicks per impression over the last day."),
        Field("request_hour", Int32, "Hour of day (UTC) of the request."),
    ],
    owner="team:ads-ml",
    tags={"domain": "ads"},
)
def ctr_features(request: dict, activity: dict) -> dict:
    """The user's click-through rate of the last day (None without impressions) and the hour."""
    impressions = activity["impressions_1d"]
    clicks = activity["clicks_1d"] or 0
    requested_at = request["request_ts"]
    return {
        "user_ctr_1d": clicks / impressions if impressions else None,
        "request_hour": requested_at.hour if requested_at is not None else None,
    }
