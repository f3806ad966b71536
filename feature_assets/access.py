"""Who may read the feature services and who may apply changes. Principals and their API keys
are made with `featureplane access create` (the demo makes `demo-client`); these policies say
what they may do."""

from feature_assets.ctr_training import ctr
from feature_assets.user_recent_categories import recommendations
from featureplane import AccessPolicy

ranking_reads_ctr = AccessPolicy(
    "ranking_reads_ctr",
    members=["group:ranking", "demo-client"],
    read=[ctr],
    description="The ad ranking service scores candidates with the ctr features.",
    owner="team:ads",
)

recommender_reads_recommendations = AccessPolicy(
    "recommender_reads_recommendations",
    members=["group:recommendations", "demo-client"],
    read=[recommendations],
    description="The recommender reads what users browsed lately.",
    owner="team:discovery",
)
