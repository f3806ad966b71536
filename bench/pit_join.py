"""Point-in-time join benchmark: `FeatureStore.get_historical_features` vs DuckDB `ASOF JOIN`.

Run from the project folder:

    .venv/bin/python -m bench.pit_join            # full: 1M and 10M spine rows, 3 repeats
    .venv/bin/python -m bench.pit_join --quick    # smoke size, seconds
    .venv/bin/python -m bench.pit_join --spine-rows 1_000_000 --repeats 5 \
        --out bench/results/pit_join_1m.json --data-dir /tmp/fp-pit-data --keep

Options: `--spine-rows N [N ...]` cases to run (default 1M and 10M), `--repeats` timed runs per
engine and case after `--warmup` untimed ones (default 3 and 1), `--out` the JSON report (default
`bench/results/pit_join.json`), `--data-dir` where data and results go (default a temp dir,
deleted at the end unless `--keep`; an existing data dir generated with the same parameters is
reused), `--engines ours duckdb`, `--explain` (print our Spark plan and the DuckDB SQL first),
`--engine sail|cluster|both` where ours runs: Sail in-process (default), the local JVM Spark
cluster (`featureplane.cluster`, started for the run, two workers of one core), or both in the
same run, which prints Sail's time over the JVM cluster's (`sail_over_jvm` in the JSON).

Data (numpy, seeded, identical on every run): 3 feature views with `--feature-rows` rows each
(default 3M) over `--entities` entities (default 100k), event times uniform over 30 days from
2025-01-01 UTC, unique per entity (so "as of" never has to break ties), a few nulls:

    view              keys     ttl     features
    user_stats        user_id  1 day   clicks_7d bigint, spend_7d double (2% null), sessions_1d int
    user_engagement   user_id  none    dwell_avg double, pages_30d bigint, score float
    ad_stats          ad_id    2 days  ctr_1d double (2% null), impressions_1d bigint, bid float

Entities are uniform (no skew). Each view is written with `deltalake.write_deltalake` (no Spark)
to `<data>/offline/features/<view>/<version>` partitioned by `event_date`, with the offline
store's columns (join keys, ts, features, event_date). The spine (row_id, user_id, ad_id, ts,
label; ts uniform over the same 30 days, rows in time order like an impression log) is a Delta
table too.

Engines, each case in a fresh subprocess per engine (so memory peaks are separable):
- ours: `FeatureStore(repository, spark, root).get_historical_features(<spine Delta path>, views)`
  on Sail in-process (`featureplane.spark_session.spark_session()`, default parallelism = cores),
  materialized by writing the whole result (every column) to a new Delta table. The time covers
  everything the call does: the spine's min/max query, reading the Delta logs, the join, the write.
- duckdb: the same spine `ASOF LEFT JOIN` each feature table (keys equal, spine ts >= feature ts),
  with the same ttl rule (the latest row at or before ts, null if older than ts - ttl), over
  `read_parquet` of the files `deltalake.DeltaTable(path).file_uris()` lists, `threads=2`, other
  settings default, materialized with `COPY (...) TO 'result.parquet'`.
Both write Parquet (Delta adds a log), so the "materialize" step costs the same kind of work.

Wall time: median of `--repeats` runs after the warm-up, `time.perf_counter` around the call and
the write; CPU seconds (user + system, `getrusage`) per run are reported as well. Peak memory: the
peak RSS of the engine's subprocess (`VmHWM` in /proc/self/status, read at its end), which for ours
includes the in-process Sail server (threads of the same process), over the warm-up and all repeats
of that case. Not `ru_maxrss`: Linux carries the parent's peak across fork+exec into the child's
`ru_maxrss`, so it would report the data generator's peak for both engines (it is the fallback
only where /proc is missing). The RSS after imports and session start is reported (`baseline`).

Check: both results are joined on row_id (full outer join, in DuckDB) and every spine and feature
column is compared with IS DISTINCT FROM; values must be exactly equal (they are copied, not
computed), every spine row present once. The report prints PASS or FAIL per case, and the
fraction of non-null values per feature so the comparison is not vacuous.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench.harness import (
    THREADS,
    base_parser,
    cpu_seconds,
    machine_info,
    ours_key,
    ours_session,
    peak_rss_mib,
    run_engine,
    scaling,
    spark_engines,
    time_writes,
    worker,
)
from featureplane import (
    BatchSource,
    Entity,
    Field,
    Float32,
    Float64,
    Int32,
    Int64,
    Repository,
    batch_feature_view,
)
from featureplane.types import DType

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "pit_join.json"
START = datetime(2025, 1, 1, tzinfo=UTC)
DAY_US = 86_400 * 1_000_000
TS = pa.timestamp("us", tz="UTC")
ARROW_TYPES = {
    Int32: pa.int32(),
    Int64: pa.int64(),
    Float32: pa.float32(),
    Float64: pa.float64(),
}


@dataclass(frozen=True)
class ViewSpec:
    name: str
    key: str
    ttl: timedelta | None
    features: tuple[tuple[str, DType], ...]
    nullable: str | None = None  # a feature with ~2% nulls
    rows: int | None = None  # drawn rows (before de-duplication); default `--feature-rows`


VIEW_SPECS = (
    ViewSpec(
        "user_stats",
        "user_id",
        timedelta(days=1),
        (("clicks_7d", Int64), ("spend_7d", Float64), ("sessions_1d", Int32)),
        nullable="spend_7d",
    ),
    ViewSpec(
        "user_engagement",
        "user_id",
        None,
        (("dwell_avg", Float64), ("pages_30d", Int64), ("score", Float32)),
    ),
    ViewSpec(
        "ad_stats",
        "ad_id",
        timedelta(days=2),
        (("ctr_1d", Float64), ("impressions_1d", Int64), ("bid", Float32)),
        nullable="ctr_1d",
    ),
)
MIDSIZE_SPECS = (
    ViewSpec(
        "member_profile",
        "member_id",
        None,
        (("tenure_days", Int64), ("score", Float64), ("segment", Int32)),
        rows=25_000,
    ),
    ViewSpec(
        "member_orders",
        "member_id",
        timedelta(days=30),
        (("amount", Float64), ("items", Int32), ("discount", Float32)),
        nullable="amount",
        rows=300_000,
    ),
)
"""The mid-size shape: what a data scientist iterates on (String keys, a year of days)."""
SHAPES = {"large": VIEW_SPECS, "midsize": MIDSIZE_SPECS}


@dataclass(frozen=True)
class DataParams:
    """Everything that determines the generated data; a data dir is reused only if equal."""

    entities: int = 100_000
    feature_rows: int = 3_000_000
    days: int = 30
    seed: int = 20250101
    spine_rows: tuple[int, ...] = (1_000_000, 10_000_000)
    shape: str = "large"

    @property
    def specs(self) -> tuple[ViewSpec, ...]:
        return SHAPES[self.shape]

    @property
    def keys(self) -> list[str]:
        """The spine's join keys: every view's, in order."""
        return list(dict.fromkeys(spec.key for spec in self.specs))

    @property
    def spine_columns(self) -> tuple[str, ...]:
        return ("row_id", *self.keys, "ts", "label")

    def key_array(self, ids: np.ndarray) -> pa.Array:
        """Entity ids as the shape's join keys: integers, or Strings (`m0000042`) mid-size."""
        if self.shape == "large":
            return pa.array(ids)
        return pa.array(np.char.add("m", np.char.zfill(ids.astype(str), 7)))


