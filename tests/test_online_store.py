"""The online store contract, run against SQLite, moto in-process and moto_server over HTTP."""

from __future__ import annotations

import itertools
import math
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import boto3
import pytest
from botocore.stub import ANY, Stubber
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws

from bench.harness import moto_server
from featureplane.online_store import (
    EntityKeyError,
    ItemTooLarge,
    OnlineStore,
    Record,
    RecordKey,
    StoreThrottled,
    WriteResult,
    expiry,
    open_store,
)
from featureplane.online_store.dynamodb import Backoff, DynamoDBOnlineStore
from featureplane.online_store.encoding import JOURNAL, decode_values, encode_values, item_key
from featureplane.online_store.item_store import item_bytes
from featureplane.online_store.sqlite import PAGE_BYTES, SQLiteOnlineStore

REGION = "us-east-1"
T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
FAST = Backoff(retries=2, base_seconds=0.001)
MOTO = {"region": REGION, "backoff": FAST, "concurrent_writes": False}
"""moto cannot run concurrent transactions on one table (see DynamoDBOnlineStore)."""


@pytest.fixture(scope="session")
def moto_endpoint(aws_credentials) -> Iterator[str]:
    """A moto_server process on 127.0.0.1: DynamoDB over real HTTP, stopped at the end."""
    with moto_server() as endpoint:
        yield endpoint


def open_backend(kind: str, request: pytest.FixtureRequest, stack: ExitStack) -> OnlineStore:
    if kind == "sqlite":
        return SQLiteOnlineStore(request.getfixturevalue("tmp_path") / "online.sqlite")
    if kind == "mock_aws":
        request.getfixturevalue("aws_credentials")
        stack.enter_context(mock_aws())
        return DynamoDBOnlineStore("features", **MOTO)
    endpoint = request.getfixturevalue("moto_endpoint")
    table = f"features_{uuid.uuid4().hex[:12]}"
    return DynamoDBOnlineStore(table, endpoint_url=endpoint, **MOTO)


def opened(request: pytest.FixtureRequest) -> Iterator[OnlineStore]:
    with ExitStack() as stack:
        backend = open_backend(request.param, request, stack)
        backend.ensure_table()
        yield backend
        backend.close()


@pytest.fixture(params=["sqlite", "mock_aws", "moto_server"])
def store(request) -> Iterator[OnlineStore]:
    yield from opened(request)


@pytest.fixture(params=["mock_aws", "moto_server"])
def dynamodb_store(request) -> Iterator[DynamoDBOnlineStore]:
    yield from opened(request)


def rows(*items: tuple[object, datetime, dict]) -> list[Record]:
    return [Record((key,), moment, values) for key, moment, values in items]


EVERY_TYPE = {
    "big_int": 2**63 + 1,
    "negative": -(2**80),
    "float": 0.1,
    "negative_zero": -0.0,
    "infinity": math.inf,
    "text": 'déjà vu 🚀 "quoted" \\ \x00',
    "flag": True,
    "nothing": None,
    "list": [1, "1", 1.0, None, [True]],
    "nested": {"a": {"b": [1, {"c": "d"}]}, "$ts": 5, "$$x": "escaped"},
    "timestamp": datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC),
    "date": date(1999, 12, 31),
    "bytes": b"\x00\xff",
    "tiles": [{"tile_start": datetime(2024, 1, 1, tzinfo=UTC), "total__x": {"n": 3, "s": 1.5}}],
}


def test_store_satisfies_the_protocol(store):
    assert isinstance(store, OnlineStore)


def test_every_value_type_round_trips(store):
    assert store.write("ad_stats", "v1", [Record(("u1",), T0, EVERY_TYPE)]) == WriteResult(1, 0)
    (record,) = store.read("ad_stats", "v1", [("u1",)])
    assert record.values == EVERY_TYPE
    assert math.copysign(1, record.values["negative_zero"]) == -1
    assert record.event_timestamp == T0 and record.event_timestamp.tzinfo == UTC
    assert record.entity_key == ("u1",)
    assert math.isnan(store_and_read(store, {"x": math.nan})["x"])


def store_and_read(store: OnlineStore, values: dict) -> dict:
    store.write("scratch", "v1", [Record(("k",), T0, values)])
    return store.read("scratch", "v1", [("k",)])[0].values


