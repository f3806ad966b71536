"""Point-in-time correctness: `point_in_time_join` and `FeatureStore.get_historical_features`.

For a spine row (keys k, time t) a feature view's value is its row with keys k and the greatest
event time <= t, unless that time is < t - ttl (a row at exactly t - ttl is fresh). Rows tied on
keys and event time: the greatest feature values win (features compared in lookup order, nulls
least). No match gives nulls; null keys and null spine times match nothing. Spine rows are never
dropped or duplicated, and their other columns pass through.

The join is checked against a brute-force oracle written here (hand-made edge cases, hypothesis,
seeded random cases), against DuckDB's ASOF JOIN, and on classic JVM PySpark against Sail; the
FeatureStore is checked end to end over a small Delta offline store.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pit_cases as pit
import pyarrow as pa
import pytest
from classic import run_on_classic
from counting_proxy import CountingProxy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pysail.spark import SparkConnectServer
from pyspark.sql import functions as F

from featureplane import (
    BatchSource,
    Entity,
    FeatureService,
    Field,
    Float64,
    Int64,
    Repository,
    RetrievalError,
    batch_feature_view,
)
from featureplane.compute.materialization import STAGING
from featureplane.compute.point_in_time import (
    KIND,
    SPINE_ROW,
    Lookup,
    _sort,
    latest_per_time,
    point_in_time_join,
)
from featureplane.compute.window import TimeWindow
from featureplane.feature_store import SPINES, FeatureStore
from featureplane.offline_store import OfflineStore
from featureplane.spark_session import spark_session

T0, H, US = pit.T0, pit.H, pit.US


# ---- the oracle: every candidate row, by brute force -----------------------------------------


def _order(value) -> tuple:
    """Sort key of one feature value: nulls before every value."""
    return (0, 0) if value is None else (1, value)


def oracle_value(spine_row: dict, table: pit.Table, spec: pit.LookupSpec, ts: str) -> dict | None:
    """The feature row `spine_row` gets from `table`, or None."""
    t = spine_row[ts]
    if t is None or any(spine_row[key] is None for key in spec.join_keys):
        return None
    candidates = [
        row
        for row in table.records()
        if row[spec.timestamp_field] is not None
        and row[spec.timestamp_field] <= t
        and all(row[key] is not None and row[key] == spine_row[key] for key in spec.join_keys)
    ]
    if not candidates:
        return None
    latest = max(row[spec.timestamp_field] for row in candidates)
    if spec.ttl is not None and latest < t - spec.ttl:
        return None
    tied = [row for row in candidates if row[spec.timestamp_field] == latest]
    return max(tied, key=lambda row: tuple(_order(row[f]) for f in spec.features))


def oracle(case: pit.Case) -> list[dict]:
    """The expected result: each spine row once, with its features, by row id."""
    result = []
    for spine_row in case.spine.records():
        row = dict(spine_row)
        for spec in case.lookups:
            match = oracle_value(spine_row, case.tables[spec.table], spec, case.timestamp_column)
            for column, output in spec.features.items():
                row[output] = None if match is None else match[column]
        result.append(row)
    return sorted(result, key=lambda row: row["rid"])


def records(table) -> list[dict]:
    """Rows of an Arrow table (or Spark DataFrame) as Python dicts, by row id."""
    if not isinstance(table, pa.Table):
        table = table.toArrow()
    return sorted(table.to_pylist(), key=lambda row: row["rid"])


def check_case(spark, case: pit.Case) -> None:
    """The join of `case` has the spine's columns, then the outputs, and the oracle's rows."""
    result = pit.run_case(spark, case)
    expected_types = [*case.spine.columns.items(), *case.outputs.items()]
    assert result.dtypes == [(name, spark_type) for name, spark_type in expected_types]
    actual = records(result)
    assert [row["rid"] for row in actual] == sorted(row[0] for row in case.spine.rows)
    assert actual == oracle(case)


# ---- hand-made edge cases ----------------------------------------------------------------------


def test_edge_cases_have_the_specified_values(spark):
    case = pit.edge_case()
    t = T0
    columns = [
        "rid",
        "label",
        "user_id",
        "ad_id",
        "ts",
        "u_a",
        "u_b",
        "ad_d",
        "ad_e",
        "p_c",
        "ua_a",
    ]
    expected = [
        # greatest (a, b) of the four rows tied at 2h; ad 10 at exactly t - 2h is fresh
        (0, "a", 1, 10, t + 2 * H, 2, "y", 5, True, 0.5, 100),
        (1, "a", 1, 10, t + 2 * H, 2, "y", 5, True, 0.5, 100),  # duplicate kept
        # user_stats and ad 11 at exactly t - ttl: fresh; user_ad (1, 11) has no history
        (2, "c", 1, 11, t + 3 * H, 2, "y", 7, None, 0.5, None),
        # 1 us later both are stale; the profile row at exactly t counts
        (3, "d", 1, 11, t + 3 * H + US, None, None, None, None, 1.5, None),
        (4, "e", None, 10, t + 2 * H, None, None, 5, True, None, None),  # null user
        (5, "f", 2, None, t + 2 * H, None, None, None, None, -1.0, None),  # null-valued match
        (6, "g", 1, 10, None, None, None, None, None, None, None),  # null time
        (7, "h", 4, 12, t + 5 * H, None, None, None, None, None, None),  # no history
        (8, None, 2, 10, t + H - US, 3, "w", 5, True, None, None),  # 1 us before the 1h rows
        (9, "j", 2, 10, t + H, None, None, 5, True, -1.0, 103),  # at the 1h rows: they count
    ]
    assert [dict(zip(columns, row, strict=True)) for row in expected] == oracle(case)
    check_case(spark, case)


def test_ttl_boundary_is_inclusive_to_the_microsecond(spark):
    """A row exactly ttl old is fresh; 1 us older is stale, also with a one-microsecond ttl."""
    t = T0 + 10 * H
    spine = pit.Table(
        {"rid": "bigint", "user_id": "bigint", "ts": "timestamp"},
        [(0, 1, t), (1, 1, t + US), (2, 2, t), (3, 2, t + US), (4, 2, t + 2 * US)],
    )
    table = pit.Table(
        {"user_id": "bigint", "ts": "timestamp", "v": "bigint"},
        [(1, t - 3 * H, 7), (2, t, 8)],
    )
    specs = [
        pit.LookupSpec("t", ("user_id",), "ts", {"v": "v_3h"}, 3 * H),
        pit.LookupSpec("t", ("user_id",), "ts", {"v": "v_1us"}, US),
        pit.LookupSpec("t", ("user_id",), "ts", {"v": "v_0"}, timedelta(0)),
    ]
    case = pit.Case(spine, {"t": table}, specs)
    assert [(r["v_3h"], r["v_1us"], r["v_0"]) for r in oracle(case)] == [
        (7, None, None),
        (None, None, None),
        (8, 8, 8),
        (8, 8, None),
        (8, None, None),
    ]
    check_case(spark, case)


def test_ties_pick_the_greatest_values_in_lookup_order(spark):
    """Among rows tied on keys and time, compare the first feature, then the next; nulls least."""
    t = T0 + H
    spine = pit.Table({"rid": "bigint", "k": "string", "ts": "timestamp"}, [(0, "u", t)])
    rows = [("u", t, None, 9), ("u", t, 1, None), ("u", t, 1, 3), ("u", t, 0, 99)]
    table = pit.Table({"k": "string", "ts": "timestamp", "a": "bigint", "b": "bigint"}, rows)
    for features, expected in [
        ({"a": "a", "b": "b"}, {"a": 1, "b": 3}),
        ({"b": "b", "a": "a"}, {"b": 99, "a": 0}),
    ]:
        spec = pit.LookupSpec("t", ("k",), "ts", features)
        case = pit.Case(spine, {"t": table}, [spec])
        assert oracle(case) == [{"rid": 0, "k": "u", "ts": t, **expected}]
        check_case(spark, case)


def test_empty_spine_and_empty_tables(spark):
    empty = pit.edge_case()
    no_spine = pit.Case(pit.Table(empty.spine.columns, []), empty.tables, empty.lookups)
    check_case(spark, no_spine)
    no_tables = {name: pit.Table(t.columns, []) for name, t in empty.tables.items()}
    check_case(spark, pit.Case(empty.spine, no_tables, empty.lookups))


@pytest.mark.parametrize("seed", range(4))
def test_seeded_random_cases_match_the_oracle(spark, seed):
    """The classic-PySpark comparison's cases (hundreds of rows, many ties) on Sail."""
    check_case(spark, pit.random_case(seed))


