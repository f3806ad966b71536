"""Time-window aggregations: tiles on Spark, window values offline and online, and definitions.

Events are tiled per (join keys, tile_start = floor(ts, interval) since the Unix epoch). At spine
time t an aggregation covers the events with event time in [floor(t) - window, floor(t)):
completed tiles only. count counts non-null values (0 for an empty window); var and stddev are
sample statistics (null below two values); first and last take the value at the earliest and
latest event time among non-null values, ties broken by the smaller value for first and the
greater for last; everything but count is null for an empty window. A spine row with a null key
or null time gets null for every aggregation, and every spine row comes back once.

`compute_tiles` + `aggregate_join` on Sail are checked against DuckDB SQL over the raw events
(an independent range join, no tiles), the online Python merge (`featureplane.aggregation`)
against the offline values on the same tiles, classic JVM PySpark against Sail, and the demo's
aggregate views end to end through `FeatureStore.get_historical_features`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aggregation_cases as agg
import duckdb
import numpy as np
import pandas as pd
import pytest
from classic import run_on_classic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyspark.sql import functions as F

from conftest import TINY, read_delta
from featureplane import (
    Aggregation,
    Array,
    BatchSource,
    Bool,
    Date,
    Entity,
    FeatureViewError,
    Field,
    Float32,
    Float64,
    Int32,
    Int64,
    Repository,
    String,
    Timestamp,
    approx_count_distinct,
    batch_feature_view,
    last_n,
)
from featureplane.aggregation import (
    RANK_BITS,
    TILE_ORIGIN,
    TILE_START,
    TILE_STEP,
    AggregationFunction,
    aggregate,
    aggregate_before,
    anchor_micros,
    finalize,
    floor_time,
    hll_estimate,
    merge_partials,
    pack_tiles,
    suffix_estimates,
)
from featureplane.compute.tiles import AggregateLookup, aggregate_join, compute_tiles
from featureplane.compute.transform import run_transformation
from featureplane.compute.window import TimeWindow
from featureplane.feature_store import FeatureStore
from featureplane.offline_store import OfflineStore

T0, EARLY, H, DAY, MIN10, US = agg.T0, agg.EARLY, agg.H, agg.DAY, agg.MIN10, agg.US
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
APPROXIMATE = {"mean", "var", "stddev"}
"""Functions whose values may differ by rounding between engines: compared with rel 1e-9."""


def micros(interval: timedelta) -> int:
    return interval // US


# ---- the oracle: DuckDB SQL over the raw events ------------------------------------------------


def _oracle_expression(a: Aggregation) -> str:
    """DuckDB aggregate of the events in a's window before the anchor (joined as e, s)."""
    value = f"e.{a.column}"
    frame = f"e.us >= s.anchor - {micros(a.time_window)}"
    plain = {
        "count": "count",
        "sum": "sum",
        "mean": "avg",
        "min": "min",
        "max": "max",
        "var": "var_samp",
        "stddev": "stddev_samp",
    }
    name = a.fn.name
    if name in plain:
        return f"{plain[name]}({value}) FILTER (WHERE {frame})"
    if name == "approx_count_distinct":  # exact: the test allows the sketch's error
        return f"count(DISTINCT {value}) FILTER (WHERE {frame})"
    if name == "last_n":  # the n latest values, latest first; ties: the greater value first
        recent = f"list({value} ORDER BY e.us DESC, {value} DESC)"
        return f"({recent} FILTER (WHERE {frame} AND {value} IS NOT NULL))[1:{a.fn.n}]"
    # first: earliest time, then the smallest value; last: latest time, then the greatest value
    pick = {"first": "arg_min", "last": "arg_max"}[name]
    return f"{pick}({value}, (e.us, {value})) FILTER (WHERE {frame} AND {value} IS NOT NULL)"


def oracle(case: agg.Case) -> list[dict]:
    """Each spine row (by rid) with its aggregation values, computed by DuckDB from the events."""
    con = duckdb.connect()
    con.register("raw_events", agg.arrow(case.event_columns, case.events))
    con.register("raw_spine", agg.arrow(case.spine_columns, case.spine))
    step = micros(case.interval)
    longest = max(micros(a.time_window) for a in case.aggregations)
    keys = case.join_keys
    null_key = " OR ".join(f"s.{k} IS NULL" for k in keys)
    outputs = ",\n".join(
        f"CASE WHEN s.anchor IS NULL OR {null_key} THEN NULL ELSE {_oracle_expression(a)} END "
        f'AS "{a.name}"'
        for a in case.aggregations
    )
    sql = f"""
        WITH e AS (SELECT *, epoch_us(ts) AS us FROM raw_events),
        s AS (
            SELECT rid, {", ".join(keys)},
                   epoch_us(ts) - ((epoch_us(ts) % {step}) + {step}) % {step} AS anchor
            FROM raw_spine
        )
        SELECT s.rid, {outputs}
        FROM s LEFT JOIN e
          ON {" AND ".join(f"e.{k} = s.{k}" for k in keys)}
         AND e.us >= s.anchor - {longest} AND e.us < s.anchor
        GROUP BY s.rid, s.anchor, {", ".join(f"s.{k}" for k in keys)}
        ORDER BY s.rid
    """
    cursor = con.execute(sql)
    names = [column[0] for column in cursor.description]
    values = {row[0]: dict(zip(names[1:], row[1:], strict=True)) for row in cursor.fetchall()}
    return [{**row, **values[row["rid"]]} for row in case.spine_records()]


def within_sketch_error(estimate: int, exact: int, precision: int) -> bool:
    """|estimate - exact| <= 4 standard errors (1.04 / sqrt(2**precision) relative).

    A correct sketch misses it about once in 15,000 values. The bound rounds down, so it is
    exact below about 15 distinct values at precision 12: linear counting gives them exactly
    unless two values share a register, and the cases' few values do not.
    """
    return abs(estimate - exact) <= 4 * 1.04 / math.sqrt(2**precision) * exact


def same(function: AggregationFunction, actual, expected, estimates: bool = False) -> bool:
    """Equal values: exactly, within rel 1e-9 for the functions that divide, and within the
    sketch's error for approx_count_distinct against exact counts (`estimates`)."""
    if actual is None or expected is None:
        return actual is None and expected is None
    if function.name in APPROXIMATE:
        return math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-12)
    if estimates and function.name == "approx_count_distinct":
        return within_sketch_error(actual, expected, function.n)
    return actual == expected


def assert_rows(
    case: agg.Case, actual: list[dict], expected: list[dict], estimates: bool = False
) -> None:
    """Same spine rows in rid order, and every aggregation value the same (`estimates`: the
    expected rows hold exact distinct counts, see `same`)."""
    spine_columns = list(case.spine_columns)
    assert [{c: r[c] for c in spine_columns} for r in actual] == [
        {c: r[c] for c in spine_columns} for r in expected
    ]
    wrong = [
        (r["rid"], a.name, r[a.name], e[a.name])
        for r, e in zip(actual, expected, strict=True)
        for a in case.aggregations
        if not same(a.fn, r[a.name], e[a.name], estimates)
    ]
    assert not wrong, f"(rid, aggregation, actual, expected): {wrong[:10]}"


