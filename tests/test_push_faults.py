"""Pushes to, and deletions from, a DynamoDB that throttles, fails, loses replies or cannot be
reached.

DynamoDB is a moto_server behind a proxy that injects the faults (`faulty_dynamodb`), over real
HTTP. The moto_server is the benchmark's (`bench.moto_dynamodb_server`): stock moto copies the
whole table for every item of a transaction, so 1,999 rows take 31 s to push unthrottled
instead of 2 s, and it runs transactions one at a time, so the store's threads can write
concurrently. The store-level tests push 1,999 rows made in the shape of the demo's
`ad_daily_performance` (the issue's count); their oracle is the same push to a table behind no
faults, read back item for item. The Dagster test pushes the demo's own `user_ad_activity`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
from dagster import Backoff as DagsterBackoff
from dagster import (
    DagsterEventType,
    DagsterInstance,
    Failure,
    Jitter,
    RetryPolicy,
    build_output_context,
)
from faulty_dynamodb import Faults, FaultyDynamoDB
from serving_repo import HEADERS, PRINCIPALS, Clock, repository
from test_online_push import END, ROW_LEVEL, checks, expected_records, push_metadata
from test_online_push import push as materialize_and_push

import featureplane.dagster.assets
from bench.harness import moto_server
from featureplane import Repository
from featureplane.dagster.assets import online_asset
from featureplane.online_push import EVENT_TIME, JOURNAL, push, stored_items
from featureplane.online_store import Record, StoreThrottled, StoreUnavailable, open_store
from featureplane.online_store.dynamodb import Backoff, DynamoDBOnlineStore
from featureplane.registry import build_registry, load_registry
from featureplane.serving import FeatureServer
from online.server import free_port
from resources import OnlineStoreResource
from resources.online_io_manager import PUSH_RETRY_POLICY, OnlineIOManager, OnlineRows

REGION = "us-east-1"
AGGREGATE = "user_ad_activity"
"""An aggregate view of the demo's 200 users: two transactions."""
ROWS = 1999
WINDOW = (datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 3, tzinfo=UTC))
QUICK_FAILURE = Backoff(retries=2, base_seconds=0.01)
"""A write backoff that gives up on a throttled write in a few hundredths of a second."""


@pytest.fixture(scope="module")
def proxy(aws_credentials) -> Iterator[FaultyDynamoDB]:
    with (
        moto_server(module="bench.moto_dynamodb_server") as upstream,
        FaultyDynamoDB(upstream) as faulty,
    ):
        yield faulty


@pytest.fixture
def faulty(proxy) -> FaultyDynamoDB:
    proxy.set(Faults())
    return proxy


def dynamodb(endpoint: str, **options) -> DynamoDBOnlineStore:
    """A store in a new table behind `endpoint`, its table made before any fault is set."""
    store = DynamoDBOnlineStore(
        f"push_{uuid.uuid4().hex[:12]}", region=REGION, endpoint_url=endpoint, **options
    )
    store.ensure_table()
    return store


VIEW = Repository.load("feature_assets").feature_view(ROW_LEVEL)


def batches(rows: int = ROWS, batch_rows: int = 1000) -> list[pa.RecordBatch]:
    """Rows of `ad_daily_performance` as the push reads them, in Arrow batches."""
    when = datetime(2024, 1, 2, 9, 30, 0, 250_000, tzinfo=UTC)
    ads = [range(start, min(start + batch_rows, rows)) for start in range(0, rows, batch_rows)]
    return [
        pa.RecordBatch.from_pydict(
            {
                "ad_id": pa.array(batch, pa.int64()),
                EVENT_TIME: pa.array(
                    [when - timedelta(seconds=ad) for ad in batch], pa.timestamp("us", "UTC")
                ),
                "impressions_1d": [ad * 7 for ad in batch],
                "clicks_1d": [ad % 13 for ad in batch],
                "ctr_1d": [(ad % 13) / (ad * 7 or 1) for ad in batch],
            }
        )
        for batch in ads
    ]


KEYS = [item[0] for batch in batches() for item in stored_items(VIEW, batch)]


def contents(store: DynamoDBOnlineStore) -> list:
    """What the store holds for every pushed key, item for item."""
    return store.read_items(KEYS)


@pytest.fixture(scope="module")
def oracle(proxy) -> list:
    """The push's rows stored behind no faults."""
    with dynamodb(proxy.endpoint) as store:
        stats = push(store, VIEW, batches())
        assert (stats.written, stats.throttled_retries) == (ROWS, 0)
        return contents(store)


def test_a_push_with_half_its_writes_refused_stores_every_row_and_counts_the_retries(
    faulty, oracle
):
    with dynamodb(faulty.endpoint) as store:
        faulty.set(Faults(refuse=0.5))
        began = time.monotonic()
        stats = push(store, VIEW, batches(), WINDOW)
        seconds = time.monotonic() - began
        refused = faulty.refused["TransactWriteItems"]
        assert contents(store) == oracle
    assert (stats.rows, stats.written, stats.skipped_stale) == (ROWS, ROWS, 0)
    assert stats.throttled_retries == refused > 0.3 * faulty.requests["TransactWriteItems"]
    assert stats.attempt == 1 and stats.resumed_from is None
    assert seconds < 20


