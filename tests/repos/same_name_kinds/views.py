from featureplane import batch_feature_view
from tests.repos.common import VIEW


@batch_feature_view(sources=["clicks"], name="clicks", **VIEW)
def clicks_view(clicks):
    return clicks