def by_rid(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda row: row["rid"])


def offline(spark, case: agg.Case) -> list[dict]:
    """aggregate_join's rows on Sail, after checking its columns and their types."""
    result = agg.run_case(spark, case)
    outputs = [(a.name, a.output_type(agg.VALUE_TYPES[a.column]).spark) for a in case.aggregations]
    assert result.dtypes == [*case.spine_columns.items(), *outputs]
    return by_rid(result.toArrow().to_pylist())


def check_case(spark, case: agg.Case) -> None:
    assert_rows(case, offline(spark, case), oracle(case), estimates=True)


# ---- hand-made and seeded cases ----------------------------------------------------------------


def test_edge_case_has_the_specified_values(spark):
    """The edge case's values spelled out (1h tiles), then the whole case against DuckDB."""
    case = agg.edge_case()
    columns = ("i_count_1h", "s_count_1d", "i_sum_2h", "s_first_2h", "latest_i")
    expected = {
        # [0h, 1h): 1, 2 (tied at 0h: first s is "a" < "b") and 4 at 1h - 1 us; the 1d window
        # starts exactly at the row of 1h the day before ("é")
        0: (3, 3, 7, "a", 4),
        1: (0, 1, None, None, None),  # 1 us before 1h: floor is 0h, only the day-before row
        2: (3, 3, 7, "a", 4),  # inside the tile of 1h: still the tiles before 1h
        3: (0, 5, None, None, None),  # [0h, 24h): b, a, z, "", y; the tile of nulls counts 0
        4: (0, 3, None, None, None),  # from 1h on: z, "", y
        5: (2, 5, 33, "", 32),  # the late pair tied at 4h40: first "" < "y", last 32 > 1
        6: (0, 0, None, None, None),  # a week later: empty windows count 0, the rest is null
        7: (None,) * 5,  # null key
        8: (None,) * 5,  # null time
        9: (0, 0, None, None, None),  # a user without events
        10: (1, 1, 64, "q", 64),
        11: (3, 3, 7, "a", 4),  # the duplicate
    }
    actual = {row["rid"]: row for row in offline(spark, case)}
    assert {rid: tuple(actual[rid][c] for c in columns) for rid in actual} == expected
    assert actual[0]["x_mean_1d"] == 2.0  # 4.0, 0.5, 1.5
    assert actual[0]["x_stddev_1d"] == pytest.approx(math.sqrt(3.25), rel=1e-12)
    assert actual[0]["b_max_2h"] is True
    assert actual[1]["x_stddev_1d"] is None  # a single value
    assert actual[3]["s_min_1d"] == ""
    assert actual[4]["x_first_1d"] == -2.5  # the row exactly at 1h
    assert actual[5]["p_var_7d"] == pytest.approx(197 / 30, rel=1e-12)  # 1, 2, 3, 5, 7, 7
    assert actual[5]["s_last_7d"] == "y"
    # last_n: latest first, ties on time by the greater value first
    assert (actual[0]["s_last_2_2h"], actual[0]["i_last_3_1d"]) == (["b", "a"], [4, 2, 1])
    assert (actual[5]["s_last_2_2h"], actual[5]["i_last_3_1d"]) == (["y", ""], [32, 1, 8])
    assert (actual[4]["s_last_2_2h"], actual[6]["i_last_3_1d"]) == (None, None)
    # distinct non-null values: a, b, é at rid 0; b, a, z, "", y at rid 3; none a week later
    distinct = "s_approx_count_distinct_1d"
    assert [actual[rid][distinct] for rid in (0, 3, 6, 7, 9)] == [3, 5, 0, None, 0]
    check_case(spark, case)


def test_no_events_and_no_spine_rows(spark):
    case = agg.edge_case()
    no_events = dataclasses.replace(case, events=[])
    rows = offline(spark, no_events)
    assert_rows(no_events, rows, oracle(no_events), estimates=True)
    assert {row["i_count_1h"] for row in rows} == {0, None}  # null for null keys and times
    assert offline(spark, dataclasses.replace(case, spine=[])) == []


def test_spine_keys_are_matched_across_integer_types(spark):
    """A spine with int user ids reads tiles keyed by bigint ones (keys take the spine's type)."""
    case = agg.edge_case()
    _, spine = agg.frames(spark, case)
    spine = spine.withColumn("user_id", spine["user_id"].cast("int"))
    result = aggregate_join(spine, "ts", agg.lookup(case, agg.tiles_of(spark, case)))
    assert dict(result.dtypes)["user_id"] == "int"
    assert_rows(case, by_rid(result.toArrow().to_pylist()), oracle(case), estimates=True)


@pytest.mark.parametrize("name", [n for n in agg.cases() if n != "edge"])
def test_seeded_cases_match_duckdb(spark, name):
    check_case(spark, agg.cases()[name])


def test_the_cases_cover_every_function_key_set_and_interval():
    every = list(agg.cases().values())
    functions = {f if isinstance(f, str) else f.name for f in agg.FUNCTIONS}
    assert {a.fn.name for c in every for a in c.aggregations} == functions
    assert {c.join_keys for c in every} == set(agg.KEY_SETS)
    assert {c.interval for c in every} == {H, DAY}


# ---- property-based: hypothesis against DuckDB, and online against offline ---------------------


def nullable(strategy, one_in: int = 6):
    """`strategy`, or None about once in `one_in` draws."""
    return st.tuples(st.integers(0, one_in - 1), strategy).map(
        lambda p: None if p[0] == 0 else p[1]
    )


VALUES = {
    "i": st.sampled_from([-3, 0, 1, 2, 7, 100]),
    "p": st.sampled_from([1, 2, 3, 10]),
    "x": st.sampled_from([-2.5, 0.0, 0.25, 1.5, 4.0, 1000.5]),
    "s": st.sampled_from(["", "a", "b", "ab", "é", "z"]),
    "b": st.booleans(),
}
EVENT_KEYS = {"user_id": st.sampled_from([1, 2, 3]), "ad_id": st.sampled_from(["a1", "a2"])}
SPINE_KEYS = {"user_id": st.sampled_from([1, 2, 3, 4]), "ad_id": st.sampled_from(["a1", "a9"])}


def moments(base):
    """Times on a 10-minute grid over ten days, mostly at whole hours and days, sometimes 1 us off:
    events land exactly on tile starts and window boundaries."""
    return st.builds(
        lambda day, hour, tens, jitter: base + day * DAY + hour * H + tens * MIN10 + jitter * US,
        st.sampled_from([0, 0, 1, 1, 2, 3, 8]),
        st.sampled_from([0, 0, 1, 2, 11, 23]),
        st.sampled_from([0, 0, 0, 1, 5]),
        st.sampled_from([0, 0, 0, 0, 1, -1]),
    )


