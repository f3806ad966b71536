"""Backfill benchmark: a year of daily partitions for two feature views, through Dagster, vs DuckDB.

Run from the project folder:

    .venv/bin/python -m bench.backfill            # 365 daily partitions, 3 repeats
    .venv/bin/python -m bench.backfill --quick    # 30 days, smaller tables
    .venv/bin/python -m bench.backfill --engines ours duckdb   # without Dagster's defaults

Data (numpy, seeded): two Delta sources over 2025 with String keys, read by two row-level
pyspark views (a projection and one derived column each), both online:

    view             source rows   key        features
    member_profile        26,000   member_id  plan string, tenure_days bigint, premium boolean
    member_orders        334,000   member_id  amount double (1% null), items int, big_order boolean

Engines, each repeat in a fresh subprocess (and, for ours, a fresh Dagster instance):
- ours: `featureplane.dagster.materialize.materialize_repository(package, start, end)`, what
  `featureplane materialize` runs: the sources' landed windows reported, one single-run backfill
  per partitioning through the Dagster instance (SQLite storage under a fresh DAGSTER_HOME),
  every view's range computed by Sail into its Delta table with its quality check, then each
  online view's end state pushed to the SQLite online store with its consistency check.
  The same on an instance of Dagster's defaults (`ours_dagster_defaults`: SQLite storage, one
  event per write, one planned event per partition), for the control plane's share before.
  Reported: total wall time; Spark time (wall time inside the Spark Connect client's RPCs:
  plan analysis, execution and result fetches, summed); the online store's write time (from
  the pushes' own metadata); control-plane time, the rest: Dagster's run set-up, event and
  check writes, and our Python around them.
- duckdb: the same two projections over `read_parquet` of the sources' files, `COPY` to
  Parquet partitioned by event date, then the latest row per key of each into a DuckDB table
  (the online store's equivalent), `threads=2`.

Check: each view's offline table (read back with delta-rs) equals DuckDB's result row for row.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench.harness import ROOT, THREADS, base_parser, cpu_seconds, machine_info, run_engine, worker

DEFAULT_OUT = Path("bench/results/backfill.json")
START = datetime(2025, 1, 1, tzinfo=UTC)
PACKAGE = "backfill_repo"


@dataclass(frozen=True)
class DataParams:
    days: int = 365
    members: int = 20_000
    profile_rows: int = 26_000
    order_rows: int = 334_000
    seed: int = 17


REPOSITORY = '''
"""Two row-level views of a year of member events (written by bench.backfill)."""
from datetime import UTC, datetime

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from featureplane import (BatchSource, Bool, Entity, FeatureService, Field, Float64, Int32,
                          Int64, String, batch_feature_view)

START = datetime(2025, 1, 1, tzinfo=UTC)
profiles = BatchSource("profiles", path="raw/profiles", timestamp_field="ts", quiet_period=None)
orders = BatchSource("orders", path="raw/orders", timestamp_field="ts", quiet_period=None)
member = Entity("member", join_keys=["member_id"], join_key_types={"member_id": String})


@batch_feature_view(sources=[profiles], entities=[member], mode="pyspark", timestamp_field="ts",
                    feature_start_time=START,
                    schema=[Field("plan", String), Field("tenure_days", Int64),
                            Field("premium", Bool)])
def member_profile(profiles: DataFrame) -> DataFrame:
    return profiles.select("member_id", "ts", "plan", "tenure_days",
                           F.col("plan").isin("plus", "pro").alias("premium"))


@batch_feature_view(sources=[orders], entities=[member], mode="pyspark", timestamp_field="ts",
                    feature_start_time=START,
                    schema=[Field("amount", Float64), Field("items", Int32),
                            Field("big_order", Bool)])
def member_orders(orders: DataFrame) -> DataFrame:
    return orders.select("member_id", "ts", "amount", "items",
                         (F.col("amount") > 100.0).alias("big_order"))


checkout = FeatureService("checkout", features=[member_profile, member_orders])
'''

DUCKDB_VIEWS = {
    "member_profile": (
        "profiles",
        "member_id, ts, plan, tenure_days, plan IN ('plus','pro') AS premium",
    ),
    "member_orders": ("orders", "member_id, ts, amount, items, amount > 100.0 AS big_order"),
}


def _times(rng: np.random.Generator, rows: int, days: int) -> pa.Array:
    """Distinct microsecond event times over `days` from START, sorted as a log lands."""
    span = days * 86_400_000_000
    micros = np.sort(rng.choice(span, size=rows, replace=False)) + int(START.timestamp() * 1e6)
    return pa.array(micros, pa.timestamp("us", "UTC"))


def generate(data: Path, params: DataParams) -> dict[str, int]:
    """The two sources as Delta tables under `data/raw`, and the repository package in `data`;
    reused when `data` holds the same parameters."""
    from deltalake import write_deltalake

    stamp = data / "params.json"
    if stamp.exists() and json.loads(stamp.read_text()) == asdict(params):
        return {"profiles": params.profile_rows, "orders": params.order_rows}
    shutil.rmtree(data / "raw", ignore_errors=True)
    rng = np.random.default_rng(params.seed)

    def members(rows: int) -> pa.Array:
        ids = rng.integers(0, params.members, size=rows)
        return pa.array([f"m{i:07d}" for i in ids], pa.string())

    profiles = pa.table(
        {
            "member_id": members(params.profile_rows),
            "ts": _times(rng, params.profile_rows, params.days),
            "plan": pa.array(rng.choice(["free", "plus", "pro"], size=params.profile_rows)),
            "tenure_days": pa.array(rng.integers(0, 3_000, size=params.profile_rows)),
        }
    )
    amount = np.round(rng.gamma(2.0, 30.0, size=params.order_rows), 2)
    orders = pa.table(
        {
            "member_id": members(params.order_rows),
            "ts": _times(rng, params.order_rows, params.days),
            "amount": pa.array(amount, mask=rng.random(params.order_rows) < 0.01),
            "items": pa.array(rng.integers(1, 12, size=params.order_rows), pa.int32()),
        }
    )
    write_deltalake(str(data / "raw" / "profiles"), profiles)
    write_deltalake(str(data / "raw" / "orders"), orders)
    package = data / PACKAGE
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text(textwrap.dedent(REPOSITORY))
    stamp.write_text(json.dumps(asdict(params)))
    return {"profiles": params.profile_rows, "orders": params.order_rows}


class SparkClock:
    """Wall seconds spent inside the Spark Connect client's RPCs (analysis, execution, result
    fetches, configuration), summed: the Spark engine's share of a run."""

    METHODS = ("_analyze", "_execute", "config", "_execute_and_fetch_as_iterator")

    def __init__(self) -> None:
        from pyspark.sql.connect.client.core import SparkConnectClient

        self.seconds = 0.0
        self.depth = 0
        for name in self.METHODS:
            original = getattr(SparkConnectClient, name)
            wrapped = self._iterator(original) if "iterator" in name else self._call(original)
            setattr(SparkConnectClient, name, wrapped)

    def _call(self, original):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            self.depth += 1
            try:
                return original(*args, **kwargs)
            finally:
                self.depth -= 1
                if not self.depth:
                    self.seconds += time.perf_counter() - started

        return timed

    def _iterator(self, original):
        def timed(*args, **kwargs):
            iterator = original(*args, **kwargs)
            while True:
                started = time.perf_counter()
                try:
                    item = next(iterator)
                except StopIteration:
                    return
                finally:
                    if not self.depth:
                        self.seconds += time.perf_counter() - started
                yield item

        return timed