def test_a_failed_push_resumes_without_sending_again_what_it_stored(faulty, oracle):
    """The first attempt is throttled for good after 8 writes (its journal entry, then seven
    transactions); the second reads every key but writes only what the first did not."""
    with dynamodb(faulty.endpoint, write_backoff=QUICK_FAILURE) as store:
        faulty.set(Faults(allow=8))
        with pytest.raises(StoreThrottled, match=r"writes kept being refused \(Throttling"):
            push(store, VIEW, batches(), WINDOW)
        first = {key for key in faulty.written_keys if not key.startswith(JOURNAL)}
        assert 0 < len(first) < ROWS

        faulty.set(Faults())
        stats = push(store, VIEW, batches(), WINDOW)
        assert faulty.requests["BatchGetItem"] == 1 + 20  # the journal, then 1,999 keys
        second = [key for key in faulty.written_keys if not key.startswith(JOURNAL)]
        assert contents(store) == oracle
        assert stats.attempt == 2 and stats.resumed_from.startswith("attempt 1, begun ")
        assert (stats.already_stored, stats.written) == (len(first), ROWS - len(first))
        assert len(second) == len(set(second)) == ROWS - len(first)
        assert first.isdisjoint(second) and first | set(second) == set(KEYS)

        faulty.set(Faults())  # a finished push is not resumed: pushed again, all is rewritten
        again = push(store, VIEW, batches(), WINDOW)
        assert faulty.requests["BatchGetItem"] == 1
        assert (again.attempt, again.already_stored, again.written) == (1, 0, ROWS)


def pushed_with_a_neighbour(store: DynamoDBOnlineStore) -> list:
    """The push of 1,999 rows journaled, and one row of another version of the view, whose
    contents are returned: what a deletion of the pushed version must leave."""
    push(store, VIEW, batches(), WINDOW)
    store.write(VIEW.name, "other", [Record((1,), WINDOW[0], {"kept": True})])
    return store.read(VIEW.name, "other", [(1,)])


def test_a_deletion_with_half_its_writes_refused_deletes_every_row(faulty):
    with dynamodb(faulty.endpoint) as store:
        neighbour = pushed_with_a_neighbour(store)
        faulty.set(Faults(refuse=0.5))
        assert store.delete_version(VIEW.name, VIEW.version) == ROWS
        assert faulty.refused["BatchWriteItem"] > 0.3 * faulty.requests["BatchWriteItem"]
        assert contents(store) == [None] * ROWS
        assert len(faulty.written_keys) == ROWS + 1, "every record and the journal entry"
        assert store.read(VIEW.name, "other", [(1,)]) == neighbour


def test_a_deletion_that_failed_half_way_is_finished_by_a_rerun(faulty):
    with dynamodb(faulty.endpoint, write_backoff=QUICK_FAILURE) as store:
        neighbour = pushed_with_a_neighbour(store)
        faulty.set(Faults(allow=30))
        with pytest.raises(StoreThrottled, match=r"BatchWriteItem kept being refused"):
            store.delete_version(VIEW.name, VIEW.version)
        deleted = {key for key in faulty.written_keys if not key.startswith(JOURNAL)}
        assert 0 < len(deleted) < ROWS
        assert sum(item is None for item in contents(store)) == len(deleted)

        faulty.set(Faults())
        assert store.delete_version(VIEW.name, VIEW.version) == ROWS - len(deleted)
        assert deleted.isdisjoint(faulty.written_keys), "what was deleted is not sent again"
        assert contents(store) == [None] * ROWS
        assert store.delete_version(VIEW.name, VIEW.version) == 0
        assert store.read(VIEW.name, "other", [(1,)]) == neighbour


def test_a_write_whose_reply_is_lost_is_sent_again_with_its_token(faulty, oracle):
    with dynamodb(faulty.endpoint, read_timeout=1) as store:
        faulty.set(Faults(lose=1, hold_seconds=1.5))
        stats = push(store, VIEW, batches())
        assert contents(store) == oracle
    assert (stats.written, stats.skipped_stale) == (ROWS, 0)
    assert faulty.requests["TransactWriteItems"] == 20 + 1
    lost = faulty.tokens[0]
    assert lost and faulty.tokens.count(lost) == 2  # DynamoDB applies it once


def test_writes_whose_replies_never_come_are_store_unavailable(faulty):
    with dynamodb(faulty.endpoint, read_timeout=1) as store:
        faulty.set(Faults(lose=-1, hold_seconds=1.5))
        began = time.monotonic()
        with pytest.raises(StoreUnavailable) as raised:
            push(store, VIEW, batches(rows=100))
        seconds = time.monotonic() - began
    assert str(raised.value) == (
        f"DynamoDB table {store.table!r} at {faulty.endpoint} is unavailable: "
        "TransactWriteItems: no reply within the 1 s read timeout (ReadTimeoutError), 3 attempts"
    )
    assert isinstance(raised.value, StoreThrottled)  # serving answers 503 for both
    assert faulty.requests["TransactWriteItems"] == 3
    assert seconds < 6