@st.composite
def aggregations(draw, windows: tuple[timedelta, ...]) -> tuple[Aggregation, ...]:
    chosen = []
    for function, column, window in draw(
        st.lists(
            st.tuples(
                st.sampled_from(agg.FUNCTIONS),
                st.sampled_from(list(agg.VALUE_TYPES)),
                st.sampled_from(windows),
            ),
            min_size=1,
            max_size=6,
        )
    ):
        if function in ("sum", "mean", "var", "stddev") and column not in agg.NUMERIC_COLUMNS:
            column = agg.NUMERIC_COLUMNS["sb".index(column)]
        chosen.append(Aggregation(column, function, window))
    return agg.spread(chosen)


@st.composite
def cases(draw) -> agg.Case:
    keys = draw(st.sampled_from(agg.KEY_SETS))
    interval = draw(st.sampled_from([H, DAY]))
    windows = agg.WINDOWS[interval]
    base = draw(st.sampled_from([T0, T0, EARLY]))
    values = [nullable(VALUES[c], 5) for c in agg.VALUE_TYPES]
    event = st.tuples(
        *(nullable(EVENT_KEYS[k], 10) for k in keys), nullable(moments(base), 15), *values
    )
    events = draw(st.lists(event, min_size=1, max_size=25))
    if events:  # rows tied with another on keys and time
        tied = draw(
            st.lists(st.tuples(st.integers(0, len(events) - 1), st.tuples(*values)), max_size=6)
        )
        events += [events[i][: len(keys) + 1] + new for i, new in tied]
    events = draw(st.permutations(events))  # late events: unsorted input
    labels = nullable(st.sampled_from(["p", "q"]), 4)
    spine = draw(
        st.lists(
            st.tuples(
                labels, *(nullable(SPINE_KEYS[k], 8) for k in keys), nullable(moments(base), 12)
            ),
            min_size=1,
            max_size=5,
        )
    )
    # after an event by a tile or a window (± 1 us): at the boundaries of its tile and window
    shifts = st.sampled_from([timedelta(0), interval, 2 * interval, *windows])
    for i, shift, jitter in draw(
        st.lists(
            st.tuples(st.integers(0, len(events) - 1), shifts, st.sampled_from([0, 0, 1, -1])),
            min_size=1,
            max_size=12,
        )
    ):
        moment = events[i][len(keys)]
        if moment is not None:
            spine.append(("w", *events[i][: len(keys)], moment + shift + jitter * US))
    spine += [spine[i] for i in draw(st.lists(st.integers(0, len(spine) - 1), max_size=3))]
    spine = [(rid, *row) for rid, row in enumerate(spine)]
    return agg.Case(keys, interval, draw(aggregations(windows)), events, spine)


PROPERTY = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@PROPERTY
@given(case=cases())
def test_aggregate_join_matches_duckdb(spark, case):
    check_case(spark, case)


def online_rows(case: agg.Case, tiles: list[dict]) -> list[dict]:
    """What `featureplane.aggregation.aggregate` gives each spine row from the collected tiles."""
    by_key: dict[tuple, list[dict]] = {}
    for tile in tiles:
        if tile["tile_start"] is None:  # events without a time: run_transformation drops them
            continue
        by_key.setdefault(tuple(tile[k] for k in case.join_keys), []).append(tile)
    rows = []
    for row in case.spine_records():
        key = tuple(row[k] for k in case.join_keys)
        served = row["ts"] is not None and None not in key
        values = {
            a.name: aggregate(a, by_key.get(key, []), row["ts"], case.interval) if served else None
            for a in case.aggregations
        }
        rows.append({**row, **values})
    return rows


@PROPERTY
@given(case=cases())
def test_online_aggregate_equals_aggregate_join(spark, case):
    """The Python merge over tiles collected from Sail gives every row its offline value."""
    tiles = agg.tiles_of(spark, case).toArrow().to_pylist()  # tile_start: aware UTC datetimes
    assert_rows(case, online_rows(case, tiles), offline(spark, case))


def test_online_aggregate_of_collected_rows(spark):
    """Tiles collected as Rows (structs -> dicts with asDict, tile_start made aware UTC) serve the
    same values as through Arrow."""
    case = agg.random_case(5)
    tiles = []
    for row in agg.tiles_of(spark, case).collect():
        tile = row.asDict(recursive=True)
        start = tile["tile_start"]
        if start is not None and start.tzinfo is None:
            tile["tile_start"] = start.astimezone(UTC)  # naive: local time
        tiles.append(tile)
    assert_rows(case, online_rows(case, tiles), offline(spark, case))


def test_online_window_selection_and_floor():
    """A window holds [floor(t) - window, floor(t)); floor_time works before the epoch too."""
    tiles = [{"tile_start": T0 + k * H, "count__x": 10**k} for k in range(0, 6)]
    t = T0 + 3 * H + 30 * timedelta(minutes=1)
    assert aggregate(Aggregation("x", "count", 2 * H), tiles, t, H) == 10**1 + 10**2
    assert aggregate(Aggregation("x", "count", H), tiles, T0 + H, H) == 10**0
    assert aggregate(Aggregation("x", "count", H), tiles[::-1], T0 + H, H) == 10**0
    assert floor_time(EARLY + DAY + US * -1, DAY) == EARLY
    assert floor_time(EARLY + 90 * timedelta(minutes=1), H) == EARLY + H
    count = Aggregation("x", "count", 3 * H)
    assert aggregate(count, tiles, T0 + 3 * H, H) == 10**0 + 10**1 + 10**2
    assert aggregate(count, [], T0, H) == 0
    assert aggregate(Aggregation("x", "sum", H), [], T0, H) is None


SUFFIXED = [
    Aggregation("x", "count", 2 * H),
    Aggregation("i", "sum", 3 * H),
    Aggregation("i", "mean", H),
    Aggregation("f", "sum", 2 * H),
    Aggregation("f", "mean", 4 * H),
    Aggregation("u", approx_count_distinct(4), 3 * H),
    Aggregation("u", approx_count_distinct(4), 6 * H),
    Aggregation("m", "min", 3 * H),
    Aggregation("m", "max", 2 * H),
    Aggregation("g", "max", 3 * H),
]
suffixed_tiles = st.lists(
    st.fixed_dictionaries(
        {
            "hour": st.integers(0, 8),
            "count__x": st.integers(0, 50),
            "total__i": st.none()
            | st.integers(1, 4).flatmap(
                lambda n: st.fixed_dictionaries({"n": st.just(n), "s": st.integers(-99, 99)})
            ),
            "total__f": st.none()
            | st.fixed_dictionaries({"n": st.just(1), "s": st.floats(-1e6, 1e6)}),
            "hll4__u": st.none()
            | st.lists(st.integers(0, 200), max_size=6).map(lambda v: sketch(v, 4)),
            "min__m": st.none() | st.integers(-5, 5),
            "max__m": st.none() | st.integers(-5, 5),
            "max__g": st.none() | st.floats(-9, 9),
        }
    ),
    max_size=8,
    unique_by=lambda tile: tile["hour"],
)


