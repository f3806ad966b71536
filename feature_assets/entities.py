"""Who and what the demo's features describe."""

from featureplane import Entity

user = Entity(
    "user",
    join_keys=["user_id"],
    description="A signed-in user of the product.",
    owner="team:growth-ml",
)

ad = Entity(
    "ad",
    join_keys=["ad_id"],
    description="One ad creative, owned by an advertiser.",
    owner="team:ads-ml",
)
