"""What the quality gate costs: a window materialized with its checks, against without them.

`python -m bench.quality [--quick] [--repeats N]` (from the project folder, with the project's
`.venv/bin/python`) generates the demo's sources at a larger scale (`featureplane.synthetic`:
by default 2 days of 1M impressions and 1.5M page views a day) and times, side by side in one
Sail session and interleaved run by run, one day's window of two demo views written to the
offline store:
- plain: `run_transformation` + `OfflineStore.write_window`, the materialization as it was
  without quality checks (valid rows only, computed once by the write);
- checked: `prepared_window` (sources landed, the sources' and the view's rules counted,
  example rows of failing rules, the volume guard) + the same write of the staged rows.
The table gives medians over the runs, the ratio, and the checks' cost in seconds per million
rows checked (the view's output rows plus the source rows its source expectations read). Both
sides must leave the same table. Writes JSON to `bench/results/quality.json`.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from bench.harness import ROOT, base_parser, machine_info

DEFAULT_OUT = ROOT / "bench" / "results" / "quality.json"
VIEWS = ("user_ad_activity", "user_daily_page_views")


def _stored(path: str):
    import pyarrow.parquet as pq
    from deltalake import DeltaTable

    table = pq.ParquetDataset(DeltaTable(path).file_uris()).read()
    return table.sort_by([(name, "ascending") for name in table.column_names[:2]])


def run(data: Path, days: int, impressions: int, repeats: int) -> dict:
    import os

    from featureplane import Repository
    from featureplane.compute.materialization import prepared_window
    from featureplane.compute.transform import run_transformation
    from featureplane.compute.window import TimeWindow
    from featureplane.offline_store import OfflineStore
    from featureplane.spark_session import spark_session
    from featureplane.synthetic import DemoScale, generate

    scale = DemoScale(days=days, users=100_000, ads=5_000, impressions_per_day=impressions)
    began = time.perf_counter()
    counts = generate(data / "raw", scale)
    print(f"generated {sum(counts.values()):,} rows in {time.perf_counter() - began:.1f}s")
    os.environ["FEATUREPLANE_DATA_DIR"] = str(data)
    repository = Repository.load("feature_assets")
    last = scale.start + timedelta(days=days - 1)
    window = TimeWindow(last, last + timedelta(days=1))
    cases = []
    with spark_session() as spark:
        for name in VIEWS:
            view = repository.feature_view(name)
            sides = {side: OfflineStore(str(data / side)) for side in ("plain", "checked")}
            uris = {side: store.view_table_uri(name, view.version) for side, store in sides.items()}
            seconds: dict[str, list[float]] = {"plain": [], "checked": []}
            checked_rows = 0
            for attempt in range(repeats + 1):  # the first of each side warms up, untimed
                started = time.perf_counter()
                rows = run_transformation(spark, view, window)
                sides["plain"].write_window(rows, uris["plain"], window, view.table_timestamp_field)
                plain = time.perf_counter() - started
                started = time.perf_counter()
                with prepared_window(spark, view, window, sides["checked"]) as prepared:
                    sides["checked"].write_window(
                        prepared.rows, uris["checked"], window, view.table_timestamp_field
                    )
                    sources = sum(report.rows for report in prepared.sources.values())
                    checked_rows = prepared.report.rows + sources
                    failed = [r.line(name) for r in prepared.report.results if not r.passed]
                checked = time.perf_counter() - started
                if attempt:
                    seconds["plain"].append(plain)
                    seconds["checked"].append(checked)
                print(f"  {name} run {attempt}: plain {plain:6.2f}s  checked {checked:6.2f}s")
            equal = _stored(uris["plain"]).equals(_stored(uris["checked"]))
            plain, checked = (statistics.median(seconds[side]) for side in ("plain", "checked"))
            cases.append(
                {
                    "view": name,
                    "rows_checked": checked_rows,
                    "plain_s": round(plain, 3),
                    "checked_s": round(checked, 3),
                    "ratio": round(checked / plain, 2),
                    "checks_s_per_million_rows": round((checked - plain) / checked_rows * 1e6, 3),
                    "runs": seconds,
                    "rules_failed": failed,
                    "equal": equal,
                }
            )
    return {"scale": {"days": days, "impressions_per_day": impressions}, "cases": cases}


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("bench.quality", __doc__.splitlines()[0], {}, DEFAULT_OUT)
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 5)
    impressions = 50_000 if args.quick else 1_000_000
    with tempfile.TemporaryDirectory(dir=args.data_dir) as scratch:
        report = run(Path(scratch), 2, impressions, repeats)
    print(
        f"\n{'view':<24} {'rows checked':>12} {'plain s':>8} {'checked s':>9} {'ratio':>6} "
        f"{'checks s/M rows':>15} {'equal':>5}"
    )
    for case in report["cases"]:
        for line in case["rules_failed"]:
            print(f"  rule failed (reported, as a run would): {line}")
    for case in report["cases"]:
        print(
            f"{case['view']:<24} {case['rows_checked']:>12,} {case['plain_s']:>8.2f} "
            f"{case['checked_s']:>9.2f} {case['ratio']:>5.2f}x "
            f"{case['checks_s_per_million_rows']:>15.3f} {'PASS' if case['equal'] else 'FAIL':>5}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**report, "machine": machine_info()}, indent=2))
    print(f"wrote {args.out}")
    return 0 if all(case["equal"] for case in report["cases"]) else 1


if __name__ == "__main__":
    sys.exit(main())
