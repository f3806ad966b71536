"""The instance's event log, made for range backfills: a run over a year of daily partitions
writes a few batches, not thousands of single events.

With Dagster's defaults, a single-run backfill of 365 daily partitions of two views and their
online pushes wrote 2,963 events one at a time, each opening a new database engine twice and
committing twice: 28 of its 34 s. Here (named by the project's `dagster.yaml`):

- `BatchingInstance` stores the events Dagster marks as one batch (a range's materializations,
  a run's planned events) in one storage call, as `DAGSTER_EVENT_BATCH_SIZE` does, on by default.
- `SqliteEventLog` is Dagster's SQLite event log with one engine per database file (not one per
  event) and a batch written in one transaction per file; `PostgresEventLog` is dagster-postgres's
  with a pooled connection rather than a new one per statement.
- Both plan a range run with one "materialization planned" event per asset, holding its partition
  subset, rather than one per partition; and both read these subsets back when Dagster asks which
  partitions were attempted and not materialized, so a running range still shows its partitions
  as in progress and a failed one as failed (Dagster's own subset planning loses both).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as db
import yaml
from dagster import AssetKey, AssetMaterialization, DagsterEvent, DagsterEventType, DagsterInstance
from dagster._core.events import (
    DagsterEventBatchMetadata,
    StepMaterializationData,
    generate_event_batch_id,
)
from dagster._core.events.log import EventLogEntry
from dagster._core.instance.ref import InstanceRef
from dagster._core.instance.utils import RUNLESS_JOB_NAME, RUNLESS_RUN_ID
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.event_log import SqliteEventLogStorage
from dagster._core.storage.event_log.schema import (
    AssetCheckExecutionsTable,
    SqlEventLogStorageTable,
)
from dagster._core.storage.sql import create_engine
from dagster._core.storage.sqlite import create_db_conn_string
from dagster._serdes import ConfigurableClassData, deserialize_value, serialize_value
from dagster_postgres.event_log import PostgresEventLogStorage
from dagster_postgres.utils import (
    create_pg_engine,
    get_token_provider_from_config,
    pg_url_from_config,
)
from sqlalchemy.pool import NullPool

BATCH_SIZE = 10_000
"""Events of one batch stored per storage call (Dagster's batches are one output's partitions)."""
ENGINES = 64
"""SQLite engines kept open per process: a run's shard and the index are the busy ones."""
SQLITE_BUSY_TIMEOUT_SECONDS = 30


class BatchingInstance(DagsterInstance):
    """Dagster's instance with batched event writes on (`DAGSTER_EVENT_BATCH_SIZE`, when set,
    still decides)."""

    @classmethod
    def config_schema(cls) -> dict:
        return {}  # no settings of its own

    @staticmethod
    def config_defaults(base_dir: str) -> Mapping[str, ConfigurableClassData | None]:
        """Dagster's defaults, with `SqliteEventLog` where Dagster keeps its SQLite event log."""
        defaults = dict(InstanceRef.config_defaults(base_dir))
        events = ConfigurableClassData(
            __name__,
            SqliteEventLog.__name__,
            yaml.dump({"base_dir": os.path.join(base_dir, "history", "runs")}),
        )
        parts = {"run_storage": defaults["run_storage"], "event_log_storage": events}
        parts["schedule_storage"] = defaults["schedule_storage"]
        composite = {
            name: {
                "module_name": d.module_name,
                "class_name": d.class_name,
                "config_yaml": d.config_yaml,
            }
            for name, d in parts.items()
        }
        defaults["event_log_storage"] = events
        defaults["storage"] = ConfigurableClassData(
            "dagster._core.storage.legacy_storage", "CompositeStorage", yaml.dump(composite)
        )
        return defaults

    def _get_event_batch_size(self) -> int:
        return int(os.getenv("DAGSTER_EVENT_BATCH_SIZE", str(BATCH_SIZE)))


