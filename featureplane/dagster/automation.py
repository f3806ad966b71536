"""How the platform runs itself: automation conditions, and the windows sources have landed.

Each source is partitioned like the finest view reading it (`source_partitions`). A source
window is reported materialized once it has landed (every source holds an event within its
quiet period of the window's end, `quality.completeness`) and again whenever late or changed
rows reach it (`sensors.new_data`). Declarative automation takes it from there:
- `features/<view>` computes a window once every source window it reads has landed, and again
  when one of them changes;
- `online/<view>` pushes each window whose features changed, once their blocking checks passed;
- `training/<name>` with a `schedule` is rebuilt on it, once its inputs changed since the tick.
A view or dataset with `batch_trigger="manual"` has no condition: a person or apply runs it.
"""

from __future__ import annotations

from datetime import datetime

from dagster import (
    AssetKey,
    AssetMaterialization,
    AutomationCondition,
    DagsterInstance,
    MetadataValue,
    TimeWindowPartitionsDefinition,
)
from deltalake import DeltaTable

from featureplane.dagster.event_log import report_materializations
from featureplane.dagster.keys import source_key
from featureplane.dagster.partitions import source_partitions
from featureplane.feature_view import FeatureView, schedule_cron
from featureplane.quality.completeness import landed_through, table_reach
from featureplane.repository import Repository
from featureplane.source import BatchSource


def _changed_upstream() -> AutomationCondition:
    """Some input window is new or changed, all are there, and nothing of it is running."""
    return (
        AutomationCondition.any_deps_updated().since_last_handled()
        & ~AutomationCondition.any_deps_missing()
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
    )


def feature_condition() -> AutomationCondition:
    """A feature window runs once its source windows landed, and reruns when they change."""
    return _changed_upstream().with_label("source windows landed or changed")


def push_condition() -> AutomationCondition:
    """An online window is pushed once its feature windows changed and passed their checks."""
    return (_changed_upstream() & AutomationCondition.all_deps_blocking_checks_passed()).with_label(
        "feature windows changed and checked"
    )


def training_condition(schedule) -> AutomationCondition:
    """A scheduled training dataset is rebuilt on its schedule, after its inputs changed."""
    return AutomationCondition.on_cron(schedule_cron(schedule))


def landed_keys(partitions: TimeWindowPartitionsDefinition, landed: datetime | None) -> list[str]:
    """The windows that end by `landed` (none when nothing landed)."""
    return [] if landed is None else partitions.get_partition_keys(current_time=landed)


def landing_events(
    key: AssetKey,
    keys: list[str],
    trigger: str,
    metadata: dict[str, object],
) -> list[AssetMaterialization]:
    """One runless materialization per source window: why it is reported, and the table."""
    return [
        AssetMaterialization(
            asset_key=key,
            partition=partition,
            description=trigger,
            metadata={"trigger": trigger, **metadata},
        )
        for partition in keys
    ]


def source_metadata(version: int, latest: datetime | None, landed: datetime | None) -> dict:
    """What a source report says of the table: its Delta version, latest event, landed time."""
    return {
        "delta_version": version,
        "latest_event": MetadataValue.timestamp(latest) if latest else "none",
        "landed_through": MetadataValue.timestamp(landed) if landed else "none",
    }


def unreported_landed(
    instance: DagsterInstance,
    key: AssetKey,
    source: BatchSource,
    partitions: TimeWindowPartitionsDefinition,
    version: int,
    latest: datetime | None,
    now: datetime,
) -> list[AssetMaterialization]:
    """Reports of the windows the source has landed that were never reported."""
    landed = landed_through(source, latest, now)
    reported = instance.get_materialized_partitions(key)
    keys = [k for k in landed_keys(partitions, landed) if k not in reported]
    return landing_events(key, keys, "landed", source_metadata(version, latest, landed))


def source_state(source: BatchSource) -> tuple[int, datetime | None] | None:
    """The Delta version and latest event of a source table; None when there is no table
    (yet) or the source is a catalog table, which only a Spark session can read."""
    if source.uri is None or not DeltaTable.is_deltatable(source.uri):
        return None
    table = DeltaTable(source.uri)  # loaded once: its version and its latest event agree
    return table.version(), table_reach(table, source.timestamp_field)


def report_landed(instance: DagsterInstance, repository: Repository, now: datetime) -> int:
    """Report every landed source window not reported yet, so that automation sees the
    windows computed outside it (`featureplane materialize`, apply's backfills) as landed;
    returns how many it reported."""
    reported = 0
    for source in repository.sources.values():
        partitions = source_partitions(source, repository.feature_views.values())
        state = source_state(source)
        if partitions is None or state is None:
            continue
        events = unreported_landed(instance, source_key(source), source, partitions, *state, now)
        report_materializations(instance, events)
        reported += len(events)
    return reported


def view_landed(view: FeatureView, now: datetime) -> datetime | None:
    """The end of the time every source of a view has landed (catalog tables, which only a
    Spark session can read, count as landed: the run's completeness check has the last word)."""
    ends = []
    for source in view.sources:
        state = source_state(source)
        if state is not None:
            ends.append(landed_through(source, state[1], now))
        else:  # a catalog table (counts as landed), or no Delta table yet (nothing landed)
            ends.append(now if source.uri is None else None)
    return None if None in ends else min(ends, default=now)
