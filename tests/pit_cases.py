"""Point-in-time join cases shared by tests/test_point_in_time.py's Sail and classic runs.

A `Case` is a spine and feature tables as plain Python rows (what the test's brute-force oracle
reads) plus the lookups to join; `run_case` turns it into in-memory DataFrames and calls
`point_in_time_join`; `outputs` is what tests/classic.py runs on classic PySpark.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from featureplane.compute.point_in_time import Lookup, point_in_time_join

T0 = datetime(2026, 1, 1, tzinfo=UTC)
H = timedelta(hours=1)
US = timedelta(microseconds=1)
PANDAS_TYPES = {
    "bigint": "Int64",
    "int": "Int32",
    "double": "Float64",
    "boolean": "boolean",
    "string": "object",
    "timestamp": "datetime64[us, UTC]",
}


@dataclass(frozen=True)
class Table:
    """Rows of Python values (None is null) with Spark types by column, in column order."""

    columns: dict[str, str]
    rows: list[tuple]

    @property
    def ddl(self) -> str:
        return ", ".join(f"{name} {spark_type}" for name, spark_type in self.columns.items())

    def records(self) -> list[dict]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]

    def pandas(self) -> pd.DataFrame:
        frame = pd.DataFrame.from_records(self.rows, columns=list(self.columns))
        for name, spark_type in self.columns.items():
            values = frame[name].astype(object).where(frame[name].notna(), None)
            frame[name] = pd.Series(list(values), dtype=PANDAS_TYPES[spark_type])
        return frame


@dataclass(frozen=True)
class LookupSpec:
    """A `Lookup` naming its table in the case."""

    table: str
    join_keys: tuple[str, ...]
    timestamp_field: str
    features: dict[str, str]
    ttl: timedelta | None = None


@dataclass(frozen=True)
class Case:
    spine: Table
    tables: dict[str, Table]
    lookups: list[LookupSpec]
    timestamp_column: str = "ts"

    @property
    def outputs(self) -> dict[str, str]:
        """Output column -> Spark type, in lookup order."""
        return {
            output: self.tables[spec.table].columns[column]
            for spec in self.lookups
            for column, output in spec.features.items()
        }


def run_case(spark, case: Case):
    """`point_in_time_join` of the case's in-memory DataFrames."""
    spine = spark.createDataFrame(case.spine.pandas(), schema=case.spine.ddl)
    tables = {
        name: spark.createDataFrame(table.pandas(), schema=table.ddl)
        for name, table in case.tables.items()
    }
    lookups = [
        Lookup(tables[s.table], s.join_keys, s.timestamp_field, dict(s.features), s.ttl)
        for s in case.lookups
    ]
    return point_in_time_join(spine, case.timestamp_column, lookups)


# ---- the cases -------------------------------------------------------------------------------

SPINE_COLUMNS = {
    "rid": "bigint",
    "label": "string",
    "user_id": "bigint",
    "ad_id": "bigint",
    "ts": "timestamp",
}
USER_STATS = {
    "user_id": "bigint",
    "ts": "timestamp",
    "a": "bigint",
    "b": "string",
    "label": "string",
}
USER_PROFILE = {"user_id": "bigint", "updated_at": "timestamp", "c": "double"}
AD_STATS = {"ad_id": "bigint", "event_ts": "timestamp", "d": "bigint", "e": "boolean"}
USER_AD = {"user_id": "bigint", "ad_id": "bigint", "ts": "timestamp", "a": "int"}


def lookups(
    ttls: tuple[timedelta | None, ...] = (H, 2 * H, None, None),
    user_features: tuple[str, ...] = ("a", "b"),
) -> list[LookupSpec]:
    """Four lookups in three passes (user_id twice, ad_id, (user_id, ad_id)), interleaved."""
    names = {"a": "u_a", "b": "u_b"}
    return [
        LookupSpec("user_stats", ("user_id",), "ts", {f: names[f] for f in user_features}, ttls[0]),
        LookupSpec("ad_stats", ("ad_id",), "event_ts", {"d": "ad_d", "e": "ad_e"}, ttls[1]),
        LookupSpec("user_profile", ("user_id",), "updated_at", {"c": "p_c"}, ttls[2]),
        LookupSpec("user_ad", ("user_id", "ad_id"), "ts", {"a": "ua_a"}, ttls[3]),
    ]


