from featureplane import batch_feature_view
from tests.repos.common import VIEW


@batch_feature_view(sources=["impressions"], **VIEW)
def impressions_1d(impressions):
    return impressions
