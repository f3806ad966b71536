"""Tiles: events pre-aggregated per entity and interval, and window values computed from them.

`compute_tiles` turns a window of events into one row per (join keys, tile_start) holding the
partial aggregate of every (function, column) the view needs. `aggregate_join` gives each spine
row the value of every aggregation at its timestamp t, from the tiles with tile_start in
[floor(t) - window, floor(t)): the spine's distinct (keys, floor(t)) anchors are unioned with the
tiles, and one sliding range frame per window merges the partials before each anchor — a single
sort per entity, never spine x tiles. The merge and finalize mirror `featureplane.aggregation`,
which serves the same tiles online.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from featureplane.aggregation import TILE_START, Aggregation, AggregationFunction

ORDER = "__fp_t"
KIND = "__fp_kind"
LAG = "__fp_lag"
RUNNING = ("count", "sum", "mean")  # invertible: running totals instead of sliding frames


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
    recent = F.when(
        F.col(column).isNotNull(),
        F.struct(F.unix_micros(F.col(ts)).alias("ts"), F.col(column).alias("v")),
    )
    return F.to_json(F.slice(F.sort_array(F.collect_list(recent), asc=False), 1, function.n))


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


def _merged(function: AggregationFunction, partial: str, window: Window) -> Column:
    """The merge of the partials in the frame, finalized to the feature value."""
    name = function.name
    field = F.col(partial)
    if name in ("min", "max"):
        return getattr(F, name)(field).over(window)
    if name == "first":
        return F.min(field).over(window).getField("v")
    if name == "last":
        return F.max(field).over(window).getField("v")
    n = F.sum(field.getField("n")).over(window)
    # Tile moments are merged around the entity's shift (the smallest tile mean, see
    # aggregate_join), which keeps the sums small: var = (Σm2 + Σn·d² − (Σn·d)²/N) / (N − 1).
    tile_n = field.getField("n")
    offset = field.getField("mean") - F.col(_shift(partial))
    spread = F.sum(field.getField("m2") + tile_n * offset * offset).over(window)
    moved = F.sum(tile_n * offset).over(window)
    variance = F.greatest((spread - moved * moved / n) / (n - 1), F.lit(0.0))
    return F.when(n >= 2, F.sqrt(variance) if name == "stddev" else variance)


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


def aggregate_join(spine: DataFrame, timestamp_column: str, lookup: AggregateLookup) -> DataFrame:
    """The spine with the lookup's aggregation values at each row's time appended."""
    keys = list(lookup.join_keys)
    types = dict(spine.dtypes)
    anchor = "__fp_anchor"
    spine = spine.withColumn(anchor, floor_micros(F.col(timestamp_column), lookup.interval))
    anchors = (
        spine.select(*keys, anchor).where(F.col(anchor).isNotNull()).dropna(subset=keys).distinct()
    )
    needed = sorted({a.partial_column for a in lookup.aggregations})
    tile_types = dict(lookup.tiles.dtypes)
    rows = lookup.tiles.select(
        *(F.col(key).cast(types[key]).alias(key) for key in keys),
        F.unix_micros(TILE_START).alias(ORDER),
        F.lit(0).alias(KIND),
        *needed,
    ).unionByName(
        anchors.select(
            *keys,
            F.col(anchor).alias(ORDER),
            F.lit(1).alias(KIND),
            *(F.lit(None).cast(tile_types[column]).alias(column) for column in needed),
        )
    )
    moments = sorted({a.partial_column for a in lookup.aggregations if a.fn.partial == "moments"})
    entity = Window.partitionBy(*keys)
    rows = rows.select(
        "*",
        *(F.min(F.col(p).getField("mean")).over(entity).alias(_shift(p)) for p in moments),
    )
    frames = {
        a.time_window: Window.partitionBy(*keys)
        .orderBy(ORDER)
        .rangeBetween(-_micros(a.time_window), -1)
        for a in lookup.aggregations
    }
    sliding = {
        a: out for a, out in lookup.aggregations.items() if a.fn.name not in ("last_n", *RUNNING)
    }
    values = rows.select(
        *keys,
        F.col(ORDER).alias(anchor),
        F.col(KIND),
        *(
            _merged(a.fn, a.partial_column, frames[a.time_window]).alias(output)
            for a, output in sliding.items()
        ),
    ).where(F.col(KIND) == 1)
    joined = spine.join(values.drop(KIND), on=[*keys, anchor], how="left")
    running = {a: out for a, out in lookup.aggregations.items() if a.fn.name in RUNNING}
    if running:
        totals = _running_totals(lookup.tiles, anchors, keys, types, anchor, running)
        joined = joined.join(totals, on=[*keys, anchor], how="left")
    for aggregation, output in lookup.aggregations.items():
        if aggregation.fn.name == "last_n":
            value_type = lookup.column_types.get(aggregation.column, "string")
            recent = _last_n(lookup.tiles, anchors, keys, types, anchor, aggregation, value_type)
            joined = joined.join(recent.withColumnRenamed("value", output), [*keys, anchor], "left")
    return joined.select(*(c for c in spine.columns if c != anchor), *lookup.aggregations.values())


def _running_totals(
    tiles: DataFrame,
    anchors: DataFrame,
    keys: list[str],
    types: dict[str, str],
    anchor: str,
    aggregations: dict[Aggregation, str],
) -> DataFrame:
    """(keys, anchor, values) of count, sum and mean, as differences of running totals.

    The total of the tiles in [A - w, A) is the running total before A minus the one before
    A - w. Probe rows at A and at A - w for each window sort before tiles of the same time; one
    unbounded running sum per partial (cheap, unlike a sliding range frame) gives every total,
    and one grouping per anchor subtracts them. Integer counts and sums are exact; a double sum
    can lose about machine epsilon times the running total.
    """
    lags = sorted({0, *(_micros(a.time_window) for a in aggregations)})
    partials = sorted({a.partial_column for a in aggregations})
    tile_types = dict(tiles.dtypes)
    fields = {p: [p] if tile_types[p] == "bigint" else [f"{p}.n", f"{p}.s"] for p in partials}
    columns = [c for p in partials for c in fields[p]]
    names = {c: f"__fp_total_{n}" for n, c in enumerate(columns)}
    rows = tiles.select(
        *(F.col(key).cast(types[key]).alias(key) for key in keys),
        F.unix_micros(TILE_START).alias(ORDER),
        F.lit(1).alias(KIND),
        F.lit(None).cast("bigint").alias(anchor),
        F.lit(None).cast("bigint").alias(LAG),
        *(F.col(c).alias(names[c]) for c in columns),
    )
    probe_types = dict(rows.dtypes)
    for lag in lags:
        rows = rows.unionByName(
            anchors.select(
                *keys,
                (F.col(anchor) - lag).alias(ORDER),
                F.lit(0).alias(KIND),
                anchor,
                F.lit(lag).cast("bigint").alias(LAG),
                *(F.lit(None).cast(probe_types[names[c]]).alias(names[c]) for c in columns),
            )
        )
    before = (
        Window.partitionBy(*keys)
        .orderBy(ORDER, KIND)
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    probes = rows.select(
        *keys,
        anchor,
        LAG,
        KIND,
        *(F.coalesce(F.sum(names[c]).over(before), F.lit(0)).alias(names[c]) for c in columns),
    ).where(F.col(KIND) == 0)
    pivoted = probes.groupBy(*keys, anchor).agg(
        *(
            F.max(F.when(F.col(LAG) == lag, F.col(names[c]))).alias(f"{names[c]}_{lag}")
            for c in columns
            for lag in lags
        )
    )

    def total(column: str, window: timedelta) -> Column:
        return F.col(f"{names[column]}_0") - F.col(f"{names[column]}_{_micros(window)}")

    values = []
    for aggregation, output in aggregations.items():
        p, w = aggregation.partial_column, aggregation.time_window
        if aggregation.fn.name == "count":
            values.append(total(p, w).alias(output))
            continue
        n, s = total(f"{p}.n", w), total(f"{p}.s", w)
        value = s if aggregation.fn.name == "sum" else s / n
        values.append(F.when(n > 0, value).alias(output))
    return pivoted.select(*keys, anchor, *values)


def _last_n(
    tiles: DataFrame,
    anchors: DataFrame,
    keys: list[str],
    types: dict[str, str],
    anchor: str,
    aggregation: Aggregation,
    value_type: str,
) -> DataFrame:
    """(keys, anchor, value) of a last_n aggregation, without a sliding collect.

    Tile items are numbered per entity in time order; a running max finds, for each anchor, the
    number of the last item before it, so its n candidates are an equi-join on (keys, number).
    """
    n = aggregation.fn.n
    items = tiles.select(
        *(F.col(key).cast(types[key]).alias(key) for key in keys),
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
                F.col(anchor).alias(ORDER),
                F.lit(0).alias(KIND),
                F.lit(None).cast("int").alias("pos"),
            )
        )
        .select(*keys, ORDER, KIND, F.max("pos").over(before).alias("last_pos"))
        .where(F.col(KIND) == 0)
    )
    candidates = last_before.select(
        *keys,
        F.col(ORDER).alias(anchor),
        F.explode(
            F.sequence(F.greatest(F.col("last_pos") - n + 1, F.lit(1)), F.col("last_pos"))
        ).alias("pos"),
    )
    window_start = F.col(anchor) - _micros(aggregation.time_window)
    return (
        candidates.join(numbered, [*keys, "pos"])
        .where(F.col(ORDER) >= window_start)
        .groupBy(*keys, anchor)
        .agg(F.slice(F.sort_array(F.collect_list("item"), asc=False), 1, n).alias("items"))
        .select(*keys, anchor, F.transform("items", lambda item: item.getField("v")).alias("value"))
    )