def test_missing_keys_read_as_none_in_order(store):
    store.write("ad_stats", "v1", rows(("b", T0, {"x": 2})))
    assert [r and r.values for r in store.read("ad_stats", "v1", [("a",), ("b",), ("c",)])] == [
        None,
        {"x": 2},
        None,
    ]
    assert store.read("ad_stats", "v1", []) == []
    assert store.write("ad_stats", "v1", []) == WriteResult(0, 0)


def test_newer_overwrites_equal_overwrites_older_is_skipped(store):
    assert store.write("s", "v1", rows(("k", T0, {"x": 1}))) == WriteResult(1, 0)
    assert store.write("s", "v1", rows(("k", T0 + timedelta(microseconds=1), {"x": 2}))) == (
        WriteResult(1, 0)
    )
    assert store.write("s", "v1", rows(("k", T0, {"x": 3}))) == WriteResult(0, 1)
    assert store.write("s", "v1", rows(("k", T0 + timedelta(microseconds=1), {"x": 4}))) == (
        WriteResult(1, 0)
    )
    (record,) = store.read("s", "v1", [("k",)])
    assert record.values == {"x": 4}
    assert record.event_timestamp == T0 + timedelta(microseconds=1)


def test_within_a_batch_the_latest_row_per_key_wins(store):
    batch = rows(
        ("a", T0, {"x": 1}),
        ("a", T0 + timedelta(hours=1), {"x": 2}),
        ("a", T0, {"x": 3}),
        ("b", T0, {"x": 1}),
        ("b", T0, {"x": 2}),
    )
    assert store.write("s", "v1", batch) == WriteResult(written=2, skipped_stale=3)
    assert [r.values for r in store.read("s", "v1", [("a",), ("b",)])] == [{"x": 2}, {"x": 2}]


def test_a_mixed_batch_writes_the_newer_rows_and_counts_the_stale_ones(store):
    store.write("s", "v1", [Record((i,), T0, {"x": "old"}) for i in range(150)])
    mixed = [Record((i,), T0 + timedelta(seconds=i % 2 * 2 - 1), {"x": "new"}) for i in range(150)]
    assert store.write("s", "v1", mixed) == WriteResult(written=75, skipped_stale=75)
    read = store.read("s", "v1", [(i,) for i in range(150)])
    assert [r.values["x"] for r in read] == ["old", "new"] * 75


def test_many_keys_are_read_in_order_across_chunks(store):
    store.write("s", "v1", [Record((i, f"k{i}"), T0, {"i": i}) for i in range(0, 350, 2)])
    keys = [(i, f"k{i}") for i in reversed(range(350))] + [(0, "k0"), (0, "k0")]
    read = store.read("s", "v1", keys)
    assert [r and r.values["i"] for r in read] == [
        i if i % 2 == 0 else None for i in reversed(range(350))
    ] + [0, 0]
    assert all(r is None or r.entity_key == key for r, key in zip(read, keys, strict=True))


def test_views_and_versions_are_isolated_and_read_together(store):
    for view, version in itertools.product(("ad_stats", "user_stats"), ("v1", "v2")):
        store.write(view, version, rows((1, T0, {"src": f"{view}/{version}"})))
    keys = [
        RecordKey("user_stats", "v2", (1,)),
        RecordKey("ad_stats", "v1", (1,)),
        RecordKey("ad_stats", "v3", (1,)),
        RecordKey("user_stats", "v1", (1,)),
        RecordKey("ad_stats", "v2", (1,)),
    ]
    assert [r and r.values["src"] for r in store.read_many(keys)] == [
        "user_stats/v2",
        "ad_stats/v1",
        None,
        "user_stats/v1",
        "ad_stats/v2",
    ]


def journal_entry(view: str, version: str) -> tuple:
    """A push journal entry of a view version, as `featureplane.online_push` writes one."""
    return (f"{JOURNAL}{view}#{version}#2024-05-01/2024-05-02", 1, '{"finished":true}', None)