# ---- property-based: hypothesis against the oracle ---------------------------------------------


def nullable(strategy, one_in: int = 6):
    """`strategy`, or None about once in `one_in` draws."""
    return st.tuples(st.integers(0, one_in - 1), strategy).map(
        lambda p: None if p[0] == 0 else p[1]
    )


# On a coarse grid (hours 0-4, sometimes 1 us off) equal times and exact ttl boundaries are common.
MOMENTS = st.builds(
    lambda hours, offset: T0 + hours * H + offset * US,
    st.integers(0, 3),
    st.sampled_from([0, 0, 0, 0, 0, 1, -1]),
)
TTLS = st.sampled_from([None, timedelta(0), US, H, H, 2 * H, 90 * timedelta(minutes=1), H + US])


@st.composite
def tables(draw, keys: list, values: list, max_rows: int = 10) -> list[tuple]:
    """Rows (keys..., time, values...), a few sharing keys and time with another row."""
    row = st.tuples(*keys, nullable(MOMENTS, 10), *values)
    rows = draw(st.lists(row, min_size=1, max_size=max_rows))
    if rows:
        tied = draw(
            st.lists(st.tuples(st.integers(0, len(rows) - 1), st.tuples(*values)), max_size=5)
        )
        rows += [rows[i][: len(keys) + 1] + new_values for i, new_values in tied]
    return draw(st.permutations(rows))


