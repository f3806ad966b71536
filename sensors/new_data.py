"""New and late data: one sensor per source, reading its Delta log.

Each tick compares the table with the cursor (the Delta version and landed time it last saw)
and reports, as runless materializations of `sources/<name>` windows:
- the windows that landed since (every event of them is in, by the quiet period);
- the landed windows that commits since the cursor's version added rows to or removed rows
  from, late events included, read from the files those commits touched.
Automation then recomputes exactly the feature windows that read them
(`featureplane.dagster.automation`). The cursor moves only with the reports it returns, so a
tick that fails reports nothing and the next one sees the same commits: idempotent.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from dagster import (
    AssetSelection,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    Definitions,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    TimeWindowPartitionsDefinition,
    sensor,
)

from featureplane.dagster.automation import (
    landed_keys,
    landing_events,
    source_metadata,
    source_state,
    unreported_landed,
)
from featureplane.dagster.keys import source_key
from featureplane.dagster.partitions import source_partitions
from featureplane.quality.completeness import landed_through
from featureplane.repository import Repository
from featureplane.settings import sensor_interval_seconds
from featureplane.source import BatchSource
from featureplane.source_changes import changes_since


def _changed_keys(
    source: BatchSource,
    partitions: TimeWindowPartitionsDefinition,
    after: int,
    until: int,
    landed: list[str],
) -> tuple[list[str], int, str | None]:
    """(the landed windows the commits after version `after` up to `until` changed, their
    rows, why they cannot be known): unknown changes count every landed window as changed."""
    first = partitions.time_window_for_partition_key(partitions.get_first_partition_key())
    grain = first.end - first.start
    field = source.timestamp_field
    changes = changes_since(source.uri, after, field, first.start, grain, until=until)
    if changes.unknown:
        return landed, changes.rows, changes.unknown
    changed = {start.strftime(partitions.fmt) for start in changes.buckets}
    return [key for key in landed if key in changed], changes.rows, None


def new_data_sensor(source: BatchSource, partitions: TimeWindowPartitionsDefinition):
    """The sensor `<source>_new_data` reporting the source's landed and changed windows."""
    key = source_key(source)

    @sensor(
        name=f"{source.name}_new_data",
        description=f"Reports the windows of {source.name} that landed or received late rows.",
        minimum_interval_seconds=sensor_interval_seconds(),
        default_status=DefaultSensorStatus.RUNNING,
    )
    def watch(context: SensorEvaluationContext) -> SensorResult | SkipReason:
        state = source_state(source)
        if state is None:
            return SkipReason(f"{source.name}: no Delta table at {source.uri}")
        version, latest = state
        now = datetime.now(UTC)
        landed = landed_through(source, latest, now)
        cursor = json.dumps({"version": version, "landed": landed.isoformat() if landed else None})
        if context.cursor is None:  # first tick: every landed window not reported yet
            events = unreported_landed(
                context.instance, key, source, partitions, version, latest, now
            )
            return SensorResult(asset_events=events, cursor=cursor)
        seen = json.loads(context.cursor)
        before = landed_keys(partitions, _moment(seen["landed"]))
        reported = set(before)
        new = [k for k in landed_keys(partitions, landed) if k not in reported]
        metadata = source_metadata(version, latest, landed)
        changed, rows, unknown = [], 0, None
        if version > seen["version"]:
            changed, rows, unknown = _changed_keys(
                source, partitions, seen["version"], version, before
            )
        if unknown:
            context.log.warning(f"{source.name}: {unknown}: every landed window counts as changed")
        events = landing_events(key, new, "landed", metadata) + landing_events(
            key, changed, "late or changed rows", {**metadata, "changed_rows": rows}
        )
        if not events:
            return SensorResult(skip_reason=f"{source.name}: nothing new", cursor=cursor)
        return SensorResult(asset_events=events, cursor=cursor)

    return watch


def _moment(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def definitions(repository: Repository) -> Definitions:
    """A new-data sensor per Delta source read by an offline view, and the sensor that
    evaluates the assets' automation conditions."""
    sensors = []
    for source in repository.sources.values():
        partitions = source_partitions(source, repository.feature_views.values())
        if partitions is not None and source.uri is not None:
            sensors.append(new_data_sensor(source, partitions))
    automation = AutomationConditionSensorDefinition(
        "featureplane_automation",
        target=AssetSelection.all(),
        description="Runs feature windows as their sources land, pushes, scheduled datasets.",
        minimum_interval_seconds=sensor_interval_seconds(),
        default_status=DefaultSensorStatus.RUNNING,
    )
    return Definitions(sensors=[*sensors, automation])
