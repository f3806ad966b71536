"""What deleting a view version's online rows costs, per store: rows deleted per second.

`python -m bench.delete_version [--rows N] [--quick]` (from the project folder, with the
project's `.venv/bin/python`) fills each store with two versions of a row-level view of N rows
each (100,000 by default) and times `delete_version` of one of them, then checks that the other
is still served:
- sqlite: while a thread reads 100 keys of the kept version in a loop (the read latencies
  during the deletion are reported: batches keep the write lock, and the WAL, small);
- mock_aws: moto in-process;
- moto_server: moto over real HTTP (`bench.moto_dynamodb_server`), deletes sent concurrently.
For DynamoDB the seconds are split between the keys-only Scan and the BatchWriteItem deletes
(summed over the requests, which run concurrently on moto_server).
The table is filled by BatchWriteItem puts, not by the conditional transactions of a push, which
moto runs slowly. Writes JSON to `bench/results/delete_version.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

from bench.harness import ROOT, machine_info, moto_server
from featureplane.online_store import Record
from featureplane.online_store.dynamodb import DynamoDBOnlineStore
from featureplane.online_store.encoding import encode_values, item_key
from featureplane.online_store.sqlite import SQLiteOnlineStore

DEFAULT_OUT = ROOT / "bench" / "results" / "delete_version.json"
VIEW, DELETED, KEPT = "ad_stats", "old", "new"
VALUES = {"impressions": 123456, "clicks": 42, "ctr": 0.0345, "country": "FR"}
EVENT_TIME = datetime(2026, 1, 1, tzinfo=UTC)


def sqlite(rows: int, directory: str) -> dict:
    store = SQLiteOnlineStore(Path(directory) / "online.sqlite")
    store.ensure_table()
    for version in (DELETED, KEPT):
        store.write(VIEW, version, [Record((n,), EVENT_TIME, VALUES) for n in range(rows)])
    latencies: list[float] = []
    done = threading.Event()
    keys = [(n,) for n in range(0, min(rows, 1000), 10)]

    def read() -> None:
        while not done.is_set():
            began = time.perf_counter()
            store.read(VIEW, KEPT, keys)
            latencies.append(time.perf_counter() - began)

    reader = threading.Thread(target=read)
    reader.start()
    began = time.perf_counter()
    deleted = store.delete_version(VIEW, DELETED)
    seconds = time.perf_counter() - began
    done.set()
    reader.join()
    latencies.sort()
    result = _result(store, deleted, seconds, rows)
    store.close()
    return result | {
        "reads_during": len(latencies),
        "read_p50_ms": latencies[len(latencies) // 2] * 1e3,
        "read_max_ms": latencies[-1] * 1e3,
    }


def dynamodb(rows: int, endpoint: str | None) -> dict:
    store = DynamoDBOnlineStore(
        f"delete_{uuid.uuid4().hex[:8]}",
        region="us-east-1",
        endpoint_url=endpoint,
        concurrent_writes=endpoint is not None,  # moto in-process: one request at a time
        read_timeout=300,  # moto sorts the whole table for every Scan page
    )
    store.ensure_table()
    for version in (DELETED, KEPT):
        for start in range(0, rows, 25):
            puts = [
                {"PutRequest": {"Item": _item(version, n)}}
                for n in range(start, min(rows, start + 25))
            ]
            store.client.batch_write_item(RequestItems={store.table: puts})
    spent = {"scan": 0.0, "batch_write_item": 0.0}
    patiently = store._patiently

    def timed(method, request):
        began = time.perf_counter()
        try:
            return patiently(method, request)
        finally:
            spent[method.__name__] += time.perf_counter() - began

    store._patiently = timed
    began = time.perf_counter()
    deleted = store.delete_version(VIEW, DELETED)
    result = _result(store, deleted, time.perf_counter() - began, rows)
    store.close()
    return result | {"scan_seconds": spent["scan"], "delete_seconds": spent["batch_write_item"]}


def _item(version: str, n: int) -> dict:
    return {
        "pk": {"S": item_key(VIEW, version, (n,))},
        "ts": {"N": "1"},
        "v": {"S": encode_values(VALUES)},
    }


def _result(store, deleted: int, seconds: float, rows: int) -> dict:
    kept = store.read(VIEW, KEPT, [(0,), (rows - 1,)])
    if deleted != rows or None in kept or store.read(VIEW, DELETED, [(0,)]) != [None]:
        raise AssertionError(f"deleted {deleted} of {rows} rows, kept {kept}")
    return {"rows": deleted, "seconds": seconds, "rows_per_second": deleted / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.delete_version", description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000, help="rows of each version")
    parser.add_argument("--quick", action="store_true", help="smoke size (2,000 rows)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    rows = 2_000 if args.quick else args.rows
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(name, "testing")
    from moto import mock_aws

    results = {}
    with tempfile.TemporaryDirectory() as directory:
        results["sqlite"] = sqlite(rows, directory)
    with mock_aws():
        results["mock_aws"] = dynamodb(rows, None)
    with ExitStack() as stack:
        endpoint = stack.enter_context(moto_server(module="bench.moto_dynamodb_server"))
        results["moto_server"] = dynamodb(rows, endpoint)
    print(f"delete_version of {rows:,} rows (of {2 * rows:,})")
    print(f"{'store':<12} {'seconds':>8} {'rows/s':>9}  detail")
    for store, result in results.items():
        if "read_p50_ms" in result:
            detail = (
                f"{result['reads_during']} reads meanwhile, p50 {result['read_p50_ms']:.2f} ms, "
                f"max {result['read_max_ms']:.1f} ms"
            )
        else:
            detail = (
                f"scan {result['scan_seconds']:.1f} s, deletes {result['delete_seconds']:.1f} s"
            )
        print(f"{store:<12} {result['seconds']:>8.2f} {result['rows_per_second']:>9,.0f}  {detail}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine_info(), "rows": rows, **results}, indent=2))


if __name__ == "__main__":
    main()
