"""The instance's event log, made for range backfills: a run over a year of daily partitions
writes a few batches, not thousands of single events.

With Dagster's defaults, a single-run backfill of 365 daily partitions of two views and their
online pushes wrote 2,963 events one at a time, each opening a new database engine twice and
committing twice: 28 of its 34 s. Here (named by the project's `dagster.yaml`):

- `BatchingInstance` (`batching`) stores the events Dagster marks as one batch (a range's
  materializations, a run's planned events) in one storage call, as `DAGSTER_EVENT_BATCH_SIZE`
  does, on by default; `report_materializations` reports runless ones as a batch.
- `SqliteEventLog` (`sqlite`) is Dagster's SQLite event log with one engine per database file (not
  one per event) and a batch written in one transaction per file; `PostgresEventLog` (`postgres`)
  is dagster-postgres's with a pooled connection rather than a new one per statement.
- Both (`ranges`) plan a range run with one "materialization planned" event per asset, holding
  its partition subset, rather than one per partition; and both read these subsets back when
  Dagster asks which partitions were attempted and not materialized, so a running range still
  shows its partitions in progress and a failed one failed (Dagster's own subset planning, behind
  `DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS`, loses both).
"""

from featureplane.dagster.event_log.batching import BatchingInstance, report_materializations
from featureplane.dagster.event_log.postgres import PostgresEventLog
from featureplane.dagster.event_log.sqlite import SqliteEventLog

__all__ = ["BatchingInstance", "PostgresEventLog", "SqliteEventLog", "report_materializations"]