def test_deleting_a_version_deletes_its_records_and_journal_and_nothing_else(store):
    """Neighbours whose keys share characters with the deleted prefix stay: another version
    starting with its name, a view whose name extends the view's, another view's journal."""
    kept = [("ad_stats", "v1"), ("ad_stats", "v10"), ("ad_stats_1d", "v1"), ("user", "v1")]
    for view, version in [("ad_stats", "v1.0"), *kept]:
        store.write(view, version, rows(*((n, T0, {"n": n}) for n in range(130))))
        store.write_items([journal_entry(view, version)])
    assert store.delete_version("ad_stats", "v1.0") == 130
    assert store.read("ad_stats", "v1.0", [(n,) for n in range(130)]) == [None] * 130
    assert store.read_items([journal_entry("ad_stats", "v1.0")[0]]) == [None]
    for view, version in kept:
        assert [r.values["n"] for r in store.read(view, version, [(0,), (129,)])] == [0, 129]
        assert store.read_items([journal_entry(view, version)[0]]) != [None]
    assert store.delete_version("ad_stats", "v1.0") == 0, "a rerun finds nothing left"
    assert store.delete_version("never_pushed", "v1") == 0


def test_deleting_a_version_that_only_has_journal_entries_deletes_them(store):
    """What a deletion interrupted after the records leaves: the rerun removes the rest."""
    store.write_items([journal_entry("ad_stats", "v1")])
    assert store.delete_version("ad_stats", "v1") == 0
    assert store.read_items([journal_entry("ad_stats", "v1")[0]]) == [None]


def test_a_deleted_version_can_be_pushed_again(store):
    store.write("ad_stats", "v1", rows((1, T0, {"n": 1})))
    store.delete_version("ad_stats", "v1")
    earlier = T0 - timedelta(days=1)
    assert store.write("ad_stats", "v1", rows((1, earlier, {"n": 2}))).written == 1
    assert store.read("ad_stats", "v1", [(1,)])[0].values == {"n": 2}


def test_deleting_rejects_an_invalid_address(store):
    with pytest.raises(EntityKeyError, match="must be lower snake case"):
        store.delete_version("Ad#Stats", "v1")
    with pytest.raises(EntityKeyError, match="version '' must be"):
        store.delete_version("ad_stats", "")


def test_typed_join_keys_do_not_collide(store):
    keys = [(1,), ("1",), (1, 2), ("1", 2), ("1,2",), ("[1,2]",), (12,), (1, "2")]
    store.write("s", "v1", [Record(key, T0, {"key": repr(key)}) for key in keys])
    assert [r.values["key"] for r in store.read("s", "v1", keys)] == [repr(k) for k in keys]


HOSTILE = [
    "'; DROP TABLE online_records; --",
    "../../../etc/passwd",
    "/tmp/x.sqlite",
    'a"]#s#v1#["b',
    "#",
    "%s %d {}",
    "\x00",
    "\ud800",
    "ключ",
]


def test_keys_that_look_like_sql_or_paths_are_only_data(store):
    store.write("s", "v1", [Record((key,), T0, {"key": key}) for key in HOSTILE])
    assert [r.values["key"] for r in store.read("s", "v1", [(k,) for k in HOSTILE])] == HOSTILE
    assert store.read("s", "v1", [("other",)]) == [None]


@pytest.mark.parametrize(
    ("view", "version", "key"),
    [
        ("a#b", "v1", (1,)),
        ("../etc", "v1", (1,)),
        ("s", "v1#x", (1,)),
        ("s", "", (1,)),
        ("s", "v1", ()),
        ("s", "v1", "abc"),
        ("s", "v1", (1.5,)),
        ("s", "v1", (True,)),
        ("s", "v1", (None,)),
        ("s", "v1", ("x" * 3000,)),
    ],
)
def test_invalid_addresses_are_client_errors(store, view, version, key):
    with pytest.raises(EntityKeyError):
        store.read(view, version, [key])
    with pytest.raises(EntityKeyError):
        store.write(view, version, [Record(key, T0, {})])


def test_expiry_is_stored_to_the_second_rounded_up(store):
    expires = expiry(T0, timedelta(days=7))
    store.write("s", "v1", [Record(("k",), T0, {"x": 1}, expires), Record(("n",), T0, {"x": 1})])
    kept, never = store.read("s", "v1", [("k",), ("n",)])
    assert kept.expires_at == (expires + timedelta(seconds=1)).replace(microsecond=0)
    assert never.expires_at is None


