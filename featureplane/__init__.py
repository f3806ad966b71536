"""featureplane: features as code, computed on Spark into Delta, orchestrated by Dagster.

The definitions API imports neither Spark nor Dagster, so the online side can use it; the
Spark-backed `FeatureStore` is imported on first use.
"""

from typing import Any

from featureplane.access import AccessPolicy
from featureplane.aggregation import Aggregation, approx_count_distinct, last_n
from featureplane.entity import Entity
from featureplane.errors import (
    DefinitionError,
    EntityError,
    FeatureViewError,
    OnDemandFeatureViewError,
    RepositoryError,
    RetrievalError,
    SourceError,
)
from featureplane.feature_service import FeatureSelection, FeatureService
from featureplane.feature_view import FeatureView, batch_feature_view
from featureplane.on_demand import OnDemandFeatureView, RequestSource, on_demand_feature_view
from featureplane.repository import Repository
from featureplane.source import BatchSource
from featureplane.training_dataset import TrainingDataset
from featureplane.types import (
    Array,
    Bool,
    Date,
    DType,
    Field,
    Float32,
    Float64,
    Int32,
    Int64,
    String,
    Timestamp,
)

__all__ = [
    "AccessPolicy",
    "Aggregation",
    "Array",
    "BatchSource",
    "Bool",
    "DType",
    "Date",
    "DefinitionError",
    "Entity",
    "EntityError",
    "FeatureSelection",
    "FeatureService",
    "FeatureStore",
    "FeatureView",
    "FeatureViewError",
    "Field",
    "Float32",
    "Float64",
    "Int32",
    "Int64",
    "OnDemandFeatureView",
    "OnDemandFeatureViewError",
    "Repository",
    "RepositoryError",
    "RequestSource",
    "RetrievalError",
    "SourceError",
    "String",
    "Timestamp",
    "TrainingDataset",
    "approx_count_distinct",
    "batch_feature_view",
    "last_n",
    "on_demand_feature_view",
]


def __getattr__(name: str) -> Any:
    if name == "FeatureStore":
        from featureplane.feature_store import FeatureStore

        return FeatureStore
    raise AttributeError(f"module 'featureplane' has no attribute {name!r}")
