"""Materialize feature views for a time range through Dagster: one run per partitioning.

Runs go through the Dagster instance (so they show in the UI) as single-run backfills: every
selected view with the same partitions computes the whole range in one Spark job and, with
`online`, pushes the range's end state to the online store in the same run (consistency
checks included).
"""

from dataclasses import dataclass
from datetime import UTC, datetime

from dagster import (
    AssetCheckSeverity,
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    Definitions,
    TimeWindowPartitionsDefinition,
)

from featureplane.dagster.automation import report_landed
from featureplane.dagster.dead_runs import process_tags
from featureplane.dagster.definitions import build_definitions
from featureplane.dagster.failures import error_text, innermost
from featureplane.dagster.instance import project_instance
from featureplane.errors import MaterializationFailed
from featureplane.repository import Repository

FEATURES = "features"
ONLINE = "online"
TRAINING = "training"
RANGE_START_TAG = "dagster/asset_partition_range_start"  # the tags Dagster's backfills set
RANGE_END_TAG = "dagster/asset_partition_range_end"


@dataclass(frozen=True)
class Materialized:
    """What one feature asset's run produced."""

    asset_key: AssetKey
    partitions: int
    rows: int
    run_id: str
    rows_per_second: float | None = None


def materialize_range(
    defs: Definitions,
    instance: DagsterInstance,
    start: datetime,
    end: datetime,
    views: list[str] | None = None,
    log_level: str = "WARNING",
    online: bool = False,
    tags: dict[str, str] | None = None,
) -> list[Materialized]:
    """Materialize the partitions overlapping [start, end) of the given (default: all) views,
    and with `online` push them to the online store; `tags` go on every run (e.g. the volume
    guard's `featureplane/allow_volume_drop`)."""
    kinds = (FEATURES, ONLINE) if online else (FEATURES,)
    groups: dict[TimeWindowPartitionsDefinition, list[AssetKey]] = {}
    for spec in defs.resolve_all_asset_specs():
        key = spec.key
        if key.path[0] not in kinds or (views is not None and key.path[-1] not in views):
            continue
        groups.setdefault(spec.partitions_def, []).append(key)
    unknown = set(views or []) - {key.path[-1] for keys in groups.values() for key in keys}
    if unknown:
        raise KeyError(f"no feature view asset named {sorted(unknown)}")
    results = []
    for partitions_def, keys in groups.items():
        windows = {
            key: partitions_def.time_window_for_partition_key(key)
            for key in partitions_def.get_partition_keys()
        }
        partition_keys = [k for k, w in windows.items() if w.start < end and w.end > start]
        if partition_keys:
            span = {RANGE_START_TAG: partition_keys[0], RANGE_END_TAG: partition_keys[-1]}
            results += _run(defs, instance, keys, {**(tags or {}), **span}, log_level)
    return results


def materialize_training(
    defs: Definitions, instance: DagsterInstance, log_level: str = "WARNING"
) -> list[Materialized]:
    """Build every training dataset of the definitions, in one run."""
    keys = [spec.key for spec in defs.resolve_all_asset_specs() if spec.key.path[0] == TRAINING]
    return _run(defs, instance, keys, {}, log_level) if keys else []


def _run(
    defs: Definitions,
    instance: DagsterInstance,
    keys: list[AssetKey],
    tags: dict[str, str],
    log_level: str,
) -> list[Materialized]:
    """One run of the assets, tagged with this process (`dead_runs`); a failed run raises
    `MaterializationFailed` saying why."""
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
        instance=instance,
        asset_selection=keys,
        tags={**tags, **process_tags()},
        raise_on_error=False,
    )
    if not result.success:
        raise MaterializationFailed(_failures(result))
    events = [e.materialization for e in result.get_asset_materialization_events()]
    materialized = []
    for key in keys:
        mine = [event for event in events if event.asset_key == key]
        metadata = mine[0].metadata if mine else {}
        rows = metadata["dagster/row_count"].value if mine else 0
        speed = metadata["rows_per_second"].value if "rows_per_second" in metadata else None
        materialized.append(Materialized(key, len(mine), rows, result.run_id, speed))
    return materialized


def _failures(result) -> str:
    """One line per failed step: the innermost error (its class and message), or for a step
    stopped by its blocking quality check, the rules that failed, one line each."""
    failed_checks = {
        e.asset_check_evaluation_data.asset_key: e.asset_check_evaluation_data
        for e in result.all_events
        if e.event_type == DagsterEventType.ASSET_CHECK_EVALUATION
        and not e.asset_check_evaluation_data.passed
        and e.asset_check_evaluation_data.severity == AssetCheckSeverity.ERROR
    }
    lines = []
    for event in result.all_events:
        if event.event_type != DagsterEventType.STEP_FAILURE:
            continue
        error = innermost(event.step_failure_data.error)
        if error.cls_name == "DagsterAssetCheckFailedError":
            for key, check in failed_checks.items():
                lines.append(f"{key.to_user_string()}: blocking quality check failed:")
                lines += [f"  {line}" for line in (check.description or "").splitlines()]
            continue
        lines.append(f"{event.step_key}: {error_text(error)}")
    return f"run {result.run_id} failed:\n" + "\n".join(f"  {line}" for line in lines)


def materialize_repository(
    package: str,
    start: datetime | None,
    end: datetime,
    views: list[str] | None = None,
    training: bool = False,
    tags: dict[str, str] | None = None,
) -> list[Materialized]:
    """Materialize a repository's feature views and push its online ones (then, optionally,
    build its training datasets) on the Dagster instance of $DAGSTER_HOME, from `start`
    (default: the earliest feature start).

    The sources' landed windows are reported first, so that automation takes these runs as
    done. The instance is `project_instance()`: $DAGSTER_HOME, by default `.dagster_home/`. Runs
    log only critical events to the console: a failed run raises `MaterializationFailed`
    with what stopped it (the full event log is the instance's, in the UI).
    """
    repository = Repository.load(package)
    if start is None:
        start = min(view.feature_start_time for view in repository.feature_views.values())
    defs = build_definitions(repository)
    with project_instance() as instance:
        report_landed(instance, repository, datetime.now(UTC))
        quiet = "CRITICAL"
        results = materialize_range(defs, instance, start, end, views, quiet, True, tags)
        if training:
            results += materialize_training(defs, instance, quiet)
        return results