def test_ensure_table_is_idempotent(store):
    store.write("s", "v1", rows(("k", T0, {"x": 1})))
    store.ensure_table()
    store.ensure_table()
    assert store.read("s", "v1", [("k",)])[0].values == {"x": 1}


def test_concurrent_readers_see_whole_records(store):
    store.write("s", "v1", [Record((i,), T0, {"i": i, "sq": i * i}) for i in range(50)])

    def read(offset: int) -> bool:
        keys = [((offset + j) % 50,) for j in range(10)]
        return all(r.values["sq"] == r.values["i"] ** 2 for r in store.read("s", "v1", keys))

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(read, range(64)))


# ---- DynamoDB specifics: the table, TTL, retries and throttling -----------------------------


def test_dynamodb_items_carry_the_ttl_attribute_and_ttl_is_enabled(dynamodb_store):
    store = dynamodb_store
    store.write("s", "v1", [Record(("k",), T0, {"x": 1}, datetime(2030, 1, 1, tzinfo=UTC))])
    item = store.client.get_item(TableName=store.table, Key={"pk": {"S": 's#v1#["k"]'}})["Item"]
    assert item["exp"] == {"N": str(int(datetime(2030, 1, 1, tzinfo=UTC).timestamp()))}
    ttl = store.client.describe_time_to_live(TableName=store.table)["TimeToLiveDescription"]
    assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "exp")
    billing = store.client.describe_table(TableName=store.table)["Table"]["BillingModeSummary"]
    assert billing["BillingMode"] == "PAY_PER_REQUEST"


def dynamodb_item_bytes(item: dict) -> int:
    """An item's size as DynamoDB documents it: names and values in UTF-8, numbers ≤ 21 bytes."""
    return sum(
        len(name.encode()) + (21 if "N" in value else len(value["S"].encode()))
        for name, value in item.items()
    )


@pytest.mark.parametrize("payload", ['{"a":1}', '{"a":"é€😀"}', "x" * 1000])
@pytest.mark.parametrize("expires", [None, 1_900_000_000])
def test_item_sizes_are_dynamodbs_for_any_text(payload, expires):
    item = ("view#v1#[1]", 1_700_000_000_000_000, payload, expires)
    dynamo = {"pk": {"S": item[0]}, "ts": {"N": str(item[1])}, "v": {"S": payload}}
    if expires is not None:
        dynamo["exp"] = {"N": str(expires)}
    assert item_bytes(item) == dynamodb_item_bytes(dynamo)


def test_large_items_go_in_transactions_dynamodb_accepts_and_all_land(dynamodb_store):
    store, sizes = dynamodb_store, []

    def record(params: dict, **_: object) -> None:
        sizes.append([dynamodb_item_bytes(put["Put"]["Item"]) for put in params["TransactItems"]])

    store.write_client.meta.events.register(
        "provide-client-params.dynamodb.TransactWriteItems", record
    )
    batch = [Record((i,), T0, {"i": i, "pad": "x" * (i % 5 == 0) * 300_000}) for i in range(150)]
    assert store.write("s", "v1", batch) == WriteResult(written=150, skipped_stale=0)
    assert sum(map(len, sizes)) == 150 and len(sizes) > 2
    assert all(len(request) <= 100 and sum(request) <= 4 * 1024 * 1024 for request in sizes)
    assert [r.values for r in store.read("s", "v1", [(i,) for i in range(150)])] == [
        r.values for r in batch
    ]


def test_an_item_over_400_kb_raises_before_anything_is_stored(store):
    """Every store refuses what DynamoDB would, so that a record SQLite accepts in development
    is one DynamoDB accepts in production."""
    small = [Record((i,), T0, {"x": i}) for i in range(150)]
    huge = Record(("big",), T0, {"x": "a" * 410_000})
    with pytest.raises(ItemTooLarge, match=r's#v1#\["big"\] is 410,0\d\d bytes'):
        store.write("s", "v1", [*small, huge])
    assert store.read("s", "v1", [(i,) for i in range(150)]) == [None] * 150


