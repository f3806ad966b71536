"""One "materialization planned" event per asset of a range run, and the partition statuses
Dagster derives from planned events (in progress, failed) read back from it."""

from __future__ import annotations

from collections.abc import Mapping

import sqlalchemy as db
from dagster import AssetKey, DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.event_log.schema import (
    AssetCheckExecutionsTable,
    SqlEventLogStorageTable,
)
from dagster._serdes import deserialize_value, serialize_value


class RangePlanning:
    """One planned event per asset and range run; the attempts of each partition read back
    from those subsets as well as from per-partition planned events. A mixin of the event log
    storages (`SqliteEventLog`, `PostgresEventLog`)."""

    @property
    def supports_partition_subset_in_asset_materialization_planned_events(self) -> bool:
        return True

    def get_latest_asset_partition_materialization_attempts_without_materializations(
        self, asset_key: AssetKey, after_storage_id: int | None = None
    ) -> Mapping[str, tuple[str, int]]:
        """{partition: (run id, planned event's storage id)} of the partitions whose latest
        planned materialization (per partition or in a subset) has not been materialized since."""
        attempts = dict(
            super().get_latest_asset_partition_materialization_attempts_without_materializations(  # type: ignore[misc]
                asset_key, after_storage_id
            )
        )
        ranges = self._planned_ranges(asset_key, after_storage_id)
        if not ranges:
            return attempts
        for storage_id, run_id, keys in ranges:
            for key in keys:
                if key not in attempts or attempts[key][1] < storage_id:
                    attempts[key] = (run_id, storage_id)
        materialized = self.get_latest_storage_id_by_partition(  # type: ignore[attr-defined]
            asset_key, DagsterEventType.ASSET_MATERIALIZATION
        )
        return {key: a for key, a in attempts.items() if materialized.get(key, 0) < a[1]}

    def _planned_ranges(
        self, asset_key: AssetKey, after_storage_id: int | None
    ) -> list[tuple[int, str, list[str]]]:
        """(storage id, run id, partition keys) of the asset's subset planned events, oldest
        first."""
        table = SqlEventLogStorageTable
        query = (
            db.select(table.c.id, table.c.run_id, table.c.event)
            .where(
                table.c.asset_key == asset_key.to_string(),
                table.c.dagster_event_type == DagsterEventType.ASSET_MATERIALIZATION_PLANNED.value,
                table.c.partition.is_(None),
            )
            .order_by(table.c.id)
        )
        if after_storage_id:
            query = query.where(table.c.id > after_storage_id)
        with self.index_connection() as conn:  # type: ignore[attr-defined]
            rows = conn.execute(query).fetchall()
        ranges = []
        for storage_id, run_id, text in rows:
            entry = deserialize_value(text, EventLogEntry)
            planned = entry.get_dagster_event().event_specific_data
            if planned.partitions_subset is not None:
                ranges.append(
                    (storage_id, run_id, list(planned.partitions_subset.get_partition_keys()))
                )
        return ranges

    def _store_asset_check_evaluation_planned(
        self, event: EventLogEntry, event_id: int | None
    ) -> None:
        """Dagster's, with the event serialized once rather than once per partition."""
        planned = event.get_dagster_event().event_specific_data
        subset = planned.partitions_subset
        serialized = serialize_value(event)
        rows = [
            {
                "asset_key": planned.asset_key.to_string(),
                "check_name": planned.check_name,
                "partition": partition,
                "run_id": event.run_id,
                "execution_status": AssetCheckExecutionRecordStatus.PLANNED.value,
                "evaluation_event": serialized,
                "evaluation_event_timestamp": self._event_insert_timestamp(event),  # type: ignore[attr-defined]
                "evaluation_event_storage_id": event_id,
            }
            for partition in (subset.get_partition_keys() if subset else [None])
        ]
        with self.index_connection() as conn:  # type: ignore[attr-defined]
            conn.execute(AssetCheckExecutionsTable.insert(), rows)
