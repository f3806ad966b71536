"""The Delta offline store: one table per feature view, partitioned by event date.

Writes replace exactly one time window (`replaceWhere` on the event time), so rerunning a
partition or a range never duplicates or loses rows, and a failed write commits nothing: the
previous version of the table stays as it was. Sail ignores dynamic partition overwrite, which is
why windows are replaced by predicate and never by partition.

A table is created by its own commit (an empty table with the rows' schema) and only where its
location holds nothing: a location with data files but no readable Delta log (a deleted or
damaged `_delta_log`) is refused, never taken for a new table, since overwriting it would orphan
every stored window. Two writers racing for the same commit: the loser writes again once (its
window replacement is idempotent) a few times, then gives up with `ConcurrentWriteError`. Sail
never commits an overwrite again itself (only blind appends), so this is what keeps runs writing
different windows of one table at once from failing. On S3 commits are conditional writes, so
racing writers (Sail or delta-rs, in any process) are as safe there (`featureplane.s3`).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow.fs as pafs
from deltalake import DeltaTable
from py4j.protocol import Py4JJavaError
from pyspark.errors import PySparkException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from featureplane.compute.transform import PARTITION_COLUMN
from featureplane.compute.window import TimeWindow, utc_from_micros
from featureplane.s3 import configure_s3, unreachable

ORDERABLE = ("string", "int", "bigint", "float", "double", "boolean", "timestamp", "date")


class SchemaChangedError(RuntimeError):
    """A write would change an existing table's columns; rebuild the table deliberately instead."""


class TableLogMissing(RuntimeError):
    """Data files stand where a table's Delta log should be: writing would orphan them."""

    def __init__(self, uri: str, files: int):
        self.uri, self.files = uri, files
        super().__init__(
            f"{uri} holds {files} files but no readable Delta log (_delta_log is missing or "
            "damaged); featureplane will not overwrite them: restore the _delta_log, or move "
            "the directory aside to rebuild the table with a backfill"
        )


class StoreUnreachable(RuntimeError):
    """The offline store's bucket cannot be read: missing, or the credentials are wrong."""


class ConcurrentWriteError(RuntimeError):
    """Other writers won every commit race of a write, WRITE_ATTEMPTS in a row: rerun the run."""


WRITE_ATTEMPTS = 5
"""Commits of one window replacement that may lose a race before the write gives up."""
TIME_TRAVEL_PROPERTIES = {"delta.checkpointInterval": "1000000"}
"""Table properties of every table featureplane creates: no checkpoints. Sail 0.7.2 cannot read
a version older than a table's latest checkpoint (`Missing commit file: expected version 0`),
and training datasets are rebuilt by reading their inputs at recorded versions."""
COMMIT_RACE_MARKERS = ("Failed to commit transaction", "Concurrent", "ProtocolChanged")
"""How a lost Delta commit race reads: Sail's "Failed to commit transaction: N", delta-spark's
ConcurrentAppendException and its siblings."""


def lost_commit_race(error: Exception) -> bool:
    """Whether a write failed on a lost commit race. Classic PySpark raises delta-spark's
    exceptions as py4j's `Py4JJavaError` (it converts only Spark's own), whose text holds the
    Java stack, so only the exception's own class and message are read."""
    if isinstance(error, Py4JJavaError):
        text = str(error.java_exception.toString())
    elif isinstance(error, PySparkException):
        text = str(error)
    else:
        return False
    return any(marker in text for marker in COMMIT_RACE_MARKERS)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The file system of a location (a local path, `file://` or an object store URI) and the
    location's path in it."""
    return pafs.FileSystem.from_uri(uri if "://" in uri else f"file://{uri}")


def files_at(uri: str) -> int:
    """How many files a location holds (local or object store); 0 where it does not exist."""
    files, path = filesystem(uri)
    selector = pafs.FileSelector(path, allow_not_found=True, recursive=True)
    return sum(info.type == pafs.FileType.File for info in files.get_file_info(selector))


@dataclass(frozen=True)
class WindowStats:
    """What a write put in its window: rows, event-time range and per-feature statistics."""

    rows: int
    event_time_min: datetime | None
    event_time_max: datetime | None
    features: dict[str, dict[str, Any]]


def columns_of(df: DataFrame) -> list[tuple[str, str]]:
    return [(f.name, f.dataType.simpleString()) for f in df.schema.fields]


def plain_strings(df: DataFrame) -> DataFrame:
    """`df` with its string columns cast to plain `string`. Through Spark Connect, a schema that
    the client parsed (mapInArrow's) reaches JVM Spark with an explicit collation, which its
    Delta then records as `string collate UTF8_BINARY`, a type delta-rs cannot read."""
    return df.select(
        *(
            F.col(f"`{f.name}`").cast("string").alias(f.name, metadata=f.metadata)
            if f.dataType.simpleString() == "string"
            else F.col(f"`{f.name}`")
            for f in df.schema.fields
        )
    )