def test_sqlite_runs_in_wal_mode_on_large_pages(tmp_path):
    with SQLiteOnlineStore(tmp_path / "online.sqlite") as store:
        store.ensure_table()
    with sqlite3.connect(tmp_path / "online.sqlite") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert connection.execute("PRAGMA page_size").fetchone() == (PAGE_BYTES,)


def test_a_sqlite_store_closed_during_a_read_serves_the_next_ones(tmp_path):
    store = SQLiteOnlineStore(tmp_path / "online.sqlite")
    store.ensure_table()
    store.write("v", "1", rows(("k", T0, {"x": 1})))
    with store._connection():  # a read in flight on another thread
        store.close()
    for _ in range(2):
        assert store.read("v", "1", [("k",)])[0].values == {"x": 1}
    store.close()


KILLED_DELETION = """
import sys
from featureplane.online_store.sqlite import SQLiteOnlineStore
SQLiteOnlineStore(sys.argv[1]).delete_version("big", "v1")
"""


def test_a_sqlite_deletion_killed_half_way_is_finished_by_a_rerun(tmp_path):
    """The deleting process is killed once some of its batches are committed: what it
    deleted stays deleted, the file is intact, and a rerun deletes exactly the rest."""
    path, total = tmp_path / "online.sqlite", 200_000
    with SQLiteOnlineStore(path) as store:
        store.ensure_table()
        store.write("big", "v1", rows(*((n, T0, {"n": n}) for n in range(total))))
        store.write("big", "v2", rows((0, T0, {"n": 0})))
    count = "SELECT count(*) FROM online_records WHERE item_key LIKE 'big#v1#%'"
    command = [sys.executable, "-c", KILLED_DELETION, str(path)]
    root = str(Path(__file__).resolve().parents[1])
    deleting = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": root})
    with sqlite3.connect(path) as reader:
        left = total
        while left == total and deleting.poll() is None:
            left = reader.execute(count).fetchone()[0]
        deleting.kill()
        deleting.wait()
        left = reader.execute(count).fetchone()[0]
        assert 0 < left < total, "killed half way"
        assert reader.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    with SQLiteOnlineStore(path) as store:
        assert store.delete_version("big", "v1") == left
        assert store.delete_version("big", "v1") == 0
        assert store.read("big", "v2", [(0,)])[0].values == {"n": 0}


def test_concurrent_sqlite_deletions_of_a_version_delete_each_row_once(tmp_path):
    """Two cut-over ticks deleting the same version at once: they take turns batch by batch,
    and between them count every row exactly once."""
    with SQLiteOnlineStore(tmp_path / "online.sqlite") as store:
        store.ensure_table()
        store.write("big", "v1", rows(*((n, T0, {"n": n}) for n in range(20_000))))
        store.write("big", "v2", rows((0, T0, {"n": 0})))
        with ThreadPoolExecutor(2) as pool:
            counts = list(pool.map(lambda _: store.delete_version("big", "v1"), range(2)))
        assert sum(counts) == 20_000
        assert store.read("big", "v1", [(0,), (19_999,)]) == [None, None]
        assert store.read("big", "v2", [(0,)])[0].values == {"n": 0}


@pytest.fixture
def stubbed(aws_credentials) -> Iterator[tuple[DynamoDBOnlineStore, Stubber]]:
    """A DynamoDB store whose client answers from a script, to provoke partial results."""
    client = boto3.client("dynamodb", region_name=REGION)
    with Stubber(client) as stubber:
        store = DynamoDBOnlineStore("features", backoff=FAST, client=client)
        yield store, stubber
        stubber.assert_no_pending_responses()
        store.close()


def stored(key: str, x: int) -> dict:
    return {"pk": {"S": key}, "ts": {"N": "1"}, "v": {"S": f'{{"x":{x}}}'}}


def test_unprocessed_keys_are_retried(stubbed):
    store, stubber = stubbed
    a, b = item_key("s", "v1", ("a",)), item_key("s", "v1", ("b",))
    stubber.add_response(
        "batch_get_item",
        {
            "Responses": {"features": [stored(a, 1)]},
            "UnprocessedKeys": {"features": {"Keys": [{"pk": {"S": b}}]}},
        },
    )
    stubber.add_response(
        "batch_get_item",
        {"Responses": {"features": [stored(b, 2)]}},
        expected_params={"RequestItems": {"features": {"Keys": [{"pk": {"S": b}}]}}},
    )
    assert [r.values for r in store.read("s", "v1", [("a",), ("b",)])] == [{"x": 1}, {"x": 2}]


