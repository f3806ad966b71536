"""Build the Dagster `Definitions` of a feature repository."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dagster import Definitions

from featureplane.dagster.assets import feature_view_asset, source_spec
from featureplane.repository import Repository
from featureplane.settings import offline_root
from resources.offline_io_manager import DeltaOfflineIOManager
from resources.spark import SparkResource


def default_resources() -> dict[str, Any]:
    """Embedded defaults: Sail in-process and the Delta offline store under the data directory."""
    spark = SparkResource()
    return {
        "spark": spark,
        "offline_io_manager": DeltaOfflineIOManager(root=offline_root(), spark=spark),
    }


def build_definitions(
    repository: Repository, resources: Mapping[str, Any] | None = None
) -> Definitions:
    """Source specs and one asset per offline feature view, with the given or default resources."""
    return Definitions(
        assets=[
            *(source_spec(source) for source in repository.sources.values()),
            *(
                feature_view_asset(view)
                for view in repository.feature_views.values()
                if view.offline
            ),
        ],
        resources=dict(resources) if resources is not None else default_resources(),
    )