@dataclass(frozen=True)
class OfflineStore:
    """Delta tables under `root` (a local path or an `s3://` URI)."""

    root: str

    def __post_init__(self) -> None:
        if self.root.startswith("s3://"):
            configure_s3()

    def table_uri(self, *path: str) -> str:
        """Location of the table at an asset-key-like path, e.g. ("training", "ctr")."""
        return "/".join([self.root.rstrip("/"), *path])

    def view_table_uri(self, name: str, version: str) -> str:
        """The table of one version of a feature view, `features/<name>/<version>`: a new
        version (a definition change, columns included) gets a new table, while the old one
        stays for the training datasets that recorded it and for serving until the new one
        is pushed."""
        return self.table_uri("features", name, version)

    def exists(self, uri: str) -> bool:
        """Whether a Delta table is at `uri`; TableLogMissing where files stand without one."""
        try:
            if DeltaTable.is_deltatable(uri):
                return True
        except OSError as error:
            if not uri.startswith("s3://"):
                raise
            raise StoreUnreachable(unreachable(uri, error)) from None
        files = files_at(uri)
        if files:
            raise TableLogMissing(uri, files)
        return False

    def create_table(self, df: DataFrame, uri: str) -> None:
        """Create an empty table with the columns of `df` at an empty location: its own commit,
        so that no write ever creates a table by accident over data it cannot see."""
        empty = df.limit(0)  # the rows' own plan: its schema to the field metadata
        writer = empty.write.format("delta").mode("error").options(**TIME_TRAVEL_PROPERTIES)
        writer.partitionBy(PARTITION_COLUMN).save(uri)

    def write_window(
        self, df: DataFrame, uri: str, window: TimeWindow, timestamp_field: str
    ) -> None:
        """Replace the rows of `window` in the table at `uri` with `df`, creating the table
        where nothing is stored yet."""
        spark, df = df.sparkSession, plain_strings(df)
        if not self.exists(uri):
            self.create_table(df, uri)
        current = columns_of(spark.read.format("delta").load(uri))
        if current != columns_of(df):
            raise SchemaChangedError(
                f"{uri} has columns {current} but the new rows have {columns_of(df)}; "
                "a source or the engine changed the rows' columns under the same version"
            )
        writer = (
            df.write.format("delta")
            .mode("overwrite")
            .partitionBy(PARTITION_COLUMN)
            .option("replaceWhere", window.sql(timestamp_field, PARTITION_COLUMN))
        )
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                writer.save(uri)
                break
            except (PySparkException, Py4JJavaError) as error:
                if not lost_commit_race(error):
                    raise
                if attempt == WRITE_ATTEMPTS:
                    raise ConcurrentWriteError(
                        f"{uri}: another writer committed at the same time, {attempt} times in "
                        f"a row; nothing of this write to {window.start:%Y-%m-%d %H:%M}.."
                        f"{window.end:%Y-%m-%d %H:%M} was committed: rerun it"
                    ) from error
                time.sleep(random.uniform(0, 0.2 * 2**attempt))  # the winners' commits land
        written = columns_of(spark.read.format("delta").load(uri))
        if written != columns_of(df):
            raise SchemaChangedError(
                f"{uri} was written with columns {written}, not {columns_of(df)}"
            )

    def read(self, spark: SparkSession, uri: str) -> DataFrame:
        return spark.read.format("delta").load(uri)

    def window_stats(
        self,
        spark: SparkSession,
        uri: str,
        window: TimeWindow,
        timestamp_field: str,
        features: list[str],
    ) -> WindowStats:
        """Statistics of the stored rows in `window`, in one Spark aggregation."""
        df = self.read(spark, uri).where(window.contains(timestamp_field))
        types = dict(columns_of(df))
        micros = F.unix_micros(F.col(timestamp_field))
        aggregates = [
            F.count(F.lit(1)).alias("rows"),
            F.min(micros).alias("ts_min"),
            F.max(micros).alias("ts_max"),
        ]
        for i, name in enumerate(features):
            aggregates.append(F.sum(F.col(name).isNull().cast("bigint")).alias(f"nulls_{i}"))
            if types[name] in ORDERABLE:
                aggregates += [F.min(name).alias(f"min_{i}"), F.max(name).alias(f"max_{i}")]
        row = df.agg(*aggregates).collect()[0].asDict()
        rows = row["rows"]
        stats = {
            name: {
                "null_fraction": (row[f"nulls_{i}"] or 0) / rows if rows else None,
                "min": row.get(f"min_{i}"),
                "max": row.get(f"max_{i}"),
            }
            for i, name in enumerate(features)
        }
        return WindowStats(
            rows, utc_from_micros(row["ts_min"]), utc_from_micros(row["ts_max"]), stats
        )
