"""Whether the sources have landed a window: a window they have not reached is not written.

A source's reach is its latest event time, read from the Delta log's file statistics (no data
scan; Spark's `max` where the log has none, or for catalog tables). A window counts as landed
when every source holds an event within its `quiet_period` of the window's end: a continuous
event stream that stopped earlier is late, and writing its window now would store a partial
day as if it were complete. Sources whose rows come rarely (`quiet_period=None`, e.g. profile
updates) never hold a window back.
"""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from featureplane.compute.transform import read_source
from featureplane.compute.window import TimeWindow, utc_from_micros
from featureplane.durations import in_words
from featureplane.source import BatchSource


class SourceNotReady(RuntimeError):
    """A source has not landed the window yet: nothing was written; rerun once it has."""


def table_reach(table: DeltaTable, timestamp_field: str) -> datetime | None:
    """The latest event time of a Delta table without Spark: the log's file statistics, else
    the files' event-time column (None when it holds no event)."""
    actions = pa.table(table.get_add_actions(flatten=True))
    column = f"max.{timestamp_field}"
    if column in actions.schema.names and actions.num_rows:
        values = actions.column(column)
        if values.null_count == 0:  # statistics of every file (to the millisecond)
            return pc.max(pc.cast(values, pa.timestamp("us", "UTC"))).as_py()
    files = table.file_uris()
    if not files:
        return None
    events = ds.dataset(files, format="parquet").to_table(columns=[timestamp_field])
    return pc.max(pc.cast(events.column(0), pa.timestamp("us", "UTC"))).as_py()


def reach(spark: SparkSession, source: BatchSource) -> datetime | None:
    """The source's latest event time, None when it holds no event."""
    if source.uri is not None and DeltaTable.is_deltatable(source.uri):
        return table_reach(DeltaTable(source.uri), source.timestamp_field)
    micros = F.max(F.unix_micros(F.col(source.timestamp_field)))
    return utc_from_micros(read_source(spark, source).agg(micros).collect()[0][0])


def landed_through(source: BatchSource, latest: datetime | None, now: datetime) -> datetime | None:
    """The end of the time a source has landed, given its latest event: windows ending by then
    are complete in it; `now` for a source without a quiet period, None before any event."""
    if source.quiet_period is None:
        return now
    if latest is None:
        return None
    return min(now, latest + source.quiet_period)


def not_landed(
    spark: SparkSession, view_name: str, sources: list[BatchSource], window: TimeWindow
) -> str | None:
    """Why the window cannot be written yet (one line), or None when every source landed it."""
    for source in sources:
        if source.quiet_period is None:
            continue
        latest = reach(spark, source)
        landed = landed_through(source, latest, window.end)
        if landed is not None and landed >= window.end:
            continue
        held = "no events" if latest is None else f"events up to {latest:%Y-%m-%d %H:%M:%S} UTC"
        return (
            f"{view_name} {window.start:%Y-%m-%d %H:%M}..{window.end:%Y-%m-%d %H:%M}: source "
            f"{source.name} holds {held}, not within its quiet_period "
            f"({in_words(source.quiet_period)}) "
            "of the window's end: nothing written; rerun once the source has landed the window"
        )
    return None