@st.composite
def random_cases(draw) -> pit.Case:
    users, ads = nullable(st.sampled_from([1, 2, 3])), nullable(st.sampled_from([10, 11]))
    a, b = st.sampled_from([None, 0, 1, 2]), st.sampled_from([None, "x", "y"])
    c = st.sampled_from([None, -1.5, 0.0, 2.5])
    d, e = st.sampled_from([None, 5, 6]), st.sampled_from([None, True, False])
    feature_tables = {
        "user_stats": pit.Table(pit.USER_STATS, draw(tables([users], [a, b, st.just("j")]))),
        "user_profile": pit.Table(pit.USER_PROFILE, draw(tables([users], [c]))),
        "ad_stats": pit.Table(pit.AD_STATS, draw(tables([ads], [d, e]))),
        "user_ad": pit.Table(pit.USER_AD, draw(tables([users, ads], [a]))),
    }
    ttls = tuple(draw(st.lists(TTLS, min_size=4, max_size=4)))
    labels = st.sampled_from(["p", "q", None])
    spine = draw(
        st.lists(
            st.tuples(
                labels,
                nullable(st.sampled_from([1, 2, 3, 4])),  # user 4 never has history
                nullable(st.sampled_from([10, 11, 12])),  # nor does ad 12
                nullable(MOMENTS, 10),
            ),
            min_size=2,
            max_size=12,
        )
    )
    # spine rows exactly one ttl after a user_stats row: at the ttl boundary
    user_rows = feature_tables["user_stats"].rows
    for i, label, ad in draw(
        st.lists(st.tuples(st.integers(0, len(user_rows) - 1), labels, ads), max_size=3)
    ):
        user, moment = user_rows[i][:2]
        if moment is not None and ttls[0] is not None:
            spine.append((label, user, ad, moment + ttls[0]))
    spine += [spine[i] for i in draw(st.lists(st.integers(0, len(spine) - 1), max_size=4))]
    return pit.Case(
        pit.Table(pit.SPINE_COLUMNS, [(rid, *row) for rid, row in enumerate(spine)]),
        feature_tables,
        pit.lookups(ttls, tuple(draw(st.permutations(["a", "b"])))),
    )


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=random_cases())
def test_join_matches_the_oracle(spark, case):
    check_case(spark, case)


# ---- the per-partition sort: packed int64 keys, or Arrow's multi-column sort ------------------

EXTREME = datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC)


@st.composite
def partitions(draw) -> tuple[pa.Table, tuple[str, ...]]:
    """Rows of one partition: keys that pack into an int64 or not (huge integers, strings),
    times on a small grid or centuries apart, nulls in both."""
    key_values = draw(
        st.sampled_from(
            [
                st.integers(-3, 3),
                st.integers(-(2**63), 2**63 - 1),
                st.sampled_from(["a", "b", "ab", ""]),
            ]
        )
    )
    width = draw(st.integers(1, 2))
    moments = st.one_of(MOMENTS, st.sampled_from(EXTREME)) if draw(st.booleans()) else MOMENTS
    rows = draw(
        st.lists(
            st.tuples(
                st.tuples(*[nullable(key_values)] * width),
                nullable(moments),
                st.sampled_from([0, 1, SPINE_ROW]),
            ),
            min_size=1,
            max_size=40,
        )
    )
    keys = tuple(f"k{i}" for i in range(width))
    columns = {key: [row[0][i] for row in rows] for i, key in enumerate(keys)}
    table = pa.table(
        {
            **columns,
            "ts": pa.array([row[1] for row in rows], pa.timestamp("us", tz="UTC")),
            KIND: pa.array([row[2] for row in rows], pa.int8()),
        }
    )
    return table, keys


