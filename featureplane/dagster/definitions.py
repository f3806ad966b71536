"""Build the Dagster `Definitions` of a feature repository."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dagster import Definitions

from featureplane.dagster.assets import feature_view_asset, source_spec, training_dataset_asset
from featureplane.repository import Repository
from featureplane.settings import offline_root
from resources.offline_io_manager import DeltaOfflineIOManager
from resources.offline_store import OfflineStoreResource
from resources.spark import SparkResource


def resources_for(spark: SparkResource, offline_store: OfflineStoreResource) -> dict[str, Any]:
    """The resources every featureplane asset needs, wired to one session and one store."""
    return {
        "spark": spark,
        "offline_store": offline_store,
        "offline_io_manager": DeltaOfflineIOManager(offline_store=offline_store, spark=spark),
    }


def default_resources() -> dict[str, Any]:
    """Embedded defaults: Sail in-process and the Delta offline store under the data directory."""
    return resources_for(SparkResource(), OfflineStoreResource(root=offline_root()))


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
            *(
                training_dataset_asset(dataset, repository)
                for dataset in repository.training_datasets.values()
            ),
        ],
        resources=dict(resources) if resources is not None else default_resources(),
    )
