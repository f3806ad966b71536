"""Time-window aggregation benchmark: tiles + `get_historical_features` vs exact DuckDB SQL.

Run from the project folder:

    .venv/bin/python -m bench.aggregations            # full: 1M and 10M events, 3 repeats
    .venv/bin/python -m bench.aggregations --quick    # smoke size, about a minute
    .venv/bin/python -m bench.aggregations --events 10_000_000 --repeats 5 \
        --out bench/results/aggregations_10m.json --data-dir /tmp/fp-agg-data --keep

Options: `--events N [N ...]` cases to run (default 1M and 10M events), `--spine-rows` (default
1M, one spine shared by every case), `--repeats` timed runs per engine and case after `--warmup`
untimed ones (default 3 and 1), `--out` the JSON report (default
`bench/results/aggregations.json`), `--data-dir` where data and results go (default a temp dir,
deleted at the end unless `--keep`; data generated with the same parameters is reused),
`--engines tiles ours duckdb duckdb_frames`, `--engine sail|cluster|both` (where tiles and ours
run: Sail in-process by default, the local JVM Spark cluster of `featureplane.cluster`, or both
in one run, with Sail's time over the JVM's printed and kept as `sail_over_jvm_*`),
`--explain` (print our Spark plan and the DuckDB SQL first), `--analyze` (run Sail's EXPLAIN
ANALYZE on our retrieval once, untimed, and keep the per-operator rows and compute times in
the report and in `<data>/analyze_<events>.txt`).

Data (numpy, seeded, identical on every run): events (user_id, ts, value) with user_id uniform
over `--entities` users (default 100k; uniform, not Zipf: the range-join oracle costs spine rows
x events per user, which a heavy user would blow up), ts uniform over 60 days from 2025-01-01 UTC
(5% of them moved to a whole hour, so tile edges are exercised), value a double (gamma(2, 3)
rounded to 4 decimals, 2% null). They are written with `deltalake.write_deltalake` (no Spark),
in time order and partitioned by `event_date`, like an append-only source. The spine (row_id,
user_id, ts, label) has `--spine-rows` rows, user_id uniform over the same users, ts uniform over
the same 60 days, 10% of them on a whole hour, in time order.

The feature view `user_value_aggs` (keys user_id, source the events table, 1-hour tiles) has 16
aggregations of `value`: count, sum, mean and max over 1h, 1d, 7d and 30d, named
`value_<function>_<window>`. The value at spine time t covers the events with ts in
[floor(t, 1h) - window, floor(t, 1h)) (completed tiles only); an empty window counts 0, the others
are null.

Engines, each case in a fresh subprocess per engine (so memory peaks are separable):
- tiles: the materialization, paid once per 60 days of events, not per training set: the view's
  user path, `run_transformation` (read the events, `compute_tiles`) over the whole 60-day window
  in one job plus `OfflineStore.write_window` into
  `<tiles>/offline/features/user_value_aggs/<version>`, a fresh Delta table per run. Timed like
  the others; the last run's table is what `ours` reads.
- ours: `FeatureStore(Repository.from_objects([view]), spark, root).get_historical_features(
  <spine Delta path>, view, full_feature_names=False)` on Sail in-process (`spark_session()`),
  written whole to a new Delta table. This is `aggregate_join` over the tiles (restricted by
  `_restrict` to what the spine's time range needs), plus the spine's min/max query and the
  Delta log reads.
- duckdb: the exact oracle over the raw events, a range join: `spine s LEFT JOIN events e ON
  e.user_id = s.user_id AND e.us >= anchor - 30d AND e.us < anchor` grouped by spine row, each
  feature an aggregate `FILTER (WHERE e.us >= anchor - window)`. Independent of tiles.
- duckdb_frames: a smarter exact DuckDB query over the raw events: hourly tiles (GROUP BY user,
  hour), the spine's distinct (user, anchor) unioned in, one `RANGE BETWEEN window PRECEDING AND 1
  PRECEDING` frame per window, joined back to the spine: the same algorithm as ours, tiles
  computed inside the query on every run.
Both DuckDB engines read `read_parquet` of the files `DeltaTable(path).file_uris()` lists, with
`threads=2`, other settings default, and materialize with `COPY (...) TO 'result.parquet'`.

Wall time: median of `--repeats` runs after the warm-up, `time.perf_counter` around the call and
the write; CPU seconds (user + system) per run are reported too. Peak memory: `VmHWM` of the
engine's subprocess (for ours and tiles including the in-process Sail server) over the warm-up
and all repeats (see `bench.pit_join.peak_rss_mib`); the RSS after imports and session start is
reported as `baseline`.

Check: each result is joined with the oracle's (duckdb) on row_id (full outer join, in DuckDB):
every spine row present once, spine columns and count/max exactly equal (IS DISTINCT FROM),
sum/mean equal within relative 1e-9 (both null or |a - b| <= 1e-9 max(|a|, |b|)). PASS or FAIL
per case and engine, with the largest relative difference seen and the fraction of non-null
values per feature (and of non-zero counts) so the comparison is not vacuous.
"""

