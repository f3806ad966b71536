"""What `featureplane apply` and `describe` ask of the Dagster instance at $DAGSTER_HOME.

A feature view whose version changed must be recomputed over all its partitions. `apply`
submits that as one asset backfill per view — `features/<name>` and, for an online view,
`online/<name>` — over every partition from its feature_start_time to now: the same request as
"Materialize all partitions" in the UI, so it shows on the Backfills page and the daemon runs
it (as one run per view, the assets' backfill policy). Dagster 1.13 has no public Python call
for this: `PartitionBackfill.from_asset_partitions` + `add_backfill` is what its GraphQL
`launchPartitionBackfill` does, without needing a running webserver. `describe` reads the
latest materialization of a view's assets.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dagster import (
    AssetKey,
    DagsterInstance,
    Definitions,
    MetadataValue,
    TableMetadataValue,
    TimestampMetadataValue,
)
from dagster._core.execution.backfill import PartitionBackfill
from dagster._core.utils import make_new_backfill_id

from featureplane.catalog import Materialization
from featureplane.dagster.definitions import build_definitions
from featureplane.dagster.instance import project_instance
from featureplane.repository import Repository

APPLY_TAG = "featureplane/applied_version"
"""Tag of the backfills an apply launched: the registry version that needed them."""


@dataclass(frozen=True)
class Backfill:
    """One launched backfill: its id, the view, its assets and first and last partitions."""

    backfill_id: str
    view: str
    assets: tuple[AssetKey, ...]
    first_partition: str
    last_partition: str
    partitions: int


def launch_backfills(
    defs: Definitions, instance: DagsterInstance, views: Iterable[str], applied_version: int
) -> list[Backfill]:
    """Submit a backfill of all partitions of each view's assets (views without offline
    assets have nothing to recompute and are skipped)."""
    asset_graph = defs.resolve_asset_graph()
    specs = {spec.key: spec for spec in defs.resolve_all_asset_specs()}
    launched = []
    for view in views:
        keys = tuple(
            key
            for key in (AssetKey(["features", view]), AssetKey(["online", view]))
            if key in specs
        )
        if not keys:
            continue
        partition_keys = specs[keys[0]].partitions_def.get_partition_keys()
        backfill = PartitionBackfill.from_asset_partitions(
            backfill_id=make_new_backfill_id(),
            asset_graph=asset_graph,
            partition_names=None,
            asset_selection=keys,
            backfill_timestamp=time.time(),
            tags={APPLY_TAG: str(applied_version)},
            dynamic_partitions_store=instance,
            all_partitions=True,
            title=f"featureplane apply {applied_version}: recompute {view}",
            description=f"Registry version {applied_version} changed the version of {view}.",
            run_config=None,
        )
        instance.add_backfill(backfill)
        launched.append(
            Backfill(
                backfill.backfill_id,
                view,
                keys,
                partition_keys[0],
                partition_keys[-1],
                len(partition_keys),
            )
        )
    return launched


def _plain(value: MetadataValue) -> Any:
    """A metadata value as text or rows: a table's records, a timestamp in ISO format."""
    if isinstance(value, TableMetadataValue):
        return [record.data for record in value.records]
    if isinstance(value, TimestampMetadataValue):
        return datetime.fromtimestamp(value.value, UTC).isoformat()
    return value.value


def latest_materializations(
    instance: DagsterInstance, keys: Iterable[AssetKey]
) -> list[Materialization]:
    """Of each asset materialized at least once: when, which partition, which run, and the
    metadata it reported (rows, per-feature stats, Delta version, push speed)."""
    latest = []
    for key in keys:
        event = instance.get_latest_materialization_event(key)
        if event is None or event.asset_materialization is None:
            continue
        materialization = event.asset_materialization
        values = {
            "at": datetime.fromtimestamp(event.timestamp, UTC).isoformat(timespec="seconds"),
            "partition": materialization.partition,
            "run_id": event.run_id,
            **{name: _plain(value) for name, value in materialization.metadata.items()},
        }
        latest.append(Materialization(key.to_user_string(), values))
    return latest


def materializations_of(kind: str, name: str) -> list[Materialization]:
    """The latest materializations on the project instance of the assets of a feature view
    (`features/`, `online/`) or a training dataset (`training/`); none for other kinds."""
    paths = {
        "feature_view": [["features", name], ["online", name]],
        "training_dataset": [["training", name]],
    }
    if kind not in paths:
        return []
    with project_instance() as instance:
        return latest_materializations(instance, [AssetKey(path) for path in paths[kind]])


def backfill_changed_views(
    repository: Repository, views: Iterable[str], applied_version: int
) -> list[Backfill]:
    """`launch_backfills` on the project instance, with the repository's definitions."""
    with project_instance() as instance:
        return launch_backfills(build_definitions(repository), instance, views, applied_version)