MIDSIZE = DataParams(entities=20_000, days=365, spine_rows=(300_000,), shape="midsize")
"""The mid-size case (`--shape midsize`): a 300k-row spine, views of 25k and 300k rows."""


# ---- definitions ---------------------------------------------------------------------------


def _identity(rows):
    """Retrieval never runs transformations; this only satisfies the definition."""
    return rows


def feature_views(params: DataParams) -> list:
    """FeatureViews matching the generated tables (the transformation is irrelevant here)."""
    entities = {key: Entity(key.removesuffix("_id"), join_keys=[key]) for key in params.keys}
    source = BatchSource("bench_events", path="/nonexistent/bench_events", timestamp_field="ts")
    return [
        batch_feature_view(
            sources=[source],
            entities=[entities[spec.key]],
            schema=[Field(name, dtype) for name, dtype in spec.features],
            timestamp_field="ts",
            feature_start_time=START,
            ttl=spec.ttl,
            name=spec.name,
        )(_identity)
        for spec in params.specs
    ]


# ---- data ----------------------------------------------------------------------------------


def _feature_table(params: DataParams, index: int, spec: ViewSpec) -> pa.Table:
    rng = np.random.default_rng([params.seed, 1, index])
    span = params.days * DAY_US
    shift = 63 - params.entities.bit_length()  # (key, offset) packed in one int64
    if span >= 1 << shift:
        raise ValueError("days or entities too large for the (key, ts) uniqueness encoding")
    rows = spec.rows or params.feature_rows
    keys = rng.integers(0, params.entities, rows, dtype=np.int64)
    offsets = rng.integers(0, span, rows, dtype=np.int64)
    unique = np.unique((keys << shift) | offsets)  # times unique per entity: no ASOF ties
    keys, offsets = unique >> shift, unique & ((1 << shift) - 1)
    order = np.argsort(offsets, kind="stable")  # stored in time order, as daily windows append
    keys, offsets = keys[order], offsets[order]
    n = len(keys)
    start_us = int(START.timestamp()) * 1_000_000
    ts = pa.array(start_us + offsets, TS)
    columns: dict[str, pa.Array] = {spec.key: params.key_array(keys), "ts": ts}
    for name, dtype in spec.features:
        if dtype in (Int64, Int32):
            values = rng.poisson(20, n)
        else:
            values = np.round(rng.gamma(2.0, 3.0, n), 4)
        mask = rng.random(n) < 0.02 if name == spec.nullable else None
        columns[name] = pa.array(values, ARROW_TYPES[dtype], mask=mask)
    columns["event_date"] = ts.cast(pa.date32())
    return pa.table(columns)


