"""Point-in-time ("as of") join of a spine with feature tables, as one Spark plan.

For a spine row (keys k, time t) a feature table contributes its row with keys k and the greatest
event time <= t, ignored when older than t - ttl; nothing matches a null key. Rows sharing keys and
event time come from the same materialized window; among them the greatest tie-breaker values win
(compared in order, nulls lowest), so the choice is deterministic.

Instead of a range join (spine x history, which explodes), the spine rows and the feature rows
are unioned, hash-partitioned on the join keys once, and each partition is merged as of in Arrow:
sorted by (keys, time), a running maximum of row positions finds each spine row's latest feature
row of every table, whose values are then taken. That is one shuffle per set of join keys and no
join at all: feature tables keyed alike share the pass, each further key set is one more pass
over the previous pass's output. Spine rows are never joined back, so duplicates and extra
columns (labels) pass through untouched.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, Window
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


@dataclass(frozen=True)
class _Slot:
    """Where one lookup's rows sit in the union: the column marking them (their event time),
    the columns holding their values, the output names, and the ttl in microseconds."""

    time: str
    values: tuple[str, ...]
    outputs: tuple[str, ...]
    ttl: int | None


def point_in_time_join(
    spine: DataFrame, timestamp_column: str, lookups: Sequence[Lookup]
) -> DataFrame:
    """The spine with every lookup's point-in-time features appended, in lookup order."""
    passes: dict[tuple[str, ...], list[int]] = {}
    for index, lookup in enumerate(lookups):
        passes.setdefault(lookup.join_keys, []).append(index)
    matched = spine
    for keys, indexes in passes.items():
        matched = _as_of_pass(matched, timestamp_column, keys, {i: lookups[i] for i in indexes})
    return matched.select(
        *spine.columns,
        *(output for lookup in lookups for output in lookup.features.values()),
    )


def latest_per_time(
    rows: DataFrame, keys: Sequence[str], ts: str, ties: Sequence[str]
) -> DataFrame:
    """One row per (keys, event time): among ties the greatest `ties` values win (in order,
    nulls lowest). The offline store applies it when writing, so stored tables hold no ties."""
    rank = Window.partitionBy(*keys, ts).orderBy(*(F.col(c).desc_nulls_last() for c in ties))
    return rows.withColumn(RANK, F.row_number().over(rank)).where(F.col(RANK) == 1).drop(RANK)


def _feature_rows(lookup: Lookup, types: dict[str, str]) -> DataFrame:
    """The rows that can match, ties resolved: keys and event time present, keys typed like
    the spine's."""
    ts = lookup.timestamp_field
    keys = lookup.join_keys
    present = F.col(ts).isNotNull()
    for key in keys:
        present = present & F.col(key).isNotNull()
    rows = lookup.table.where(present)
    if not lookup.unique_times:
        ties = list(lookup.tie_breakers or lookup.features)
        rows = latest_per_time(rows, keys, ts, ties)
    return rows.select(
        *(F.col(key).cast(types[key]).alias(key) for key in keys),
        F.col(ts).cast("timestamp").alias(ts),
        *lookup.features,
    )


def _as_of_pass(
    spine: DataFrame, ts: str, keys: tuple[str, ...], lookups: dict[int, Lookup]
) -> DataFrame:
    """The spine with the features of `lookups`, which share `keys`: one shuffle, no join."""
    types = dict(spine.dtypes)
    slots: list[_Slot] = []
    parts: list[tuple[_Slot, DataFrame]] = []
    for i, lookup in lookups.items():
        slot = _Slot(
            time=f"__fp_ts_{i}",
            values=tuple(f"__fp_{i}_{n}" for n in range(len(lookup.features))),
            outputs=tuple(lookup.features.values()),
            ttl=None if lookup.ttl is None else lookup.ttl // timedelta(microseconds=1),
        )
        rows = _feature_rows(lookup, types)
        parts.append(
            (
                slot,
                rows.select(
                    *keys,
                    F.col(lookup.timestamp_field).alias(ts),
                    F.col(lookup.timestamp_field).alias(slot.time),
                    *(F.col(c).alias(v) for c, v in zip(lookup.features, slot.values, strict=True)),
                ),
            )
        )
        slots.append(slot)
    union_types = {**types, **{c: t for _, part in parts for c, t in part.dtypes}}
    columns = [*spine.columns, *(c for _, part in parts for c in part.columns[len(keys) + 1 :])]

    def aligned(frame: DataFrame, kind: int) -> DataFrame:
        present = set(frame.columns)
        return frame.select(
            *(
                F.col(c) if c in present else F.lit(None).cast(union_types[c]).alias(c)
                for c in columns
            ),
            F.lit(kind).cast("tinyint").alias(KIND),
        )

    rows = aligned(spine, SPINE_ROW)
    for _, part in parts:
        rows = rows.unionByName(aligned(part, 1 - SPINE_ROW))
    schema = ", ".join(
        [f"`{name}` {kind}" for name, kind in spine.dtypes]
        + [
            f"`{output}` {union_types[value]}"
            for slot in slots
            for value, output in zip(slot.values, slot.outputs, strict=True)
        ]
    )
    merge = partial(_merge_as_of, keys=keys, ts=ts, spine_columns=spine.columns, slots=slots)
    return rows.repartition(*keys).mapInArrow(merge, schema)


def _merge_as_of(
    batches: Iterator[pa.RecordBatch],
    keys: tuple[str, ...],
    ts: str,
    spine_columns: list[str],
    slots: list[_Slot],
) -> Iterator[pa.RecordBatch]:
    """The as-of merge of one partition, which holds every row of its keys."""
    batches = list(batches)
    table = pa.Table.from_batches(batches) if batches else None
    if table is None or table.num_rows == 0:
        return
    order = pc.sort_indices(
        table.select([*keys, ts, KIND]),
        sort_keys=[(column, "ascending", "at_start") for column in (*keys, ts, KIND)],
    ).to_numpy()
    n = len(order)
    position = np.arange(n)
    starts = np.zeros(n, dtype=bool)
    starts[0] = True
    for key in keys:  # a null key starts a group of its own: it matches nothing
        column = table[key].take(order)
        changed = pc.fill_null(pc.not_equal(column[1:], column[:-1]), True)
        starts[1:] |= changed.to_numpy(zero_copy_only=False)
    group_start = np.maximum.accumulate(np.where(starts, position, 0))
    kinds = table[KIND].to_numpy()[order]
    spine_at = np.flatnonzero(kinds == SPINE_ROW)  # sorted positions of the spine rows
    spine_rows = order[spine_at]
    times = _micros(table[ts])
    columns = {name: table[name].take(spine_rows) for name in spine_columns}
    for slot in slots:
        event = table[slot.time]
        marked = event.is_valid().to_numpy()[order]
        latest = np.maximum.accumulate(np.where(marked, position, -1))[spine_at]
        found = latest >= group_start[spine_at]
        source = order[np.maximum(latest, 0)]
        if slot.ttl is not None:
            found &= _micros(event)[source] >= times[spine_rows] - slot.ttl
        indices = pa.array(source, mask=~found)
        for value, output in zip(slot.values, slot.outputs, strict=True):
            columns[output] = table[value].take(indices)
    yield from pa.table(columns).to_batches()


def _micros(times: pa.ChunkedArray) -> np.ndarray:
    """Event times as epoch microseconds (nulls as the smallest integer: older than any ttl)."""
    micros = pc.cast(times, pa.timestamp("us", tz="UTC")).cast(pa.int64())
    return pc.fill_null(micros, np.iinfo(np.int64).min).to_numpy()
