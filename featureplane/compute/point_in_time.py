"""Point-in-time ("as of") join of a spine with feature tables, as one Spark plan.

For a spine row (keys k, time t) a feature table contributes its row with keys k and the greatest
event time <= t, ignored when older than t - ttl; nothing matches a null key. Rows sharing keys and
event time come from the same materialized window; among them the greatest tie-breaker values win
(compared in order, nulls lowest), so the choice is deterministic.

Instead of a range join (spine x history, which explodes), the spine rows and the feature tables'
(keys, event time) pairs are unioned and sorted per entity once; a running max carries each
table's latest event time forward to the spine rows behind it, and the values are then joined on
(keys, time), which ties have made unique. Feature tables keyed on the same join keys share one
sort; each further key set is one more pass over the previous pass's output. Spine rows are never
joined back, so duplicates and extra columns (labels) pass through untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

KIND = "__fp_kind"  # 0 = feature row, 1 = spine row: at equal times features sort first (<= t)
SPINE_ROW = 1
RANK = "__fp_rank"


@dataclass(frozen=True)
class Lookup:
    """One feature table to join: its rows, keys, event-time column, and features to output.

    `features` maps each table column to its output column name. `tie_breakers` are the columns
    that order rows sharing keys and event time (the last wins): all of the view's features, so
    a feature's value never depends on which other features are selected (default: `features`).
    `unique_times` says the table holds one row per (keys, event time), so ties need no work.
    """

    table: DataFrame
    join_keys: tuple[str, ...]
    timestamp_field: str
    features: dict[str, str]
    ttl: timedelta | None = None
    tie_breakers: tuple[str, ...] = ()
    unique_times: bool = False

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
    types = dict(spine.dtypes)
    matched = spine
    for keys, indexes in passes.items():
        matched = _match_times(matched, timestamp_column, keys, {i: lookups[i] for i in indexes})
    for i, lookup in enumerate(lookups):
        values = _latest_rows(lookup, i, types)
        matched = matched.join(values, on=[*lookup.join_keys, _slot(i)], how="left")
    return matched.select(
        *spine.columns,
        *(
            _feature(lookup, i, lookup.carried.index(column), timestamp_column).alias(output)
            for i, lookup in enumerate(lookups)
            for column, output in lookup.features.items()
        ),
    )


def _slot(index: int) -> str:
    return f"__fp_ts_{index}"


def _value(index: int, n: int) -> str:
    return f"__fp_{index}_{n}"


def _event_rows(lookup: Lookup, types: dict[str, str]) -> DataFrame:
    """The rows that can match: keys and event time present, keys typed like the spine's."""
    ts = lookup.timestamp_field
    keys = lookup.join_keys
    present = F.col(ts).isNotNull()
    for key in keys:
        present = present & F.col(key).isNotNull()
    return lookup.table.where(present).select(
        *(F.col(key).cast(types[key]).alias(key) for key in keys),
        F.col(ts).cast("timestamp").alias(ts),
        *lookup.carried,
    )


def latest_per_time(
    rows: DataFrame, keys: Sequence[str], ts: str, ties: Sequence[str]
) -> DataFrame:
    """One row per (keys, event time): among ties the greatest `ties` values win (in order,
    nulls lowest). The offline store applies it when writing, so stored tables hold no ties."""
    rank = Window.partitionBy(*keys, ts).orderBy(*(F.col(c).desc_nulls_last() for c in ties))
    return rows.withColumn(RANK, F.row_number().over(rank)).where(F.col(RANK) == 1).drop(RANK)


def _latest_rows(lookup: Lookup, index: int, types: dict[str, str]) -> DataFrame:
    """The lookup's rows as values to join on (keys, event time), ties resolved unless the
    table is known to hold none."""
    rows = _event_rows(lookup, types)
    if not lookup.unique_times:
        ties = list(lookup.tie_breakers or lookup.features)
        rows = latest_per_time(rows, lookup.join_keys, lookup.timestamp_field, ties)
    return rows.select(
        *lookup.join_keys,
        F.col(lookup.timestamp_field).alias(_slot(index)),
        *(F.col(c).alias(_value(index, n)) for n, c in enumerate(lookup.carried)),
    )


def _match_times(
    spine: DataFrame, ts: str, keys: tuple[str, ...], lookups: dict[int, Lookup]
) -> DataFrame:
    """Each spine row with, per lookup, the latest event time <= its own: one sort per entity.

    Only keys and event times of feature rows enter the sort, and a running max carries the
    latest one forward to the spine rows behind it.
    """
    types = dict(spine.dtypes)
    carried = [c for c in spine.columns if c not in (*keys, ts)]
    no_match = {i: F.lit(None).cast("timestamp").alias(_slot(i)) for i in lookups}
    rows = spine.select(*spine.columns, F.lit(SPINE_ROW).alias(KIND), *no_match.values())
    for i, lookup in lookups.items():
        rows = rows.unionByName(
            _event_rows(lookup, types).select(
                *keys,
                F.col(lookup.timestamp_field).alias(ts),
                *(F.lit(None).cast(types[c]).alias(c) for c in carried),
                F.lit(1 - SPINE_ROW).alias(KIND),
                *(
                    F.col(lookup.timestamp_field).alias(_slot(j)) if j == i else no_match[j]
                    for j in lookups
                ),
            )
        )
    window = (
        Window.partitionBy(*keys)
        .orderBy(F.col(ts).asc_nulls_first(), F.col(KIND))
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    return (
        rows.select(
            *spine.columns,
            F.col(KIND),
            *(F.max(_slot(i)).over(window).alias(_slot(i)) for i in lookups),
        )
        .where(F.col(KIND) == SPINE_ROW)
        .drop(KIND)
    )


def _feature(lookup: Lookup, index: int, n: int, ts: str) -> Column:
    value = F.col(_value(index, n))
    if lookup.ttl is None:
        return value
    ttl_micros = lookup.ttl // timedelta(microseconds=1)
    fresh = F.unix_micros(F.col(_slot(index))) >= F.unix_micros(F.col(ts)) - ttl_micros
    return F.when(fresh, value)


def _all(conditions) -> Column:
    result = F.lit(True)
    for condition in conditions:
        result = result & condition
    return result
