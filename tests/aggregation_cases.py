"""Time-window aggregation cases shared by tests/test_aggregations.py's Sail and classic runs.

A `Case` is events and a spine as plain Python rows (what the test's DuckDB oracle reads) plus the
aggregations to compute; `run_case` turns it into in-memory DataFrames and calls `compute_tiles`
then `aggregate_join`; `outputs` is what tests/classic.py runs on classic PySpark.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa

from featureplane import aggregation
from featureplane.aggregation import Aggregation, approx_count_distinct, last_n
from featureplane.compute.tiles import AggregateLookup, aggregate_join, compute_tiles
from featureplane.types import Bool, DType, Float64, Int32, Int64, String

T0 = datetime(2026, 1, 1, tzinfo=UTC)
EARLY = datetime(1969, 12, 27, tzinfo=UTC)  # ten days from here straddle the Unix epoch
H = timedelta(hours=1)
DAY = timedelta(days=1)
MIN10 = timedelta(minutes=10)
US = timedelta(microseconds=1)

KEY_TYPES = {"user_id": "bigint", "ad_id": "string"}
KEY_SETS = (("user_id",), ("ad_id",), ("user_id", "ad_id"))
VALUE_TYPES: dict[str, DType] = {"i": Int64, "p": Int32, "x": Float64, "s": String, "b": Bool}
NUMERIC_COLUMNS = ("i", "p", "x")
FUNCTIONS = (*aggregation.FUNCTIONS, last_n(1), last_n(3), approx_count_distinct(4))
WINDOWS = {H: (H, 2 * H, DAY, 7 * DAY), DAY: (DAY, 7 * DAY)}
"""The windows each interval allows (multiples of it)."""


@dataclass(frozen=True)
class Case:
    """Events (keys..., ts, i, p, x, s, b) and a spine (rid, label, keys..., ts) as Python rows."""

    join_keys: tuple[str, ...]
    interval: timedelta
    aggregations: tuple[Aggregation, ...]
    events: list[tuple]
    spine: list[tuple]

    @property
    def event_columns(self) -> dict[str, str]:
        values = {name: dtype.spark for name, dtype in VALUE_TYPES.items()}
        return {**{k: KEY_TYPES[k] for k in self.join_keys}, "ts": "timestamp", **values}

    @property
    def spine_columns(self) -> dict[str, str]:
        keys = {k: KEY_TYPES[k] for k in self.join_keys}
        return {"rid": "bigint", "label": "string", **keys, "ts": "timestamp"}

    def event_records(self) -> list[dict]:
        return [dict(zip(self.event_columns, row, strict=True)) for row in self.events]

    def spine_records(self) -> list[dict]:
        return [dict(zip(self.spine_columns, row, strict=True)) for row in self.spine]


def ddl(columns: dict[str, str]) -> str:
    return ", ".join(f"{name} {spark_type}" for name, spark_type in columns.items())


def arrow(columns: dict[str, str], rows: list[tuple]) -> pa.Table:
    """The rows as an Arrow table with exact types (timestamps in UTC, microseconds)."""
    types = {
        "bigint": pa.int64(),
        "int": pa.int32(),
        "double": pa.float64(),
        "string": pa.string(),
        "boolean": pa.bool_(),
        "timestamp": pa.timestamp("us", tz="UTC"),
    }
    schema = pa.schema([(name, types[t]) for name, t in columns.items()])
    return pa.Table.from_pylist([dict(zip(columns, r, strict=True)) for r in rows], schema=schema)


def frames(spark, case: Case):
    """The case's events and spine as Spark DataFrames (empty ones keep their schema)."""
    events = spark.createDataFrame(case.events, schema=ddl(case.event_columns))
    spine = spark.createDataFrame(case.spine, schema=ddl(case.spine_columns))
    return events, spine


def tiles_of(spark, case: Case):
    events, _ = frames(spark, case)
    return compute_tiles(events, case.join_keys, "ts", case.aggregations, case.interval)


def run_case(spark, case: Case):
    """`compute_tiles` of the events, then `aggregate_join` of the spine with them."""
    events, spine = frames(spark, case)
    tiles = compute_tiles(events, case.join_keys, "ts", case.aggregations, case.interval)
    return aggregate_join(spine, "ts", lookup(case, tiles))


