"""Click-through features computed at request time: the user's and the ad's click-through rates
over each window, smoothed rates and their combination, activity trends, how often the ad's
users saw it, the time since the user's last click, and when in the day and week the request
comes."""

from feature_assets.ad_delivery import WINDOWS as AD_WINDOWS
from feature_assets.ad_delivery import ad_delivery
from feature_assets.user_ad_activity import WINDOWS as USER_WINDOWS
from feature_assets.user_ad_activity import user_ad_activity
from featureplane import (
    Bool,
    Field,
    Float64,
    Int32,
    RequestSource,
    Timestamp,
    on_demand_feature_view,
)

ad_request = RequestSource(
    [Field("request_ts", Timestamp, "When the ad is requested (offline: the impression time).")],
    name="ad_request",
)


def _counts(windows) -> list[str]:
    return [f"{kind}_{window}" for window in windows for kind in ("impressions", "clicks")]


@on_demand_feature_view(
    sources=[
        ad_request,
        user_ad_activity[[*_counts(USER_WINDOWS), "last_click_unix_s_7d"]],
        ad_delivery[[*_counts(AD_WINDOWS), "distinct_users_7d"]],
    ],
    schema=[
        *(
            Field(f"user_ctr_{w}", Float64, f"The user's clicks per impression over {w}.")
            for w in USER_WINDOWS
        ),
        *(
            Field(f"ad_ctr_{w}", Float64, f"The ad's clicks per impression over {w} (whole days).")
            for w in AD_WINDOWS
        ),
        Field("user_ctr_7d_smoothed", Float64, "user_ctr_7d shrunk to a 3.5% prior (100 views)."),
        Field("ad_ctr_7d_smoothed", Float64, "ad_ctr_7d shrunk to a 3.5% prior (100 views)."),
        Field(
            "expected_ctr_7d",
            Float64,
            "The prior times the user's and the ad's smoothed lifts over it (at most 1).",
        ),
        Field("user_impressions_1d_vs_7d", Float64, "Last day's impressions / 7-day daily mean."),
        Field("user_clicks_1d_vs_7d", Float64, "Last day's clicks / the 7-day daily mean."),
        Field("ad_impressions_1d_vs_7d", Float64, "Last day's impressions / 7-day daily mean."),
        Field("ad_impressions_per_user_7d", Float64, "How often the ad's users saw it (7 days)."),
        Field("hours_since_last_click", Float64, "Hours from the user's last click (7 days back)."),
        Field("request_hour", Int32, "Hour of day (UTC) of the request."),
        Field("request_day_of_week", Int32, "Day of week (UTC) of the request, 0 = Monday."),
        Field("request_is_weekend", Bool, "Whether the request comes on a Saturday or Sunday."),
    ],
    owner="team:ads-ml",
    tags={"domain": "ads"},
)
def ctr_features(request: dict, user: dict, ad: dict) -> dict:
    """Rates are None without impressions; smoothing adds 3.5 clicks in 100 impressions."""
    prior_ctr, prior_impressions = 0.035, 100

    def rate(clicks, impressions):
        return (clicks or 0) / impressions if impressions else None

    def smoothed(clicks, impressions):
        clicks = (clicks or 0) + prior_ctr * prior_impressions
        return clicks / ((impressions or 0) + prior_impressions)

    def trend(last_day, week):
        return (last_day or 0) * 7 / week if week else None

    user_impressions_1d, user_impressions_7d = user["impressions_1d"], user["impressions_7d"]
    ad_impressions_1d, ad_impressions_7d = ad["impressions_1d"], ad["impressions_7d"]
    user_smoothed = smoothed(user["clicks_7d"], user_impressions_7d)
    ad_smoothed = smoothed(ad["clicks_7d"], ad_impressions_7d)
    requested_at, last_click = request["request_ts"], user["last_click_unix_s_7d"]
    day = requested_at.weekday() if requested_at is not None else None
    return {
        "user_ctr_1h": rate(user["clicks_1h"], user["impressions_1h"]),
        "user_ctr_6h": rate(user["clicks_6h"], user["impressions_6h"]),
        "user_ctr_1d": rate(user["clicks_1d"], user_impressions_1d),
        "user_ctr_3d": rate(user["clicks_3d"], user["impressions_3d"]),
        "user_ctr_7d": rate(user["clicks_7d"], user_impressions_7d),
        "ad_ctr_1d": rate(ad["clicks_1d"], ad_impressions_1d),
        "ad_ctr_3d": rate(ad["clicks_3d"], ad["impressions_3d"]),
        "ad_ctr_7d": rate(ad["clicks_7d"], ad_impressions_7d),
        "user_ctr_7d_smoothed": user_smoothed,
        "ad_ctr_7d_smoothed": ad_smoothed,
        "expected_ctr_7d": min(user_smoothed * ad_smoothed / prior_ctr, 1.0),
        "user_impressions_1d_vs_7d": trend(user_impressions_1d, user_impressions_7d),
        "user_clicks_1d_vs_7d": trend(user["clicks_1d"], user["clicks_7d"]),
        "ad_impressions_1d_vs_7d": trend(ad_impressions_1d, ad_impressions_7d),
        "ad_impressions_per_user_7d": (
            ad_impressions_7d / ad["distinct_users_7d"] if ad["distinct_users_7d"] else None
        ),
        "hours_since_last_click": (
            (requested_at.timestamp() - last_click) / 3600
            if requested_at is not None and last_click is not None
            else None
        ),
        "request_hour": requested_at.hour if requested_at is not None else None,
        "request_day_of_week": day,
        "request_is_weekend": day >= 5 if day is not None else None,
    }