def _spine_table(params: DataParams, rows: int) -> pa.Table:
    rng = np.random.default_rng([params.seed, 2, rows])
    start_us = int(START.timestamp()) * 1_000_000
    ts = np.sort(start_us + rng.integers(0, params.days * DAY_US, rows, dtype=np.int64))
    keys = {
        key: params.key_array(rng.integers(0, params.entities, rows, dtype=np.int64))
        for key in params.keys
    }
    return pa.table(
        {
            "row_id": pa.array(np.arange(rows, dtype=np.int64)),
            **keys,
            "ts": pa.array(ts, TS),
            "label": pa.array((rng.random(rows) < 0.05).astype(np.int32)),
        }
    )


def feature_uri(data: Path, view: str, params: DataParams) -> str:
    """The view's table where the offline store keeps it: `features/<name>/<version>`."""
    [version] = [v.version for v in feature_views(params) if v.name == view]
    return str(data / "offline" / "features" / view / version)


def spine_uri(data: Path, rows: int) -> str:
    return str(data / "spines" / f"spine_{rows}")


def generate(data: Path, params: DataParams) -> dict:
    """Write the feature tables and spines, reusing those already generated with the same params.

    Returns the row count of every table.
    """
    from deltalake import write_deltalake

    started = time.perf_counter()
    features = {k: v for k, v in asdict(params).items() if k != "spine_rows"}
    marker = data / "features.json"
    existing = json.loads(marker.read_text()) if marker.exists() else {}
    if existing.get("params") == features:
        rows = existing["rows"]
    else:
        shutil.rmtree(data / "offline", ignore_errors=True)
        rows = {}
        for index, spec in enumerate(params.specs):
            table = _feature_table(params, index, spec)
            uri = feature_uri(data, spec.name, params)
            write_deltalake(uri, table, partition_by=["event_date"])
            rows[spec.name] = table.num_rows
        marker.write_text(json.dumps({"params": features, "rows": rows}, indent=2))
    spine_params = {k: features[k] for k in ("entities", "days", "seed")}
    for count in params.spine_rows:
        spine_marker = data / "spines" / f"spine_{count}.json"
        if not spine_marker.exists() or json.loads(spine_marker.read_text()) != spine_params:
            shutil.rmtree(spine_uri(data, count), ignore_errors=True)
            write_deltalake(spine_uri(data, count), _spine_table(params, count))
            spine_marker.write_text(json.dumps(spine_params))
        rows[f"spine_{count}"] = count
    print(f"data ready in {data} ({time.perf_counter() - started:.1f}s): {rows}")
    return rows