@settings(max_examples=150, deadline=None)
@given(suffixed_tiles, st.integers(-2, 12))
def test_windows_from_suffix_merges_equal_merges_of_their_tiles(drawn, anchor_hour):
    """What a record keeps as suffix merges gives every window the value of merging the
    window's tiles, for anchors before, among and after the tiles; so do the tiles as records
    kept them before `TILE_ORIGIN`, with starts in epoch microseconds, and columns without values
    left out of the record read as the empty windows they are."""
    tiles = [{TILE_START: T0 + t.pop("hour") * H, **t} for t in drawn]
    tiles.sort(key=lambda tile: tile[TILE_START])
    packed = pack_tiles(tiles, H)
    origin, step = packed[TILE_ORIGIN], packed[TILE_STEP]
    raw = {TILE_START: [origin + start * step for start in packed[TILE_START]]}
    raw |= {name: [t.get(name) for t in tiles] for name in ("count__x", "total__i", "total__f")}
    raw |= {
        name: [t.get(name) for t in tiles] for name in ("hll4__u", "min__m", "max__m", "max__g")
    }
    end = anchor_micros(T0 + anchor_hour * H, H)
    assert aggregate_before(SUFFIXED, packed, end) == aggregate_before(SUFFIXED, raw, end)
    assert not {"count__x", "total__i"} & packed.keys()  # kept as suffix totals alone


# ---- approx_count_distinct: the sketch, its merge and its hop hierarchy -----------------------


def sketch(hashes: list[int], precision: int) -> str:
    """A tile partial as `compute_tiles` writes it, from signed 64-bit hashes: the high bits
    pick the register, the rank is 1 + the leading zeros of the rest; the greatest rank each."""
    width = 64 - precision
    ranks: dict[int, int] = {}
    for signed in hashes:
        h = signed % 2**64
        index, rank = h >> width, width + 1 - (h % 2**width).bit_length()
        ranks[index] = max(rank, ranks.get(index, 0))
    return json.dumps(sorted(i << RANK_BITS | r for i, r in ranks.items()), separators=(",", ":"))


def merged_estimate(partials: list, precision: int) -> int:
    function = approx_count_distinct(precision)
    return hll_estimate(merge_partials(function, partials), precision)


@pytest.mark.parametrize("precision", [4, 10, 12, 16])
@pytest.mark.parametrize("n", [10, 3_000, 200_000])
def test_sketch_estimates_within_its_stated_error(precision, n):
    hashes = np.random.default_rng(precision * n).integers(-(2**63), 2**63, n, dtype=np.int64)
    estimate = merged_estimate([sketch(hashes.tolist(), precision)], precision)
    assert within_sketch_error(estimate, n, precision)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=40), min_size=1, max_size=5),
    st.sampled_from([4, 8, 16]),
)
def test_sketches_merge_like_the_sketch_of_the_union(parts, precision):
    """Merging is associative and commutative, and gives exactly the sketch of all values."""
    function = approx_count_distinct(precision)
    partials = [sketch(part, precision) for part in parts]
    whole = merge_partials(function, [sketch([h for part in parts for h in part], precision)])
    assert merge_partials(function, partials) == whole
    assert merge_partials(function, partials[::-1]) == whole
    assert (
        merge_partials(function, [merge_partials(function, partials[:1]), *partials[1:]]) == whole
    )
    assert hll_estimate(whole, precision) == merged_estimate(partials, precision)


def sketch_lists(precision: int):
    code = st.tuples(st.integers(0, 2**precision - 1), st.integers(1, 65 - precision))
    sketch_codes = st.lists(code.map(lambda c: c[0] << RANK_BITS | c[1]), max_size=30)
    return st.lists(st.none() | sketch_codes.map(json.dumps), max_size=6)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([4, 6, 12]).flatmap(lambda p: st.tuples(st.just(p), sketch_lists(p))))
def test_suffix_estimates_are_the_estimates_of_suffix_merges(drawn):
    """Kept up to date register by register, ranks above SPLIT included, they equal a full
    estimate of each suffix's merge."""
    precision, sketches = drawn
    function = approx_count_distinct(precision)
    expected = [
        finalize(function, merge_partials(function, sketches[i:])) for i in range(len(sketches) + 1)
    ]
    assert suffix_estimates(sketches, precision) == expected


def test_linear_counting_rounds_alike_on_every_engine():
    """m ln(m / unset) is never within 1e-11 (relative) of a half, so Spark's, Sail's and
    Python's logarithms, which may differ in the last bit, round it to the same count."""
    for precision in range(4, 17):
        m = 2**precision
        for unset in range(1, m + 1):
            estimate = m * math.log(m / unset)
            assert abs(estimate % 1 - 0.5) > 1e-11 * max(estimate, 1)


def test_tile_sketch_holds_the_registers_of_xxhash64(spark):
    """compute_tiles' registers are those of Spark's xxhash64 of the non-null values."""
    values = [None, *range(-500, 1500, 3), 2**40, -(2**62)]
    frame = spark.createDataFrame([(1, T0, v) for v in values], "k bigint, ts timestamp, i bigint")
    aggregations = [Aggregation("i", approx_count_distinct(p), DAY) for p in (4, 12)]
    tile = compute_tiles(frame, ["k"], "ts", aggregations, H).first()
    hashes = [r[0] for r in frame.where("i IS NOT NULL").select(F.xxhash64("i")).collect()]
    assert tile["hll4__i"] == sketch(hashes, 4)
    assert tile["hll12__i"] == sketch(hashes, 12)


@st.composite
def sketched_tiles(draw):
    """Tiles of random registers (ranks up to the largest), and a spine around them."""
    precision = draw(st.sampled_from([4, 8, 16]))
    interval = draw(st.sampled_from([H, DAY]))
    window = draw(st.sampled_from([*agg.WINDOWS[interval], 3 * interval, 13 * interval]))
    base = draw(st.sampled_from([T0, EARLY]))
    register = st.tuples(st.integers(0, 2**precision - 1), st.integers(1, 65 - precision))
    starts = st.tuples(st.sampled_from([1, 2]), st.integers(0, 40))
    tiles = draw(st.dictionaries(starts, st.lists(register, max_size=6), min_size=1, max_size=30))
    rows = [
        (
            user,
            base + k * interval,
            json.dumps(sorted(i << RANK_BITS | r for i, r in dict(sorted(regs)).items())),
        )
        for (user, k), regs in tiles.items()
    ]
    moment = st.tuples(
        st.sampled_from([1, 2, 3]), st.integers(0, 50), st.sampled_from([0, 0, 1, -1])
    )
    spine = [
        (rid, user, base + k * interval + jitter * US)
        for rid, (user, k, jitter) in enumerate(draw(st.lists(moment, min_size=1, max_size=20)))
    ]
    return Aggregation("i", approx_count_distinct(precision), window), interval, rows, spine


