"""Time-window aggregations: definitions and the Python merge of their partial aggregates.

Events are pre-aggregated into tiles (join keys, tile_start, one partial per function and column).
The value at time t covers the tiles with tile_start in [floor(t) - window, floor(t)): completed
tiles only, which is exactly what the online store can serve at t. Each function follows one
contract, as in Chronon: a partial per tile, `merge` of partials, `finalize` to the value. Spark
implements the same contract over tiles offline (`featureplane.compute.tiles`); this module is
the pure-Python side, which the online handler runs on the same tiles. Spark-free on purpose.

Online records also keep suffix merges (the merge from each tile to the last, `suffix_columns`),
made once at push time, so that a request finalizes each window from one or two entries instead
of merging its tiles (Chronon likewise uploads pre-aggregated windows for serving).
"""

from __future__ import annotations

import json
import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property, reduce
from typing import Any

import orjson

from featureplane.durations import in_words
from featureplane.types import NUMERIC, Array, DType, Float64, Int64

TILE_START = "tile_start"
"""The event-time column of a tiles table: the start of each tile's interval."""
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
TILES = "tiles"
"""The online record value of an aggregate view: its packed tiles (see `pack_tiles`)."""
TILE_ORIGIN, TILE_STEP = "tile_origin", "tile_step"
"""Packed tile starts count steps from an origin, both in epoch microseconds: the first
tile's start and the view's interval. Records pushed before them kept tile starts in epoch
microseconds: origin 0 and step 1 where absent."""
SUFFIX = "suffix:"
"""Prefix of the packed columns that hold suffix merges (`suffix_columns`)."""
PAST_THE_LAST_TILE = frozenset({"approx_count_distinct", "min", "max"})
"""Functions whose suffix merges cannot be differenced: they give the value of a window only
when it ends after the record's last tile (as when serving now); otherwise its tiles merge."""
INT64_HALF = 1 << 63
"""Half the int64 range: integer sums are taken modulo twice this into [-it, it)."""


@dataclass(frozen=True)
class AggregationFunction:
    """An aggregation function; `n` is last_n's count or approx_count_distinct's precision."""

    name: str
    n: int = 0

    @property
    def partial(self) -> str:
        """Name of the partial it needs: var and stddev share moments, sum and mean a total."""
        if self.name in ("var", "stddev"):
            return "moments"
        if self.name in ("sum", "mean"):
            return "total"
        if self.name == "approx_count_distinct":
            return f"hll{self.n}"
        return f"last{self.n}" if self.name == "last_n" else self.name

    def __str__(self) -> str:
        """The name in default feature names and in the view version: it names the parameter."""
        if self.name == "approx_count_distinct" and self.n != DEFAULT_PRECISION:
            return f"approx_count_distinct_p{self.n}"
        return f"last_{self.n}" if self.name == "last_n" else self.name


FUNCTIONS = (
    "count",
    "sum",
    "mean",
    "min",
    "max",
    "stddev",
    "var",
    "first",
    "last",
    "approx_count_distinct",
)
KNOWN_FUNCTIONS = frozenset({*FUNCTIONS, "last_n"})
"""Every function name an AggregationFunction may carry (last_n and its count are made by
`last_n`)."""
NUMERIC_ONLY = frozenset({"sum", "mean", "stddev", "var"})
PRECISIONS = range(4, 17)
"""HyperLogLog precisions p (2**p registers): from 16 registers to 64 Ki of them."""
DEFAULT_PRECISION = 12