def test_keys_left_unprocessed_after_retries_raise_throttled(stubbed):
    store, stubber = stubbed
    a = item_key("s", "v1", ("a",))
    for _ in range(FAST.retries + 1):
        stubber.add_response(
            "batch_get_item",
            {"Responses": {}, "UnprocessedKeys": {"features": {"Keys": [{"pk": {"S": a}}]}}},
        )
    with pytest.raises(StoreThrottled, match="unprocessed"):
        store.read("s", "v1", [("a",)])


@pytest.mark.parametrize(
    "code",
    ["ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"],
)
def test_throttling_is_a_distinct_error(stubbed, code):
    store, stubber = stubbed
    stubber.add_client_error("batch_get_item", service_error_code=code, http_status_code=400)
    with pytest.raises(StoreThrottled, match=code):
        store.read("s", "v1", [("a",)])


def cancelled(stubber: Stubber, *codes: str) -> None:
    reasons = [{"Code": code} for code in codes]
    stubber.add_client_error(
        "transact_write_items",
        service_error_code="TransactionCanceledException",
        modeled_fields={"CancellationReasons": reasons},
        expected_params={"TransactItems": [ANY] * len(codes), "ClientRequestToken": ANY},
    )


def test_cancelled_writes_drop_stale_items_and_retry_the_rest(stubbed):
    store, stubber = stubbed
    cancelled(stubber, "None", "ConditionalCheckFailed", "TransactionConflict")
    stubber.add_response(
        "transact_write_items", {}, {"TransactItems": [ANY, ANY], "ClientRequestToken": ANY}
    )
    batch = rows(("a", T0, {}), ("b", T0, {}), ("c", T0, {}))
    assert store.write("s", "v1", batch) == WriteResult(written=2, skipped_stale=1)


def deletes(*keys: str) -> dict:
    return {"features": [{"DeleteRequest": {"Key": {"pk": {"S": key}}}} for key in keys]}


def test_a_deletion_scans_keys_only_and_sends_unprocessed_deletes_again(stubbed):
    store, stubber = stubbed
    keys = [item_key("s", "v1", (n,)) for n in range(30)]
    prefixes = {":p0": {"S": "s#v1#"}, ":p1": {"S": f"{JOURNAL}s#v1#"}}
    scan = {
        "TableName": "features",
        "ProjectionExpression": "#pk",
        "FilterExpression": "begins_with(#pk, :p0) OR begins_with(#pk, :p1)",
        "ExpressionAttributeNames": {"#pk": "pk"},
        "ExpressionAttributeValues": prefixes,
    }
    page = [{"pk": {"S": key}} for key in keys]
    last = {"pk": {"S": keys[-1]}}
    stubber.add_response("scan", {"Items": page, "LastEvaluatedKey": last}, scan)
    stubber.add_response("batch_write_item", {}, {"RequestItems": deletes(*keys[:25])})
    unprocessed = {"UnprocessedItems": deletes(*keys[27:])}
    stubber.add_response("batch_write_item", unprocessed, {"RequestItems": deletes(*keys[25:])})
    stubber.add_response("batch_write_item", {}, {"RequestItems": deletes(*keys[27:])})
    stubber.add_response("scan", {"Items": []}, {**scan, "ExclusiveStartKey": last})
    assert store.delete_version("s", "v1") == 30


def test_deletes_left_unprocessed_after_retries_raise_throttled(stubbed, monkeypatch):
    store, stubber = stubbed
    monkeypatch.setattr(store, "write_backoff", FAST)
    key = item_key("s", "v1", ("a",))
    stubber.add_response("scan", {"Items": [{"pk": {"S": key}}]})
    for _ in range(FAST.retries + 1):
        stubber.add_response("batch_write_item", {"UnprocessedItems": deletes(key)})
    with pytest.raises(StoreThrottled, match="1 deletes stayed unprocessed after 2 retries"):
        store.delete_version("s", "v1")