@PROPERTY
@given(drawn=sketched_tiles())
def test_approx_count_distinct_of_random_tiles_equals_the_python_merge(spark, drawn):
    """aggregate_join's hop hierarchy gives exactly the Python merge of the window's tiles,
    raw estimates and linear counting alike."""
    aggregation, interval, rows, spine = drawn
    tiles = spark.createDataFrame(
        rows, f"user_id bigint, tile_start timestamp, {aggregation.partial_column} string"
    )
    lookup = AggregateLookup(tiles, ("user_id",), interval, {aggregation: "value"})
    frame = spark.createDataFrame(spine, "rid bigint, user_id bigint, ts timestamp")
    actual = {r["rid"]: r["value"] for r in aggregate_join(frame, "ts", lookup).collect()}
    records = [
        dict(zip(("user_id", "tile_start", aggregation.partial_column), r, strict=True))
        for r in rows
    ]
    expected = {
        rid: aggregate(aggregation, [t for t in records if t["user_id"] == user], ts, interval)
        for rid, user, ts in spine
    }
    assert actual == expected


def test_anchors_may_come_from_the_spine_before_earlier_joins(spark):
    """FeatureStore hands the plain spine to aggregate_join as `anchors_from`, so that the
    aggregations merged by joins (var, last_n, approx_count_distinct) do not run the earlier
    joins that made the spine again: the values are those of the spine itself."""
    functions = ("var", last_n(2), approx_count_distinct(4), "count")
    case = dataclasses.replace(
        agg.edge_case(), aggregations=tuple(Aggregation("i", f, agg.DAY) for f in functions)
    )
    events, spine = agg.frames(spark, case)
    tiles = compute_tiles(events, case.join_keys, "ts", case.aggregations, case.interval)
    joined = spine.withColumn("earlier", F.col("rid") * 2)  # as if joined before
    result = aggregate_join(joined, "ts", agg.lookup(case, tiles), anchors_from=spine)
    assert result.columns == [*joined.columns, *(a.name for a in case.aggregations)]
    expected = by_rid(agg.run_case(spark, case).toArrow().to_pylist())
    rows = by_rid(result.toArrow().to_pylist())
    assert [r["earlier"] for r in rows] == [2 * r["rid"] for r in rows]
    assert [{k: v for k, v in r.items() if k != "earlier"} for r in rows] == expected


# ---- classic JVM PySpark against Sail ------------------------------------------------------------


@pytest.fixture(scope="module")
def classic(tmp_path_factory):
    try:
        return run_on_classic(
            "aggregation_cases:outputs", tmp_path_factory.mktemp("aggregation_classic")
        )
    except AssertionError as failure:
        pytest.fail(str(failure))


@pytest.mark.parametrize("name", list(agg.cases()))
def test_classic_pyspark_matches_sail(spark, classic, name):
    case = agg.cases()[name]
    output = agg.run_case(spark, case)
    sail_fields = [[f.name, f.dataType.simpleString(), f.nullable] for f in output.schema.fields]
    classic_fields, classic_rows = classic[name]
    assert sail_fields == classic_fields  # names, types and nullability
    sail_rows = output.toArrow()
    assert sail_rows.schema.remove_metadata().types == classic_rows.schema.remove_metadata().types
    assert_rows(case, by_rid(sail_rows.to_pylist()), by_rid(classic_rows.to_pylist()))
    assert_rows(case, by_rid(classic_rows.to_pylist()), oracle(case), estimates=True)


# ---- definitions: validation, default names, output types ----------------------------------------

THIS_FILE = Path(__file__).name
USER = Entity("user", join_keys=["user_id"])
EVENTS = BatchSource("events", path="raw/events", timestamp_field="ts")
SCHEMA = [
    Field("clicks", Int64),
    Field("amount", Float64),
    Field("page", String),
    Field("tags", Array(String)),
    Field("ok", Bool),
]


def user_events(events):
    return events


def define(**overrides):
    """An aggregate view of `user_events`, by default counting clicks over 1 day in 1h tiles."""
    arguments = {
        "sources": [EVENTS],
        "entities": [USER],
        "schema": SCHEMA,
        "timestamp_field": "ts",
        "feature_start_time": T0,
        "aggregations": [Aggregation("clicks", "count", DAY)],
        "aggregation_interval": H,
        **overrides,
    }
    return batch_feature_view(**arguments)(user_events)


