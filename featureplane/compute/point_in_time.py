"""Point-in-time ("as of") join of a spine with feature tables, as one Spark plan.

For a spine row (keys k, time t) a feature table contributes its row with keys k and the greatest
event time <= t, ignored when older than t - ttl; nothing matches a null key. Rows sharing keys and
event time come from the same materialized window; among them the greatest feature values win, so
the choice is deterministic.

Instead of a range join (spine x history, which explodes), spine rows and feature rows are unioned
and sorted per entity once; a running `last(…, ignorenulls)` over the sort carries each feature
table's latest row forward to the spine rows behind it. Feature tables keyed on the same join keys
share one pass; each further key set is one more pass over the previous pass's output. Spine rows
are never joined back, so duplicates and extra columns (labels) pass through untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

KIND = "__fp_kind"  # 0 = feature row, 1 = spine row: at equal times features sort first (<= t)
SPINE_ROW = 1


@dataclass(frozen=True)
class Lookup:
    """One feature table to join: its rows, keys, event-time column, and features to output.

    `features` maps each table column to its output column name. `tie_breakers` are the columns
    that order rows sharing keys and event time (the last wins): all of the view's features, so
    a feature's value never depends on which other features are selected (default: `features`).
    """

    table: DataFrame
    join_keys: tuple[str, ...]
    timestamp_field: str
    features: dict[str, str]
    ttl: timedelta | None = None
    tie_breakers: tuple[str, ...] = ()

    @property
    def carried(self) -> list[str]:
        """The columns carried forward: tie-breakers first, then any other selected feature."""
        order = list(self.tie_breakers or self.features)
        return order + [column for column in self.features if column not in order]


def point_in_time_join(
    spine: DataFrame, timestamp_column: str, lookups: Sequence[Lookup]
) -> DataFrame:
    """The spine with every lookup's point-in-time features appended, in lookup order."""
    passes: dict[tuple[str, ...], list[int]] = {}
    for index, lookup in enumerate(lookups):
        passes.setdefault(lookup.join_keys, []).append(index)
    result = spine
    for keys, indexes in passes.items():
        result = _as_of_pass(result, timestamp_column, keys, {i: lookups[i] for i in indexes})
    outputs = [name for lookup in lookups for name in lookup.features.values()]
    return result.select(*spine.columns, *outputs)


def _slot(index: int) -> str:
    return f"__fp_match_{index}"


def _as_of_pass(
    spine: DataFrame, ts: str, keys: tuple[str, ...], lookups: dict[int, Lookup]
) -> DataFrame:
    types = dict(spine.dtypes)
    carried = [c for c in spine.columns if c not in (*keys, ts)]
    structs = {i: _struct_type(lookup) for i, lookup in lookups.items()}
    frames = [
        spine.select(
            *spine.columns,
            F.lit(SPINE_ROW).alias(KIND),
            *(F.lit(None).cast(structs[i]).alias(_slot(i)) for i in lookups),
        )
    ]
    for i, lookup in lookups.items():
        table = lookup.table.where(
            F.col(lookup.timestamp_field).isNotNull() & _all(F.col(key).isNotNull() for key in keys)
        )
        match = F.struct(
            F.col(lookup.timestamp_field).alias("ts"),
            *(F.col(column).alias(f"f{n}") for n, column in enumerate(lookup.carried)),
        )
        frames.append(
            table.select(
                *(F.col(key).cast(types[key]).alias(key) for key in keys),
                F.col(lookup.timestamp_field).cast("timestamp").alias(ts),
                *(F.lit(None).cast(types[c]).alias(c) for c in carried),
                F.lit(1 - SPINE_ROW).alias(KIND),
                *(
                    (match if j == i else F.lit(None).cast(structs[j])).alias(_slot(j))
                    for j in lookups
                ),
            )
        )
    rows = frames[0]
    for frame in frames[1:]:
        rows = rows.unionByName(frame)
    ties = [
        F.col(f"{_slot(i)}.f{n}").asc_nulls_first()
        for i, lookup in lookups.items()
        for n in range(len(lookup.tie_breakers or lookup.features))
    ]
    window = (
        Window.partitionBy(*keys)
        .orderBy(F.col(ts).asc_nulls_first(), F.col(KIND), *ties)
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    carried_forward = rows.select(
        *spine.columns,
        F.col(KIND),
        *(F.last(_slot(i), ignorenulls=True).over(window).alias(_slot(i)) for i in lookups),
    ).where(F.col(KIND) == SPINE_ROW)
    return carried_forward.select(
        *spine.columns,
        *(
            _feature(lookup, i, lookup.carried.index(column), ts).alias(output)
            for i, lookup in lookups.items()
            for column, output in lookup.features.items()
        ),
    )


def _feature(lookup: Lookup, index: int, n: int, ts: str) -> Column:
    value = F.col(f"{_slot(index)}.f{n}")
    if lookup.ttl is None:
        return value
    ttl_micros = lookup.ttl // timedelta(microseconds=1)
    fresh = F.unix_micros(F.col(f"{_slot(index)}.ts")) >= F.unix_micros(F.col(ts)) - ttl_micros
    return F.when(fresh, value)


def _struct_type(lookup: Lookup) -> str:
    types = dict(lookup.table.dtypes)
    fields = ["ts: timestamp"] + [
        f"f{n}: {types[column]}" for n, column in enumerate(lookup.carried)
    ]
    return f"struct<{', '.join(fields)}>"


def _all(conditions) -> Column:
    result = F.lit(True)
    for condition in conditions:
        result = result & condition
    return result
