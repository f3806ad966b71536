"""Who and what the demo's features describe."""

from featureplane import Entity, Int64

user = Entity(
    "user",
    join_keys=["user_id"],
    join_key_types={"user_id": Int64},
    description="A signed-in user of the product.",
    owner="team:growth-ml",
)

ad = Entity(
    "ad",
    join_keys=["ad_id"],
    join_key_types={"ad_id": Int64},
    description="One ad creative, owned by an advertiser.",
    owner="team:ads-ml",
)