# ---- engines (each runs in its own subprocess) -----------------------------------------------


def _local_paths(uris: list[str]) -> list[str]:
    return [uri.removeprefix("file://") for uri in uris]


def output_columns(params: DataParams) -> list[str]:
    return [f"{spec.name}__{name}" for spec in params.specs for name, _ in spec.features]


def job_params(job: dict) -> DataParams:
    return DataParams(**{**job["params"], "spine_rows": tuple(job["params"]["spine_rows"])})


def run_ours(job: dict) -> dict:
    from featureplane.feature_store import FeatureStore

    params = job_params(job)
    data, out = Path(job["data"]), Path(job["out"])
    repository = Repository.from_objects(feature_views(params))
    views = [repository.feature_views[spec.name] for spec in params.specs]
    spine = spine_uri(data, job["spine_rows"])
    if job.get("spine") == "pandas":  # read before the timing, as a notebook holds it
        from deltalake import DeltaTable

        spine = DeltaTable(spine).to_pandas()
    with ours_session(job) as spark:
        store = FeatureStore(repository, spark, str(data / "offline"))
        baseline = peak_rss_mib()
        if job.get("explain"):
            store.get_historical_features(spine, views).explain(mode="formatted")
        runs = range(job["warmup"] + job["repeats"])
        label = f"ours   {job['spine_rows']:>11,}"
        timings, target = time_writes(
            label, runs, lambda: store.get_historical_features(spine, views), out
        )
    return {
        "timings": timings,
        "result": target,
        "peak_rss_mib": peak_rss_mib(),
        "baseline_rss_mib": baseline,
    }


def duckdb_sql(data: Path, spine_rows: int, target: Path, params: DataParams) -> str:
    from deltalake import DeltaTable

    def files(uri: str) -> str:
        return repr(_local_paths(DeltaTable(uri).file_uris()))

    selects, joins = [], []
    for index, spec in enumerate(params.specs):
        alias = f"v{index}"
        names = ", ".join(name for name, _ in spec.features)
        joins.append(
            f"ASOF LEFT JOIN (SELECT {spec.key}, ts AS __ts, {names} "
            f"FROM read_parquet({files(feature_uri(data, spec.name, params))})) AS {alias}\n"
            f"  ON s.{spec.key} = {alias}.{spec.key} AND s.ts >= {alias}.__ts"
        )
        for name, _ in spec.features:
            value = f"{alias}.{name}"
            if spec.ttl is not None:
                ttl_us = spec.ttl // timedelta(microseconds=1)
                value = (
                    f"CASE WHEN {alias}.__ts >= s.ts - to_microseconds({ttl_us}) THEN {value} END"
                )
            selects.append(f"{value} AS {spec.name}__{name}")
    spine_files = repr(_local_paths(DeltaTable(spine_uri(data, spine_rows)).file_uris()))
    return (
        f"COPY (\nSELECT {', '.join(f's.{c}' for c in params.spine_columns)},\n  "
        + ",\n  ".join(selects)
        + f"\nFROM read_parquet({spine_files}) AS s\n"
        + "\n".join(joins)
        + f"\n) TO '{target}' (FORMAT parquet)"
    )