def lookup(case: Case, tiles) -> AggregateLookup:
    """The case's aggregations of `tiles`, named by default; last_n decodes the column types."""
    outputs = {a: a.name for a in case.aggregations}
    types = {name: dtype.spark for name, dtype in VALUE_TYPES.items()}
    return AggregateLookup(tiles, case.join_keys, case.interval, outputs, column_types=types)


# ---- the cases -------------------------------------------------------------------------------


def spread(aggregations: list[Aggregation]) -> tuple[Aggregation, ...]:
    """Distinct names, and no `sum` beside mean/var/stddev of the same column.

    The pair fails to compile on Sail 0.7 (see test_sum_and_mean_of_one_column_compute_on_sail),
    so the cases that must run keep them apart; that test covers the pair.
    """
    moments = {a.column for a in aggregations if a.fn.name in ("mean", "var", "stddev")}
    kept: dict[str, Aggregation] = {}
    for a in aggregations:
        if a.fn.name == "sum" and a.column in moments:
            continue
        kept.setdefault(a.name, a)
    return tuple(kept.values())


def edge_case() -> Case:
    """Hand-made events on tile and window boundaries, ties, nulls and late rows (1h tiles)."""
    t = T0
    events = [  # user_id, ts, i, p, x, s, b
        (1, t, 1, 1, 0.5, "b", True),
        (1, t, 2, 2, 1.5, "a", False),  # tied on time: first takes the smaller value
        (1, t + H - US, 4, None, None, None, None),  # the last microsecond of the first tile
        (1, t + H, 8, 3, -2.5, "z", None),  # the start of the second tile
        (1, t + 2 * H, None, None, None, None, None),  # a tile of nulls only
        (1, t - DAY + H, 16, 5, 4.0, "é", True),  # exactly a day before the second tile
        (1, t + 3 * H + 10 * MIN10, 32, 7, 0.25, "", False),  # late: listed last
        (2, t + H, 64, None, 1000.5, "q", True),
        (None, t, 128, 9, 9.0, "null key", True),
        (1, None, 256, 9, 9.0, "null time", True),
        (1, t + 3 * H + 10 * MIN10, 1, 7, 0.25, "y", True),  # tied with the late row
    ]
    spine = [  # rid, label, user_id, ts
        (0, "at the second tile", 1, t + H),
        (1, "1 us before", 1, t + H - US),
        (2, "inside the second tile", 1, t + H + 5 * MIN10),
        (3, "a day after the first tile", 1, t + DAY),
        (4, "a day after the second tile", 1, t + DAY + H),
        (5, "later", 1, t + 5 * H),
        (6, "a week later", 1, t + 7 * DAY + H),
        (7, "null key", None, t + 2 * H),
        (8, "null time", 1, None),
        (9, "no events", 3, t + 2 * H),
        (10, None, 2, t + 2 * H),
        (11, "at the second tile", 1, t + H),  # a duplicate, but for its id
    ]
    aggregations = [
        Aggregation("i", "count", H),
        Aggregation("s", "count", DAY),
        Aggregation("i", "sum", 2 * H),
        Aggregation("x", "mean", DAY),
        Aggregation("p", "var", 7 * DAY),
        Aggregation("x", "stddev", DAY),
        Aggregation("s", "min", DAY),
        Aggregation("b", "max", 2 * H),
        Aggregation("s", "first", 2 * H),
        Aggregation("s", "last", 7 * DAY),
        Aggregation("x", "first", DAY),
        Aggregation("i", "last", 2 * H, name="latest_i"),
        Aggregation("s", last_n(2), 2 * H),
        Aggregation("i", last_n(3), DAY),
        Aggregation("s", "approx_count_distinct", DAY),
    ]
    return Case(("user_id",), H, spread(aggregations), events, spine)