def test_server_errors_are_store_unavailable(faulty):
    with dynamodb(faulty.endpoint) as store:
        faulty.set(Faults(allow=0, failure="error"))
        with pytest.raises(StoreUnavailable, match=r"answered HTTP 500 \(InternalServerError\)"):
            push(store, VIEW, batches(rows=100))


@pytest.fixture
def unreachable(aws_credentials) -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


def test_an_unreachable_endpoint_is_store_unavailable_quickly(unreachable):
    store = DynamoDBOnlineStore("features", region=REGION, endpoint_url=unreachable)
    message = (
        f"DynamoDB table 'features' at {unreachable} is unavailable: "
        "{}: could not connect (EndpointConnectionError), 3 attempts"
    )
    for operation, call in [
        ("CreateTable", store.ensure_table),
        ("BatchGetItem", lambda: store.read(VIEW.name, VIEW.version, [(1,)])),
        ("TransactWriteItems", lambda: push(store, VIEW, batches(rows=10))),
    ]:
        began = time.monotonic()
        with pytest.raises(StoreUnavailable) as raised:
            call()
        assert time.monotonic() - began < 3, operation
        assert str(raised.value) == message.format(operation)
    store.close()


def test_serving_answers_503_when_the_store_is_unavailable(unreachable):
    settings = {"type": "dynamodb", "table": "features", "region": REGION}
    registry = build_registry(repository(), settings | {"endpoint_url": unreachable}, PRINCIPALS)
    server = FeatureServer(load_registry(registry), clock=Clock())
    response = server.respond(
        "POST", "/v1/feature-services/users/get-features", '{"entities": {"user_id": 1}}', HEADERS
    )
    server.close()
    assert response.status == 503
    assert response.body.startswith(b'{"error":"online store unavailable, retry later: DynamoDB')
    assert b"could not connect (EndpointConnectionError)" in response.body


def test_online_assets_retry_with_exponential_backoff_and_jitter():
    policy = online_asset(VIEW, "dynamodb").op.retry_policy
    assert policy == PUSH_RETRY_POLICY
    assert (policy.max_retries, policy.delay) == (3, 30)
    assert (policy.backoff, policy.jitter) == (DagsterBackoff.EXPONENTIAL, Jitter.PLUS_MINUS)


def test_an_online_asset_retries_a_failed_push_and_the_retry_resumes_it(
    demo_data, faulty, monkeypatch, tmp_path
):
    """The table fails every write after the first two (the journal entry and one transaction)
    until the push's second attempt journals itself: Dagster retries the step after the first
    attempt's three tries of the second transaction, and the retry resumes the push."""
    quick = RetryPolicy(max_retries=2, delay=0.2, backoff=DagsterBackoff.EXPONENTIAL)
    monkeypatch.setattr(featureplane.dagster.assets, "PUSH_RETRY_POLICY", quick)
    repo, root = Repository.load("feature_assets"), tmp_path / "offline"
    view = repo.feature_view(AGGREGATE)
    online = OnlineStoreResource(
        type="dynamodb",
        table=f"push_{uuid.uuid4().hex[:12]}",
        region=REGION,
        endpoint_url=faulty.endpoint,
    )
    open_store(online.settings()).ensure_table()
    faulty.set(Faults(allow=2, failure="error", until_attempt=2))
    with DagsterInstance.ephemeral() as instance:
        results = materialize_and_push(repo, root, online, instance, views=[AGGREGATE])
        metadata = push_metadata(instance, AGGREGATE)
        run_id = results[f"online/{AGGREGATE}"].run_id
        assert checks(instance, run_id)[AGGREGATE].passed
        retried = instance.all_logs(run_id, of_type=DagsterEventType.STEP_UP_FOR_RETRY)
        assert [event.step_key for event in retried] == [f"online__{AGGREGATE}"]
    expected = expected_records(root, view, END)
    assert faulty.refused["TransactWriteItems"] == 3
    assert metadata["attempt"] == 2
    assert metadata["resumed_from"].startswith("attempt 1, begun ")
    assert metadata["rows_already_stored"] == 100
    assert metadata["rows_written"] == len(expected) - 100
    stored = open_store(online.settings()).read(view.name, view.version, list(expected))
    assert stored == list(expected.values())


def test_a_push_no_retry_can_mend_fails_at_once(tmp_path):
    online = OnlineStoreResource(path=str(tmp_path / "online.sqlite"))
    [batch] = batches(rows=1)
    huge = batch.set_column(2, "impressions_1d", pa.array(["x" * 410_000]))
    with pytest.raises(Failure, match=r"cannot push ad_daily_performance: record .* bytes") as e:
        OnlineIOManager(online_store=online).handle_output(
            build_output_context(), OnlineRows(VIEW, [huge])
        )
    assert e.value.allow_retries is False