def run_duckdb(job: dict) -> dict:
    import duckdb

    data, out = Path(job["data"]), Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    connection = duckdb.connect(
        config={"threads": THREADS, "temp_directory": str(out / "duckdb_tmp")}
    )
    baseline = peak_rss_mib()
    params = job_params(job)
    if job.get("explain"):
        print(duckdb_sql(data, job["spine_rows"], out / "explain.parquet", params))
    timings = []
    for run in range(job["warmup"] + job["repeats"]):
        target = out / f"run{run}.parquet"
        cpu, started = cpu_seconds(), time.perf_counter()
        connection.execute(duckdb_sql(data, job["spine_rows"], target, params))
        finished = time.perf_counter()
        timings.append({"seconds": finished - started, "cpu_seconds": cpu_seconds() - cpu})
        print(f"  duckdb {job['spine_rows']:>11,} run {run}: {finished - started:7.2f}s")
        if run < job["warmup"] + job["repeats"] - 1:
            target.unlink()
    connection.close()
    return {
        "timings": timings,
        "result": str(target),
        "peak_rss_mib": peak_rss_mib(),
        "baseline_rss_mib": baseline,
    }


ENGINES = {"ours": run_ours, "duckdb": run_duckdb}


# ---- comparison and report -----------------------------------------------------------------


def compare(ours: str, theirs: str, spine_rows: int, params: DataParams) -> dict:
    """Join both results on row_id and count differing values per column (DuckDB)."""
    import duckdb
    from deltalake import DeltaTable

    ours_files = repr(_local_paths(DeltaTable(ours).file_uris()))
    features = output_columns(params)
    columns = [c for c in params.spine_columns if c != "row_id"] + features
    differing = ",\n".join(
        f"count(*) FILTER (a.{c} IS DISTINCT FROM b.{c}) AS diff_{c}" for c in columns
    )
    non_null = ",\n".join(f"count(b.{c}) AS nn_{c}" for c in features)
    connection = duckdb.connect(config={"threads": THREADS})
    row = connection.execute(
        f"""
        WITH a AS (SELECT * FROM read_parquet({ours_files})),
             b AS (SELECT * FROM read_parquet('{theirs}'))
        SELECT count(*) AS rows,
               count(a.row_id) AS ours_rows,
               count(b.row_id) AS duckdb_rows,
               count(DISTINCT a.row_id) AS ours_distinct,
               count(*) FILTER (a.row_id IS NULL OR b.row_id IS NULL) AS unmatched,
               {differing},
               {non_null}
        FROM a FULL OUTER JOIN b ON a.row_id = b.row_id
        """
    ).fetchone()
    names = [d[0] for d in connection.description]
    connection.close()
    values = dict(zip(names, row, strict=True))
    differences = {c: values[f"diff_{c}"] for c in columns if values[f"diff_{c}"]}
    equal = (
        values["rows"] == spine_rows
        and values["ours_rows"] == spine_rows
        and values["duckdb_rows"] == spine_rows
        and values["ours_distinct"] == spine_rows
        and values["unmatched"] == 0
        and not differences
    )
    return {
        "equal": equal,
        "rows": values["rows"],
        "ours_rows": values["ours_rows"],
        "duckdb_rows": values["duckdb_rows"],
        "unmatched": values["unmatched"],
        "differing_values": differences,
        "non_null_fraction": {
            c: round(values[f"nn_{c}"] / max(values["rows"], 1), 4) for c in features
        },
    }