def run_ours(job: dict, instance_yaml: str | None = None) -> dict:
    """One backfill of the job's range through a fresh Dagster instance set up as the
    project's (or by `instance_yaml`)."""
    data = Path(job["data"])
    home = Path(tempfile.mkdtemp(prefix="dagster-home-", dir=data))
    if instance_yaml is None:
        shutil.copy(ROOT / ".dagster_home" / "dagster.yaml", home)
    else:
        (home / "dagster.yaml").write_text(instance_yaml)
    os.environ.update({"DAGSTER_HOME": str(home), "FEATUREPLANE_DATA_DIR": str(data)})
    for name in ("FEATUREPLANE_OFFLINE_ROOT", "FEATUREPLANE_ONLINE_STORE", "FEATUREPLANE_REGISTRY"):
        os.environ.pop(name, None)
    shutil.rmtree(data / "offline", ignore_errors=True)
    shutil.rmtree(data / "online", ignore_errors=True)
    sys.path.insert(0, str(data))
    from dagster import DagsterInstance

    from featureplane.dagster.materialize import materialize_repository
    from featureplane.spark_session import spark_session

    with spark_session("local"):  # started outside the timing, as a long-lived process has it
        clock = SparkClock()
        end = datetime.fromisoformat(job["end"])
        cpu, started = cpu_seconds(), time.perf_counter()
        results = materialize_repository(PACKAGE, START, end)
        seconds = time.perf_counter() - started
        cpu = cpu_seconds() - cpu
    instance = DagsterInstance.get()
    store_seconds = 0.0
    for result in results:
        if result.asset_key.path[0] == "online":
            event = instance.get_latest_materialization_event(result.asset_key)
            store_seconds += event.asset_materialization.metadata["write_seconds"].value
    events = sum(len(instance.all_logs(run_id)) for run_id in {result.run_id for result in results})
    shutil.rmtree(home, ignore_errors=True)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "spark_seconds": clock.seconds,
        "store_seconds": store_seconds,
        "control_plane_seconds": seconds - clock.seconds - store_seconds,
        "events": events,
        "assets": {r.asset_key.to_user_string(): [r.partitions, r.rows] for r in results},
    }


