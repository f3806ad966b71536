from featureplane import BatchSource, batch_feature_view
from tests.repos.common import VIEW

clicks = BatchSource("clicks", path="raw/clicks", timestamp_field="ts")


@batch_feature_view(
    sources=[BatchSource("clicks", table="raw.clicks", timestamp_field="ts")],
    **VIEW,
)
def clicks_1d(clicks):
    return clicks