def report_materializations(
    instance: DagsterInstance, materializations: Sequence[AssetMaterialization]
) -> None:
    """Runless materializations reported as one batch (one storage call on a
    `BatchingInstance`), not one write each."""
    batch = generate_event_batch_id()
    for index, materialization in enumerate(materializations):
        event = DagsterEvent(
            event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
            event_specific_data=StepMaterializationData(materialization),
            job_name=RUNLESS_JOB_NAME,
        )
        last = index == len(materializations) - 1
        metadata = DagsterEventBatchMetadata(batch, last)
        instance.report_dagster_event(event, run_id=RUNLESS_RUN_ID, batch_metadata=metadata)


class RangePlanning:
    """One planned event per asset and range run; the attempts of each partition read back
    from those subsets as well as from per-partition planned events."""

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


class SqliteEventLog(RangePlanning, SqliteEventLogStorage):
    """Dagster's SQLite event log (a database per run, and an index in `base_dir`)."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        self._engines: OrderedDict[str, db.engine.Engine] = OrderedDict()
        super().__init__(base_dir, inst_data)

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> SqliteEventLog:
        return cls(inst_data=inst_data, **config_value)

    @contextmanager
    def _connect(self, shard: str) -> Iterator[db.Connection]:
        with self._db_lock:
            engine = self._engines.pop(shard, None)
            if engine is None:
                engine = create_engine(
                    create_db_conn_string(self._base_dir, shard),
                    poolclass=NullPool,
                    connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
                )
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            self._engines[shard] = engine  # the most recently used last
            while len(self._engines) > ENGINES:
                self._engines.popitem(last=False)[1].dispose()
            with engine.connect() as conn, conn.begin():
                yield conn

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """A batch of one run's asset events: one transaction in its run's database, one in
        the index (the asset's row updated from the batch's last event of each kind)."""
        kinds = {event.get_dagster_event().event_type for event in events}
        runs = {event.run_id for event in events}
        if len(runs) != 1 or not kinds <= {
            DagsterEventType.ASSET_MATERIALIZATION,
            DagsterEventType.ASSET_OBSERVATION,
            DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
        }:
            super().store_event_batch(events)
            return
        rows = [self._event_to_row(event) for event in events]  # each serialized once
        table = SqlEventLogStorageTable
        with self.run_connection(runs.pop()) as conn:
            conn.execute(table.insert(), rows)  # one statement, compiled once
        with self.index_transaction() as conn:
            inserted = conn.execute(
                table.insert().returning(table.c.id, sort_by_parameter_order=True), rows
            )
            ids = list(inserted.scalars())
            self._store_asset_event_tags(conn, list(events), ids)
            last: dict[tuple, tuple[EventLogEntry, int]] = {}
            for event, event_id in zip(events, ids, strict=True):
                dagster_event = event.get_dagster_event()
                last[(dagster_event.asset_key, dagster_event.event_type)] = (event, event_id)
            for event, event_id in last.values():
                self._store_asset_event(conn, event, event_id)

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
                "evaluation_event_timestamp": self._event_insert_timestamp(event),
                "evaluation_event_storage_id": event_id,
            }
            for partition in (subset.get_partition_keys() if subset else [None])
        ]
        with self.index_connection() as conn:
            conn.execute(AssetCheckExecutionsTable.insert(), rows)


class PostgresEventLog(RangePlanning, PostgresEventLogStorage):
    """dagster-postgres's event log over one pooled connection (re-checked before use): not
    a new connection, and its authentication, per statement."""

    def __init__(self, postgres_url: str, should_autocreate_tables: bool = True, **kwargs: Any):
        super().__init__(postgres_url, should_autocreate_tables, **kwargs)
        self._engine.dispose()
        self._engine = create_pg_engine(
            self.postgres_url,
            self._token_provider,
            isolation_level="AUTOCOMMIT",
            pool_size=1,
            max_overflow=4,
            pool_pre_ping=True,
        )

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> PostgresEventLog:
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )
