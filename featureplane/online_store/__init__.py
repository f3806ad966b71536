"""The online store: latest feature values by (view, version, entity key), SQLite or DynamoDB.

Spark-free, Dagster-free and light to import: the Lambda handler imports it. boto3 is imported
only by `featureplane.online_store.dynamodb`, when a DynamoDB store is opened.
"""

from featureplane.online_store.encoding import EntityKeyError
from featureplane.online_store.store import (
    ItemTooLarge,
    OnlineStore,
    Record,
    RecordKey,
    StoreThrottled,
    StoreUnavailable,
    WriteResult,
    expiry,
    open_store,
)

__all__ = [
    "EntityKeyError",
    "ItemTooLarge",
    "OnlineStore",
    "Record",
    "RecordKey",
    "StoreThrottled",
    "StoreUnavailable",
    "WriteResult",
    "expiry",
    "open_store",
]
