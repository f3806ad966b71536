"""featureplane: features as code, computed on Spark into Delta, orchestrated by Dagster.

The definitions API is importable without Spark or Dagster: entities, sources, fields and types,
and batch feature views.
"""

from featureplane.entity import Entity
from featureplane.errors import (
    DefinitionError,
    EntityError,
    FeatureViewError,
    RepositoryError,
    SourceError,
)
from featureplane.feature_view import FeatureView, batch_feature_view
from featureplane.repository import Repository
from featureplane.source import BatchSource
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
    "Array",
    "BatchSource",
    "Bool",
    "DType",
    "Date",
    "DefinitionError",
    "Entity",
    "EntityError",
    "FeatureView",
    "FeatureViewError",
    "Field",
    "Float32",
    "Float64",
    "Int32",
    "Int64",
    "Repository",
    "RepositoryError",
    "SourceError",
    "String",
    "Timestamp",
    "batch_feature_view",
]
