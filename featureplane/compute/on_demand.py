"""On-demand feature views applied on Spark to joined rows, with the function the handler runs.

Only the function's source text crosses to the workers, where it is rebuilt exactly as the online
handler rebuilds it; rows cross as Arrow batches and reach the function as plain Python dicts.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import pyarrow as pa
from pyspark.sql import DataFrame

from featureplane.on_demand import (
    OnDemandFeatureView,
    OutputSchema,
    compute_columns,
    function_from_source,
    function_inputs,
)

_ARROW_TYPES = {
    "string": pa.string(),
    "int": pa.int32(),
    "bigint": pa.int64(),
    "float": pa.float32(),
    "double": pa.float64(),
    "boolean": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "date": pa.date32(),
}


def _arrow_type(spark_type: str) -> pa.DataType:
    if spark_type.startswith("array<"):
        return pa.list_(_arrow_type(spark_type[len("array<") : -1]))
    return _ARROW_TYPES[spark_type]


def apply_on_demand(
    rows: DataFrame,
    view: OnDemandFeatureView,
    inputs: Sequence[Mapping[str, str]],
    outputs: Mapping[str, str],
) -> DataFrame:
    """`rows` plus one column per feature of `view`, named by `outputs` (feature → column).

    `inputs` holds, per source of the view in order, the column of each key its dict gets.
    Every other column passes through unchanged.
    """
    source, name, schema = view.function_source, view.name, OutputSchema.of(view.schema)
    features = [(f.name, outputs[f.name], f.dtype.spark) for f in schema.fields]

    def compute(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        function = function_from_source(source, name)
        for batch in batches:
            columns = {c: batch.column(c).to_pylist() for m in inputs for c in m.values()}
            rows = (
                [
                    function_inputs({key: columns[column][i] for key, column in m.items()})
                    for m in inputs
                ]
                for i in range(batch.num_rows)
            )
            computed = compute_columns(function, name, schema, rows)
            arrays = [
                pa.array(values, _arrow_type(spark_type))
                for values, (_, _, spark_type) in zip(computed, features, strict=True)
            ]
            yield pa.RecordBatch.from_arrays(
                [*batch.columns, *arrays],
                names=[*batch.schema.names, *(column for _, column, _ in features)],
            )

    ddl = [f"`{f.name}` {f.dataType.simpleString()}" for f in rows.schema.fields]
    ddl += [f"`{column}` {spark_type}" for _, column, spark_type in features]
    return rows.mapInArrow(compute, ", ".join(ddl))
