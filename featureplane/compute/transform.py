"""Run a feature view's transformation for one time window and check its output.

Aggregate views then pre-aggregate the window's events into tiles.

The same function serves a single partition, a range of partitions (one Spark job for a whole
backfill) and schema validation (an empty window), on Sail, Spark Connect or classic PySpark.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from featureplane.compute.point_in_time import latest_per_time
from featureplane.compute.tiles import compute_tiles
from featureplane.compute.window import TimeWindow
from featureplane.errors import FeatureViewError, SourceError
from featureplane.feature_view import FeatureView
from featureplane.quality.rules import valid_rows
from featureplane.source import BatchSource
from featureplane.types import DType

PARTITION_COLUMN = "event_date"


def read_source(spark: SparkSession, source: BatchSource) -> DataFrame:
    """The whole source as a lazy DataFrame."""
    if source.uri is None:
        return spark.table(source.table)
    return spark.read.format("delta").load(source.uri)


def source_inputs(
    spark: SparkSession, view: FeatureView, window: TimeWindow, read: Callable = read_source
) -> list[DataFrame]:
    """One DataFrame per source, restricted to the window on the source's event time."""
    inputs = []
    for source in view.sources:
        df = read(spark, source)
        if source.timestamp_field not in df.columns:
            raise SourceError(
                source.name,
                source.location,
                f"timestamp_field {source.timestamp_field!r} is not a column "
                f"(columns: {', '.join(df.columns)})",
            )
        inputs.append(df.where(window.contains(source.timestamp_field)))
    return inputs


def run_transformation(
    spark: SparkSession, view: FeatureView, window: TimeWindow, read: Callable = read_source
) -> DataFrame:
    """The view's rows for `window` as the offline store keeps them: `stored_rows` of the valid
    rows of the transformation's output."""
    output = transform(spark, view, source_inputs(spark, view, window, read))
    return stored_rows(view, output.where(valid_rows(view, window)))


def transform(spark: SparkSession, view: FeatureView, inputs: list[DataFrame]) -> DataFrame:
    """The transformation's output over the sources' windowed `inputs`, checked against the
    schema: join keys, event time and the schema's columns, every row as the function made it
    (the quality rules count what is wrong with them before any is dropped)."""
    if view.mode == "pyspark":
        output = view.function(*inputs)
    elif view.mode == "spark_sql":
        names = view.source_names
        query = view.function(*(f"{{{name}}}" for name in names))
        output = spark.sql(query, **dict(zip(names, inputs, strict=True)))
    else:
        output = _run_pandas(view, inputs[0])
    if not isinstance(output, DataFrame):
        kind = f"{type(output).__module__}.{type(output).__qualname__}"
        raise FeatureViewError(
            view.name, view.location, f"returned a {kind}, not a Spark DataFrame"
        )
    check_output(view, output)
    return output.select(*view.join_keys, view.timestamp_field, *view.schema_names)


def stored_rows(view: FeatureView, rows: DataFrame) -> DataFrame:
    """Valid output rows as the view's table holds them, with the event date: tiles for an
    aggregate view; else one row per (keys, event time), see `latest_per_time`."""
    ts = view.timestamp_field
    if view.aggregations:
        rows = compute_tiles(rows, view.join_keys, ts, view.aggregations, view.interval)
    else:
        rows = latest_per_time(rows, view.join_keys, ts, view.schema_names)
    return rows.withColumn(PARTITION_COLUMN, F.to_date(view.table_timestamp_field))


def _run_pandas(view: FeatureView, source: DataFrame) -> DataFrame:
    """Apply a pandas function per entity group through Spark: no source reaches the driver."""
    missing = [key for key in view.join_keys if key not in source.columns]
    if missing:
        raise FeatureViewError(
            view.name,
            view.location,
            f"pandas mode groups the source by join keys, but it has no {missing[0]!r} column",
        )
    key_types = {key: source.schema[key].dataType.simpleString() for key in view.join_keys}
    columns = [
        *(f"`{key}` {spark_type}" for key, spark_type in key_types.items()),
        f"`{view.timestamp_field}` timestamp",
        *(f"`{c.name}` {c.dtype.spark}" for c in view.schema),
    ]
    expected = [*view.join_keys, view.timestamp_field, *view.schema_names]

    def apply(group: pd.DataFrame) -> pd.DataFrame:
        result = view.function(group)
        check_pandas_output(view, result)
        return result[expected]

    return source.groupBy(*view.join_keys).applyInPandas(apply, ", ".join(columns))


PANDAS_KINDS = {"bigint": "iu", "int": "iu", "double": "iuf", "float": "iuf", "boolean": "b"}


def _pandas_fits(values: pd.Series, dtype: DType) -> bool:
    """Whether Arrow can take `values` as `dtype` without losing anything (no float → int)."""
    kinds = PANDAS_KINDS.get(dtype.spark)
    if kinds is None or values.isna().all():
        return True
    return values.dtype.kind in kinds


def _check_columns(view: FeatureView, columns: list[str]) -> None:
    for key in view.join_keys:
        if key not in columns:
            raise FeatureViewError(view.name, view.location, f"output is missing join key {key!r}")
    if view.timestamp_field not in columns:
        raise FeatureViewError(
            view.name,
            view.location,
            f"output is missing timestamp column {view.timestamp_field!r}",
        )
    missing = [name for name in view.schema_names if name not in columns]
    if missing:
        raise FeatureViewError(
            view.name, view.location, f"output is missing schema features {missing}"
        )
    extra = [
        c for c in columns if c not in {*view.join_keys, view.timestamp_field, *view.schema_names}
    ]
    if extra:
        raise FeatureViewError(
            view.name, view.location, f"output has columns not in the schema: {extra}"
        )


def check_output(view: FeatureView, output: DataFrame) -> None:
    """Raise FeatureViewError unless the output has exactly the declared columns and types."""
    _check_columns(view, output.columns)
    types = {f.name: f.dataType.simpleString() for f in output.schema.fields}
    if types[view.timestamp_field] != "timestamp":
        raise FeatureViewError(
            view.name,
            view.location,
            f"timestamp column {view.timestamp_field!r} is {types[view.timestamp_field]}, "
            "not timestamp",
        )
    for column in view.schema:
        if types[column.name] != column.dtype.spark:
            raise FeatureViewError(
                view.name,
                view.location,
                f"feature {column.name!r} is {types[column.name]}, but the schema says "
                f"{column.dtype!r} ({column.dtype.spark}); cast it in the transformation",
            )


def check_pandas_output(view: FeatureView, result: object) -> None:
    """Raise FeatureViewError unless a pandas function's `result` for one group is a DataFrame
    of exactly the declared columns, each of a dtype its schema type takes: checked on every
    group by `_run_pandas`, and by validation, which calls the function itself."""
    if not isinstance(result, pd.DataFrame):
        raise FeatureViewError(
            view.name, view.location, f"returned {type(result).__name__}, not a DataFrame"
        )
    _check_columns(view, list(result.columns))
    for column in view.schema:
        if not _pandas_fits(result[column.name], column.dtype):
            raise FeatureViewError(
                view.name,
                view.location,
                f"feature {column.name!r} is {result[column.name].dtype}, but the schema says "
                f"{column.dtype!r}; cast it in the transformation",
            )