def rejected(problem: str, **overrides) -> None:
    with pytest.raises(FeatureViewError) as raised:
        define(**overrides)
    error = raised.value
    assert error.name == "user_events"
    assert error.location.endswith(f"{THIS_FILE}:{user_events.__code__.co_firstlineno}")
    assert problem in error.problem, error.problem


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        (
            {"aggregations": [Aggregation("clicks", "count", timedelta(minutes=90))]},
            "aggregation 'clicks_count_90m': time_window 1 hour 30 minutes is not a multiple of "
            "the aggregation_interval 1 hour",
        ),
        (  # without aggregation_interval the tiles are the batch schedule's (1 day)
            {"aggregations": [Aggregation("clicks", "sum", 12 * H)], "aggregation_interval": None},
            "time_window 12 hours is not a multiple of the aggregation_interval 1 day",
        ),
        (
            {"aggregation_interval": 5 * H},
            "aggregation_interval 5 hours must divide a day and the batch_schedule 1 day",
        ),
        ({"aggregation_interval": timedelta(minutes=7)}, "must divide a day"),
        ({"aggregation_interval": 2 * DAY}, "aggregation_interval 2 days must divide"),
        (
            {"aggregation_interval": 3 * H, "batch_schedule": 2 * H},
            "aggregation_interval 3 hours must divide a day and the batch_schedule 2 hours",
        ),
        (
            {"aggregation_interval": DAY, "batch_schedule": H},
            "must divide a day and the batch_schedule 1 hour",
        ),
        ({"aggregation_interval": -H}, "aggregation_interval must be a positive timedelta"),
        (
            {"aggregation_interval": 3600},
            "aggregation_interval must be a positive timedelta, got 3600",
        ),
        (
            {"aggregations": [Aggregation("page", "sum", DAY)]},
            "aggregation 'page_sum_1d': sum needs a numeric column, String is not",
        ),
        ({"aggregations": [Aggregation("page", "mean", DAY)]}, "mean needs a numeric column"),
        ({"aggregations": [Aggregation("page", "var", DAY)]}, "var needs a numeric column"),
        ({"aggregations": [Aggregation("ok", "stddev", DAY)]}, "stddev needs a numeric column"),
        ({"aggregations": [Aggregation("tags", "sum", DAY)]}, "needs a numeric column, Array("),
        (
            {"aggregations": [Aggregation("tags", "min", DAY)]},
            "aggregation 'tags_min_1d': min cannot order Array(String) values",
        ),
        ({"aggregations": [Aggregation("tags", "max", DAY)]}, "max cannot order Array(String)"),
        (
            {"aggregations": [Aggregation("tags", "approx_count_distinct", DAY)]},
            "approx_count_distinct cannot hash Array(String) values",
        ),
        (
            {"aggregations": [Aggregation("nope", "count", DAY)]},
            "aggregation 'nope_count_1d': column 'nope' is not in the schema",
        ),
        (  # join keys and the timestamp are not aggregated
            {"aggregations": [Aggregation("user_id", "count", DAY)]},
            "column 'user_id' is not in the schema",
        ),
        (
            {"aggregations": [Aggregation("clicks", "count", DAY)] * 2},
            "aggregation name 'clicks_count_1d' is used twice or is reserved",
        ),
        (
            {
                "aggregations": [
                    Aggregation("clicks", "count", DAY, "n"),
                    Aggregation("amount", "sum", DAY, "n"),
                ]
            },
            "aggregation name 'n' is used twice",
        ),
        (
            {"aggregations": [Aggregation("clicks", "count", DAY, "user_id")]},
            "aggregation name 'user_id' is used twice or is reserved",
        ),
        (
            {"aggregations": [Aggregation("clicks", "count", DAY, "event_date")]},
            "aggregation name 'event_date' is used twice or is reserved",
        ),
        (
            {"aggregations": []},
            "aggregation_interval is set but there are no aggregations",
        ),
        (
            {"aggregations": ["clicks_count_1d"]},
            "aggregation 'clicks_count_1d' is not an Aggregation",
        ),
        # an Aggregation is checked by the view using it, whose file and line the error names
        (
            {"aggregations": [Aggregation("clicks", "median", DAY)]},
            "aggregation 'clicks_median_1d': function 'median' is not one of count, sum, mean",
        ),
        (
            {"aggregations": [Aggregation("clicks", "COUNT", DAY)]},
            "function 'COUNT' is not one of",
        ),
        (
            {"aggregations": [Aggregation("clicks", "count", timedelta(0))]},
            "aggregation 'clicks_count': time_window must be a positive timedelta",
        ),
        (
            {"aggregations": [Aggregation("clicks", "count", -DAY)]},
            "time_window must be a positive timedelta",
        ),
        (
            {"aggregations": [Aggregation("clicks", "count", 86400)]},
            "time_window must be a positive timedelta, got 86400",
        ),
    ],
)
def test_aggregate_view_rejects(overrides, problem):
    rejected(problem, **overrides)


@pytest.mark.parametrize("n", [0, -1, 1.5, "3"])
def test_last_n_needs_a_positive_whole_number(n):
    with pytest.raises(ValueError, match="last_n needs a positive whole number"):
        last_n(n)


@pytest.mark.parametrize("precision", [3, 17, 0, -12, 12.0, "12", None, True])
def test_approx_count_distinct_needs_a_precision_from_4_to_16(precision):
    with pytest.raises(ValueError, match="precision must be a whole number from 4 to 16, got"):
        approx_count_distinct(precision)


def test_the_precision_of_approx_count_distinct_changes_the_version():
    """The default precision keeps the plain name; another one names itself, as last_n does."""
    default = Aggregation("clicks", "approx_count_distinct", DAY)
    finer = Aggregation("clicks", approx_count_distinct(14), DAY, default.name)
    assert default.fn == approx_count_distinct(12)
    assert (default.partial_column, finer.partial_column) == ("hll12__clicks", "hll14__clicks")
    assert define(aggregations=[default]).version != define(aggregations=[finer]).version


@pytest.mark.parametrize(
    ("column", "function", "window", "name"),
    [
        ("clicks", "count", 7 * DAY, "clicks_count_7d"),
        ("amount", "sum", timedelta(minutes=90), "amount_sum_90m"),
        ("amount", "mean", 36 * H, "amount_mean_36h"),
        ("amount", "var", DAY, "amount_var_1d"),
        ("amount", "stddev", 2 * DAY, "amount_stddev_2d"),
        ("page", "first", H, "page_first_1h"),
        ("page", "last", DAY + timedelta(minutes=30), "page_last_1470m"),
        ("clicks", "min", timedelta(seconds=45), "clicks_min_45s"),
        ("clicks", "max", timedelta(seconds=90), "clicks_max_90s"),
        ("clicks", last_n(5), DAY, "clicks_last_5_1d"),
        ("page", "approx_count_distinct", 7 * DAY, "page_approx_count_distinct_7d"),
        ("page", approx_count_distinct(12), H, "page_approx_count_distinct_1h"),
        ("page", approx_count_distinct(14), H, "page_approx_count_distinct_p14_1h"),
    ],
)
def test_default_names(column, function, window, name):
    assert Aggregation(column, function, window).name == name
    assert Aggregation(column, function, window, "explicit").name == "explicit"


def test_functions_are_normalized_and_moments_are_shared():
    assert Aggregation("x", "var", DAY) == Aggregation("x", AggregationFunction("var"), DAY)
    assert Aggregation("x", "var", DAY).fn == AggregationFunction("var")
    partials = {
        f: Aggregation("x", f, DAY).partial_column for f in ("var", "stddev", "sum", "mean", "last")
    }
    assert partials == {
        "var": "moments__x",
        "stddev": "moments__x",
        "sum": "total__x",
        "mean": "total__x",
        "last": "last__x",
    }
    assert Aggregation("x", last_n(2), DAY).partial_column == "last2__x"


@pytest.mark.parametrize(
    ("function", "dtype", "output"),
    [
        ("count", String, Int64),
        ("count", Array(String), Int64),
        ("count", Float64, Int64),
        ("sum", Int32, Int64),
        ("sum", Int64, Int64),
        ("sum", Float32, Float64),
        ("sum", Float64, Float64),
        ("mean", Int32, Float64),
        ("var", Int64, Float64),
        ("stddev", Float32, Float64),
        ("min", Int32, Int32),
        ("max", String, String),
        ("min", Timestamp, Timestamp),
        ("max", Bool, Bool),
        ("first", Array(String), Array(String)),
        ("last", Float32, Float32),
        (last_n(3), Int64, Array(Int64)),
        ("approx_count_distinct", String, Int64),
        (approx_count_distinct(4), Float32, Int64),
        ("approx_count_distinct", Timestamp, Int64),
    ],
)
def test_output_types(function, dtype, output):
    assert Aggregation("x", function, DAY).output_type(dtype) == output