def random_case(seed: int, n_events: int = 300, n_spine: int = 200) -> Case:
    """Random events on a 10-minute grid (± 1 us) over ten days, with ties and nulls."""
    rng = np.random.default_rng(seed)
    keys = KEY_SETS[seed % len(KEY_SETS)]
    interval = (H, DAY)[seed % 2]
    base = EARLY if seed == 2 else T0

    def pick(values: list, n: int) -> list:
        return [values[i] for i in rng.integers(0, len(values), n)]

    def moments(n: int) -> list:
        days = rng.integers(0, 10, n)
        hours = pick([0, 0, 1, 2, 11, 23], n)
        tens = pick([0, 0, 0, 1, 5], n)
        jitter = pick([0, 0, 0, 0, 1, -1], n)
        missing = rng.random(n) < 0.05
        return [
            None if gone else base + int(d) * DAY + h * H + m * MIN10 + j * US
            for d, h, m, j, gone in zip(days, hours, tens, jitter, missing, strict=True)
        ]

    def key_values(n: int, users: list, ads: list) -> list[tuple]:
        columns = {"user_id": pick(users, n), "ad_id": pick(ads, n)}
        return list(zip(*(columns[k] for k in keys), strict=True))

    values = [
        [None, -3, 0, 1, 2, 7, 100],
        [None, 1, 2, 3, 10],
        [None, -2.5, 0.0, 0.25, 1.5, 4.0, 1000.5],
        [None, "", "a", "b", "ab", "é", "z"],
        [None, True, False],
    ]
    n = n_events
    rows = [
        (*k, ts, *v)
        for k, ts, v in zip(
            key_values(n, [1, 2, 3, None], ["a1", "a2", None]),
            moments(n),
            zip(*(pick(column, n) for column in values), strict=True),
            strict=True,
        )
    ]
    tied = [rows[i] for i in rng.integers(0, n, n // 4)]  # same keys and time, new values
    rows += [row[: len(keys) + 1] + tuple(pick(column, 1)[0] for column in values) for row in tied]
    events = [rows[i] for i in rng.permutation(len(rows))]  # late events: unsorted input

    m = n_spine
    spine = [
        (label, *k, ts)
        for label, k, ts in zip(
            pick(["p", "q", None], m),
            key_values(m, [1, 2, 3, 4, None], ["a1", "a2", "a9", None]),  # 4, a9: no events
            moments(m),
            strict=True,
        )
    ]
    windows = WINDOWS[interval]
    for i in rng.integers(0, len(events), m // 5):  # one window after an event: a boundary
        row = events[i]
        if row[len(keys)] is not None:
            shift = windows[int(rng.integers(0, len(windows)))] + pick([0, 0, 1, -1], 1)[0] * US
            spine.append(("w", *row[: len(keys)], row[len(keys)] + shift))
    spine += [spine[i] for i in rng.integers(0, len(spine), m // 10)]
    spine = [(rid, *row) for rid, row in enumerate(spine)]

    aggregations = []
    for function in FUNCTIONS:
        numeric = function in ("sum", "mean", "var", "stddev")
        for column in pick(list(NUMERIC_COLUMNS if numeric else VALUE_TYPES), 1):
            window = windows[int(rng.integers(0, len(windows)))]
            aggregations.append(Aggregation(column, function, window))
    return Case(keys, interval, spread(aggregations), events, spine)


def distinct_case(n_events: int = 3000) -> Case:
    """Hundreds of distinct values per window (1h tiles), so that approx_count_distinct leaves
    linear counting at small precisions and keeps it at large ones."""
    rng = np.random.default_rng(7)
    rows = []
    for _ in range(n_events):
        ts = T0 + int(rng.integers(0, 10 * 24 * 6)) * MIN10 + int(rng.integers(-1, 2)) * US
        rows.append(
            (
                int(rng.integers(1, 3)),
                ts,
                int(rng.integers(-(10**12), 10**12)),
                int(rng.integers(0, 400)),
                float(rng.normal()),
                f"v{int(rng.integers(0, 10**6))}",
                None if rng.random() < 0.5 else bool(rng.random() < 0.5),
            )
        )
    rows += [(1, T0 + DAY, None, None, None, None, None)] * 5
    spine = [
        (rid, "d", int(rng.integers(1, 4)), T0 + int(rng.integers(0, 12 * 24)) * H + US * rid)
        for rid in range(60)
    ]
    aggregations = (
        Aggregation("i", approx_count_distinct(4), 7 * DAY),
        Aggregation("x", approx_count_distinct(6), 7 * DAY),
        Aggregation("s", "approx_count_distinct", DAY),
        Aggregation("p", approx_count_distinct(16), 7 * DAY),
        Aggregation("b", approx_count_distinct(5), 2 * H),
        Aggregation("i", "count", 7 * DAY),
    )
    return Case(("user_id",), H, aggregations, rows, spine)


def cases() -> dict[str, Case]:
    return {
        "edge": edge_case(),
        "distinct": distinct_case(),
        **{f"random_{seed}": random_case(seed) for seed in range(3)},
    }


def outputs(spark) -> dict:
    """Each case's result DataFrame."""
    return {name: run_case(spark, case) for name, case in cases().items()}
