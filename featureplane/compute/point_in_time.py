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

from featureplane.compute.shuffle import by_keys

KIND = "__fp_kind"  # a feature row's lookup number in its pass; spine rows sort after them (<= t)
SPINE_ROW = 127
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
    """One lookup in a pass: its columns in the union, output names, and ttl in microseconds.
    Its rows in the union carry its position in the pass as their kind."""

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
    if len(lookups) >= SPINE_ROW:
        raise ValueError(f"at most {SPINE_ROW - 1} feature views on the same keys per query")
    types = dict(spine.dtypes)
    slots: list[_Slot] = []
    parts: list[DataFrame] = []
    for kind, (i, lookup) in enumerate(lookups.items()):
        slot = _Slot(
            values=tuple(f"__fp_{i}_{n}" for n in range(len(lookup.features))),
            outputs=tuple(lookup.features.values()),
            ttl=None if lookup.ttl is None else lookup.ttl // timedelta(microseconds=1),
        )
        slots.append(slot)
        parts.append(
            _feature_rows(lookup, types).select(
                *keys,
                F.col(lookup.timestamp_field).alias(ts),
                F.lit(kind).cast("tinyint").alias(KIND),
                *(F.col(c).alias(v) for c, v in zip(lookup.features, slot.values, strict=True)),
            )
        )
    union_types = {**types, **{c: t for part in parts for c, t in part.dtypes}}
    columns = [*spine.columns, KIND, *(v for slot in slots for v in slot.values)]

    def aligned(frame: DataFrame) -> DataFrame:
        present = set(frame.columns)
        return frame.select(
            *(c if c in present else F.lit(None).cast(union_types[c]).alias(c) for c in columns)
        )

    rows = aligned(spine.withColumn(KIND, F.lit(SPINE_ROW).cast("tinyint")))
    for part in parts:
        rows = rows.unionByName(aligned(part))
    schema = ", ".join(
        [f"`{name}` {dtype}" for name, dtype in spine.dtypes]
        + [
            f"`{output}` {union_types[value]}"
            for slot in slots
            for value, output in zip(slot.values, slot.outputs, strict=True)
        ]
    )
    merge = partial(_merge_as_of, keys=keys, ts=ts, spine_columns=spine.columns, slots=slots)
    return by_keys(rows, keys).mapInArrow(merge, schema)


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
    order, starts = _sort(table, keys, ts)
    position = np.arange(len(order))
    group_start = np.maximum.accumulate(np.where(starts, position, 0))
    kinds = table[KIND].to_numpy()[order]
    spine_at = np.flatnonzero(kinds == SPINE_ROW)  # sorted positions of the spine rows
    spine_rows = order[spine_at]
    times = _micros(table[ts])
    columns = {name: table[name].take(spine_rows) for name in spine_columns}
    for kind, slot in enumerate(slots):
        latest = np.maximum.accumulate(np.where(kinds == kind, position, -1))[spine_at]
        found = latest >= group_start[spine_at]
        source = order[np.maximum(latest, 0)]
        if slot.ttl is not None:
            found &= times[source] >= times[spine_rows] - slot.ttl
        indices = pa.array(source, mask=~found)
        for value, output in zip(slot.values, slot.outputs, strict=True):
            columns[output] = table[value].take(indices)
    yield from pa.table(columns).to_batches()


def _sort(table: pa.Table, keys: tuple[str, ...], ts: str) -> tuple[np.ndarray, np.ndarray]:
    """Row positions in (keys, time) order, null times first and spine rows after feature rows
    of the same time, and whether each sorted row
    starts a new run of keys. Null keys never equal anything, so they start runs that hold no
    feature row (feature rows have keys).

    When the keys' codes and the times fit in 63 bits together, one int64 argsort does it, about
    ten times faster than a multi-column Arrow sort; otherwise the Arrow sort.
    """
    codes = _key_codes(table, keys)
    micros = _micros(table[ts])
    present = micros != NO_TIME
    low = int(micros[present].min()) if present.any() else 0
    high = int(micros[present].max()) if present.any() else 0
    shift = (2 * (high - low + 1) + 1).bit_length()
    if codes is not None and int(codes.max()).bit_length() + shift <= 62:
        offset = np.where(present, micros - low + 1, 0)
        spine = table[KIND].to_numpy() == SPINE_ROW
        packed = (codes << shift) | (offset * 2 + spine)
        order = np.argsort(packed)
        ordered = codes[order]
        starts = np.empty(len(order), dtype=bool)
        starts[0] = True
        np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
        return order, starts | _null_keys(table, keys)[order]
    order = pc.sort_indices(
        table.select([*keys, ts, KIND]),
        sort_keys=[(column, "ascending", "at_start") for column in (*keys, ts, KIND)],
    ).to_numpy()
    starts = np.zeros(len(order), dtype=bool)
    starts[0] = True
    for key in keys:
        if pa.types.is_null(table[key].type):  # all null: no two rows share a key
            return order, np.ones(len(order), dtype=bool)
        column = table[key].take(order)
        changed = pc.fill_null(pc.not_equal(column[1:], column[:-1]), True)
        starts[1:] |= changed.to_numpy(zero_copy_only=False)
    return order, starts


def _key_codes(table: pa.Table, keys: tuple[str, ...]) -> np.ndarray | None:
    """One int64 per row, equal exactly when the rows' keys are equal (nulls aside), or None
    when the codes would not fit: integer keys offset by their minimum, others dictionary
    encoded."""
    codes = np.zeros(table.num_rows, dtype=np.int64)
    size = 1
    for key in keys:
        column = table[key].combine_chunks()
        if pa.types.is_integer(column.type):
            bounds = pc.min_max(column)
            low, high = bounds["min"].as_py() or 0, bounds["max"].as_py() or 0
            width = high - low + 2
            if size * width >= 1 << 62:
                return None
            code = pc.subtract(column.cast(pa.int64()), low)
        else:
            encoded = pc.dictionary_encode(column)
            width = len(encoded.dictionary) + 1
            code = encoded.indices.cast(pa.int64())
        size *= width
        if size >= 1 << 62:
            return None
        codes = codes * width + pc.fill_null(code, width - 1).to_numpy()
    return codes


def _null_keys(table: pa.Table, keys: tuple[str, ...]) -> np.ndarray:
    nulls = np.zeros(table.num_rows, dtype=bool)
    for key in keys:
        nulls |= table[key].is_null().to_numpy(zero_copy_only=False)
    return nulls


NO_TIME = np.iinfo(np.int64).min


def _micros(times: pa.ChunkedArray) -> np.ndarray:
    """Event times as epoch microseconds (nulls as NO_TIME, older than any ttl)."""
    micros = pc.cast(times, pa.timestamp("us", tz="UTC")).cast(pa.int64())
    return pc.fill_null(micros, NO_TIME).to_numpy()