@settings(max_examples=300, deadline=None)
@given(partition=partitions())
def test_partition_sort_groups_keys_and_orders_times(partition):
    """Equal non-null keys form one run, ordered by time (nulls first, spine rows after feature
    rows of the same time); a run starts exactly where the keys change, and at every row with
    a null key (which matches nothing)."""
    table, keys = partition
    order, starts = _sort(table, keys, "ts")
    assert sorted(order.tolist()) == list(range(table.num_rows))
    rows = table.to_pylist()
    ordered = [rows[i] for i in order]
    runs = []
    for i, row in enumerate(ordered):
        key = tuple(row[k] for k in keys)
        previous = tuple(ordered[i - 1][k] for k in keys) if i else None
        if None in key:
            assert starts[i]
            continue
        assert bool(starts[i]) == (key != previous)
        if starts[i]:
            runs.append(key)
            continue
        before = ordered[i - 1]

        def rank(r):
            return (r["ts"] is not None, r["ts"] or EXTREME[0], r[KIND] == SPINE_ROW)

        assert rank(before) <= rank(row)
    assert len(runs) == len(set(runs))


# ---- DuckDB's ASOF JOIN on a larger data set without ties --------------------------------------


def test_join_matches_duckdb_asof_join(spark):
    rng = np.random.default_rng(7)
    span = 10 * 86_400_000_000  # ten days, in microseconds
    ttl = timedelta(hours=12)

    def feature_rows(keys: int, n: int, key_offset: int) -> pd.DataFrame:
        frame = pd.DataFrame(
            {
                "key": rng.integers(0, keys, n) + key_offset,
                "ts": T0 + pd.to_timedelta(rng.integers(0, span, n), unit="us"),
                "v": rng.normal(size=n),
            }
        ).drop_duplicates(["key", "ts"])  # no ties: ASOF JOIN would pick any of them
        frame["v"] = frame["v"].astype("Float64").mask(rng.random(len(frame)) < 0.1)
        return frame.reset_index(drop=True)

    users = feature_rows(500, 20_000, 0).rename(columns={"key": "user_id"})
    ads = feature_rows(60, 5_000, 1000).rename(columns={"key": "ad_id", "v": "w"})
    n = 20_000
    spine = pd.DataFrame(
        {
            "rid": np.arange(n),
            "user_id": rng.integers(0, 520, n),  # users 500-519 have no history
            "ad_id": rng.integers(1000, 1062, n),
            "ts": T0 + pd.to_timedelta(rng.integers(0, span + 86_400_000_000, n), unit="us"),
            "label": rng.integers(0, 2, n),
        }
    )
    exact = rng.choice(n, 4000, replace=False)  # at a feature time, or exactly ttl after one
    source = users.iloc[rng.integers(0, len(users), 4000)]
    spine.loc[exact, "user_id"] = source["user_id"].to_numpy()
    shift = pd.to_timedelta(np.where(rng.random(4000) < 0.5, 0, ttl // US), unit="us")
    spine.loc[exact, "ts"] = (source["ts"].reset_index(drop=True) + shift).to_numpy()
    spine = spine.astype({"user_id": "Int64", "ad_id": "Int64", "ts": "datetime64[us, UTC]"})
    spine.loc[rng.random(n) < 0.02, "user_id"] = pd.NA
    spine.loc[rng.random(n) < 0.02, "ad_id"] = pd.NA
    spine.loc[rng.random(n) < 0.01, "ts"] = pd.NaT

    con = duckdb.connect()
    for name, frame in {"spine": spine, "users": users, "ads": ads}.items():
        con.register(name, frame.assign(ts=frame["ts"].dt.tz_localize(None)))  # naive UTC
    expected = con.execute(
        """
        SELECT s.rid, s.label,
               CASE WHEN u.ts >= s.ts - INTERVAL 12 HOUR THEN u.v END AS user_v,
               a.w AS ad_w
        FROM spine s
        ASOF LEFT JOIN users u ON s.user_id = u.user_id AND s.ts >= u.ts
        ASOF LEFT JOIN ads a ON s.ad_id = a.ad_id AND s.ts >= a.ts
        ORDER BY s.rid
        """
    ).df()

    def frame(pdf, ddl):
        return spark.createDataFrame(pdf, schema=ddl)

    result = point_in_time_join(
        frame(spine, "rid bigint, user_id bigint, ad_id bigint, ts timestamp, label bigint"),
        "ts",
        [
            Lookup(
                frame(users, "user_id bigint, ts timestamp, v double"),
                ("user_id",),
                "ts",
                {"v": "user_v"},
                ttl,
            ),
            Lookup(
                frame(ads, "ad_id bigint, ts timestamp, w double"), ("ad_id",), "ts", {"w": "ad_w"}
            ),
        ],
    )
    actual = result.select("rid", "label", "user_v", "ad_w").toPandas()
    actual = actual.sort_values("rid").reset_index(drop=True)
    assert actual["user_v"].notna().sum() > 3000 and actual["ad_w"].notna().sum() > 10_000
    assert actual["user_v"].isna().sum() > 3000  # stale, unmatched and null-keyed rows
    pd.testing.assert_frame_equal(
        actual.astype({"rid": "int64", "label": "int64", "user_v": "Float64", "ad_w": "Float64"}),
        expected.astype({"rid": "int64", "label": "int64", "user_v": "Float64", "ad_w": "Float64"}),
        check_exact=True,
    )


# ---- classic JVM PySpark against Sail ------------------------------------------------------------


@pytest.fixture(scope="module")
def classic(tmp_path_factory):
    try:
        return run_on_classic("pit_cases:outputs", tmp_path_factory.mktemp("pit_classic"))
    except AssertionError as failure:
        pytest.fail(str(failure))


@pytest.mark.parametrize("name", list(pit.cases()))
def test_classic_pyspark_matches_sail(spark, classic, name):
    output = pit.run_case(spark, pit.cases()[name])
    sail_fields = [[f.name, f.dataType.simpleString(), f.nullable] for f in output.schema.fields]
    sail_rows = output.toArrow()
    classic_fields, classic_rows = classic[name]
    assert sail_fields == classic_fields  # names, Spark types and nullability
    assert sail_rows.schema.remove_metadata() == classic_rows.schema.remove_metadata()
    assert records(sail_rows) == records(classic_rows)
    assert records(classic_rows) == oracle(pit.cases()[name])


# ---- FeatureStore.get_historical_features, end to end -------------------------------------------

D0 = datetime(2026, 3, 1, tzinfo=UTC)
DAY = timedelta(days=1)
USER = Entity("user", join_keys=["user_id"])
AD = Entity("ad", join_keys=["ad_id"])
CLICKS = BatchSource("clicks", path="raw/clicks", timestamp_field="ts")


def passthrough(clicks):
    return clicks


def view(name, entity, schema, ts="ts", ttl=None):
    return batch_feature_view(
        name=name,
        sources=[CLICKS],
        entities=[entity],
        schema=schema,
        timestamp_field=ts,
        feature_start_time=D0 - 10 * DAY,
        ttl=ttl,
    )(passthrough)


USER_STATS = view("user_stats", USER, [Field("clicks", Int64), Field("score", Float64)], ttl=DAY)
AD_STATS = view("ad_stats", AD, [Field("clicks", Int64), Field("ctr", Float64)], ts="window_end")
NEVER = view("never_materialized", USER, [Field("x", Int64)])
TIED = view("tied", USER, [Field("a", Int64), Field("b", Int64)])
SERVICE = FeatureService("ctr_model", features=[USER_STATS[["score"]], AD_STATS])

USER_ROWS = [  # user_id, ts, clicks, score
    (1, D0 - DAY + 9 * H, 0, 0.0),  # exactly ttl before the earliest spine row: still read
    (1, D0 - DAY + 9 * H - US, -1, -1.0),
    (1, D0 + 10 * H, 1, 0.1),
    (1, D0 + DAY + 10 * H, 2, 0.2),
    (2, D0, 5, None),
    (None, D0 + DAY, 9, 9.9),
    (1, D0 + 9 * DAY, 99, 9.9),  # after every spine row
]
AD_ROWS = [  # ad_id, window_end, clicks, ctr
    (10, D0 - 5 * DAY, 3, 0.75),  # no ttl: any age counts
    (10, D0 + 12 * H, 7, 0.5),
    (10, D0 + 2 * DAY, 8, 0.25),
    (10, D0 + 5 * DAY, 99, 0.99),
]
TIED_ROWS = [(1, D0, 1, 2), (1, D0, 2, 1)]  # user_id, ts, a, b
SPINE_ROWS = [
    # rid, label, user_id, ad_id, ts
    (0, "a", 1, 10, D0 + DAY + 10 * H),  # user row at the same time
    (1, "b", 1, 10, D0 + 2 * DAY + 10 * H),  # user row exactly 1 day (ttl) old
    (2, "c", 1, 11, D0 + 2 * DAY + 10 * H + US),  # ... 1 us too old; ad 11 has no rows
    (3, "d", 2, 10, D0 + 9 * H + 59 * timedelta(minutes=1)),  # null score
    (4, "e", None, 10, D0 + DAY),  # null user
    (5, "f", 3, None, D0 + DAY),  # unknown user, null ad
    (6, "a", 1, 10, D0 + DAY + 10 * H),  # the first row again (but for its row id)
    (7, "h", 1, 10, D0 + 9 * H),  # the earliest row: user row at exactly t - ttl
]
SPINE = pd.DataFrame(SPINE_ROWS, columns=["rid", "label", "user_id", "ad_id", "ts"]).astype(
    {"user_id": "Int64", "ad_id": "Int64", "ts": "datetime64[us, UTC]"}
)
EXPECTED = pd.DataFrame(
    [
        # user_stats clicks, score; ad_stats clicks, ctr
        (2, 0.2, 7, 0.5),
        (2, 0.2, 8, 0.25),
        (None, None, None, None),
        (5, None, 3, 0.75),
        (None, None, 7, 0.5),
        (None, None, None, None),
        (2, 0.2, 7, 0.5),
        (0, 0.0, 3, 0.75),
    ],
    columns=["user_stats__clicks", "user_stats__score", "ad_stats__clicks", "ad_stats__ctr"],
)


@pytest.fixture(scope="module")
def store(spark, tmp_path_factory) -> FeatureStore:
    """A FeatureStore over a fresh offline store holding user_stats, ad_stats and tied."""
    root = str(tmp_path_factory.mktemp("offline"))
    offline = OfflineStore(root)
    everything = TimeWindow(D0 - 10 * DAY, D0 + 10 * DAY)
    tables = [
        (USER_STATS, USER_ROWS, "user_id", {"clicks": "bigint", "score": "double"}),
        (AD_STATS, AD_ROWS, "ad_id", {"clicks": "bigint", "ctr": "double"}),
        (TIED, TIED_ROWS, "user_id", {"a": "bigint", "b": "bigint"}),
    ]
    for feature_view, rows, key, features in tables:
        ts = feature_view.timestamp_field
        table = pit.Table({key: "bigint", ts: "timestamp", **features}, rows)
        df = spark.createDataFrame(table.pandas(), schema=table.ddl)
        df = latest_per_time(df, [key], ts, list(features))  # as materialization stores rows
        df = df.withColumn("event_date", F.to_date(ts))
        uri = offline.view_table_uri(feature_view.name, feature_view.version)
        offline.write_window(df, uri, everything, ts)
    repository = Repository.from_objects(
        [USER, AD, CLICKS, USER_STATS, AD_STATS, NEVER, TIED, SERVICE]
    )
    return FeatureStore(repository, spark, offline_root_uri=root)


def in_spine_order(df) -> pd.DataFrame:
    """The result's feature columns by row id, after checking each spine row is there once."""
    rows = records(df)
    spine_columns = list(SPINE.columns)
    assert [tuple(row[c] for c in spine_columns) for row in rows] == SPINE_ROWS
    features = [c for c in df.columns if c not in spine_columns]
    return pd.DataFrame([[row[c] for c in features] for row in rows], columns=features)


def assert_features(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(
        actual.astype("Float64"), expected.astype("Float64"), check_names=True
    )


def test_full_feature_names_from_a_pandas_spine(store):
    result = store.get_historical_features(SPINE, [USER_STATS, AD_STATS])
    assert result.columns == [*SPINE.columns, *EXPECTED.columns]
    assert dict(result.dtypes)["ts"] == "timestamp"
    assert_features(in_spine_order(result), EXPECTED)


def test_a_pandas_spine_never_travels_to_the_server_and_its_staged_copy_goes_with_the_store(
    store,
):
    """A 5 MB pandas spine, retrieved through a byte-counting proxy to a Sail server: under a
    tenth of its size goes up (the client stages it as Parquet; as a local relation it went
    with each of the retrieval's requests, about ten times), the rows equal the oracle's, and
    closing the store removes the copy it staged in the offline store."""
    rows = 50_000
    spine = pd.concat([SPINE] * (rows // len(SPINE)), ignore_index=True)
    spine["label"] = spine["rid"].astype(str).str.pad(80, fillchar="x")
    spine["rid"] = range(len(spine))
    size = pa.Table.from_pandas(spine).nbytes
    server = SparkConnectServer("127.0.0.1", 0)
    server.start(background=True)
    proxy = CountingProxy(server.listening_address[1])
    staging = Path(store.offline.table_uri(STAGING, SPINES))
    before = set(staging.iterdir()) if staging.exists() else set()
    try:
        with spark_session("connect", proxy.url) as spark:
            remote = FeatureStore(store.repository, spark, store.offline.root)
            result = remote.get_historical_features(spine, [USER_STATS, AD_STATS]).toPandas()
            ours = set(staging.iterdir()) - before
            assert len(ours) == 1, "staged under the offline store"
            remote.close()
            assert not ours & set(staging.iterdir())
    finally:
        proxy.close()
        server.stop()
    assert size > 5_000_000 and proxy.sent < 0.1 * size
    result = result.sort_values("rid").reset_index(drop=True)
    expected = pd.concat([EXPECTED] * (rows // len(SPINE)), ignore_index=True)
    assert_features(result[list(EXPECTED.columns)], expected)


def test_a_spine_a_crashed_process_left_staged_is_swept_a_day_later(store, spark):
    """Staged spines of a process killed before it closed its store: one two days old is
    removed by the next store's first pandas retrieval, one an hour old (a live notebook's)
    is kept, and the retrieval's rows are the oracle's."""
    staging = Path(store.offline.table_uri(STAGING, SPINES))
    stale, live = staging / "killed", staging / "live"
    for folder, age in ((stale, 2 * DAY), (live, timedelta(hours=1))):
        folder.mkdir(parents=True)
        (folder / "part-0.parquet").write_bytes(b"left by a killed process")
        then = (datetime.now(UTC) - age).timestamp()
        os.utime(folder, (then, then))
    fresh = FeatureStore(store.repository, spark, store.offline.root)
    result = fresh.get_historical_features(SPINE, [USER_STATS, AD_STATS])
    assert_features(in_spine_order(result), EXPECTED)
    assert not stale.exists() and live.exists()
    fresh.close()


def test_plain_names_selections_and_strings(store):
    result = store.get_historical_features(
        store.spark.createDataFrame(SPINE),
        [USER_STATS[["score"]], "ad_stats:ctr", "user_stats:clicks"],
        full_feature_names=False,
    )
    assert result.columns == [*SPINE.columns, "score", "clicks", "ctr"]  # one pass per view
    expected = EXPECTED[["user_stats__score", "user_stats__clicks", "ad_stats__ctr"]]
    expected = expected.set_axis(["score", "clicks", "ctr"], axis=1)
    assert_features(in_spine_order(result), expected)
    whole = store.get_historical_features(SPINE, ["ad_stats"], full_feature_names=False)
    assert whole.columns == [*SPINE.columns, "clicks", "ctr"]


def test_feature_service_with_a_delta_spine(store, spark, tmp_path):
    path = str(tmp_path / "spine")
    spark.createDataFrame(SPINE).write.format("delta").save(path)
    result = store.get_historical_features(path, SERVICE)
    columns = ["user_stats__score", "ad_stats__clicks", "ad_stats__ctr"]
    assert result.columns == [*SPINE.columns, *columns]
    assert_features(in_spine_order(result), EXPECTED[columns])


def test_timestamp_column_may_be_named_and_typed_otherwise(store):
    """A differently named timestamp column of type date: midnight UTC of that day."""
    spine = pd.DataFrame({"user_id": [1, 2], "day": [(D0 + DAY).date(), D0.date()]})
    result = store.get_historical_features(spine, "user_stats:clicks", timestamp_column="day")
    rows = sorted(result.collect(), key=lambda row: row["user_id"])
    assert [row["user_stats__clicks"] for row in rows] == [1, 5]


def unregistered_view():
    return view("user_stats_v2", USER, [Field("clicks", Int64)])


@pytest.mark.parametrize(
    ("spine", "features", "kwargs", "message"),
    [
        (
            SPINE.drop(columns=["ad_id"]),
            [USER_STATS, AD_STATS],
            {},
            "spine lacks join key 'ad_id' needed by feature view 'ad_stats'",
        ),
        (
            SPINE,
            "nope",
            {},
            "unknown feature view 'nope' (known: ad_stats, never_materialized, tied, user_stats)",
        ),
        (SPINE, "nope:clicks", {}, "unknown feature view 'nope'"),
        (SPINE, unregistered_view(), {}, "unknown feature view 'user_stats_v2'"),
        (
            SPINE,
            "user_stats:nope",
            {},
            "feature view 'user_stats' has no feature 'nope' (features: clicks, score)",
        ),
        (
            SPINE.drop(columns=["ts"]),
            USER_STATS,
            {},
            "spine has no timestamp column 'ts' (columns: rid, label, user_id, ad_id)",
        ),
        (SPINE, USER_STATS, {"timestamp_column": "event_time"}, "no timestamp column 'event_time'"),
        (SPINE, USER_STATS, {"timestamp_column": "label"}, "spine column 'label' is string, not a"),
        (
            SPINE,
            [USER_STATS, AD_STATS],
            {"full_feature_names": False},
            "feature name 'clicks' is in views 'user_stats' and 'ad_stats': "
            "use full_feature_names=True",
        ),
        (
            SPINE.assign(user_stats__score=1.0),
            USER_STATS,
            {},
            "spine already has a column named 'user_stats__score'",
        ),
        (
            SPINE,
            ["user_stats", "never_materialized"],
            {},
            "feature view 'never_materialized' has no offline data yet: "
            "materialize the asset features/never_materialized",
        ),
        (SPINE, [], {}, "no features requested"),
        (
            SPINE,
            [USER_STATS[["nope"]]],
            {},
            "the request selects ['nope'] of 'user_stats', which has the features",
        ),
    ],
)
def test_retrieval_errors(store, spine, features, kwargs, message):
    with pytest.raises(RetrievalError) as raised:
        store.get_historical_features(spine, features, **kwargs)
    assert message in str(raised.value)


# ---- ties and time zones ---------------------------------------------------------------------


def test_tie_break_does_not_depend_on_the_selection(store):
    spine = pd.DataFrame({"user_id": [1], "ts": [D0]})
    both = store.get_historical_features(spine, TIED).first()
    only_b = store.get_historical_features(spine, TIED[["b"]]).first()
    reordered = store.get_historical_features(spine, TIED[["b", "a"]]).first()
    assert (both["tied__a"], both["tied__b"]) == (2, 1)  # the row with the greatest (a, b)
    assert only_b["tied__b"] == both["tied__b"]  # actual: 2, the greatest b alone
    assert (reordered["tied__a"], reordered["tied__b"]) == (2, 1)  # actual: (1, 2)


def test_retrieval_does_not_depend_on_the_local_time_zone(store):
    spine = pd.DataFrame({"user_id": [1], "ts": [D0 + DAY + 12 * H]})
    assert store.get_historical_features(spine, "user_stats:clicks").first()[-1] == 2
    previous = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        value = store.get_historical_features(spine, "user_stats:clicks").first()[-1]
    finally:
        if previous is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = previous
        time.tzset()
    assert value == 2  # actual: None (the row 2 h before the spine row was filtered out)


def test_shuffles_by_key_use_the_sessions_partition_count(spark):
    """Sail keeps a union's summed input partitions on `repartition(*keys)`, and a shuffle's
    buffers grow with inputs x outputs: the merges name the count (local mode: 2 per core)."""
    from featureplane.compute.shuffle import by_keys
    from featureplane.spark_session import local_shuffle_partitions

    def sizes(batches):
        yield pa.RecordBatch.from_pydict({"rows": [sum(b.num_rows for b in batches)]})

    many = spark.range(0, 2_000, 1, numPartitions=40).withColumn("key", F.col("id") % 13)
    shuffled = by_keys(many.unionByName(many), ["key"]).mapInArrow(sizes, "rows bigint")
    rows = [r.rows for r in shuffled.collect()]
    assert spark.conf.get("spark.sql.shuffle.partitions") == str(local_shuffle_partitions())
    assert len(rows) == local_shuffle_partitions()
    assert sum(rows) == 4_000