def last_n(n: int) -> AggregationFunction:
    """The n most recent non-null values, most recent first."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"last_n needs a positive whole number, got {n!r}")
    return AggregationFunction("last_n", n)


def approx_count_distinct(precision: int = DEFAULT_PRECISION) -> AggregationFunction:
    """The number of distinct non-null values, estimated by a HyperLogLog sketch.

    A sketch of 2**precision registers has a relative standard error of about
    1.04 / sqrt(2**precision): 1.6% at the default 12, 0.4% at 16; below 2.5 * 2**precision
    distinct values linear counting makes it far more accurate (small counts are nearly
    exact). Sketches merge by a max per register, so tiles merge into any window exactly as
    if the window's events had been sketched at once, unlike an exact distinct count.
    """
    if not isinstance(precision, int) or precision not in PRECISIONS:
        raise ValueError(
            f"approx_count_distinct precision must be a whole number from {PRECISIONS.start} "
            f"to {PRECISIONS.stop - 1}, got {precision!r}"
        )
    return AggregationFunction("approx_count_distinct", precision)


def _window_label(window: timedelta) -> str:
    for unit, size in (
        ("d", timedelta(days=1)),
        ("h", timedelta(hours=1)),
        ("m", timedelta(minutes=1)),
    ):
        if window % size == timedelta(0):
            return f"{window // size}{unit}"
    if window % timedelta(seconds=1) == timedelta(0):
        return f"{window // timedelta(seconds=1)}s"
    return f"{window // timedelta(microseconds=1)}us"


@dataclass(frozen=True)
class Aggregation:
    """`Aggregation("clicks", "count", timedelta(days=7))`: a feature named `clicks_count_7d`.

    Its arguments are checked by the feature view that uses it (`definition_problem`,
    `problem`), so a mistake is reported with that view's name, file and line.
    """

    column: str
    function: str | AggregationFunction
    time_window: timedelta
    name: str | None = None

    def __post_init__(self) -> None:
        function = self.function
        if function == "approx_count_distinct":
            function = approx_count_distinct()
        elif isinstance(function, str):
            function = AggregationFunction(function)
        object.__setattr__(self, "function", function)
        if self.name is None:
            label = f"{self.column}_{function}"
            if self._window_problem() is None:
                label += f"_{_window_label(self.time_window)}"
            object.__setattr__(self, "name", label)

    def _window_problem(self) -> str | None:
        if isinstance(self.time_window, timedelta) and self.time_window > timedelta(0):
            return None
        return f"time_window must be a positive timedelta, got {self.time_window!r}"

    def definition_problem(self) -> str | None:
        """Why this is no aggregation whatever the column: an unknown function, or a window
        that is not a positive timedelta."""
        function = self.function
        if not (isinstance(function, AggregationFunction) and function.name in KNOWN_FUNCTIONS):
            shown = getattr(function, "name", function)
            return (
                f"aggregation {self.name!r}: function {shown!r} is not one of "
                f"{', '.join(FUNCTIONS)}, last_n(n), approx_count_distinct(precision)"
            )
        problem = self._window_problem()
        return f"aggregation {self.name!r}: {problem}" if problem else None

    @property
    def fn(self) -> AggregationFunction:
        return self.function  # type: ignore[return-value]

    @cached_property
    def window_micros(self) -> int:
        return self.time_window // MICROSECOND

    @cached_property
    def partial_column(self) -> str:
        """The tile column holding this aggregation's partials (shared across windows)."""
        return f"{self.fn.partial}__{self.column}"

    @cached_property
    def suffix_column(self) -> str:
        """The packed column of its suffix merges, where the online store keeps them."""
        return SUFFIX + self.partial_column

    def problem(self, dtype: DType | None, interval: timedelta) -> str | None:
        """Why this aggregation cannot apply to a column of `dtype` with tiles of `interval`."""
        problem = self.definition_problem()
        if problem:
            return problem
        if self.time_window % interval != timedelta(0):
            return (
                f"aggregation {self.name!r}: time_window {in_words(self.time_window)} is not a "
                f"multiple of the aggregation_interval {in_words(interval)}"
            )
        if dtype is None:
            return f"aggregation {self.name!r}: column {self.column!r} is not in the schema"
        if self.fn.name in NUMERIC_ONLY and dtype not in NUMERIC:
            return f"aggregation {self.name!r}: {self.fn} needs a numeric column, {dtype} is not"
        if self.fn.name in ("min", "max", "first", "last") and dtype.spark.startswith("array"):
            return f"aggregation {self.name!r}: {self.fn} cannot order {dtype} values"
        if self.fn.name == "approx_count_distinct" and dtype.spark.startswith("array"):
            return (
                f"aggregation {self.name!r}: approx_count_distinct cannot hash {dtype} values "
                "(Sail does not hash arrays as Spark does)"
            )
        if self.fn.name == "last_n" and dtype.spark in ("timestamp", "date"):
            return (
                f"aggregation {self.name!r}: last_n keeps values as JSON, which cannot carry "
                f"{dtype} exactly; aggregate a string or number (e.g. unix_micros) instead"
            )
        return None

    def output_type(self, dtype: DType) -> DType:
        """The feature's type for an input column of `dtype`."""
        name = self.fn.name
        if name in ("count", "approx_count_distinct"):
            return Int64
        if name in ("mean", "stddev", "var"):
            return Float64
        if name == "sum":
            return Float64 if dtype.spark in ("float", "double") else Int64
        if name == "last_n":
            return Array(dtype)
        return dtype