def test_an_aggregate_view_serves_its_aggregations():
    view = define(
        aggregations=[
            Aggregation("clicks", "count", 7 * DAY),
            Aggregation("amount", "sum", DAY, "spend_1d"),
            Aggregation("page", "last", 2 * H),
            Aggregation("clicks", last_n(3), DAY),
        ]
    )
    assert view.feature_names == ("clicks_count_7d", "spend_1d", "page_last_2h", "clicks_last_3_1d")
    assert view.feature_types == {
        "clicks_count_7d": Int64,
        "spend_1d": Float64,
        "page_last_2h": String,
        "clicks_last_3_1d": Array(Int64),
    }
    assert view.table_timestamp_field == "tile_start"
    assert view.interval == H
    assert define(aggregation_interval=None).interval == DAY  # the batch schedule
    assert define().version != define(aggregation_interval=2 * H).version
    changed = define(aggregations=[Aggregation("clicks", "count", 2 * DAY)])
    assert define().version != changed.version


def test_spark_types_of_every_function_match_output_type(spark):
    """Float32, Int32, Timestamp and Bool inputs keep the type that `output_type` declares."""
    columns = {"k": "bigint", "ts": "timestamp", "f": "float", "n": "int", "t": "timestamp"}
    rows = [(1, T0, 1.5, 2, T0 + US), (1, T0 + H, None, 3, None), (1, T0 + 2 * H, 0.25, 1, T0)]
    events = spark.createDataFrame(rows, agg.ddl(columns))
    types = {"f": Float32, "n": Int32, "t": Timestamp}
    aggregations = [
        Aggregation(column, function, DAY)
        for column in types
        for function in agg.FUNCTIONS
        if column != "t"
        or function in ("count", "min", "max", "first", "last", "approx_count_distinct")
    ]
    aggregations = [a for a in aggregations if a.fn.name != "sum"] + [
        Aggregation("n", "sum", 2 * DAY, "n_sum"),
    ]
    aggregations = [a for a in aggregations if not (a.column == "n" and a.fn.name in APPROXIMATE)]
    tiles = compute_tiles(events, ["k"], "ts", aggregations, H)
    spine = spark.createDataFrame([(1, T0 + DAY)], "k bigint, ts timestamp")
    outputs = {a: a.name for a in aggregations}
    column_types = {column: dtype.spark for column, dtype in types.items()}
    result = aggregate_join(spine, "ts", AggregateLookup(tiles, ("k",), H, outputs, column_types))
    assert dict(result.dtypes) == {
        "k": "bigint",
        "ts": "timestamp",
        **{a.name: a.output_type(types[a.column]).spark for a in aggregations},
    }
    row = result.toArrow().to_pylist()[0]
    assert (row["n_sum"], row["f_count_1d"], row["t_count_1d"]) == (6, 2, 2)
    assert (row["f_first_1d"], row["f_var_1d"], row["n_last_1d"]) == (1.5, 0.78125, 1)
    assert (row["t_min_1d"], row["t_max_1d"], row["t_last_1d"]) == (T0, T0 + US, T0)
    assert (row["n_last_3_1d"], row["f_last_3_1d"]) == ([1, 3, 2], [0.25, 1.5])
    assert (row["t_approx_count_distinct_1d"], row["n_approx_count_distinct_p4_1d"]) == (2, 3)


# ---- end to end: the demo's aggregate views through the FeatureStore ---------------------------


@pytest.fixture(scope="module")
def demo_store(spark, demo_data, tmp_path_factory):
    """user_ad_activity and ad_delivery computed for TINY's days into a fresh offline store."""
    repository = Repository.load("feature_assets")
    root = str(tmp_path_factory.mktemp("aggregate_offline"))
    offline_store = OfflineStore(root)
    window = TimeWindow(TINY.start, TINY.start + TINY.days * DAY)
    for name in ("user_ad_activity", "ad_delivery"):
        view = repository.feature_view(name)
        tiles = run_transformation(spark, view, window)
        uri = offline_store.view_table_uri(name, view.version)
        offline_store.write_window(tiles, uri, window, view.table_timestamp_field)
    return FeatureStore(repository, spark, offline_root_uri=root)


def demo_spine(impressions: pd.DataFrame) -> pd.DataFrame:
    """Every distinct impression, some moved to whole hours and days, plus edge rows."""
    rng = np.random.default_rng(3)
    spine = impressions[["user_id", "ad_id", "ts"]].drop_duplicates().reset_index(drop=True)
    ts = spine["ts"]
    moved = rng.random(len(spine))
    spine["ts"] = ts.where(moved > 0.2, ts.dt.floor("h")).where(moved > 0.1, ts.dt.floor("D"))
    start = pd.Timestamp(TINY.start)
    edges = pd.DataFrame(
        [
            (None, 1, start + pd.Timedelta(hours=30)),  # null user
            (spine["user_id"].iloc[0], None, start + pd.Timedelta(hours=30)),  # null ad
            (spine["user_id"].iloc[0], spine["ad_id"].iloc[0], None),  # null time
            (-1, -1, start + pd.Timedelta(days=1)),  # no events
            (spine["user_id"].iloc[0], spine["ad_id"].iloc[0], start),  # before any event
            (spine["user_id"].iloc[0], spine["ad_id"].iloc[0], start + pd.Timedelta(days=6)),
        ],
        columns=["user_id", "ad_id", "ts"],
    )
    spine = pd.concat([spine, edges, spine.iloc[:50]], ignore_index=True)  # and duplicates
    spine = spine.astype({"user_id": "Int64", "ad_id": "Int64", "ts": "datetime64[us, UTC]"})
    return spine.assign(rid=np.arange(len(spine)), label=rng.integers(0, 2, len(spine)))