def run_duckdb(job: dict) -> dict:
    """The same two views with DuckDB: offline Parquet by date, then the latest row per key."""
    import duckdb
    from deltalake import DeltaTable

    data = Path(job["data"])
    out = data / "duckdb"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    end = datetime.fromisoformat(job["end"])
    cpu, started = cpu_seconds(), time.perf_counter()
    con = duckdb.connect(str(out / "online.duckdb"), config={"threads": THREADS})
    for view, (source, columns) in DUCKDB_VIEWS.items():
        files = DeltaTable(str(data / "raw" / source)).file_uris()
        con.execute(
            f"COPY (SELECT {columns}, CAST(ts AS DATE) AS event_date FROM read_parquet($files) "
            "WHERE ts >= $start AND ts < $end) "
            f"TO '{out / view}' (FORMAT parquet, PARTITION_BY (event_date))",
            {"files": files, "start": START, "end": end},
        )
        con.execute(
            f"CREATE TABLE {view} AS SELECT * FROM read_parquet('{out / view}/*/*.parquet', "
            "hive_partitioning = true) QUALIFY row_number() OVER "
            "(PARTITION BY member_id ORDER BY ts DESC) = 1"
        )
    con.close()
    return {"seconds": time.perf_counter() - started, "cpu_seconds": cpu_seconds() - cpu}


def run_ours_on_dagster_defaults(job: dict) -> dict:
    """Ours on an instance of Dagster's defaults: its SQLite event log, one event per write."""
    return run_ours(job, "telemetry:\n  enabled: false\n")


ENGINES = {
    "ours": run_ours,
    "ours_dagster_defaults": run_ours_on_dagster_defaults,
    "duckdb": run_duckdb,
}


