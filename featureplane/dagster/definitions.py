"""Build the Dagster `Definitions` of a feature repository."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dagster import Definitions

import sensors  # the module, not its names: sensors import featureplane.dagster too
from featureplane.dagster.assets import (
    feature_view_asset,
    online_asset,
    service_spec,
    source_spec,
    training_dataset_asset,
)
from featureplane.dagster.checks import consistency_check
from featureplane.dagster.partitions import source_partitions
from featureplane.on_demand import stored_views
from featureplane.repository import Repository
from featureplane.settings import offline_root, online_store_settings
from resources.offline_io_manager import DeltaOfflineIOManager
from resources.offline_store import OfflineStoreResource
from resources.online_io_manager import OnlineIOManager
from resources.online_store import OnlineStoreResource
from resources.spark import SparkResource


def resources_for(
    spark: SparkResource,
    offline_store: OfflineStoreResource,
    online_store: OnlineStoreResource | None = None,
) -> dict[str, Any]:
    """The resources every featureplane asset needs, wired to one session and the stores
    (the online store by default: SQLite in the data directory)."""
    online_store = online_store or OnlineStoreResource()
    return {
        "spark": spark,
        "offline_store": offline_store,
        "offline_io_manager": DeltaOfflineIOManager(offline_store=offline_store, spark=spark),
        "online_store": online_store,
        "online_io_manager": OnlineIOManager(online_store=online_store),
    }


def default_resources() -> dict[str, Any]:
    """Embedded defaults: Sail in-process (or the Connect server of
    `$FEATUREPLANE_SPARK_REMOTE`), the Delta offline store under the data directory, and
    the online store that `featureplane serve` reads (`$FEATUREPLANE_ONLINE_STORE`, else SQLite
    in the data directory)."""
    return resources_for(
        SparkResource.from_settings(),
        OfflineStoreResource(root=offline_root()),
        OnlineStoreResource(**online_store_settings()),
    )


def build_definitions(
    repository: Repository, resources: Mapping[str, Any] | None = None
) -> Definitions:
    """Source specs, one asset per offline feature view, per online one an `online/` asset
    with its consistency check, feature service specs and training dataset assets, with the
    given or default resources, and the platform's sensors and schedules (`sensors`)."""
    resources = dict(resources) if resources is not None else default_resources()
    store_kind = resources["online_store"].type
    pushed = [view for view in repository.feature_views.values() if view.offline and view.online]
    serving: dict[str, list[str]] = {}
    for service in repository.feature_services.values():
        for view in stored_views(service.features):
            serving.setdefault(view.name, []).append(service.name)
    assets = Definitions(
        assets=[
            *(
                source_spec(source, source_partitions(source, repository.feature_views.values()))
                for source in repository.sources.values()
            ),
            *(
                feature_view_asset(view, serving.get(view.name, []))
                for view in repository.feature_views.values()
                if view.offline
            ),
            *(online_asset(view, store_kind) for view in pushed),
            *(
                service_spec(service, store_kind)
                for service in repository.feature_services.values()
            ),
            *(
                training_dataset_asset(dataset, repository)
                for dataset in repository.training_datasets.values()
            ),
        ],
        asset_checks=[consistency_check(view, repository) for view in pushed],
        resources=resources,
    )
    return Definitions.merge(assets, sensors.definitions(repository))
