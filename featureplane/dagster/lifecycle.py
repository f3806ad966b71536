"""What `featureplane apply`, `status` and `describe` ask of the Dagster instance at $DAGSTER_HOME.

Apply writes a registry version; its rollout runs in the code location, which must hold that
version's code (`sensors.rollout`): it launches one asset backfill recomputing the changed
views — `features/<name>` and, for an online view, `online/<name>`, over every window the
sources have landed — and rebuilding the changed training datasets after them, tagged with the
registry version. It is the request "Materialize all partitions" of the UI makes, so it shows
on the Backfills page and the daemon runs it (one run per view, the assets' backfill policy).
Dagster 1.13 has no public Python call for it: `PartitionBackfill.from_asset_graph_subset` +
`add_backfill` is what its GraphQL `launchPartitionBackfill` does. `describe` reads the latest
materialization of a view's assets.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dagster import (
    AssetKey,
    DagsterInstance,
    MetadataValue,
    TableMetadataValue,
    TimestampMetadataValue,
)
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
from dagster._core.definitions.assets.graph.base_asset_graph import BaseAssetGraph
from dagster._core.definitions.events import AssetKeyPartitionKey
from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus, PartitionBackfill
from dagster._core.utils import make_new_backfill_id

from featureplane.catalog import Materialization
from featureplane.dagster.automation import landed_keys, view_landed
from featureplane.dagster.instance import project_instance
from featureplane.dagster.keys import feature_key, online_key, training_key
from featureplane.dagster.partitions import partitions_for
from featureplane.repository import Repository
from featureplane.rollout import Work

APPLY_TAG = "featureplane/applied_version"
"""Tag of the backfill an apply's rollout launched: the registry version that needed it."""
DONE = {
    BulkActionStatus.COMPLETED_SUCCESS: "succeeded",
    BulkActionStatus.COMPLETED_FAILED: "failed",
    BulkActionStatus.FAILED: "failed",
    BulkActionStatus.CANCELED: "canceled",
}
"""The final states of a backfill, as words."""


def launch_backfill(
    asset_graph: BaseAssetGraph,
    instance: DagsterInstance,
    repository: Repository,
    work: Work,
    applied_version: int,
    now: datetime,
) -> PartitionBackfill | None:
    """Submit the backfill of registry version `applied_version`: every landed window of the
    recomputed views' assets and of the pushed views' `online/` assets, then the rebuilt
    training datasets; None when there is nothing to run (no landed window, no dataset)."""
    targets: set[AssetKeyPartitionKey] = set()
    for name in (*work.recompute, *work.push):
        view = repository.feature_views[name]
        if not view.offline:
            continue
        keys = landed_keys(partitions_for(view), view_landed(view, now))
        assets = [online_key(view)] if view.online else []
        assets += [feature_key(view)] if name in work.recompute else []
        targets |= {AssetKeyPartitionKey(asset, key) for asset in assets for key in keys}
    targets |= {
        AssetKeyPartitionKey(training_key(repository.training_datasets[name]))
        for name in work.rebuild
    }
    if not targets:
        return None
    backfill = PartitionBackfill.from_asset_graph_subset(
        backfill_id=make_new_backfill_id(),
        backfill_timestamp=time.time(),
        tags={APPLY_TAG: str(applied_version)},
        dynamic_partitions_store=instance,
        asset_graph_subset=AssetGraphSubset.from_asset_partition_set(targets, asset_graph),
        title=_title(f"featureplane apply {applied_version}: {', '.join(work.names())}"),
        description=(
            f"Registry version {applied_version} serves once this backfill succeeds: "
            f"{', '.join(work.names())}."
        ),
        run_config=None,
    )
    instance.add_backfill(backfill)
    return backfill


def _title(text: str, limit: int = 100) -> str:
    """A backfill title within Dagster's limit."""
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def applied_backfill(instance: DagsterInstance, version: int) -> PartitionBackfill | None:
    """The latest backfill launched for a registry version, if any."""
    found = instance.get_backfills(filters=BulkActionsFilter(tags={APPLY_TAG: str(version)}))
    return max(found, key=lambda backfill: backfill.backfill_timestamp, default=None)


@dataclass(frozen=True)
class Progress:
    """How far a backfill got on one asset: partitions done, failed, and targeted."""

    asset: str
    done: int
    failed: int
    total: int


def progress(backfill: PartitionBackfill) -> list[Progress]:
    """Each targeted asset's progress, in the backfill's order (an unpartitioned asset counts
    as one partition)."""
    data = backfill.asset_backfill_data
    assert data is not None, "featureplane launches asset backfills only"

    def count(subset: AssetGraphSubset, key: AssetKey) -> int:
        if key in subset.non_partitioned_asset_keys:
            return 1
        partitions = subset.partitions_subsets_by_asset_key.get(key)
        return len(partitions) if partitions is not None else 0

    return [
        Progress(
            key.to_user_string(),
            count(data.materialized_subset, key),
            count(data.failed_and_downstream_subset, key),
            count(data.target_subset, key),
        )
        for key in sorted(data.target_subset.asset_keys, key=AssetKey.to_user_string)
    ]


def outcome(backfill: PartitionBackfill) -> str | None:
    """`succeeded`, `failed` or `canceled` once the backfill is over, else None."""
    return DONE.get(backfill.status)


def reload_code_locations(url: str, timeout: float = 60.0) -> list[str] | None:
    """Ask the Dagster webserver at `url` to reload every code location, so that the rollout
    runs the applied code; the names reloaded, or None when no webserver answers there."""
    statuses = _graphql(
        url,
        "{ locationStatusesOrError { ... on WorkspaceLocationStatusEntries"
        " { entries { name } } } }",
        timeout,
    )
    if statuses is None:
        return None
    names = [entry["name"] for entry in statuses["locationStatusesOrError"]["entries"]]
    for name in names:
        reloaded = _graphql(
            url,
            "mutation($name: String!) { reloadRepositoryLocation(repositoryLocationName: $name)"
            " { __typename ... on WorkspaceLocationEntry { locationOrLoadError { __typename"
            " ... on PythonError { message } } } } }",
            timeout,
            {"name": name},
        )
        entry = (reloaded or {}).get("reloadRepositoryLocation", {})
        error = (entry.get("locationOrLoadError") or {}).get("message")
        if entry.get("__typename") != "WorkspaceLocationEntry" or error:
            raise RuntimeError(f"code location {name} did not reload: {error or entry}")
    return names


def _graphql(
    url: str, query: str, timeout: float, variables: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"{url.rstrip('/')}/graphql", body, {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)["data"]
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


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