def add_ratios_and_checks(case: dict, spine_rows: int, params: DataParams) -> None:
    """Each run of ours against DuckDB (time ratio, values check), and Sail's time over the
    JVM cluster's where both ran."""
    for key in ("ours", "ours_cluster", "ours_pandas"):
        if not (case.get(key) and case.get("duckdb")):
            continue
        suffix = key.removeprefix("ours")
        case[f"ratio{suffix}"] = round(case[key]["median_s"] / case["duckdb"]["median_s"], 2)
        check = case[f"check{suffix}"] = compare(
            case[key]["result"], case["duckdb"]["result"], spine_rows, params
        )
        print(
            f"  check {key} {spine_rows:,}: {'PASS' if check['equal'] else 'FAIL'} "
            f"(rows {check['rows']:,}, unmatched {check['unmatched']}, "
            f"differing {check['differing_values']})"
        )
    if case.get("ours") and case.get("ours_cluster"):
        case["sail_over_jvm"] = round(
            case["ours"]["median_s"] / case["ours_cluster"]["median_s"], 2
        )
        print(
            f"  ours on Sail {case['ours']['median_s']:.2f}s, on the JVM cluster "
            f"{case['ours_cluster']['median_s']:.2f}s: Sail/JVM {case['sail_over_jvm']:.2f}"
        )


def _median(report: dict, key: str = "seconds") -> float:
    return statistics.median(t[key] for t in report["timings"][report["warmup"] :])