def edge_case() -> Case:
    """Hand-made rows hitting every rule once; tests/test_point_in_time.py spells out the result."""
    t = T0
    spine = [
        (0, "a", 1, 10, t + 2 * H),
        (1, "a", 1, 10, t + 2 * H),  # a duplicate spine row
        (2, "c", 1, 11, t + 3 * H),  # user_stats (ttl 1h) at exactly t - ttl: fresh
        (3, "d", 1, 11, t + 3 * H + US),  # ... and 1 us older than t - ttl: stale
        (4, "e", None, 10, t + 2 * H),  # null user
        (5, "f", 2, None, t + 2 * H),  # null ad
        (6, "g", 1, 10, None),  # null time
        (7, "h", 4, 12, t + 5 * H),  # no history at all
        (8, None, 2, 10, t + H - US),  # just before a feature row; null label
        (9, "j", 2, 10, t + H),  # at a feature row's time: it counts
    ]
    user_stats = [
        (1, t + 2 * H, 1, "x", "junk"),
        (1, t + 2 * H, 2, None, "junk"),  # ties at 2h: greatest (a, b), nulls least: (2, "y")
        (1, t + 2 * H, 2, "y", "junk"),
        (1, t + 2 * H, None, "z", "junk"),
        (1, t + H, 9, "old", "junk"),
        (2, t + H, None, None, "junk"),  # a match whose values are null
        (2, t, 3, "w", "junk"),
        (None, t, 7, "null key", "junk"),
        (3, None, 8, "null time", "junk"),
    ]
    user_profile = [
        (1, t, 0.5),
        (1, t + 3 * H + US, 1.5),
        (2, t + H, None),  # tie of null and -1.0: -1.0
        (2, t + H, -1.0),
    ]
    ad_stats = [
        (10, t, 5, True),  # ttl 2h: fresh for a spine row at exactly t + 2h
        (11, t + H - US, 6, False),
        (11, t + H, 7, None),
        (None, t, 1, True),
    ]
    user_ad = [
        (1, 10, t + 2 * H, 100),
        (1, 10, t + 2 * H + US, 101),
        (1, None, t, 102),  # a partly null key never matches
        (2, 10, t + H, 103),
    ]
    return Case(
        Table(SPINE_COLUMNS, spine),
        {
            "user_stats": Table(USER_STATS, user_stats),
            "user_profile": Table(USER_PROFILE, user_profile),
            "ad_stats": Table(AD_STATS, ad_stats),
            "user_ad": Table(USER_AD, user_ad),
        },
        lookups(),
    )


def random_case(seed: int, spine_rows: int = 300, table_rows: int = 150) -> Case:
    """Random rows on an hourly grid (± 1 us), with ties, nulls and duplicate spine rows."""
    rng = np.random.default_rng(seed)

    def pick(values: list, n: int) -> list:
        return [values[i] for i in rng.integers(0, len(values), n)]

    def moments(n: int) -> list:
        hours = rng.integers(0, 8, n)
        offsets = pick([0, 0, 0, 0, 1, -1], n)
        return [
            None if h == 7 else T0 + int(h) * H + o * US
            for h, o in zip(hours, offsets, strict=True)
        ]

    def with_ties(rows: list[tuple], keys: int, values: list[list]) -> list[tuple]:
        copies = [rows[i] for i in rng.integers(0, len(rows), len(rows) // 3)]
        tied = [row[: keys + 1] + tuple(pick(v, 1)[0] for v in values) for row in copies]
        everything = rows + tied
        return [everything[i] for i in rng.permutation(len(everything))]

    def rows(*columns: list) -> list[tuple]:
        return list(zip(*columns, strict=True))

    n, m = spine_rows, table_rows
    users, ads = [1, 2, 3, 4, 5, None], [10, 11, 12, None]
    spine = rows(pick(["p", "q", "r", None], n), pick(users, n), pick(ads, n), moments(n))
    spine += [spine[i] for i in rng.integers(0, n, n // 10)]
    spine = [(rid, *row) for rid, row in enumerate(spine)]
    a, b, c = [None, 0, 1, 2], [None, "x", "y"], [None, -1.5, 0.0, 2.5]
    d, e = [None, 5, 6], [None, True, False]
    user_stats = rows(pick([1, 2, 3, None], m), moments(m), pick(a, m), pick(b, m), ["j"] * m)
    user_profile = rows(pick([1, 2, 4, None], m), moments(m), pick(c, m))
    ad_stats = rows(pick([10, 11, None], m), moments(m), pick(d, m), pick(e, m))
    user_ad = rows(pick([1, 2, None], m), pick([10, 11, None], m), moments(m), pick(a, m))
    ttls = [None, timedelta(0), H, 2 * H, 90 * timedelta(minutes=1), H + US]
    chosen = tuple(ttls[i] for i in rng.integers(0, len(ttls), 4))
    return Case(
        Table(SPINE_COLUMNS, spine),
        {
            "user_stats": Table(USER_STATS, with_ties(user_stats, 1, [a, b, ["j"]])),
            "user_profile": Table(USER_PROFILE, with_ties(user_profile, 1, [c])),
            "ad_stats": Table(AD_STATS, with_ties(ad_stats, 1, [d, e])),
            "user_ad": Table(USER_AD, with_ties(user_ad, 2, [a])),
        },
        lookups(chosen, ("b", "a") if seed % 2 else ("a", "b")),
    )


def cases() -> dict[str, Case]:
    return {"edge": edge_case(), **{f"random_{seed}": random_case(seed) for seed in range(4)}}


def outputs(spark) -> dict:
    """Each case's result DataFrame."""
    return {name: run_case(spark, case) for name, case in cases().items()}
