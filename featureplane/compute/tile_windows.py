"""Window values from tiles, merged per partition in Arrow: one shuffle for every window.

The tiles and the spine's anchors (keys, floor(t)) are unioned and hash-partitioned on the keys;
each partition sorts its tiles by (keys, tile_start) once, and two binary searches per window
give every anchor's tiles as a slice [lo, hi) of the sorted rows. Then:
- count, sum and mean are differences of prefix sums (exact for integers; double sums accumulate
  in extended precision, 64-bit mantissas on x86, so the partition's running total costs a
  window's sum about 2^-11 of what a double cumsum would);
- min, max, first and last take the best-ranked tile of the slice from a sparse table (O(1) per
  anchor: two overlapping power-of-two blocks), so no function slides a frame.
A window holds at most window/interval tiles per entity, which bounds the sparse table's levels.
The values equal `featureplane.aggregation`'s merge and finalize of the same tiles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from featureplane.aggregation import TILE_START, Aggregation
from featureplane.compute.shuffle import by_keys

FUNCTIONS = ("count", "sum", "mean", "min", "max", "first", "last")
ANCHOR_ROW = 1
TIME = "__fp_time"
KIND = "__fp_kind"


@dataclass(frozen=True)
class _Spec:
    """One output: its function, tile partial column, window in intervals, and name."""

    function: str
    partial: str
    window: int
    output: str


def window_values(
    spine: DataFrame,
    anchor: str,
    tiles: DataFrame,
    keys: Sequence[str],
    interval: timedelta,
    aggregations: dict[Aggregation, str],
) -> DataFrame:
    """The spine with one column per aggregation appended, in one shuffle and no join: spine
    rows travel with the tiles of their keys. `anchor` is the spine column holding floor(t) in
    epoch microseconds (null: no value), `tiles` are keyed like the spine."""
    step = interval // timedelta(microseconds=1)
    specs = [
        _Spec(a.fn.name, a.partial_column, a.time_window // interval, output)
        for a, output in aggregations.items()
    ]
    needed = sorted({spec.partial for spec in specs})
    types = {**dict(spine.dtypes), **dict(tiles.dtypes)}
    columns = [*spine.columns, *needed]

    def aligned(frame: DataFrame, time: Column, kind: int) -> DataFrame:
        present = set(frame.columns)
        return frame.select(
            *(c if c in present else F.lit(None).cast(types[c]).alias(c) for c in columns),
            time.alias(TIME),
            F.lit(kind).cast("tinyint").alias(KIND),
        )

    rows = aligned(spine, F.col(anchor), ANCHOR_ROW).unionByName(
        aligned(
            tiles.where(F.col(TILE_START).isNotNull()).select(*keys, TILE_START, *needed),
            F.unix_micros(TILE_START),
            1 - ANCHOR_ROW,
        )
    )
    outputs = tiles.select(*(_output(spec).alias(spec.output) for spec in specs)).dtypes
    schema = ", ".join(f"`{name}` {dtype}" for name, dtype in [*spine.dtypes, *outputs])
    merge = partial(_merge, keys=tuple(keys), spine_columns=spine.columns, step=step, specs=specs)
    return by_keys(rows, keys).mapInArrow(merge, schema)


def _output(spec: _Spec) -> Column:
    """An expression of the output's Spark type (for the schema only)."""
    column = F.col(spec.partial)
    if spec.function in ("count", "min", "max"):
        return column
    if spec.function in ("first", "last"):
        return column.getField("v")
    if spec.function == "sum":
        return column.getField("s")
    return column.getField("s").cast("double")


def _merge(
    batches: Iterator[pa.RecordBatch],
    keys: tuple[str, ...],
    spine_columns: list[str],
    step: int,
    specs: list[_Spec],
) -> Iterator[pa.RecordBatch]:
    """The spine rows of one partition, which has every tile of their keys, with the window
    values appended; a row without a time or with a null key gets nulls."""
    batches = list(batches)
    table = pa.Table.from_batches(batches) if batches else None
    if table is None or table.num_rows == 0:
        return
    is_anchor = table[KIND].to_numpy() == ANCHOR_ROW
    known = table[TIME].is_valid().to_numpy()
    for key in keys:
        known &= table[key].is_valid().to_numpy()
    codes = _dense_codes(table, keys)
    times = pc.fill_null(table[TIME], 0).to_numpy() // step  # in intervals: all aligned
    low = int(times[known].min()) - max(spec.window for spec in specs) if known.any() else 0
    shift = (int(times[known].max()) - low + 1).bit_length() if known.any() else 1
    if (int(codes.max()) + 1).bit_length() + shift > 62:
        raise ValueError("too many keys and tiles in one partition to pack into 62 bits")
    packed = (codes << shift) | np.where(known, times - low, 0)
    tile_rows = np.flatnonzero(~is_anchor & known)
    tile_rows = tile_rows[np.argsort(packed[tile_rows])]
    spine_rows = np.flatnonzero(is_anchor)
    served = known[spine_rows]
    sorted_packed = packed[tile_rows]
    ends = np.where(served, np.searchsorted(sorted_packed, packed[spine_rows]), 0)
    slices = {
        window: (
            np.where(served, np.searchsorted(sorted_packed, packed[spine_rows] - window), 0),
            ends,
        )
        for window in {spec.window for spec in specs}
    }
    tiles = table.take(tile_rows)
    columns = {name: table[name].take(spine_rows) for name in spine_columns}
    levels = max(max(spec.window for spec in specs).bit_length() - 1, 0)
    reducers: dict[tuple[str, str], Callable[[np.ndarray, np.ndarray], pa.Array]] = {}
    unserved = pa.array(~served)
    for spec in specs:
        lo, hi = slices[spec.window]
        key = (spec.function, spec.partial)
        if key not in reducers:
            reducers[key] = _reducer(spec.function, tiles[spec.partial], levels)
        value = reducers[key](lo, hi)
        columns[spec.output] = pc.if_else(unserved, pa.nulls(len(value), value.type), value)
    yield from pa.table(columns).to_batches()