def print_table(cases: list[dict]) -> None:
    header = (
        f"{'spine rows':>11} {'spine':>6} {'ours s':>8} {'DuckDB s':>9} {'ratio':>6} "
        f"{'ours rows/s':>12} {'peak MiB ours':>13} {'peak MiB DuckDB':>15}  values equal"
    )
    print()
    print(header)
    print("-" * len(header))

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    for case in cases:
        duck = case.get("duckdb")
        for key, spine in (("ours", "delta"), ("ours_pandas", "pandas")):
            if key not in case and spine == "pandas":
                continue
            ours, suffix = case.get(key), key.removeprefix("ours")
            ratio, equal = case.get(f"ratio{suffix}"), case.get(f"check{suffix}", {}).get("equal")
            print(
                f"{case['spine_rows']:>11,} {spine:>6} {fmt(ours and ours['median_s'], '8.2f')} "
                f"{fmt(duck and duck['median_s'], '9.2f')} {fmt(ratio, '6.2f')} "
                f"{fmt(ours and ours['rows_per_s'], '12,.0f')} "
                f"{fmt(ours and ours['peak_rss_mib'], '13,.0f')} "
                f"{fmt(duck and duck['peak_rss_mib'], '15,.0f')}  "
                f"{'-' if equal is None else ('PASS' if equal else 'FAIL')}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("python -m bench.pit_join", __doc__, ENGINES, DEFAULT_OUT)
    parser.add_argument("--spine-rows", type=int, nargs="+", help="spine sizes to run")
    parser.add_argument("--entities", type=int, help="entities per key (100k)")
    parser.add_argument("--feature-rows", type=int, help="rows per feature view (3M)")
    parser.add_argument(
        "--shape",
        choices=list(SHAPES),
        default="large",
        help="large (default) or midsize: a 300k-row spine with String keys, views of 25k and "
        "300k rows over a year, from a Delta and from a pandas spine",
    )
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, ENGINES)
        return 0

    if args.shape == "midsize":
        params = MIDSIZE
        repeats = args.repeats or (2 if args.quick else 5)
    elif args.quick:
        params = DataParams(entities=2_000, feature_rows=60_000, spine_rows=(20_000, 200_000))
        repeats = args.repeats or 2
    else:
        params = DataParams()
        repeats = args.repeats or 3
    params = DataParams(
        entities=args.entities or params.entities,
        feature_rows=args.feature_rows or params.feature_rows,
        days=params.days,
        seed=params.seed,
        spine_rows=tuple(args.spine_rows or params.spine_rows),
        shape=params.shape,
    )
    stack = ExitStack()  # the local cluster, when --engine runs ours on it
    data = args.data_dir or Path(tempfile.mkdtemp(prefix="fp-pit-join-"))
    data.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        rows = generate(data, params)
        cases = []
        sparks = stack.enter_context(spark_engines(args.engine, data))
        runs = [
            (engine, ours_key(spark_engine) if engine == "ours" else engine, remote, "delta")
            for engine in args.engines
            for spark_engine, remote in (sparks.items() if engine == "ours" else [(None, None)])
        ]
        if params.shape == "midsize" and "ours" in args.engines and "sail" in sparks:
            runs.insert(1, ("ours", "ours_pandas", None, "pandas"))
        for spine_rows in params.spine_rows:
            print(f"case: {spine_rows:,} spine rows")
            case: dict = {"spine_rows": spine_rows}
            results = data / "results" / str(spine_rows)
            shutil.rmtree(results, ignore_errors=True)
            for engine, key, remote, spine in runs:
                job = {
                    "params": {**asdict(params), "spine_rows": list(params.spine_rows)},
                    "data": str(data),
                    "out": str(results / key),
                    "spine_rows": spine_rows,
                    "warmup": args.warmup,
                    "repeats": repeats,
                    "explain": args.explain,
                    "remote": remote,
                    "spine": spine,
                }
                report = run_engine("bench.pit_join", engine, job)
                report["warmup"] = args.warmup
                median = _median(report)
                case[key] = {
                    "median_s": round(median, 3),
                    "runs_s": [round(t["seconds"], 3) for t in report["timings"]],
                    "rows_per_s": round(spine_rows / median),
                    "median_cpu_s": round(_median(report, "cpu_seconds"), 3),
                    "peak_rss_mib": round(report["peak_rss_mib"]),
                    "baseline_rss_mib": round(report["baseline_rss_mib"]),
                    "result": report["result"],
                }
                if engine == "ours":
                    case[key]["median_call_s"] = round(_median(report, "call"), 3)
                    case[key]["median_write_s"] = round(_median(report, "write"), 3)
            add_ratios_and_checks(case, spine_rows, params)
            if not args.keep:
                shutil.rmtree(results, ignore_errors=True)
            cases.append(case)
        print_table(cases)
        growth = scaling(cases, "spine_rows", ("ours", "duckdb"))
        for engine, figures in growth.items():
            print(
                f"{engine}: {figures['size_ratio']:g}x rows took {figures['time_ratio']:g}x time; "
                f"s per 1M rows: {figures['seconds_per_million']}"
            )
        for case in cases:
            ours, duck = case.get("ours"), case.get("duckdb")
            cpu = ", ".join(
                f"{name} {figures['median_cpu_s']:.1f}s"
                for name, figures in (("ours", ours), ("DuckDB", duck))
                if figures
            )
            print(f"{case['spine_rows']:,} rows: median CPU seconds {cpu}")
            if "check" in case:
                fractions = case["check"]["non_null_fraction"].values()
                print(f"  non-null feature values: {min(fractions):.0%} to {max(fractions):.0%}")
        report = {
            "benchmark": "pit_join",
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "data": {
                **asdict(params),
                "rows": rows,
                "views": [
                    {
                        "name": spec.name,
                        "key": spec.key,
                        "ttl_s": spec.ttl.total_seconds() if spec.ttl else None,
                        "features": {name: dtype.spark for name, dtype in spec.features},
                    }
                    for spec in params.specs
                ],
            },
            "method": {
                "repeats": repeats,
                "warmup": args.warmup,
                "statistic": "median wall seconds",
                "ours_materialization": "result written to a new Delta table (all columns)",
                "duckdb_materialization": "COPY (ASOF LEFT JOIN ...) TO parquet, threads=2",
                "memory": "peak RSS (VmHWM) of a fresh subprocess per engine and case "
                "(ours includes the in-process Sail server)",
                "cpu": "user+system CPU seconds of the engine process per run",
            },
            "cases": cases,
            "scaling": growth,
            "all_equal": all(
                c.get(check, {}).get("equal", True)
                for c in cases
                for check in ("check", "check_cluster", "check_pandas")
            ),
            "total_seconds": round(time.perf_counter() - started, 1),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
        return 0 if report["all_equal"] else 1
    finally:
        stack.close()
        if not args.keep and args.data_dir is None:
            shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