from __future__ import annotations

import json
import re
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
from bench.pit_join import DAY_US, START, TS
from featureplane import (
    Aggregation,
    BatchSource,
    Entity,
    Field,
    Float64,
    Repository,
    batch_feature_view,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "aggregations.json"
HOUR_US = 3_600 * 1_000_000
INTERVAL = timedelta(hours=1)
WINDOWS = {
    "1h": timedelta(hours=1),
    "1d": timedelta(days=1),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
FUNCTIONS = ("count", "sum", "mean", "max")
VIEW = "user_value_aggs"
SPINE_COLUMNS = ("row_id", "user_id", "ts", "label")
APPROXIMATE = ("sum", "mean")
"""Functions compared with relative 1e-9: floating-point sums depend on the order of addition."""
REL_TOL = 1e-9


@dataclass(frozen=True)
class DataParams:
    """Everything that determines the generated data; a data dir is reused only if equal."""

    entities: int = 100_000
    events: tuple[int, ...] = (1_000_000, 10_000_000)
    spine_rows: int = 1_000_000
    days: int = 60
    seed: int = 20250101
    null_fraction: float = 0.02
    whole_hour_events: float = 0.05
    whole_hour_spine: float = 0.10


# ---- definitions ---------------------------------------------------------------------------


def aggregations() -> list[Aggregation]:
    """The 16 aggregations, window by window: value_count_1h, value_sum_1h, ..."""
    return [
        Aggregation("value", function, window)
        for window in WINDOWS.values()
        for function in FUNCTIONS
    ]


def feature_names() -> list[str]:
    return [a.name for a in aggregations()]


def _events_columns(events):
    """The events as they are: aggregate views tile the transformation's output rows."""
    return events.select("user_id", "ts", "value")


def feature_view(events_path: str):
    """The aggregate view over the events table at `events_path`."""
    source = BatchSource("bench_events", path=events_path, timestamp_field="ts")
    return batch_feature_view(
        sources=[source],
        entities=[Entity("user", join_keys=["user_id"])],
        schema=[Field("value", Float64)],
        timestamp_field="ts",
        feature_start_time=START,
        aggregations=aggregations(),
        aggregation_interval=INTERVAL,
        name=VIEW,
    )(_events_columns)


# ---- data ----------------------------------------------------------------------------------


def _to_whole_hours(rng: np.random.Generator, micros: np.ndarray, fraction: float) -> np.ndarray:
    """`micros` with a random `fraction` of them floored to the hour (order is kept)."""
    moved = rng.random(len(micros)) < fraction
    return np.where(moved, micros - micros % HOUR_US, micros)


def _events_table(params: DataParams, rows: int) -> pa.Table:
    rng = np.random.default_rng([params.seed, 1, rows])
    start_us = int(START.timestamp()) * 1_000_000
    micros = np.sort(start_us + rng.integers(0, params.days * DAY_US, rows, dtype=np.int64))
    micros = _to_whole_hours(rng, micros, params.whole_hour_events)
    ts = pa.array(micros, TS)
    values = np.round(rng.gamma(2.0, 3.0, rows), 4)
    return pa.table(
        {
            "user_id": pa.array(rng.integers(0, params.entities, rows, dtype=np.int64)),
            "ts": ts,
            "value": pa.array(values, pa.float64(), mask=rng.random(rows) < params.null_fraction),
            "event_date": ts.cast(pa.date32()),
        }
    )


def _spine_table(params: DataParams) -> pa.Table:
    rows = params.spine_rows
    rng = np.random.default_rng([params.seed, 2, rows])
    start_us = int(START.timestamp()) * 1_000_000
    micros = np.sort(start_us + rng.integers(0, params.days * DAY_US, rows, dtype=np.int64))
    micros = _to_whole_hours(rng, micros, params.whole_hour_spine)
    return pa.table(
        {
            "row_id": pa.array(np.arange(rows, dtype=np.int64)),
            "user_id": pa.array(rng.integers(0, params.entities, rows, dtype=np.int64)),
            "ts": pa.array(micros, TS),
            "label": pa.array((rng.random(rows) < 0.05).astype(np.int32)),
        }
    )


def events_uri(data: Path, rows: int) -> str:
    return str(data / "events" / f"events_{rows}")


def spine_uri(data: Path, rows: int) -> str:
    return str(data / "spines" / f"spine_{rows}")


def tiles_root(data: Path, events: int) -> str:
    """The offline store root whose `features/user_value_aggs/<version>` holds the tiles."""
    return str(data / "tiles" / str(events) / "offline")


def _written(marker: Path, params: dict) -> bool:
    return marker.exists() and json.loads(marker.read_text()) == params


def generate(data: Path, params: DataParams) -> dict:
    """Write the events tables and the spine, reusing those already generated with the same
    parameters. Returns the row count of every table."""
    from deltalake import write_deltalake

    started = time.perf_counter()
    common = {k: v for k, v in asdict(params).items() if k not in ("events", "spine_rows")}
    rows = {}
    for count in params.events:
        marker = data / "events" / f"events_{count}.json"
        if not _written(marker, common):
            shutil.rmtree(events_uri(data, count), ignore_errors=True)
            write_deltalake(
                events_uri(data, count),
                _events_table(params, count),
                partition_by=["event_date"],
            )
            marker.write_text(json.dumps(common))
        rows[f"events_{count}"] = count
    marker = data / "spines" / f"spine_{params.spine_rows}.json"
    if not _written(marker, common):
        shutil.rmtree(spine_uri(data, params.spine_rows), ignore_errors=True)
        write_deltalake(spine_uri(data, params.spine_rows), _spine_table(params))
        marker.write_text(json.dumps(common))
    rows[f"spine_{params.spine_rows}"] = params.spine_rows
    print(f"data ready in {data} ({time.perf_counter() - started:.1f}s): {rows}")
    return rows


# ---- engines (each runs in its own subprocess) -----------------------------------------------


def _files(uri: str) -> str:
    """The Parquet files of a Delta table's current version, as a DuckDB list literal."""
    from deltalake import DeltaTable

    return repr([path.removeprefix("file://") for path in DeltaTable(uri).file_uris()])


def _runs(job: dict) -> range:
    return range(job["warmup"] + job["repeats"])


def _report(timings: list[dict], result: str, baseline: float, **extra) -> dict:
    return {
        "timings": timings,
        "result": result,
        "peak_rss_mib": peak_rss_mib(),
        "baseline_rss_mib": baseline,
        **extra,
    }


def run_tiles(job: dict) -> dict:
    """Materialize the view's tiles for the 60 days, as the Dagster asset's backfill would."""
    from featureplane.compute.transform import run_transformation
    from featureplane.compute.window import TimeWindow
    from featureplane.offline_store import OfflineStore

    data = Path(job["data"])
    view = feature_view(events_uri(data, job["events"]))
    offline = OfflineStore(tiles_root(data, job["events"]))
    uri = offline.view_table_uri(VIEW, view.version)
    window = TimeWindow(START, START + timedelta(days=job["params"]["days"]))
    timings = []
    with ours_session(job) as spark:
        baseline = peak_rss_mib()
        for run in _runs(job):
            shutil.rmtree(uri, ignore_errors=True)
            cpu, started = cpu_seconds(), time.perf_counter()
            tiles = run_transformation(spark, view, window)
            offline.write_window(tiles, uri, window, view.table_timestamp_field)
            finished = time.perf_counter()
            timings.append({"seconds": finished - started, "cpu_seconds": cpu_seconds() - cpu})
            print(f"  tiles         {job['events']:>11,} run {run}: {finished - started:7.2f}s")
        tile_rows = spark.read.format("delta").load(uri).count()
    return _report(timings, uri, baseline, tile_rows=tile_rows)


def _summarize_analyze(text: str) -> list[str]:
    """One line per operator of a DataFusion EXPLAIN ANALYZE: output rows and compute time."""
    lines = []
    for line in text.splitlines():
        operator = re.match(r"(\s*)(\w+Exec)\b", line)
        if not operator:
            continue
        metrics = re.search(r"metrics=\[(.*?)\]", line)
        kept = [
            item
            for item in (metrics.group(1).split(", ") if metrics else [])
            if item.split("=")[0] in ("output_rows", "elapsed_compute", "spill_count")
        ]
        lines.append(f"{operator.group(1)}{operator.group(2)} {' '.join(kept)}")
    return lines


def run_ours(job: dict) -> dict:
    """`get_historical_features` over the tiles table, written to a new Delta table."""
    from featureplane.feature_store import FeatureStore

    data, out = Path(job["data"]), Path(job["out"])
    root = tiles_root(data, job["events"])
    repository = Repository.from_objects([feature_view(events_uri(data, job["events"]))])
    view = repository.feature_views[VIEW]
    if not Path(root, "features", VIEW, view.version).exists():
        raise SystemExit(f"no tiles in {root}: run the tiles engine first")
    spine = spine_uri(data, job["spine_rows"])
    extra = {}
    with ours_session(job) as spark:
        store = FeatureStore(repository, spark, root)
        baseline = peak_rss_mib()

        def features():
            return store.get_historical_features(spine, view, full_feature_names=False)

        if job.get("explain"):
            features().explain(mode="formatted")
        if job.get("analyze"):
            features().createOrReplaceTempView("bench_result")
            started = time.perf_counter()
            rows = spark.sql("EXPLAIN ANALYZE SELECT * FROM bench_result").collect()
            elapsed = time.perf_counter() - started
            text = "\n".join(str(value) for row in rows for value in row)
            path = data / f"analyze_{job['events']}.txt"
            path.write_text(f"elapsed {elapsed:.2f}s\n{text}\n")
            extra["analyze"] = {
                "seconds": round(elapsed, 2),
                "file": str(path),
                "operators": _summarize_analyze(text),
            }
            print(f"  EXPLAIN ANALYZE ({elapsed:.1f}s), full text in {path}:")
            print("\n".join(f"    {line}" for line in extra["analyze"]["operators"]))
        label = f"ours          {job['events']:>11,}"
        timings, target = time_writes(label, _runs(job), features, out)
    return _report(timings, target, baseline, **extra)


def _anchor(column: str) -> str:
    """Epoch microseconds of `column` floored to the hour (times are after 1970)."""
    return f"epoch_us({column}) - epoch_us({column}) % {HOUR_US}"


def _us(window: timedelta) -> int:
    return window // timedelta(microseconds=1)


def duckdb_join_sql(data: Path, events: int, spine_rows: int, target: Path) -> str:
    """The oracle: a range join of the spine with the raw events, grouped by spine row."""
    plain = {"count": "count", "sum": "sum", "mean": "avg", "max": "max"}
    selects = [
        f"{plain[a.fn.name]}(e.value) FILTER (WHERE e.us >= s.anchor - {_us(a.time_window)}) "
        f"AS {a.name}"
        for a in aggregations()
    ]
    longest = max(_us(window) for window in WINDOWS.values())
    spine = ", ".join(f"s.{c}" for c in SPINE_COLUMNS)
    features = ",\n    ".join(selects)
    return f"""COPY (
WITH s AS (
    SELECT {", ".join(SPINE_COLUMNS)}, {_anchor("ts")} AS anchor
    FROM read_parquet({_files(spine_uri(data, spine_rows))})
),
e AS (
    SELECT user_id, epoch_us(ts) AS us, value
    FROM read_parquet({_files(events_uri(data, events))})
)
SELECT {spine},
    {features}
FROM s LEFT JOIN e
  ON e.user_id = s.user_id AND e.us >= s.anchor - {longest} AND e.us < s.anchor
GROUP BY {spine}
) TO '{target}' (FORMAT parquet)"""


def duckdb_frames_sql(data: Path, events: int, spine_rows: int, target: Path) -> str:
    """Hourly tiles of the raw events and one RANGE frame per window, joined to the spine."""
    frames, windows, outputs = [], [], []
    for label, window in WINDOWS.items():
        frame = f"w_{label}"
        windows.append(
            f"{frame} AS (PARTITION BY user_id ORDER BY t "
            f"RANGE BETWEEN {_us(window)} PRECEDING AND 1 PRECEDING)"
        )
        frames += [
            f"sum(n) OVER {frame} AS n_{label}",
            f"sum(total) OVER {frame} AS total_{label}",
            f"max(top) OVER {frame} AS top_{label}",
        ]
        values = {
            "count": f"coalesce(w.n_{label}, 0)::BIGINT",
            "sum": f"w.total_{label}",
            "mean": f"CASE WHEN w.n_{label} > 0 THEN w.total_{label} / w.n_{label} END",
            "max": f"w.top_{label}",
        }
        outputs += [f"{values[function]} AS value_{function}_{label}" for function in FUNCTIONS]
    spine = ", ".join(f"s.{c}" for c in SPINE_COLUMNS)
    aggregates = ",\n        ".join(frames)
    named = ",\n        ".join(windows)
    features = ",\n    ".join(outputs)
    return f"""COPY (
WITH s AS (
    SELECT {", ".join(SPINE_COLUMNS)}, {_anchor("ts")} AS anchor
    FROM read_parquet({_files(spine_uri(data, spine_rows))})
),
tiles AS (
    SELECT user_id, {_anchor("ts")} AS t,
           count(value) AS n, sum(value) AS total, max(value) AS top
    FROM read_parquet({_files(events_uri(data, events))})
    GROUP BY ALL
),
rows AS (
    SELECT user_id, t, n, total, top, 0 AS kind FROM tiles
    UNION ALL
    SELECT DISTINCT user_id, anchor, NULL::BIGINT, NULL::DOUBLE, NULL::DOUBLE, 1 FROM s
),
w AS (
    SELECT user_id, t AS anchor, kind,
        {aggregates}
    FROM rows
    WINDOW {named}
)
SELECT {spine},
    {features}
FROM s LEFT JOIN (SELECT * FROM w WHERE kind = 1) AS w USING (user_id, anchor)
) TO '{target}' (FORMAT parquet)"""


def _run_duckdb(job: dict, sql, label: str) -> dict:
    import duckdb

    data, out = Path(job["data"]), Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    connection = duckdb.connect(
        config={"threads": THREADS, "temp_directory": str(out / "duckdb_tmp")}
    )
    baseline = peak_rss_mib()
    if job.get("explain"):
        print(sql(data, job["events"], job["spine_rows"], out / "explain.parquet"))
    timings = []
    for run in _runs(job):
        target = out / f"run{run}.parquet"
        cpu, started = cpu_seconds(), time.perf_counter()
        connection.execute(sql(data, job["events"], job["spine_rows"], target))
        finished = time.perf_counter()
        timings.append({"seconds": finished - started, "cpu_seconds": cpu_seconds() - cpu})
        print(f"  {label:<13} {job['events']:>11,} run {run}: {finished - started:7.2f}s")
        if run < _runs(job)[-1]:
            target.unlink()
    connection.close()
    return _report(timings, str(target), baseline)


def run_duckdb(job: dict) -> dict:
    return _run_duckdb(job, duckdb_join_sql, "duckdb")


def run_duckdb_frames(job: dict) -> dict:
    return _run_duckdb(job, duckdb_frames_sql, "duckdb_frames")


ENGINES = {
    "tiles": run_tiles,
    "ours": run_ours,
    "duckdb": run_duckdb,
    "duckdb_frames": run_duckdb_frames,
}
ORACLE = "duckdb"


# ---- comparison and report -----------------------------------------------------------------


def _parquet(result: str) -> str:
    """A result as a DuckDB table expression: a Delta table (ours) or one Parquet file."""
    files = _files(result) if Path(result).is_dir() else repr(result)
    return f"read_parquet({files})"


def compare(result: str, oracle: str, spine_rows: int) -> dict:
    """Join a result with the oracle's on row_id and count the differing values per column."""
    import duckdb

    exact = [c for c in SPINE_COLUMNS if c != "row_id"] + [
        a.name for a in aggregations() if a.fn.name not in APPROXIMATE
    ]
    approximate = [a.name for a in aggregations() if a.fn.name in APPROXIMATE]
    differing = [f"count(*) FILTER (a.{c} IS DISTINCT FROM b.{c}) AS diff_{c}" for c in exact]
    differing += [
        f"count(*) FILTER (NOT coalesce(a.{c} IS NULL AND b.{c} IS NULL OR "
        f"abs(a.{c} - b.{c}) <= {REL_TOL} * greatest(abs(a.{c}), abs(b.{c})), false)) "
        f"AS diff_{c}"
        for c in approximate
    ]
    relative = [
        f"max(abs(a.{c} - b.{c}) / nullif(greatest(abs(a.{c}), abs(b.{c})), 0)) AS rel_{c}"
        for c in approximate
    ]
    non_null = [f"count(b.{c}) AS nn_{c}" for c in feature_names()]
    non_zero = [
        f"count(*) FILTER (b.{a.name} > 0) AS nz_{a.name}"
        for a in aggregations()
        if a.fn.name == "count"
    ]
    connection = duckdb.connect(config={"threads": THREADS})
    row = connection.execute(
        f"""
        WITH a AS (SELECT * FROM {_parquet(result)}),
             b AS (SELECT * FROM {_parquet(oracle)})
        SELECT count(*) AS rows,
               count(a.row_id) AS result_rows,
               count(b.row_id) AS oracle_rows,
               count(DISTINCT a.row_id) AS result_distinct,
               count(*) FILTER (a.row_id IS NULL OR b.row_id IS NULL) AS unmatched,
               {", ".join(differing + relative + non_null + non_zero)}
        FROM a FULL OUTER JOIN b ON a.row_id = b.row_id
        """
    ).fetchone()
    names = [d[0] for d in connection.description]
    connection.close()
    values = dict(zip(names, row, strict=True))
    columns = exact + approximate
    differences = {c: values[f"diff_{c}"] for c in columns if values[f"diff_{c}"]}
    counts = ("rows", "result_rows", "oracle_rows", "result_distinct")
    equal = all(values[k] == spine_rows for k in counts) and not values["unmatched"]
    rows = max(values["rows"], 1)
    return {
        "equal": equal and not differences,
        **{k: values[k] for k in (*counts, "unmatched")},
        "differing_values": differences,
        "max_relative_difference": max(
            (values[f"rel_{c}"] or 0.0 for c in approximate), default=0.0
        ),
        "non_null_fraction": {c: round(values[f"nn_{c}"] / rows, 4) for c in feature_names()},
        "non_zero_count_fraction": {
            key.removeprefix("nz_"): round(value / rows, 4)
            for key, value in values.items()
            if key.startswith("nz_")
        },
    }


def _median(timings: list[dict], warmup: int, key: str = "seconds") -> float:
    return statistics.median(t[key] for t in timings[warmup:])


def summarize(engine: str, report: dict, warmup: int, events: int, spine_rows: int) -> dict:
    """An engine's figures for the report: medians after the warm-up, peaks, its own extras."""
    timings = report["timings"]
    median = _median(timings, warmup)
    summary = {
        "median_s": round(median, 3),
        "runs_s": [round(t["seconds"], 3) for t in timings],
        "median_cpu_s": round(_median(timings, warmup, "cpu_seconds"), 3),
        "peak_rss_mib": round(report["peak_rss_mib"]),
        "baseline_rss_mib": round(report["baseline_rss_mib"]),
        "result": report["result"],
    }
    if engine == "tiles":
        summary["events_per_s"] = round(events / median)
        summary["tile_rows"] = report["tile_rows"]
        summary["events_per_tile"] = round(events / report["tile_rows"], 3)
    else:
        summary["rows_per_s"] = round(spine_rows / median)
    if engine == "ours":
        summary["median_call_s"] = round(_median(timings, warmup, "call"), 3)
        summary["median_write_s"] = round(_median(timings, warmup, "write"), 3)
        if "analyze" in report:
            summary["analyze"] = report["analyze"]
    return summary


def _ratio(case: dict, seconds: float | None, engine: str) -> float | None:
    if seconds is None or not case.get(engine):
        return None
    return round(seconds / case[engine]["median_s"], 2)


def add_ratios_and_checks(case: dict) -> None:
    """Ratios of ours (with and without the tiling) to each DuckDB query, Sail's times over the
    JVM cluster's where both ran, and the checks."""
    jvm = case.get("ours_cluster", {}).get("median_s")
    case["ratio_ours_cluster_join"] = _ratio(case, jvm, "duckdb")
    for engine in ("tiles", "ours"):
        if case.get(engine) and case.get(f"{engine}_cluster"):
            sail_jvm = _ratio(case, case[engine]["median_s"], f"{engine}_cluster")
            case[f"sail_over_jvm_{engine}"] = sail_jvm
            print(
                f"  {engine} on Sail {case[engine]['median_s']:.2f}s, on the JVM cluster "
                f"{case[f'{engine}_cluster']['median_s']:.2f}s: Sail/JVM {sail_jvm:.2f}"
            )
    ours = case.get("ours", {}).get("median_s")
    case["ratio_ours_join"] = _ratio(case, ours, "duckdb")
    case["ratio_ours_frames"] = _ratio(case, ours, "duckdb_frames")
    if ours is not None and case.get("tiles"):
        total = ours + case["tiles"]["median_s"]
        case["tiles_plus_ours_s"] = round(total, 3)
        case["ratio_tiles_plus_ours_join"] = _ratio(case, total, "duckdb")
        case["ratio_tiles_plus_ours_frames"] = _ratio(case, total, "duckdb_frames")
    if not case.get(ORACLE):
        return
    case["checks"] = {}
    for engine in ("ours", ours_key("cluster"), "duckdb_frames"):
        if not case.get(engine):
            continue
        check = compare(case[engine]["result"], case[ORACLE]["result"], case["spine_rows"])
        case["checks"][engine] = check
        print(
            f"  check {engine} vs {ORACLE} ({case['events']:,} events): "
            f"{'PASS' if check['equal'] else 'FAIL'} (rows {check['rows']:,}, "
            f"unmatched {check['unmatched']}, differing {check['differing_values']}, "
            f"max relative difference {check['max_relative_difference']:.2e})"
        )


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _field(case: dict, engine: str, key: str):
    return case.get(engine, {}).get(key)


def _verdict(case: dict, engine: str) -> str:
    check = case.get("checks", {}).get(engine)
    return "-" if check is None else ("PASS" if check["equal"] else "FAIL")


def print_table(cases: list[dict]) -> None:
    header = (
        f"{'events':>11} {'tiles s':>8} {'ours s':>7} {'DuckDB join s':>13} "
        f"{'DuckDB frames s':>15} {'ours/join':>9} {'ours/frames':>11} {'ours rows/s':>11} "
        f"{'peak MiB tiles/ours/join/frames':>31}  check ours, frames"
    )
    print()
    print(header)
    print("-" * len(header))
    for case in cases:
        peaks = "/".join(_fmt(_field(case, engine, "peak_rss_mib"), ",.0f") for engine in ENGINES)
        print(
            f"{case['events']:>11,} {_fmt(_field(case, 'tiles', 'median_s'), '8.2f')} "
            f"{_fmt(_field(case, 'ours', 'median_s'), '7.2f')} "
            f"{_fmt(_field(case, 'duckdb', 'median_s'), '13.2f')} "
            f"{_fmt(_field(case, 'duckdb_frames', 'median_s'), '15.2f')} "
            f"{_fmt(case.get('ratio_ours_join'), '9.2f')} "
            f"{_fmt(case.get('ratio_ours_frames'), '11.2f')} "
            f"{_fmt(_field(case, 'ours', 'rows_per_s'), '11,.0f')} {peaks:>31}  "
            f"{_verdict(case, 'ours')}, {_verdict(case, 'duckdb_frames')}"
        )


def print_notes(cases: list[dict], growth: dict) -> None:
    for engine, figures in growth.items():
        print(
            f"{engine}: {figures['size_ratio']:g}x events took {figures['time_ratio']:g}x "
            f"time; s per 1M events: {figures['seconds_per_million']}"
        )
    for case in cases:
        cpu = ", ".join(
            f"{engine} {case[engine]['median_cpu_s']:.1f}s" for engine in ENGINES if engine in case
        )
        print(f"{case['events']:,} events: median CPU seconds {cpu}")
        if "tiles" in case:
            tiles = case["tiles"]
            print(
                f"  tiles: {tiles['tile_rows']:,} tiles ({tiles['events_per_tile']:g} events "
                f"per tile), {tiles['events_per_s']:,} events/s"
            )
        if "tiles_plus_ours_s" in case:
            print(
                f"  tiles + ours: {case['tiles_plus_ours_s']:.2f}s "
                f"(/join {_fmt(case.get('ratio_tiles_plus_ours_join'), '.2f')}, "
                f"/frames {_fmt(case.get('ratio_tiles_plus_ours_frames'), '.2f')})"
            )
        if "ours" in case:
            ours = case["ours"]
            print(f"  ours: call {ours['median_call_s']:.2f}s, write {ours['median_write_s']:.2f}s")
        for engine, check in case.get("checks", {}).items():
            fractions = check["non_null_fraction"].values()
            shares = check["non_zero_count_fraction"].items()
            non_zero = ", ".join(f"{name} {share:.0%}" for name, share in shares)
            print(
                f"  {engine}: non-null feature values {min(fractions):.0%} to "
                f"{max(fractions):.0%}; non-zero counts: {non_zero}"
            )


METHOD = {
    "statistic": "median wall seconds",
    "tiles": "run_transformation (compute_tiles) over the 60-day window + "
    "OfflineStore.write_window into a fresh Delta table, once per run",
    "ours": "FeatureStore.get_historical_features(spine Delta path, view) over the tiles table, "
    "written to a new Delta table (all columns)",
    "duckdb": "exact oracle: COPY (spine LEFT JOIN raw events ON user_id and "
    "anchor - 30d <= ts < anchor, GROUP BY spine row, FILTER per window) TO parquet, threads=2",
    "duckdb_frames": "exact: COPY (hourly tiles of the raw events UNION spine anchors, RANGE "
    "window frames, joined to the spine) TO parquet, threads=2",
    "check": f"vs duckdb on row_id: exact for spine columns, count and max; relative {REL_TOL} "
    "for sum and mean",
    "memory": "peak RSS (VmHWM) of a fresh subprocess per engine and case "
    "(tiles and ours include the in-process Sail server)",
    "cpu": "user+system CPU seconds of the engine process per run",
}


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("python -m bench.aggregations", __doc__, ENGINES, DEFAULT_OUT)
    parser.add_argument("--events", type=int, nargs="+", help="events per case (1M 10M)")
    parser.add_argument("--spine-rows", type=int, help="spine rows (1M)")
    parser.add_argument("--entities", type=int, help="users (100k)")
    parser.add_argument("--analyze", action="store_true", help="EXPLAIN ANALYZE ours once")
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, ENGINES)
        return 0

    if args.quick:
        params = DataParams(entities=2_000, events=(20_000, 200_000), spine_rows=20_000)
        repeats = args.repeats or 2
    else:
        params = DataParams()
        repeats = args.repeats or 3
    params = DataParams(
        entities=args.entities or params.entities,
        events=tuple(args.events or params.events),
        spine_rows=args.spine_rows or params.spine_rows,
    )
    stack = ExitStack()  # the local cluster, when --engine runs ours on it
    data = args.data_dir or Path(tempfile.mkdtemp(prefix="fp-aggregations-"))
    data.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        rows = generate(data, params)
        cases = []
        sparks = stack.enter_context(spark_engines(args.engine, data))
        runs = [  # on each Spark engine its tiles, then ours over them; DuckDB's after
            (engine, spark_engine, remote)
            for spark_engine, remote in sparks.items()
            for engine in ("tiles", "ours")
            if engine in args.engines
        ] + [
            (engine, None, None) for engine in ("duckdb", "duckdb_frames") if engine in args.engines
        ]
        for events in params.events:
            print(f"case: {events:,} events, {params.spine_rows:,} spine rows")
            case: dict = {"events": events, "spine_rows": params.spine_rows}
            results = data / "results" / str(events)
            shutil.rmtree(results, ignore_errors=True)
            for engine, spark_engine, remote in runs:
                key = engine if spark_engine in (None, "sail") else f"{engine}_{spark_engine}"
                job = {
                    "params": {**asdict(params), "events": list(params.events)},
                    "data": str(data),
                    "out": str(results / engine),
                    "events": events,
                    "spine_rows": params.spine_rows,
                    "warmup": args.warmup,
                    "repeats": repeats,
                    "explain": args.explain,
                    "analyze": args.analyze,
                    "remote": remote,
                }
                job["out"] = str(results / key)
                report = run_engine("bench.aggregations", engine, job)
                case[key] = summarize(engine, report, args.warmup, events, params.spine_rows)
            add_ratios_and_checks(case)
            if not args.keep:
                shutil.rmtree(results, ignore_errors=True)
            cases.append(case)
        print_table(cases)
        growth = scaling(cases, "events", ENGINES)
        print_notes(cases, growth)
        report = {
            "benchmark": "aggregations",
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "data": {
                **asdict(params),
                "rows": rows,
                "start": START.isoformat(),
                "users": "uniform",
                "view": VIEW,
                "interval_s": INTERVAL.total_seconds(),
                "windows": {label: w.total_seconds() for label, w in WINDOWS.items()},
                "functions": list(FUNCTIONS),
                "features": feature_names(),
            },
            "method": {"repeats": repeats, "warmup": args.warmup, **METHOD},
            "cases": cases,
            "scaling": growth,
            "all_equal": all(
                check["equal"] for case in cases for check in case.get("checks", {}).values()
            ),
            "total_seconds": round(time.perf_counter() - started, 1),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
        return 0 if report["all_equal"] else 1
    finally:
        stack.close()
        if not args.keep:
            shutil.rmtree(data / "tiles", ignore_errors=True)
            if args.data_dir is None:
                shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