# ---- the online side: merge the partials of the tiles in a window, then finalize ------------


def pack_tiles(tiles: Iterable[Mapping[str, Any]], interval: timedelta) -> dict[str, Any]:
    """A key's tiles as the online store keeps them: one list per column, `tile_start` in
    ascending order as intervals since the first (`TILE_ORIGIN`), and the columns of
    `suffix_columns`.

    Columns of plain JSON values need no tags in the store and no per-tile objects to decode,
    and a window is a slice found by binary search. Tile starts as intervals take a digit or
    three each instead of sixteen. JSON-text partials (last_n, approx_count_distinct) stay
    text: reading a record scans them as strings, and only the tiles of a window that is
    served get decoded (`merge_partials`).
    """
    rows = sorted((t for t in tiles if t.get(TILE_START) is not None), key=lambda t: t[TILE_START])
    step = interval // MICROSECOND
    starts = [_epoch_micros(t[TILE_START]) for t in rows]
    if any(start % step for start in starts):
        raise ValueError(f"tile starts must be multiples of the interval, {in_words(interval)}")
    columns = sorted({name for row in rows for name in row} - {TILE_START})
    origin = starts[0] if starts else 0
    packed: dict[str, Any] = {
        TILE_ORIGIN: origin,
        TILE_STEP: step,
        TILE_START: [(start - origin) // step for start in starts],
    }
    for name in columns:
        packed |= suffix_columns(name, [_timed(row.get(name)) for row in rows])
    return packed


def first_tile_micros(packed: Mapping[str, Any]) -> int:
    """The start of the first of packed tiles, in epoch microseconds."""
    return packed.get(TILE_ORIGIN, 0) + packed[TILE_START][0] * packed.get(TILE_STEP, 1)


def suffix_columns(name: str, partials: Sequence[Any]) -> dict[str, Any]:
    """How the online store keeps a tile column: its partials, or the merges of its partials
    from each tile to the last (the suffix merges, one more entry for the empty suffix), under
    `SUFFIX` + name; nothing for a column without values (`valued`).

    - count, and sum/mean totals of integers: the suffix totals alone; a window [lo, hi) is
      the difference of two entries (modulo 2**64 for sums), exactly, whatever the anchor;
    - approx_count_distinct: the partials and the estimate of each suffix merge, the value
      of a window whenever it ends after the last tile, as it does when serving now;
    - min and max of integers: the partials and each suffix's extreme, likewise;
    - others, and totals of an entity with a float sum (whose differences would round
      otherwise than a merge): the partials.
    A request then finalizes a window without merging its tiles (`WindowReader`). The
    merges are those of `merge_partials`, done once at push time, so the values are the same.
    """
    kind = name.split("__", 1)[0]
    if not valued(kind, partials):
        return {}
    if kind == "count":
        return {SUFFIX + name: _suffix_sums([p or 0 for p in partials])}
    if kind == "total" and not any(p and type(p["s"]) is float for p in partials):
        counts = _suffix_sums([p["n"] if p else 0 for p in partials])
        sums = _suffix_sums([(p["s"] or 0) if p else 0 for p in partials])
        return {SUFFIX + name: {"n": counts, "s": sums}}
    if kind.startswith("hll"):
        return {name: list(partials), SUFFIX + name: suffix_estimates(partials, int(kind[3:]))}
    if kind in ("min", "max") and all(p is None or type(p) is int for p in partials):
        return {name: list(partials), SUFFIX + name: _suffix_extremes(kind, partials)}
    return {name: list(partials)}


def valued(kind: str, partials: Sequence[Any]) -> bool:
    """Whether an entity's tile column of `kind` holds what a window could count: a count
    other than 0, a total of any value, any other partial. A record leaves the others out;
    a request finalizes every window of a missing column as empty (count 0, else null), which
    is what the column gives, and an aggregate record stays small: most entities have events
    in only some of their view's columns."""
    if kind == "count":
        return any(partials)
    if kind == "total":
        return any(p and p["n"] for p in partials)
    return any(p is not None for p in partials)


def _suffix_extremes(kind: str, partials: Sequence[int | None]) -> list[int | None]:
    best: int | None = None
    extremes = [best]
    for partial in reversed(partials):
        if partial is not None and (
            best is None or (partial > best if kind == "max" else partial < best)
        ):
            best = partial
        extremes.append(best)
    return extremes[::-1]


def _suffix_sums(values: Sequence[int]) -> list[int]:
    sums = [0]
    for value in reversed(values):
        sums.append(sums[-1] + value)
    return sums[::-1]


def suffix_estimates(sketches: Sequence[str | Sequence[int] | None], precision: int) -> list[int]:
    """The HyperLogLog estimate of the merge of `sketches[i:]` for each i, and 0 for none: the
    sum of `hll_estimate` kept up to date register by register as each sketch merges in, so
    the cost is that of the codes, not of a full estimate per sketch."""
    ranks: dict[int, int] = {}
    mask = (1 << RANK_BITS) - 1
    high, low, unset = (1 << precision) << SPLIT, 0, 1 << precision
    estimates = [0]
    for sketch in reversed(sketches):
        codes = orjson.loads(sketch) if isinstance(sketch, str) else sketch or ()
        for code in codes:
            index, rank = code >> RANK_BITS, code & mask
            old = ranks.get(index, 0)
            if rank > old:
                ranks[index] = rank
                unset -= not old
                (old_high, old_low), (new_high, new_low) = _term(old), _term(rank)
                high += new_high - old_high
                low += new_low - old_low
        estimates.append(_estimate(high, low, unset, precision))
    return estimates[::-1]


def _timed(partial: Any) -> Any:
    """A first/last partial with its event time as epoch microseconds (which orders alike and
    keeps the stored JSON free of tagged datetimes); other partials unchanged."""
    if isinstance(partial, Mapping) and isinstance(partial.get("ts"), datetime):
        moment = partial["ts"]
        return {
            **partial,
            "ts": _epoch_micros(moment if moment.tzinfo else moment.replace(tzinfo=UTC)),
        }
    return partial


def _epoch_micros(moment: datetime) -> int:
    return (moment - EPOCH) // MICROSECOND


def floor_time(moment: datetime, interval: timedelta) -> datetime:
    """`moment` rounded down to a multiple of `interval` since the Unix epoch (UTC)."""
    epoch = datetime(1970, 1, 1, tzinfo=moment.tzinfo)
    return moment - (moment - epoch) % interval


def merge_partials(function: AggregationFunction, partials: Sequence[Any]) -> Any:
    """Merge tile partials of one function (None partials, i.e. empty tiles, are skipped).

    last_n partials are JSON lists of {"ts": epoch microseconds, "v": value}, as tiles store them;
    approx_count_distinct partials are JSON lists of packed registers (index << 6 | rank), or
    already merged {index: rank} registers.
    """
    present = [p for p in partials if p is not None]
    name = function.name
    if not present:
        return None
    if name == "count":
        return sum(present)
    if name in ("sum", "mean"):
        totals = [p["s"] for p in present if p["s"] is not None]
        return {"n": sum(p["n"] for p in present), "s": sum(totals) if totals else None}
    if name == "min":
        return min(present)
    if name == "max":
        return max(present)
    if name in ("var", "stddev"):
        return reduce(_merge_moments, present)
    if name == "first":
        return min(present, key=lambda p: (p["ts"], p["v"]))
    if name == "last":
        return max(present, key=lambda p: (p["ts"], p["v"]))
    if name == "approx_count_distinct":
        return _merge_registers(present)
    decoded = (json.loads(p) if isinstance(p, str) else p for p in present)
    items = sorted((i for p in decoded for i in p), key=lambda i: (i["ts"], i["v"]), reverse=True)
    return items[: function.n] or None


def _merge_moments(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Chan et al.'s pairwise merge of (count, mean, sum of squared deviations)."""
    n = a["n"] + b["n"]
    if n == 0:
        return {"n": 0, "mean": 0.0, "m2": 0.0}
    delta = b["mean"] - a["mean"]
    mean = a["mean"] + delta * b["n"] / n
    return {"n": n, "mean": mean, "m2": a["m2"] + b["m2"] + delta * delta * a["n"] * b["n"] / n}


def finalize(function: AggregationFunction, partial: Any) -> Any:
    """The feature value of a merged partial; an empty window counts 0 and is null otherwise."""
    name = function.name
    if partial is None:
        return 0 if name in ("count", "approx_count_distinct") else None
    if name in ("count", "min", "max"):
        return partial
    if name in ("sum", "mean"):
        if not partial["n"]:
            return None
        return partial["s"] if name == "sum" else partial["s"] / partial["n"]
    if name in ("var", "stddev"):
        if partial["n"] < 2:
            return None
        variance = max(partial["m2"] / (partial["n"] - 1), 0.0)
        return math.sqrt(variance) if name == "stddev" else variance
    if name in ("first", "last"):
        return partial["v"]
    if name == "approx_count_distinct":
        return hll_estimate(partial, function.n)
    return [item["v"] for item in partial]


# ---- HyperLogLog: the registers of approx_count_distinct and their estimate ---------------------

RANK_BITS = 6
"""A register is stored packed as index << 6 | rank: ranks are at most 65 - precision <= 61."""
SPLIT = 32
"""Ranks up to SPLIT and above it are summed apart, as exact integers (see `hll_estimate`)."""


_SCALED = [1 << (SPLIT - rank) for rank in range(SPLIT + 1)]
"""2**-rank scaled by 2**SPLIT, by rank."""


def _merge_registers(partials: Iterable[str | Sequence[int] | Mapping[int, int]]) -> dict[int, int]:
    """The register-wise max of sketches: their packed registers sorted, so that the last code
    of each index holds its highest rank and a dict built in that order keeps it."""
    codes: list[int] = []
    for partial in partials:
        if isinstance(partial, Mapping):
            codes += (index << RANK_BITS | rank for index, rank in partial.items())
        else:
            codes += orjson.loads(partial) if isinstance(partial, str) else partial
    codes.sort()
    mask = (1 << RANK_BITS) - 1
    return {code >> RANK_BITS: code & mask for code in codes}


def hll_scale(precision: int) -> float:
    """alpha * m**2 of the raw HyperLogLog estimate (Flajolet et al., 2007), m = 2**precision."""
    m = 1 << precision
    alpha = {16: 0.673, 32: 0.697, 64: 0.709}.get(m, 0.7213 / (1 + 1.079 / m))
    return alpha * m * m


def hll_estimate(ranks: Mapping[int, int], precision: int) -> int:
    """The HyperLogLog estimate of the distinct values that set `ranks` ({index: rank}).

    raw = alpha * m**2 / sum(2**-rank over all m registers, rank 0 for unset ones); at or below
    2.5 * m with unset registers left, linear counting m * ln(m / unset) instead; rounded half
    up. The sum is taken as two exact integers (ranks up to SPLIT scaled by 2**SPLIT, the rest
    by 2**(2 * SPLIT)) and one rounding to a double, so Spark computes the same bits whatever
    order it sums in (`featureplane.compute.tiles` mirrors this).
    """
    unset = (1 << precision) - len(ranks)
    values = ranks.values()
    if not values or max(values) <= SPLIT:  # nearly always: one table look-up per register
        high, low = (unset << SPLIT) + sum(map(_SCALED.__getitem__, values)), 0
    else:
        high = (unset << SPLIT) + sum(1 << (SPLIT - r) for r in values if r <= SPLIT)
        low = sum(1 << (2 * SPLIT - r) for r in values if r > SPLIT)
    return _estimate(high, low, unset, precision)


def _term(rank: int) -> tuple[int, int]:
    """A register's share of the sum of `hll_estimate`, (high, low); rank 0 is an unset one."""
    return (1 << (SPLIT - rank), 0) if rank <= SPLIT else (0, 1 << (2 * SPLIT - rank))


def _estimate(high: int, low: int, unset: int, precision: int) -> int:
    m = 1 << precision
    harmonic = float(high) * 2.0**-SPLIT + float(low) * 2.0 ** (-2 * SPLIT)
    estimate = hll_scale(precision) / harmonic
    if unset and estimate <= 2.5 * m:
        estimate = m * math.log(m / unset)
    return math.floor(estimate + 0.5)


def aggregate(
    aggregation: Aggregation,
    tiles: Iterable[Mapping[str, Any]],
    at: datetime,
    interval: timedelta,
) -> Any:
    """The aggregation's value at `at` from a key's tiles (dicts with tile_start and partials):
    the tiles with tile_start in [floor(at) - window, floor(at))."""
    packed = pack_tiles(tiles, interval)
    return aggregate_before((aggregation,), packed, anchor_micros(at, interval))[0]


def anchor_micros(at: datetime, interval: timedelta) -> int:
    """floor(at, interval) in epoch microseconds: where the windows served at `at` end."""
    return _epoch_micros(floor_time(at, interval))


def aggregate_before(
    aggregations: Sequence[Aggregation], packed: Mapping[str, Any], end: int
) -> list[Any]:
    """The aggregations' values over the packed tiles with tile_start in [end - window, end)."""
    return [column[0] for column in WindowReader(aggregations).columns([packed], end)]


class WindowReader:
    """Aggregations as a request reads them from packed tiles, worked out once per view (a
    request reads them for every row): their distinct windows and, per aggregation, its
    window's position, function and packed columns."""

    def __init__(self, aggregations: Sequence[Aggregation]):
        windows = list(dict.fromkeys(a.window_micros for a in aggregations))
        self.windows = tuple(windows)
        self.steps = tuple(
            (
                windows.index(a.window_micros),
                a.fn,
                a.fn.name,
                a.suffix_column,
                a.partial_column,
            )
            for a in aggregations
        )

    def columns(self, records: Sequence[Mapping[str, Any]], end: int) -> list[list[Any]]:
        """The values at `end` (epoch microseconds) over many records' packed tiles ({} for an
        entity without a record, which gets the values of empty windows), one column per
        aggregation: one binary search for `end` and one per distinct window in each record,
        then each window's value from the suffix merges where the record has them
        (`suffix_columns`), else a merge of its slice of partials. Computed an aggregation at
        a time over all records, which keeps the per-record work to a comprehension's step."""
        frames = [
            (record.get(TILE_START) or (), record.get(TILE_ORIGIN, 0), record.get(TILE_STEP, 1))
            for record in records
        ]
        his = [bisect_left(tiles, -((origin - end) // step)) for tiles, origin, step in frames]
        los = [  # steps rounded up: a tile starting at or after a bound is beyond it
            [
                bisect_left(tiles, -((origin + window - end) // step), 0, hi)
                for (tiles, origin, step), hi in zip(frames, his, strict=True)
            ]
            for window in self.windows
        ]
        starts = [tiles for tiles, _, _ in frames]
        columns = []
        for at, function, name, suffix_column, partial_column in self.steps:
            rows = zip(records, los[at], his, strict=True)
            merge = (function, partial_column)
            if name == "count":
                column = [
                    _merged(merge, record, lo, hi)
                    if (s := record.get(suffix_column)) is None
                    else s[lo] - s[hi]
                    for record, lo, hi in rows
                ]
            elif name in ("sum", "mean"):
                column = [
                    _merged(merge, record, lo, hi)
                    if (s := record.get(suffix_column)) is None
                    else _total(name, s, lo, hi)
                    for record, lo, hi in rows
                ]
            elif name in PAST_THE_LAST_TILE:
                column = [
                    s[lo]
                    if hi == len(tiles) and (s := record.get(suffix_column)) is not None
                    else _merged(merge, record, lo, hi)
                    for (record, lo, hi), tiles in zip(rows, starts, strict=True)
                ]
            else:
                column = [_merged(merge, record, lo, hi) for record, lo, hi in rows]
            columns.append(column)
        return columns


def _merged(
    merge: tuple[AggregationFunction, str], record: Mapping[str, Any], lo: int, hi: int
) -> Any:
    """The value of a window [lo, hi) by merging the partials of its tiles."""
    function, column = merge
    return finalize(function, merge_partials(function, (record.get(column) or ())[lo:hi]))


def _total(name: str, suffix: Mapping[str, Sequence[int]], lo: int, hi: int) -> int | float | None:
    """A sum or mean over [lo, hi) from suffix totals, whose sum is taken modulo 2**64 into
    the int64 range: pushed suffixes are int64 sums that may wrap, and so differ from the
    exact ones by multiples of 2**64 (a window beyond the int64 range wraps, as int64 sums do)."""
    n = suffix["n"][lo] - suffix["n"][hi]
    if not n:
        return None
    total = suffix["s"][lo] - suffix["s"][hi]
    if not -INT64_HALF <= total < INT64_HALF:
        total = (total + INT64_HALF) % (2 * INT64_HALF) - INT64_HALF
    return total if name == "sum" else total / n
