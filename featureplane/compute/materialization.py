"""Prepare one window's write: checked sources, a staged output, quality counts, the guards.

The transformation runs once: its output is staged as Parquet under the offline root (where
every Spark executor can reach it) and everything else reads the staged rows: the quality
rules' counts, the volume guard's per-partition counts, and the rows the offline store writes.
In order, before anything is written:
1. the table's location is sound (`OfflineStore.exists` refuses data files without a log);
2. every source has landed the window (`quality.completeness`), else `SourceNotReady`;
3. the sources' expectations, then the view's rules are counted (`quality.evaluation`);
4. the volume guard compares each partition's valid rows with what it holds, else
   `VolumeDropError`.
The caller writes `rows` (valid rows only: null keys and event times outside the window never
reach a table) and reports `report` as the view's quality check.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from featureplane.compute.transform import source_inputs, stored_rows, transform
from featureplane.compute.window import TimeWindow
from featureplane.errors import SourceError
from featureplane.feature_view import FeatureView
from featureplane.offline_store import OfflineStore, SchemaChangedError, columns_of, filesystem
from featureplane.quality.completeness import SourceNotReady, not_landed
from featureplane.quality.evaluation import QualityReport, evaluate
from featureplane.quality.expectations import compile_rules, schema_problem
from featureplane.quality.rules import default_rules, valid_rows
from featureplane.quality.volume import VolumeDropError, drop_message, drops

STAGING = "_staging"
STALE = timedelta(days=1)
BUCKET = "__fp_partition"


@dataclass(frozen=True)
class PreparedWindow:
    """A window ready to write: its stored rows (read from the staged output), the quality
    report of the view's and its sources' rules, and how many output rows were dropped."""

    rows: DataFrame
    report: QualityReport
    sources: dict[str, QualityReport]
    valid: int

    @property
    def dropped(self) -> int:
        return self.report.rows - self.valid


@contextmanager
def prepared_window(
    spark: SparkSession,
    view: FeatureView,
    window: TimeWindow,
    offline: OfflineStore,
    allow_volume_drop: bool = False,
) -> Iterator[PreparedWindow]:
    """The window prepared as the module docstring says; the staged files are removed after."""
    uri = offline.view_table_uri(view.name, view.version)
    table = offline.read(spark, uri) if offline.exists(uri) else None
    problem = not_landed(spark, view.name, list(view.sources), window)
    if problem:
        raise SourceNotReady(problem)
    inputs = source_inputs(spark, view, window)
    sources = {
        source.name: _source_report(source, frame)
        for source, frame in zip(view.sources, inputs, strict=True)
        if source.expectations is not None
    }
    output = transform(spark, view, inputs)
    if table is not None:
        _check_columns(view, uri, table, output, inputs)
    staging = offline.table_uri(STAGING, view.name)
    sweep(staging)
    with staged(output, f"{staging}/{uuid.uuid4().hex}") as rows:
        report = evaluate(rows, [*default_rules(view, window), *_view_rules(view)])
        valid = rows.where(valid_rows(view, window))
        new, total = _new_counts(view, window, valid)
        guard = view.volume_guard
        if guard is not None and table is not None and not allow_volume_drop:
            starts = _starts(view, window)
            reach = TimeWindow(window.start - guard.trailing * view.batch_schedule, window.end)
            before = _stored_counts(table, view, window, reach)
            found = drops(guard, starts, before, new)
            if found:
                raise VolumeDropError(drop_message(view.name, found[0], guard, len(found) - 1))
        yield PreparedWindow(stored_rows(view, valid), report, sources, total)


def _check_columns(
    view: FeatureView, uri: str, table: DataFrame, output: DataFrame, inputs: list[DataFrame]
) -> None:
    """Raise before any work when the rows would not fit the version's table. The version
    hashes the definition, so at one version a change of columns comes from a source: a
    column that changed type in a source is reported as that source's change."""
    stored = columns_of(table)
    new = columns_of(stored_rows(view, output))
    if new == stored:
        return
    before = dict(stored)
    changed = {name: kind for name, kind in new if before.get(name) != kind}
    for source, frame in zip(view.sources, inputs, strict=True):
        for name, kind in columns_of(frame):
            if changed.get(name) == kind and name in before:
                raise SourceError(
                    source.name,
                    source.location,
                    f"column {name!r} is now {kind}, but {view.name} version {view.version} "
                    f"stored it as {before[name]} ({uri}): the source changed, not the "
                    "definition; restore the column's type upstream, or cast it in the view "
                    "(a new version, with a table of its own)",
                )
    raise SchemaChangedError(
        f"{uri} has columns {stored} but the new rows of {view.name} version {view.version} "
        f"have {new}"
    )


def _view_rules(view: FeatureView):
    return compile_rules(view.expectations) if view.expectations is not None else []


