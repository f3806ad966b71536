"""Checking feature views on Spark before they are applied or computed (`featureplane validate`,
`plan` and `apply`).

`validate_view` plans a view's transformation for its first window and checks the output's
columns and types as every materialization does (`run_transformation`): Spark resolves the
schema from the sources' schemas and reads no rows. A pandas-mode function only runs when rows
are computed, so it is also called here, on one entity's rows of the first window (at most
SAMPLE_ROWS, the only rows collected), and what it returns is checked as each group's output
is. A source that cannot be read, and a transformation that fails, are one-line errors of the
source and of the view (the exception is chained, for `--verbose`).
"""

from __future__ import annotations

import operator
import traceback
from functools import reduce

import pandas as pd
from pyspark.errors import PySparkException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from featureplane._location import relative_path
from featureplane.compute.transform import (
    check_pandas_output,
    read_source,
    run_transformation,
    source_inputs,
)
from featureplane.compute.window import TimeWindow
from featureplane.errors import DefinitionError, FeatureViewError, SourceError
from featureplane.feature_view import FeatureView
from featureplane.source import BatchSource

SAMPLE_ROWS = 100
"""The most rows collected to run a pandas function on: one entity's, as one group."""


def first_window(view: FeatureView) -> TimeWindow:
    """The view's first partition: what validation runs the transformation for."""
    start = view.feature_start_time
    return TimeWindow(start, start + view.batch_schedule)


def validate_view(spark: SparkSession, view: FeatureView) -> str:
    """Raise the error that materializing `view` would raise on its output's shape, before any
    data is computed; return what was run beyond the schema check ("" if nothing)."""
    for source in view.sources:
        _check_readable(spark, source)
    window = first_window(view)
    try:
        run_transformation(spark, view, window)
    except DefinitionError:
        raise
    except Exception as error:
        raise _failure(view, error) from error
    return _run_pandas_sample(spark, view, window) if view.mode == "pandas" else ""


def _check_readable(spark: SparkSession, source: BatchSource) -> None:
    try:
        read_source(spark, source).columns  # noqa: B018 - resolving the schema reads the table
    except PySparkException as error:
        raise SourceError(
            source.name,
            source.location,
            f"cannot read {source.uri or source.table}: {_first_line(error)}",
        ) from error


def _run_pandas_sample(spark: SparkSession, view: FeatureView, window: TimeWindow) -> str:
    """Call the pandas function on one entity's rows of the first window (of the whole source
    when that window is empty) and check its result."""
    [rows] = source_inputs(spark, view, window)
    sample = _first_group(rows, view.join_keys)
    if sample is None:
        sample = _first_group(read_source(spark, view.sources[0]), view.join_keys)
    if sample is None:
        return "pandas function not run: its source has no rows"
    keys, group = sample
    rows = f"{len(group)} row{'' if len(group) == 1 else 's'}"
    shown = f"{rows} of " + ", ".join(f"{key}={value!r}" for key, value in keys.items())
    try:
        result = view.function(group)
    except Exception as error:
        raise _failure(view, error, f" on {shown}") from error
    check_pandas_output(view, result)
    return f"pandas function run on {shown}"


def _first_group(rows: DataFrame, keys: tuple[str, ...]) -> tuple[dict, pd.DataFrame] | None:
    """The join keys of the first row and (up to SAMPLE_ROWS of) the rows sharing them."""
    first = rows.select(*keys).limit(1).collect()
    if not first:
        return None
    values = first[0].asDict()
    same = reduce(operator.and_, (F.col(k).eqNullSafe(F.lit(v)) for k, v in values.items()))
    return values, rows.where(same).limit(SAMPLE_ROWS).toPandas()


def _failure(view: FeatureView, error: Exception, context: str = "") -> FeatureViewError:
    """The view's one-line error for what its transformation raised, with the line of the
    view's file it was raised at, if any (Spark's errors are raised after the function)."""
    path = view.function.__code__.co_filename
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == path]
    at = f" at {relative_path(path)}:{frames[-1].lineno}" if frames else ""
    problem = f"the transformation raised {type(error).__name__}: {_first_line(error)}{at}"
    return FeatureViewError(view.name, view.location, problem + context)


def _first_line(error: Exception) -> str:
    lines = (line.strip() for line in str(error).splitlines())
    return next((line for line in lines if line), "(no message)")