def check(data: Path, offline_root: Path) -> dict[str, bool]:
    """Each view's offline table equals DuckDB's rows (both ways, every column)."""
    import duckdb
    from deltalake import DeltaTable

    con = duckdb.connect()
    equal = {}
    for view, (_, columns) in DUCKDB_VIEWS.items():
        versions = list((offline_root / "features" / view).iterdir())
        ours = DeltaTable(str(versions[0])).to_pyarrow_table()
        names = [c.split(" AS ")[-1] for c in columns.split(", ")]
        con.register("ours", ours.select(names))  # replaced by the next view's
        theirs = f"SELECT {', '.join(names)} FROM read_parquet('{data / 'duckdb' / view}/*/*')"
        differ = con.execute(
            f"SELECT count(*) FROM ((SELECT * FROM ours EXCEPT ALL {theirs}) "
            f"UNION ALL ({theirs} EXCEPT ALL SELECT * FROM ours))"
        ).fetchall()[0][0]
        equal[view] = differ == 0 and ours.num_rows > 0
    return equal


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("python -m bench.backfill", __doc__, ENGINES, DEFAULT_OUT)
    parser.add_argument("--days", type=int, help="daily partitions to backfill (365)")
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, ENGINES)
        return 0
    if args.quick:
        params = DataParams(days=args.days or 30, profile_rows=2_000, order_rows=30_000)
    else:
        params = DataParams(days=args.days or DataParams.days)
    repeats = args.repeats or (1 if args.quick else 3)
    data = args.data_dir or Path(tempfile.mkdtemp(prefix="fp-backfill-"))
    data.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    try:
        rows = generate(data, params)
        end = START + timedelta(days=params.days)
        job = {"data": str(data), "end": end.isoformat()}
        runs: dict[str, list[dict]] = {engine: [] for engine in args.engines}
        for repeat in range(args.warmup + repeats):
            for engine in args.engines:
                report = run_engine("bench.backfill", engine, job)
                label = "warm-up" if repeat < args.warmup else f"run {repeat - args.warmup}"
                print(f"  {engine:6} {label}: {report['seconds']:7.2f}s")
                if repeat >= args.warmup:
                    runs[engine].append(report)
        ran = set(args.engines)  # the tables of the last run of ours, against DuckDB's
        equal = check(data, data / "offline") if "duckdb" in ran and len(ran) > 1 else {}
        report = summarize(runs, params, rows, equal)
        report["machine"] = machine_info()
        report["total_seconds"] = round(time.perf_counter() - began, 1)
        print_table(report)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
        return 0 if all(equal.values()) else 1
    finally:
        if not args.keep and args.data_dir is None:
            shutil.rmtree(data, ignore_errors=True)


def summarize(runs: dict[str, list[dict]], params: DataParams, rows: dict, equal: dict) -> dict:
    def median(engine: str, field: str) -> float:
        return round(statistics.median(r[field] for r in runs[engine]), 3)

    figures: dict = {}
    fields = ("seconds", "cpu_seconds", "spark_seconds", "store_seconds", "control_plane_seconds")
    for engine in ("ours", "ours_dagster_defaults"):
        if engine in runs:
            last = runs[engine][-1]
            figures[engine] = {field: median(engine, field) for field in fields}
            figures[engine] |= {"events": last["events"], "assets": last["assets"]}
    if "duckdb" in runs:
        figures["duckdb"] = {f: median("duckdb", f) for f in ("seconds", "cpu_seconds")}
        for engine in ("ours", "ours_dagster_defaults"):
            if engine in figures:
                ratio = figures[engine]["seconds"] / figures["duckdb"]["seconds"]
                figures[engine]["over_duckdb"] = round(ratio, 2)
    return {
        "benchmark": "backfill",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": asdict(params) | {"rows": rows},
        "method": "median wall seconds of fresh processes; ours on a fresh Dagster instance",
        "runs": runs,
        "figures": figures,
        "check": {"equal": equal},
    }


def print_table(report: dict) -> None:
    figures, days = report["figures"], report["data"]["days"]
    engines = [e for e in ("ours", "ours_dagster_defaults") if e in figures]
    print(f"\nbackfill of {days} daily partitions, two views (medians, seconds)")
    print(f"{'':22}" + "".join(f"{LABELS[e]:>20}" for e in engines))
    for label, field in (
        ("total", "seconds"),
        ("  Spark", "spark_seconds"),
        ("  online store writes", "store_seconds"),
        ("  control plane", "control_plane_seconds"),
        ("Dagster events", "events"),
        ("over DuckDB", "over_duckdb"),
    ):
        cells = [figures[e].get(field) for e in engines]
        print(
            f"{label:22}"
            + "".join(f"{c:>20,}" if isinstance(c, int) else f"{c:>20.2f}" for c in cells)
        )
    if "duckdb" in figures:
        print(f"{'DuckDB':22}{figures['duckdb']['seconds']:>20.2f}")
    for view, same in report["check"]["equal"].items():
        print(f"check {view}: {'PASS' if same else 'FAIL'}")


LABELS = {"ours": "project instance", "ours_dagster_defaults": "Dagster's defaults"}


if __name__ == "__main__":
    sys.exit(main())
