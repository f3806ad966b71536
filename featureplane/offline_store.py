"""The Delta offline store: one table per feature view, partitioned by event date.

Writes replace exactly one time window (`replaceWhere` on the event time), so rerunning a
partition or a range never duplicates or loses rows, and a failed write commits nothing: the
previous version of the table stays as it was. Sail ignores dynamic partition overwrite, which is
why windows are replaced by predicate and never by partition.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from deltalake import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from featureplane.compute.transform import PARTITION_COLUMN
from featureplane.compute.window import TimeWindow, utc_from_micros

ORDERABLE = ("string", "int", "bigint", "float", "double", "boolean", "timestamp", "date")


class SchemaChangedError(RuntimeError):
    """A write would change an existing table's columns; rebuild the table deliberately instead."""


@dataclass(frozen=True)
class WindowStats:
    """What a write put in its window: rows, event-time range and per-feature statistics."""

    rows: int
    event_time_min: datetime | None
    event_time_max: datetime | None
    features: dict[str, dict[str, Any]]


def _columns(df: DataFrame) -> list[tuple[str, str]]:
    return [(f.name, f.dataType.simpleString()) for f in df.schema.fields]


@dataclass(frozen=True)
class OfflineStore:
    """Delta tables under `root` (a local path or an `s3://` URI)."""

    root: str

    def table_uri(self, *path: str) -> str:
        """Location of the table at an asset-key-like path, e.g. ("features", "user_stats")."""
        return "/".join([self.root.rstrip("/"), *path])

    def exists(self, uri: str) -> bool:
        return DeltaTable.is_deltatable(uri)

    def write_window(
        self, df: DataFrame, uri: str, window: TimeWindow, timestamp_field: str
    ) -> None:
        """Replace the rows of `window` in the table at `uri` with `df` (creating the table)."""
        spark = df.sparkSession
        writer = df.write.format("delta").mode("overwrite").partitionBy(PARTITION_COLUMN)
        if self.exists(uri):
            current = _columns(spark.read.format("delta").load(uri))
            if current != _columns(df):
                raise SchemaChangedError(
                    f"{uri} has columns {current} but the new rows have {_columns(df)}; "
                    "the definition changed: rebuild the table (delete it, then backfill)"
                )
            predicate = window.sql(timestamp_field, PARTITION_COLUMN)
            writer = writer.option("replaceWhere", predicate)
        writer.save(uri)
        written = _columns(spark.read.format("delta").load(uri))
        if written != _columns(df):
            raise SchemaChangedError(
                f"{uri} was written with columns {written}, not {_columns(df)}"
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
        types = dict(_columns(df))
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
