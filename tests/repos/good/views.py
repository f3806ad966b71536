from featureplane import batch_feature_view
from tests.repos.common import VIEW


@batch_feature_view(sources=["clicks"], **VIEW)
def clicks_1d(clicks):
    return clicks