def test_writes_throttled_after_retries_raise_throttled(stubbed):
    store, stubber = stubbed
    for _ in range(FAST.retries + 1):
        cancelled(stubber, "ThrottlingError")
    with pytest.raises(StoreThrottled, match="conflicting or throttled"):
        store.write("s", "v1", rows(("a", T0, {})))


# ---- properties ------------------------------------------------------------------------------


def identical(a: object, b: object) -> bool:
    """Equal, of the same types all the way down, floats to the bit (NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a.hex() == b.hex() if not math.isnan(a) else math.isnan(b)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(identical, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(identical(a[k], b[k]) for k in a)
    return a == b


tricky_keys = st.sampled_from(["$ts", "$date", "$bytes", "$", "$$ts", "a", ""]) | st.text()
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**100), max_value=2**100)
    | st.floats()
    | st.text()
    | st.datetimes(timezones=st.just(UTC))
    | st.dates()
    | st.binary(max_size=16)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(tricky_keys, inner, max_size=4),
    max_leaves=12,
)


@given(st.dictionaries(tricky_keys, values, max_size=6))
def test_values_round_trip_exactly(original):
    assert identical(decode_values(encode_values(original)), original)


def test_aware_datetimes_come_back_as_the_same_instant_in_utc_and_naive_ones_as_utc():
    paris = datetime(2024, 6, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    decoded = decode_values(encode_values({"a": paris, "n": datetime(2024, 6, 1, 12, 0)}))
    assert decoded == {"a": paris, "n": datetime(2024, 6, 1, 12, 0, tzinfo=UTC)}
    assert decoded["a"].tzinfo == UTC


join_keys = st.tuples(st.text(max_size=5) | st.integers()) | st.tuples(
    st.text(max_size=3) | st.integers(), st.text(max_size=3) | st.integers()
)


@given(join_keys, join_keys)
def test_entity_key_encoding_is_injective(first, second):
    def typed(key):
        return [(type(part), part) for part in key]

    same = item_key("s", "v1", first) == item_key("s", "v1", second)
    assert same == (typed(first) == typed(second))


writes = st.lists(
    st.lists(
        st.tuples(st.sampled_from("abcd"), st.integers(0, 5), st.integers()), min_size=1, max_size=8
    ),
    min_size=1,
    max_size=5,
)
_versions = itertools.count()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=writes)
def test_random_writes_match_a_latest_event_time_wins_oracle(store, batches):
    version = f"p{next(_versions)}"
    oracle: dict[str, tuple[int, int]] = {}
    for batch in batches:
        winners: dict[str, tuple[int, int]] = {}
        for key, second, value in batch:
            if key not in winners or second >= winners[key][0]:
                winners[key] = (second, value)
        applied = {k: w for k, w in winners.items() if k not in oracle or w[0] >= oracle[k][0]}
        oracle.update(applied)
        result = store.write(
            "s", version, [Record((k,), T0 + timedelta(seconds=s), {"v": v}) for k, s, v in batch]
        )
        assert result == WriteResult(len(applied), len(batch) - len(applied))
    read = store.read("s", version, [(k,) for k in "abcd"])
    expected = [oracle.get(k) for k in "abcd"]
    assert [
        r and ((r.event_timestamp - T0) // timedelta(seconds=1), r.values["v"]) for r in read
    ] == expected


# ---- settings --------------------------------------------------------------------------------


def test_open_store_builds_each_backend_from_settings(tmp_path, aws_credentials):
    with open_store({"type": "sqlite", "path": str(tmp_path / "o.sqlite")}) as local:
        assert isinstance(local, SQLiteOnlineStore)
    with open_store(
        {"type": "dynamodb", "table": "t", "region": "eu-west-1", "endpoint_url": "http://h:1"}
    ) as remote:
        assert remote.client.meta.endpoint_url == "http://h:1"
        assert remote.client.meta.region_name == "eu-west-1"


@pytest.mark.parametrize(
    ("settings", "problem"),
    [({"type": "redis"}, "not one of sqlite, dynamodb"), ({"tabel": "x"}, "tabel")],
)
def test_open_store_rejects_unknown_settings(settings, problem):
    with pytest.raises(ValueError, match=problem):
        open_store(settings)