def _source_report(source, frame: DataFrame) -> QualityReport:
    columns = {f.name: f.dataType.simpleString() for f in frame.schema.fields}
    problem = schema_problem(source.expectations, columns)
    if problem:
        raise SourceError(source.name, source.location, problem)
    return evaluate(frame, compile_rules(source.expectations, source.name))


def sweep(location: str, older_than: timedelta = STALE) -> int:
    """Remove what runs killed before their cleanup left under `location` (staged outputs
    older than `older_than`: no live run stages for that long); returns how many."""
    files, path = filesystem(location)
    infos = files.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    cutoff = datetime.now(UTC) - older_than
    stale = []
    for info in infos:
        written = _written(files, info) if info.type == pafs.FileType.Directory else None
        if written and written < cutoff:
            stale.append(info.path)
    for stale_path in stale:
        files.delete_dir(stale_path)
    return len(stale)


def _written(files: pafs.FileSystem, directory: pafs.FileInfo) -> datetime | None:
    """When a staged output was last written: its directory's time or, on an object store,
    where a directory is only a key prefix and has none, its newest file's."""
    if directory.mtime is not None:
        return directory.mtime
    found = files.get_file_info(pafs.FileSelector(directory.path, recursive=True))
    return max((info.mtime for info in found if info.mtime is not None), default=None)


@contextmanager
def staged(df: DataFrame, location: str) -> Iterator[DataFrame]:
    """`df` computed once into Parquet files at `location` and read from them; the files are
    removed on exit, whatever happened."""
    try:
        df.write.mode("error").parquet(location)
        yield df.sparkSession.read.schema(df.schema).parquet(location)
    finally:
        _remove(location)


@contextmanager
def staged_pandas(spark: SparkSession, frame: pd.DataFrame, location: str) -> Iterator[DataFrame]:
    """A pandas frame written by this process as one uncompressed Parquet file at `location`
    and read by Spark from there, so that none of it travels through Spark Connect (as a local
    relation it went up once per request that read it). Times are kept to microseconds, as
    Spark keeps them. The file is removed on exit, whatever happened."""
    files, path = filesystem(location)
    try:
        files.create_dir(path)
        pq.write_table(
            pa.Table.from_pandas(frame, preserve_index=False),
            f"{path}/part-0.parquet",
            filesystem=files,
            compression="none",
            coerce_timestamps="us",
            allow_truncated_timestamps=True,
        )
        yield spark.read.parquet(location)
    finally:
        _remove(location)


def _remove(location: str) -> None:
    files, path = filesystem(location)
    if files.get_file_info(path).type != pafs.FileType.NotFound:
        files.delete_dir(path)


def _bucket(column: str, window: TimeWindow, schedule: timedelta):
    """The partition (by index from the window's start) of each row's time."""
    start = int(window.start.timestamp() * 1_000_000)
    size = schedule // timedelta(microseconds=1)
    return F.floor((F.unix_micros(F.col(column)) - F.lit(start)) / F.lit(size)).cast("bigint")


def _starts(view: FeatureView, window: TimeWindow) -> list[datetime]:
    count = (window.end - window.start) // view.batch_schedule
    return [window.start + i * view.batch_schedule for i in range(count)]


def _new_counts(
    view: FeatureView, window: TimeWindow, valid: DataFrame
) -> tuple[dict[datetime, int], int]:
    """Per partition start, the rows its table window will hold (distinct keys and event time,
    or tile); and the number of valid output rows."""
    ts = view.timestamp_field
    stored_time = F.col(ts)
    if view.aggregations:
        interval = view.interval // timedelta(microseconds=1)
        stored_time = F.floor(F.unix_micros(ts) / F.lit(interval))
    counts = (  # distinct rows as groups, not count_distinct: Sail runs that beside another
        # aggregate 10x slower
        valid.groupBy(
            _bucket(ts, window, view.batch_schedule).alias(BUCKET),
            *view.join_keys,
            stored_time.alias("__fp_time"),
        )
        .agg(F.count(F.lit(1)).alias("copies"))
        .groupBy(BUCKET)
        .agg(F.count(F.lit(1)).alias("rows"), F.sum("copies").alias("valid"))
        .collect()
    )
    new = {window.start + row[BUCKET] * view.batch_schedule: row["rows"] for row in counts}
    return new, sum(row["valid"] for row in counts)


def _stored_counts(
    table: DataFrame, view: FeatureView, window: TimeWindow, reach: TimeWindow
) -> dict[datetime, int]:
    """Per partition start, the rows the table holds in `reach` (the window and the trailing
    partitions before it)."""
    ts = view.table_timestamp_field
    counts = (
        table.where(reach.contains(ts))
        .groupBy(_bucket(ts, window, view.batch_schedule).alias(BUCKET))
        .count()
        .collect()
    )
    return {window.start + row[BUCKET] * view.batch_schedule: row["count"] for row in counts}
