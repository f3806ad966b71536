"""Dagster's SQLite event log, with an engine per database file and one transaction per batch."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as db
from dagster import DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log import SqliteEventLogStorage
from dagster._core.storage.event_log.schema import SqlEventLogStorageTable
from dagster._core.storage.sql import create_engine
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS, create_db_conn_string
from dagster._serdes import ConfigurableClassData
from sqlalchemy.pool import NullPool

from featureplane.dagster.event_log.ranges import RangePlanning

ENGINES = 64
"""SQLite engines kept open per process: a run's shard and the index are the busy ones."""


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
            last: dict[tuple, tuple[EventLogEntry, int]] = {}  # in order of last occurrence
            for event, event_id in zip(events, ids, strict=True):
                dagster_event = event.get_dagster_event()
                kind = (dagster_event.asset_key, dagster_event.event_type)
                last.pop(kind, None)
                last[kind] = (event, event_id)
            for event, event_id in last.values():  # each overwrites what its kind sets
                self._store_asset_event(conn, event, event_id)