def _dense_codes(table: pa.Table, keys: tuple[str, ...]) -> np.ndarray:
    """One int64 per row, equal exactly when the keys are equal, from 0 to the distinct count."""
    codes: np.ndarray | None = None
    for key in keys:
        encoded = pc.dictionary_encode(table[key].combine_chunks())
        width = len(encoded.dictionary) + 1
        code = pc.fill_null(encoded.indices.cast(pa.int64()), width - 1).to_numpy()
        if codes is not None:
            code = pc.dictionary_encode(pa.array(codes * width + code)).indices.to_numpy()
        codes = code.astype(np.int64)
    assert codes is not None
    return codes


def _reducer(
    function: str, partials: pa.ChunkedArray, levels: int
) -> Callable[[np.ndarray, np.ndarray], pa.Array]:
    """The finalized value of `function` over the tiles [lo, hi) of each anchor, for any
    window: prefix sums or the sparse table are built once per partial, not once per window."""
    column = partials.combine_chunks()
    if function == "count":
        counts = _prefix(column)
        return lambda lo, hi: pa.array(counts[hi] - counts[lo])
    if function in ("sum", "mean"):
        n_prefix, s_prefix = _prefix(column.field("n")), _prefix(column.field("s"))
        dtype = s_prefix.dtype if s_prefix.dtype.kind != "f" else np.float64

        def total(lo: np.ndarray, hi: np.ndarray) -> pa.Array:
            n = n_prefix[hi] - n_prefix[lo]
            s = (s_prefix[hi] - s_prefix[lo]).astype(dtype)
            empty = n == 0
            if function == "mean":
                return pa.array(s / np.where(empty, 1, n), mask=empty)
            return pa.array(s, mask=empty)

        return total
    values = column.field("v") if function in ("first", "last") else column
    score = _scores(column, values, largest=function in ("max", "last"))
    best = _Best(score, levels)

    def chosen(lo: np.ndarray, hi: np.ndarray) -> pa.Array:
        position = best(lo, hi)
        found = hi > lo  # no tiles at all: every slice is empty
        if found.any():
            found &= score[position] > 0
        return values.take(pa.array(position, mask=~found))

    return chosen


def _prefix(values: pa.Array) -> np.ndarray:
    """Prefix sums of the values (nulls as 0) with a leading 0, floats accumulated in extended
    precision (see the module docstring); window sums are differences of two of them."""
    filled = pc.fill_null(values, 0).to_numpy()
    total = np.longdouble if filled.dtype.kind == "f" else filled.dtype
    return np.concatenate([np.zeros(1, dtype=total), np.cumsum(filled, dtype=total)])


def _scores(column: pa.Array, values: pa.Array, largest: bool) -> np.ndarray:
    """A rank per tile, greater for the better partial, 0 for a null one. first and last rank
    their (event time, value) pairs; min and max their values (NaN above every number)."""
    if pa.types.is_struct(column.type):
        order = pc.sort_indices(
            pa.table({"ts": column.field("ts"), "v": values}),
            sort_keys=[("ts", "ascending", "at_end"), ("v", "ascending", "at_end")],
        ).to_numpy()
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(1, len(order) + 1)
    else:
        rank = pc.rank(values, sort_keys="ascending", tiebreaker="dense").to_numpy()
        rank = rank.astype(np.int64)
    if not largest:
        rank = len(rank) + 1 - rank
    return np.where(column.is_null().to_numpy(zero_copy_only=False), 0, rank)


class _Best:
    """The position of the greatest score in ranges of at most 2**levels rows: a sparse table,
    built once, answering each range with two overlapping power-of-two blocks."""

    def __init__(self, score: np.ndarray, levels: int) -> None:
        self.score = score
        n = len(score)
        table = [np.arange(n)]
        for level in range(1, levels + 1):
            previous = table[-1]
            partner = previous[np.minimum(np.arange(n) + (1 << (level - 1)), n - 1)]
            table.append(np.where(score[partner] > score[previous], partner, previous))
        self.blocks = np.stack(table)

    def __call__(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        n = len(self.score)
        if n == 0:
            return np.zeros(len(lo), dtype=np.int64)
        length = np.maximum(hi - lo, 1)
        level = np.floor(np.log2(length)).astype(np.int64)
        first = self.blocks[level, np.minimum(lo, n - 1)]
        second = self.blocks[level, np.clip(hi - (1 << level), 0, n - 1)]
        return np.where(self.score[second] > self.score[first], second, first)