def test_demo_aggregate_views_match_duckdb_over_the_raw_sources(demo_store, demo_data):
    raw = demo_data / "raw"
    impressions, clicks = (read_delta(raw / name) for name in ("ad_impressions", "ad_clicks"))
    for frame in (impressions, clicks):
        frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    spine = demo_spine(impressions)
    features = [
        "user_ad_activity:impressions_1h",
        "user_ad_activity:clicks_1d",
        "user_ad_activity:clicks_7d",
        "ad_delivery:impressions_7d",
        "ad_delivery:mean_position_7d",
        "ad_delivery:best_position_7d",
        "ad_delivery:distinct_users_7d",
    ]
    result = demo_store.get_historical_features(spine, features).toPandas()
    outputs = [f.replace(":", "__") for f in features]
    assert list(result.columns) == [*spine.columns, *outputs]
    result = result.sort_values("rid").reset_index(drop=True)
    assert len(result) == len(spine)

    con = duckdb.connect()
    for name, frame in {"imp": impressions, "clk": clicks, "spine": spine}.items():
        con.register(name, frame)
    duplicated = con.execute(
        "SELECT count(*) FROM (SELECT impression_id FROM (SELECT DISTINCT * FROM imp) "
        "GROUP BY impression_id HAVING count(*) > 1)"
    ).fetchone()[0]
    assert duplicated == 0  # duplicates are exact copies: dropDuplicates keeps the same event
    start = micros(TINY.start - EPOCH)
    end = start + TINY.days * micros(DAY)
    hour, day = micros(H), micros(DAY)
    expected = con.execute(
        f"""
        WITH i AS (
            SELECT DISTINCT impression_id, user_id, ad_id, epoch_us(ts) AS us, position FROM imp
            WHERE epoch_us(ts) >= {start} AND epoch_us(ts) < {end}
        ),
        c AS (
            SELECT DISTINCT impression_id, user_id, epoch_us(ts) AS us FROM clk
            WHERE epoch_us(ts) >= {start} AND epoch_us(ts) < {end}
        ),
        s AS (
            SELECT rid, user_id, ad_id, epoch_us(ts) - epoch_us(ts) % {hour} AS h,
                   epoch_us(ts) - epoch_us(ts) % {day} AS d
            FROM spine
        )
        SELECT s.rid,
          CASE WHEN s.user_id IS NOT NULL AND s.h IS NOT NULL THEN (
            SELECT count(*) FROM i WHERE i.user_id = s.user_id AND i.us >= s.h - {hour}
            AND i.us < s.h) END AS impressions_1h,
          CASE WHEN s.user_id IS NOT NULL AND s.h IS NOT NULL THEN (
            SELECT count(*) FROM c WHERE c.user_id = s.user_id AND c.us >= s.h - {day}
            AND c.us < s.h) END AS clicks_1d,
          CASE WHEN s.user_id IS NOT NULL AND s.h IS NOT NULL THEN (
            SELECT count(*) FROM c WHERE c.user_id = s.user_id AND c.us >= s.h - {7 * day}
            AND c.us < s.h) END AS clicks_7d,
          CASE WHEN s.ad_id IS NOT NULL AND s.d IS NOT NULL THEN (
            SELECT count(*) FROM i WHERE i.ad_id = s.ad_id AND i.us >= s.d - {7 * day}
            AND i.us < s.d) END AS impressions_7d,
          (SELECT avg(position) FROM i WHERE i.ad_id = s.ad_id AND i.us >= s.d - {7 * day}
            AND i.us < s.d) AS mean_position_7d,
          (SELECT min(position) FROM i WHERE i.ad_id = s.ad_id AND i.us >= s.d - {7 * day}
            AND i.us < s.d) AS best_position_7d,
          CASE WHEN s.ad_id IS NOT NULL AND s.d IS NOT NULL THEN (
            SELECT count(DISTINCT user_id) FROM i WHERE i.ad_id = s.ad_id
            AND i.us >= s.d - {7 * day} AND i.us < s.d) END AS distinct_users_7d
        FROM s ORDER BY s.rid
        """
    ).df()
    expected.columns = ["rid", *outputs]
    counts = [o for o in outputs if "position" not in o and "distinct" not in o]
    pd.testing.assert_frame_equal(
        result[["rid", *counts]].astype("Int64"), expected[["rid", *counts]].astype("Int64")
    )
    pd.testing.assert_frame_equal(
        result[outputs[-3:-1]].astype("Float64"),
        expected[outputs[-3:-1]].astype("Float64"),
        check_exact=False,
        rtol=1e-9,
    )
    assert (result["user_ad_activity__clicks_1d"] > 0).sum() > 1000  # not vacuous
    assert result["ad_delivery__mean_position_7d"].notna().sum() > 10_000
    assert (result["user_ad_activity__impressions_1h"] == 0).sum() > 100
    distinct = "ad_delivery__distinct_users_7d"
    assert result[distinct].isna().tolist() == expected[distinct].isna().tolist()
    known = expected[distinct].notna()
    assert all(
        within_sketch_error(estimate, exact, 12)
        for estimate, exact in zip(result[distinct][known], expected[distinct][known], strict=True)
    )
    assert expected[distinct].max() > 100  # past the cases' few values
    passed = result[list(spine.columns)].assign(ts=result["ts"].dt.tz_localize("UTC"))
    pd.testing.assert_frame_equal(passed.astype(spine.dtypes.to_dict()), spine)


# ---- known bugs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("other", ["mean", "var", "stddev"])
def test_sum_and_mean_of_one_column_compute_on_sail(spark, other):
    case = agg.edge_case()
    pair = (Aggregation("x", "sum", DAY), Aggregation("x", other, DAY))
    check_case(spark, agg.Case(case.join_keys, H, pair, case.events, case.spine))


def test_variance_of_large_values_is_accurate(spark):
    events = [(1, T0 + k * MIN10, 1e9 + k) for k in range(3)]
    frame = spark.createDataFrame(events, "k bigint, ts timestamp, x double")
    aggregations = [Aggregation("x", "var", H), Aggregation("x", "stddev", H)]
    tiles = compute_tiles(frame, ["k"], "ts", aggregations, H)
    spine = spark.createDataFrame([(1, T0 + H)], "k bigint, ts timestamp")
    lookup = AggregateLookup(tiles, ("k",), H, {a: a.name for a in aggregations})
    row = aggregate_join(spine, "ts", lookup).first()
    online = [aggregate(a, tiles.toArrow().to_pylist(), T0 + H, H) for a in aggregations]
    assert (row["x_var_1h"], row["x_stddev_1h"]) == pytest.approx((1.0, 1.0), rel=1e-6)
    assert online == pytest.approx([1.0, 1.0], rel=1e-6)


@pytest.mark.parametrize("function", ["first", "last", "min", "max"])
def test_ordering_functions_reject_array_columns(function):
    """Engines do not order structs holding arrays alike, so ties could not be broken."""
    rejected(
        f"{function} cannot order Array(String) values",
        aggregations=[Aggregation("tags", function, DAY)],
    )


@pytest.mark.parametrize("name", ["clicks.7d", "Clicks 7d"])
def test_aggregation_names_must_be_lower_snake_case(name):
    rejected(
        f"name {name!r} must be lower snake case",
        aggregations=[Aggregation("clicks", "count", DAY, name)],
    )


def test_a_zero_aggregation_interval_is_rejected():
    rejected("aggregation_interval must be a positive timedelta", aggregation_interval=timedelta(0))


def test_distinct_windows_get_distinct_default_names():
    names = {
        Aggregation("x", "count", w).name
        for w in (timedelta(seconds=1), timedelta(milliseconds=1500))
    }
    assert len(names) == 2


@pytest.mark.parametrize("dtype", [Timestamp, Date])
def test_last_n_rejects_temporal_columns(dtype):
    """last_n partials are JSON, which carries neither type exactly across engines."""
    rejected(
        "last_n keeps values as JSON",
        schema=[*SCHEMA, Field("seen_at", dtype)],
        aggregations=[Aggregation("seen_at", last_n(2), DAY)],
    )
