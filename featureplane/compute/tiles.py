"""Tiles: events pre-aggregated per entity and interval, and window values computed from them.

`compute_tiles` turns a window of events into one row per (join keys, tile_start) holding the
partial aggregate of every (function, column) the view needs. `aggregate_join` gives each spine
row the value of every aggregation at its timestamp t, from the tiles with tile_start in
[floor(t) - window, floor(t)), computed from the spine's distinct (keys, floor(t)) anchors and
never as spine x tiles: count, sum, mean, min, max, first and last in one Arrow pass per
partition (`featureplane.compute.tile_windows`), var and stddev by a sliding range frame of tile
moments, last_n and approx_count_distinct by joins of their own (`_last_n`, a hop hierarchy of
sketches). The merge and finalize mirror `featureplane.aggregation`, which serves the same tiles
online.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from featureplane.aggregation import (
    RANK_BITS,
    SPLIT,
    TILE_START,
    Aggregation,
    AggregationFunction,
    hll_scale,
)
from featureplane.compute.tile_windows import FUNCTIONS as WINDOWED
from featureplane.compute.tile_windows import window_values

ORDER = "__fp_t"
ANCHOR = "__fp_anchor"
KIND = "__fp_kind"
MERGED = ("last_n", "approx_count_distinct")  # merged by joins of their own


def _micros(interval: timedelta) -> int:
    return interval // timedelta(microseconds=1)


def floor_micros(ts: Column, interval: timedelta) -> Column:
    """Microseconds since the epoch of `ts` rounded down to a multiple of `interval`."""
    micros = F.unix_micros(ts)
    return micros - F.pmod(micros, F.lit(_micros(interval)))


def _valued(column: str, ts: str) -> Column:
    return F.when(
        F.col(column).isNotNull(), F.struct(F.col(ts).alias("ts"), F.col(column).alias("v"))
    )


def _partial(function: AggregationFunction, column: str, ts: str) -> Column:
    """The tile partial of `function` over the events of one tile."""
    name = function.name
    value = F.col(column)
    if name == "count":
        return F.count(value)
    if name in ("min", "max"):
        return getattr(F, name)(value)
    if name in ("sum", "mean"):  # the count says whether a window has any value at all
        return F.struct(F.count(value).alias("n"), F.sum(value).alias("s"))
    as_double = value.cast("double").alias(f"{column}_as_double")
    if name in ("var", "stddev"):  # centred moments: exact however far values are from 0
        n = F.count(value)
        mean = F.coalesce(F.avg(as_double), F.lit(0.0))
        m2 = F.coalesce(F.var_pop(as_double) * n, F.lit(0.0))
        return F.struct(n.alias("n"), mean.alias("mean"), m2.alias("m2"))
    if name == "first":
        return F.min(_valued(column, ts))
    if name == "last":
        return F.max(_valued(column, ts))
    if name == "approx_count_distinct":
        return _sketch(value, function.n)
    recent = F.when(
        F.col(column).isNotNull(),
        F.struct(F.unix_micros(F.col(ts)).alias("ts"), F.col(column).alias("v")),
    )
    return F.to_json(F.slice(F.sort_array(F.collect_list(recent), asc=False), 1, function.n))


def _sketch(value: Column, precision: int) -> Column:
    """The HyperLogLog registers of the tile's non-null values, as a JSON list of packed
    registers (index << RANK_BITS | rank), one per index with its greatest rank, sorted.

    Spark's xxhash64 (seed 42), which Sail computes identically for every scalar type: the high
    `precision` bits pick the register, the rank is 1 + the leading zeros of the other bits.
    """
    hashed = F.xxhash64(value)
    rest = hashed.bitwiseAND(F.lit((1 << (64 - precision)) - 1))
    width = F.when(rest == 0, F.lit(0)).otherwise(F.length(F.bin(rest)))
    code = F.shiftleft(F.shiftrightunsigned(hashed, 64 - precision), RANK_BITS) + (
        F.lit(65 - precision) - width
    )
    codes = F.sort_array(F.collect_set(F.when(value.isNotNull(), code)))
    size = F.size(codes)

    def greatest_of_its_index(code: Column, i: Column) -> Column:  # the next has another index
        following = F.element_at(codes, F.least(i + 2, size))
        return (i == size - 1) | (
            F.shiftright(following, RANK_BITS) != F.shiftright(code, RANK_BITS)
        )

    return F.to_json(F.filter(codes, greatest_of_its_index))


def _items_type(value_type: str) -> str:
    """The type of a last_n partial, stored as JSON text (most recent first, event time as
    epoch microseconds): Sail cannot replace a window of a Delta table with list columns."""
    return f"array<struct<ts: bigint, v: {value_type}>>"


def partials(aggregations: Sequence[Aggregation]) -> dict[str, Aggregation]:
    """One aggregation per distinct tile partial column (windows share their partials)."""
    return {a.partial_column: a for a in reversed(aggregations)}


def compute_tiles(
    events: DataFrame,
    join_keys: Sequence[str],
    timestamp_field: str,
    aggregations: Sequence[Aggregation],
    interval: timedelta,
) -> DataFrame:
    """One row per (join keys, tile_start) with every partial the aggregations need."""
    tile = F.timestamp_micros(floor_micros(F.col(timestamp_field), interval))
    columns = partials(aggregations)
    return events.groupBy(*join_keys, tile.alias(TILE_START)).agg(
        *(
            _partial(a.fn, a.column, timestamp_field).alias(column)
            for column, a in sorted(columns.items())
        )
    )


def _sliding_moments(
    tiles: DataFrame, anchors: DataFrame, keys: list[str], aggregations: dict[Aggregation, str]
) -> DataFrame:
    """(keys, anchor, values) of var and stddev: Chan's merge of the tile moments in a sliding
    range frame per window, exact within the frame (prefix sums of squares would cancel).

    The moments are merged around the entity's shift (its smallest tile mean), which keeps the
    sums small: var = (Σm2 + Σn·d² − (Σn·d)²/N) / (N − 1) with d = tile mean − shift.
    """
    partials = sorted({a.partial_column for a in aggregations})
    tile_types = dict(tiles.dtypes)
    rows = tiles.select(
        *keys, F.unix_micros(TILE_START).alias(ORDER), F.lit(0).alias(KIND), *partials
    ).unionByName(
        anchors.select(
            *keys,
            F.col(ANCHOR).alias(ORDER),
            F.lit(1).alias(KIND),
            *(F.lit(None).cast(tile_types[p]).alias(p) for p in partials),
        )
    )
    entity = Window.partitionBy(*keys)
    rows = rows.select(
        "*", *(F.min(F.col(p).getField("mean")).over(entity).alias(_shift(p)) for p in partials)
    )

    def value(aggregation: Aggregation) -> Column:
        frame = entity.orderBy(ORDER).rangeBetween(-_micros(aggregation.time_window), -1)
        moments = F.col(aggregation.partial_column)
        tile_n = moments.getField("n")
        offset = moments.getField("mean") - F.col(_shift(aggregation.partial_column))
        n = F.sum(tile_n).over(frame)
        spread = F.sum(moments.getField("m2") + tile_n * offset * offset).over(frame)
        moved = F.sum(tile_n * offset).over(frame)
        variance = F.greatest((spread - moved * moved / n) / (n - 1), F.lit(0.0))
        stddev = aggregation.fn.name == "stddev"
        return F.when(n >= 2, F.sqrt(variance) if stddev else variance)

    return (
        rows.select(
            *keys,
            F.col(ORDER).alias(ANCHOR),
            KIND,
            *(value(a).alias(output) for a, output in aggregations.items()),
        )
        .where(F.col(KIND) == 1)
        .drop(KIND)
    )


def _shift(partial: str) -> str:
    return f"__fp_shift_{partial}"


@dataclass(frozen=True)
class AggregateLookup:
    """A tiles table to aggregate for the spine: `aggregations` maps each to its output name.

    `column_types` gives the Spark type of each aggregated column, which last_n needs to decode
    its partials (default: string).
    """

    tiles: DataFrame
    join_keys: tuple[str, ...]
    interval: timedelta
    aggregations: dict[Aggregation, str]
    column_types: Mapping[str, str] = field(default_factory=dict)


def aggregate_join(
    spine: DataFrame,
    timestamp_column: str,
    lookup: AggregateLookup,
    anchors_from: DataFrame | None = None,
) -> DataFrame:
    """The spine with the lookup's aggregation values at each row's time appended.

    `anchors_from` holds the same keys and times as `spine` when `spine` is costly to compute
    again (the output of earlier joins): the aggregations merged by joins read their anchors
    from it instead of a second run of everything that made `spine`.
    """
    keys = list(lookup.join_keys)
    types = dict(spine.dtypes)
    anchor = floor_micros(F.col(timestamp_column), lookup.interval)
    spine = spine.withColumn(ANCHOR, anchor)
    needed = sorted({a.partial_column for a in lookup.aggregations})
    tiles = lookup.tiles.select(  # keyed like the spine
        *(F.col(key).cast(types[key]).alias(key) for key in keys), TILE_START, *needed
    )
    lookup = replace(lookup, tiles=tiles)
    joined = spine
    windowed = {a: out for a, out in lookup.aggregations.items() if a.fn.name in WINDOWED}
    if windowed:
        joined = window_values(joined, ANCHOR, tiles, keys, lookup.interval, windowed)
    others = {a: out for a, out in lookup.aggregations.items() if a not in windowed}
    if not others:
        return joined.drop(ANCHOR)
    # these are merged per distinct anchor and joined back, which reads the anchors twice
    source = spine if anchors_from is None else anchors_from.withColumn(ANCHOR, anchor)
    anchors = (
        source.select(*(F.col(key).cast(types[key]).alias(key) for key in keys), ANCHOR)
        .where(F.col(ANCHOR).isNotNull())
        .dropna(subset=keys)
        .distinct()
    )
    sliding = {a: out for a, out in others.items() if a.fn.partial == "moments"}
    if sliding:
        joined = joined.join(
            _sliding_moments(tiles, anchors, keys, sliding), [*keys, ANCHOR], "left"
        )
    for aggregation, output in others.items():
        if aggregation.fn.name in MERGED:
            merge = _last_n if aggregation.fn.name == "last_n" else _approx_count_distinct
            merged = merge(lookup, anchors, aggregation)
            joined = joined.join(merged.withColumnRenamed("value", output), [*keys, ANCHOR], "left")
    return joined.select(*(c for c in spine.columns if c != ANCHOR), *lookup.aggregations.values())


def _last_n(lookup: AggregateLookup, anchors: DataFrame, aggregation: Aggregation) -> DataFrame:
    """(keys, anchor, value) of a last_n aggregation, without a sliding collect.

    Tile items are numbered per entity in time order; a running max finds, for each anchor, the
    number of the last item before it, so its n candidates are an equi-join on (keys, number).
    """
    n = aggregation.fn.n
    keys = list(lookup.join_keys)
    value_type = lookup.column_types.get(aggregation.column, "string")
    items = lookup.tiles.select(
        *keys,
        F.unix_micros(TILE_START).alias(ORDER),
        F.explode(F.from_json(aggregation.partial_column, _items_type(value_type))).alias("item"),
    )
    numbered = items.withColumn(
        "pos",
        F.row_number().over(
            Window.partitionBy(*keys).orderBy(ORDER, F.col("item.ts"), F.col("item.v"))
        ),
    )
    before = (
        Window.partitionBy(*keys)
        .orderBy(ORDER, KIND)
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    last_before = (
        numbered.select(*keys, ORDER, F.lit(1).alias(KIND), "pos")
        .unionByName(
            anchors.select(
                *keys,
                F.col(ANCHOR).alias(ORDER),
                F.lit(0).alias(KIND),
                F.lit(None).cast("int").alias("pos"),
            )
        )
        .select(*keys, ORDER, KIND, F.max("pos").over(before).alias("last_pos"))
        .where(F.col(KIND) == 0)
    )
    candidates = last_before.select(
        *keys,
        F.col(ORDER).alias(ANCHOR),
        F.explode(
            F.sequence(F.greatest(F.col("last_pos") - n + 1, F.lit(1)), F.col("last_pos"))
        ).alias("pos"),
    )
    window_start = F.col(ANCHOR) - _micros(aggregation.time_window)
    return (
        candidates.join(numbered, [*keys, "pos"])
        .where(F.col(ORDER) >= window_start)
        .groupBy(*keys, ANCHOR)
        .agg(F.slice(F.sort_array(F.collect_list("item"), asc=False), 1, n).alias("items"))
        .select(*keys, ANCHOR, F.transform("items", lambda item: item.getField("v")).alias("value"))
    )


def _approx_count_distinct(
    lookup: AggregateLookup, anchors: DataFrame, aggregation: Aggregation
) -> DataFrame:
    """(keys, anchor, value) of an approx_count_distinct aggregation, from a hop hierarchy.

    Sketches merge by a max, which cannot be undone like a running total. So, as in Chronon
    and Tecton, the tiles' registers are merged once into aligned blocks of 2**level tiles for
    every level up to the window; the window [A - w, A) of each anchor splits into at most two
    blocks per level (the blocks inside it whose parent block is not), found by arithmetic on
    A, and an equi-join on (keys, level, block start) brings their registers: anchors x
    2 log2(w / interval) blocks, never anchors x tiles.
    """
    keys = list(lookup.join_keys)
    step = _micros(lookup.interval)
    window = _micros(aggregation.time_window)
    sizes = [step << level for level in range((window // step).bit_length())]
    registers = lookup.tiles.select(
        *keys,
        F.unix_micros(TILE_START).alias(ORDER),
        F.explode(F.from_json(aggregation.partial_column, "array<bigint>")).alias("code"),
    )
    start = F.col(ORDER)
    blocks = (
        registers.select(
            *keys,
            "code",
            F.explode(
                F.array(
                    *(
                        F.struct(
                            F.lit(level).alias("level"),
                            (start - F.pmod(start, F.lit(size))).alias("start"),
                        )
                        for level, size in enumerate(sizes)
                    )
                )
            ).alias("block"),
        )
        .groupBy(
            *keys,
            F.col("block.level").alias("level"),
            F.col("block.start").alias("block_start"),
            F.shiftright("code", RANK_BITS).alias("index"),
        )
        .agg(F.max(F.col("code").bitwiseAND((1 << RANK_BITS) - 1)).alias("rank"))
    )

    end = F.col(ANCHOR)
    begin = end - window

    def inside(size: int) -> tuple[Column, Column]:
        """The first and the end of the blocks of `size` inside the window."""
        return begin + F.pmod(-begin, F.lit(size)), end - F.pmod(end, F.lit(size))

    chosen = []
    for level, size in enumerate(sizes):
        first, last = inside(size)
        parents = inside(sizes[level + 1]) if level + 1 < len(sizes) else None
        for block, used in ((first, first < last), (last - size, last - size > first)):
            if parents is not None:  # a block whose parent is inside is merged by the parent
                used = used & ~((block >= parents[0]) & (block < parents[1]))
            chosen.append(
                F.when(used, F.struct(F.lit(level).alias("level"), block.alias("block_start")))
            )
    wanted = anchors.select(*keys, ANCHOR, F.explode(F.array(*chosen)).alias("block")).where(
        F.col("block").isNotNull()
    )
    ranks = (
        wanted.select(*keys, ANCHOR, "block.level", "block.block_start")
        .join(blocks, [*keys, "level", "block_start"])
        .groupBy(*keys, ANCHOR, "index")
        .agg(F.max("rank").alias("rank"))
    )
    estimates = _estimates(ranks, keys, aggregation.fn.n)
    return anchors.join(estimates, [*keys, ANCHOR], "left").select(
        *keys, ANCHOR, F.coalesce("value", F.lit(0).cast("bigint")).alias("value")
    )


def _estimates(ranks: DataFrame, keys: list[str], precision: int) -> DataFrame:
    """(keys, anchor, value): `featureplane.aggregation.hll_estimate` of each anchor's ranks
    ({keys, anchor, index, rank} rows), computed alike, bit for bit."""
    m = 1 << precision
    rank = F.col("rank")
    sums = ranks.groupBy(*keys, ANCHOR).agg(
        F.count("index").alias("set"),
        F.sum(F.when(rank <= SPLIT, F.pow(F.lit(2.0), SPLIT - rank).cast("bigint"))).alias("high"),
        F.sum(F.when(rank > SPLIT, F.pow(F.lit(2.0), 2 * SPLIT - rank).cast("bigint"))).alias(
            "low"
        ),
    )
    unset = F.lit(m) - F.col("set")
    high = (unset * (1 << SPLIT) + F.coalesce("high", F.lit(0))).cast("double")
    low = F.coalesce("low", F.lit(0)).cast("double")
    harmonic = high * 2.0**-SPLIT + low * 2.0 ** (-2 * SPLIT)
    raw = F.lit(hll_scale(precision)) / harmonic
    linear = F.lit(float(m)) * F.log(F.lit(float(m)) / unset.cast("double"))
    estimate = F.when((unset > 0) & (raw <= 2.5 * m), linear).otherwise(raw)
    return sums.select(*keys, ANCHOR, F.floor(estimate + 0.5).cast("bigint").alias("value"))
