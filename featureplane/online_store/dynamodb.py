"""The production online store: one DynamoDB table (single-table design) through boto3.

Item: `pk` (S, the encoded key), `ts` (N, event time in epoch microseconds), `v` (S, encoded
values) and `exp` (N, epoch seconds, the table's TTL attribute). The endpoint is configurable,
so the same code talks to AWS, moto_server or any DynamoDB-compatible service.

Conditional writes. BatchWriteItem cannot carry a condition, and reading timestamps first then
batch-writing the newer rows races with any concurrent writer (two overlapping partition runs
would let an older value win, silently). So writes are TransactWriteItems of puts, each
conditioned on `attribute_not_exists(pk) OR ts <= :ts`: atomic per item and race-free, up to
100 items per request (BatchWriteItem takes 25), at twice the write units of a plain put. A
cancelled transaction reports a reason per item: items whose condition failed are stale and
dropped, the rest are sent again at once, after a backoff when DynamoDB reported throttling or
a conflict with another transaction. The transactions of a write run concurrently.

Sizes. DynamoDB refuses an item over 400 KB and a transaction over 4 MB of items, and packed
tiles of an aggregate view can reach tens of KB, so a write is split by count (100) and by item
size (names plus values in UTF-8 bytes, numbers counted at their 21-byte most). An item over
400 KB is refused by every store (`ItemTooLarge`, before anything is sent), so a write stores
none of its items rather than some. A write that fails later (throttled, refused) may have
stored some of its items, a transaction all or none; repeating it is safe (conditional puts).

Two clients. Reads serve requests, so they keep short timeouts and botocore's few retries
(standard mode, 3 attempts): what still fails is an error at once, and the handler answers 503.
Writes are a push's, which may wait: their client sends each request once and we retry.
Throttling (a refused request, or a transaction cancelled for throttling) is retried with
`write_backoff` (full jitter from 50 ms, capped at 2 s, 20 retries, so a table refusing half
of the writes still takes them all); what outlasts it is `StoreThrottled`. A request without
an answer (connect or read timeout, refused or closed connection, HTTP 5xx) is sent twice more
with the same ClientRequestToken, so DynamoDB applies a transaction whose reply was lost only
once; then it is `StoreUnavailable`, naming the table, the endpoint and what happened.

Measured on moto behind a throttling proxy (`tests/faulty_dynamodb.py`), 1,999 rows from 8
threads, 1.4-2.0 s when nothing is refused: with half the writes refused, ours took 1.3-1.5 s
(14-18 retries) and botocore's own retries (10 attempts, 1 s base for throttling) 49 s.
botocore's `adaptive` mode (a client-side rate limiter) took 27 s: it cuts the rate on every
throttle, down to half a request a second, even when the refusals do not come from our rate.
Against a table that takes 600 items/s it sent 34 requests for 3,000 items where ours send
108-117, in 6 s against 4.3-5.3 s; refused requests consume no capacity, so writes keep the
faster pacing.

Deleting a view version reads no values: a keys-only Scan filtered by the version's key
prefixes, each page's keys deleted by BatchWriteItem (25 a request; deletes need no condition:
nothing writes an old version any more). Refused requests and UnprocessedItems are sent again
with `write_backoff`, unanswered ones as writes are; a Scan reads the whole table, so deleting
a version costs a read of the table's keys, paid once per cut-over.

Reads are BatchGetItem in chunks of 100 keys run concurrently; UnprocessedKeys are retried with
bounded exponential backoff and full jitter; what stays unprocessed raises `StoreThrottled`.

moto (in-process and moto_server) cannot run concurrent transactions on a table: it copies the
table unsynchronized in each one, so concurrent transactions crash it. Against moto pass
`concurrent_writes=False`; DynamoDB itself runs a write's transactions concurrently.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as NoConnection

from featureplane.online_store.item_store import (
    EXPIRES,
    KEY,
    TIMESTAMP,
    VALUES,
    ItemStore,
    StoredItem,
    item_bytes,
)
from featureplane.online_store.store import StoreThrottled, StoreUnavailable

CHUNK = 100
"""Items per BatchGetItem and per TransactWriteItems: the most DynamoDB accepts in one."""
DELETES = 25
"""Deletes per BatchWriteItem: the most DynamoDB accepts in one."""
MAX_TRANSACTION_BYTES = 4 * 1024 * 1024
THROTTLING = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TransactionInProgressException",
    }
)
"""Whole requests refused for now: sent again after a backoff (the last: a transaction whose
reply was lost is still running, when its ClientRequestToken comes again)."""
CONDITION_FAILED = "ConditionalCheckFailed"
THROTTLED_ITEMS = frozenset({"ThrottlingError", "ProvisionedThroughputExceeded"})
CONTENDED = THROTTLED_ITEMS | {"TransactionConflict"}
"""Cancellation reasons worth a retry after a pause; "None" items are retried at once."""
NEWER_OR_ABSENT = f"attribute_not_exists({KEY}) OR #ts <= :ts"
NO_ANSWER = (NoConnection, HTTPClientError)
"""What botocore raises when no answer came: a connection refused, timed out or closed, or
a read timeout."""
READ_ATTEMPTS = 3
UNANSWERED_WRITE_ATTEMPTS = 3

T = TypeVar("T")
R = TypeVar("R")


def transactions(items: Sequence[StoredItem]) -> list[list[StoredItem]]:
    """Items in order, in groups DynamoDB accepts as one transaction (≤ 100 items, ≤ 4 MB);
    each item is at most 400 KB (`ItemStore.write_items` refuses larger ones)."""
    groups: list[list[StoredItem]] = []
    room = 0
    for item in items:
        size = item_bytes(item)
        if not groups or len(groups[-1]) == CHUNK or size > room:
            groups.append([])
            room = MAX_TRANSACTION_BYTES
        groups[-1].append(item)
        room -= size
    return groups


@dataclass(frozen=True)
class Backoff:
    """Bounded exponential backoff with full jitter: `retries` pauses of up to base·2ⁿ, capped."""

    retries: int = 8
    base_seconds: float = 0.025
    cap_seconds: float = 1.0

    def pauses(self) -> Iterator[float]:
        for attempt in range(self.retries):
            yield random.uniform(0, min(self.cap_seconds, self.base_seconds * 2**attempt))


WRITE_BACKOFF = Backoff(retries=20, base_seconds=0.05, cap_seconds=2.0)
"""Throttled writes: at most about 30 s of pauses per transaction; at a sustained 50% refusal
rate a transaction fails once in two million."""
UNANSWERED_BACKOFF = Backoff(retries=UNANSWERED_WRITE_ATTEMPTS - 1, base_seconds=0.1)


def client_config(
    max_pool_connections: int,
    attempts: int = READ_ATTEMPTS,
    connect_timeout: float = 2.0,
    read_timeout: float = 5.0,
) -> Config:
    """Bounded timeouts, keep-alive, enough pooled connections for concurrent chunks;
    `attempts` per call, by botocore's standard retries."""
    return Config(
        retries={"mode": "standard", "total_max_attempts": attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=max_pool_connections,
        tcp_keepalive=True,
    )


class DynamoDBOnlineStore(ItemStore):
    """The online store in one DynamoDB table.

    `client` is the one boto3 client every call reuses (thread-safe); pass one to stub it (it
    then serves writes too). `concurrent_writes=False` sends a write's transactions one after
    another, which moto needs (see the module docstring). `backoff` paces retries of reads
    and of cancelled transactions, `write_backoff` those of throttled writes.
    """

    def __init__(
        self,
        table: str,
        region: str | None = None,
        endpoint_url: str | None = None,
        consistent_reads: bool = False,
        concurrent_writes: bool = True,
        max_workers: int = 8,
        backoff: Backoff | None = None,
        write_backoff: Backoff = WRITE_BACKOFF,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        client: Any = None,
    ):
        self.table = table
        self.consistent_reads = consistent_reads
        self.concurrent_writes = concurrent_writes
        self.backoff = backoff or Backoff()
        self.write_backoff = write_backoff
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        timeouts = {"connect_timeout": connect_timeout, "read_timeout": read_timeout}
        session, pool = boto3.session.Session(), 2 * max_workers
        self.client = client or session.client(
            "dynamodb",
            region_name=region,
            endpoint_url=endpoint_url,
            config=client_config(pool, **timeouts),
        )
        self.write_client = client or session.client(
            "dynamodb",
            region_name=region,
            endpoint_url=endpoint_url,
            config=client_config(pool, attempts=1, **timeouts),
        )
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="dynamodb")

    def ensure_table(self) -> None:
        """Create the table (on-demand capacity) if missing, wait until ACTIVE, enable TTL."""
        try:
            self._call(
                self.client.create_table,
                TableName=self.table,
                KeySchema=[{"AttributeName": KEY, "KeyType": "HASH"}],
                AttributeDefinitions=[{"AttributeName": KEY, "AttributeType": "S"}],
                BillingMode="PAY_PER_REQUEST",
            )
        except ClientError as error:
            if error.response["Error"]["Code"] != "ResourceInUseException":
                raise
        self.client.get_waiter("table_exists").wait(
            TableName=self.table, WaiterConfig={"Delay": 1, "MaxAttempts": 300}
        )
        schema = self._call(self.client.describe_table, TableName=self.table)["Table"]
        if schema["KeySchema"] != [{"AttributeName": KEY, "KeyType": "HASH"}]:
            raise ValueError(
                f"DynamoDB table {self.table!r} exists with key schema {schema['KeySchema']}, "
                f"not the online store's string hash key {KEY!r}"
            )
        ttl = self._call(self.client.describe_time_to_live, TableName=self.table)
        description = ttl["TimeToLiveDescription"]
        if description.get("TimeToLiveStatus") in ("ENABLED", "ENABLING"):
            if description.get("AttributeName") != EXPIRES:
                raise ValueError(
                    f"DynamoDB table {self.table!r} expires items by "
                    f"{description.get('AttributeName')!r}, not {EXPIRES!r}"
                )
            return
        self._call(
            self.client.update_time_to_live,
            TableName=self.table,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": EXPIRES},
        )

    def _put_latest(self, items: Sequence[StoredItem]) -> tuple[int, int]:
        outcomes = self._each(self._put_chunk, transactions(items), self.concurrent_writes)
        return sum(stale for stale, _ in outcomes), sum(throttled for _, throttled in outcomes)

    def _get(self, keys: Collection[str]) -> Mapping[str, StoredItem]:
        ordered = list(keys)
        chunks = [ordered[start : start + CHUNK] for start in range(0, len(ordered), CHUNK)]
        found: dict[str, StoredItem] = {}
        for chunk in self._each(self._get_chunk, chunks, concurrent=True):
            found.update(chunk)
        return found

    def _each(self, work: Callable[[T], R], chunks: Sequence[T], concurrent: bool) -> list[R]:
        """`work` on each chunk, concurrently if asked and there are several. After a failure
        the chunks not started are dropped and the running ones awaited: when a write raises,
        nothing of it is still sending."""
        if not concurrent or len(chunks) == 1:
            return [work(chunk) for chunk in chunks]
        futures = [self._pool.submit(work, chunk) for chunk in chunks]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            wait(futures)
            raise

    def _put_chunk(self, items: Sequence[StoredItem]) -> tuple[int, int]:
        """Put one transaction's items until each is stored or stale: (stale, throttled
        requests sent again)."""
        pending, stale, throttled = list(items), 0, 0
        throttle_pauses, contended_pauses = self.write_backoff.pauses(), self.backoff.pauses()
        while pending:
            try:
                reasons = self._transact(pending)
            except ClientError as error:
                code = error.response["Error"]["Code"]
                if code not in THROTTLING:
                    raise
                throttled += 1
                what = f"writes kept being refused ({code})"
                self._pause(throttle_pauses, what, self.write_backoff)
                continue
            if not reasons:
                return stale, throttled
            failed, contended = reasons.count(CONDITION_FAILED), CONTENDED & set(reasons)
            unexpected = set(reasons) - CONTENDED - {CONDITION_FAILED, "None"}
            if unexpected or len(reasons) != len(pending) or not (failed or contended):
                raise RuntimeError(f"DynamoDB cancelled a write to {self.table!r}: {reasons}")
            stale += failed
            if contended & THROTTLED_ITEMS:
                throttled += 1
            if contended:
                what = f"{len(pending)} writes kept conflicting or throttled"
                self._pause(contended_pauses, what, self.backoff)
            pending = [
                item
                for item, code in zip(pending, reasons, strict=True)
                if code != CONDITION_FAILED
            ]
        return stale, throttled

    def _transact(self, items: Sequence[StoredItem]) -> list[str]:
        """Put items in one transaction; [] if done, else the cancellation reason of each.

        A request without an answer is sent again with the same token: DynamoDB applies the
        transaction once, however many of its requests arrive."""
        request = {
            "TransactItems": [{"Put": self._conditional_put(item)} for item in items],
            "ClientRequestToken": uuid.uuid4().hex,
        }
        try:
            self._send(self.write_client.transact_write_items, request)
        except ClientError as error:
            if error.response["Error"]["Code"] != "TransactionCanceledException":
                raise
            return [reason.get("Code", "None") for reason in error.response["CancellationReasons"]]
        return []

    def _send(self, method: Callable[..., dict[str, Any]], request: dict[str, Any]) -> dict:
        """One write request, sent again as it is while no answer comes or DynamoDB answers
        a server error; then `StoreUnavailable`. Other errors are raised as they come."""
        pauses = UNANSWERED_BACKOFF.pauses()
        while True:
            try:
                return method(**request)
            except ClientError as error:
                if error.response["ResponseMetadata"].get("HTTPStatusCode", 0) < 500:
                    raise
                failure: Exception = error
            except NO_ANSWER as error:
                failure = error
            try:
                time.sleep(next(pauses))
            except StopIteration:
                unavailable = self._unavailable(failure, method, UNANSWERED_WRITE_ATTEMPTS)
                raise unavailable from failure

    def _patiently(self, method: Callable[..., dict[str, Any]], request: dict[str, Any]) -> dict:
        """`_send`, again after `write_backoff` pauses while DynamoDB refuses it for
        throttling: the pace of a deletion, which may wait as a push does."""
        pauses = self.write_backoff.pauses()
        while True:
            try:
                return self._send(method, request)
            except ClientError as error:
                code = error.response["Error"]["Code"]
                if code not in THROTTLING:
                    raise
                operation = self.client.meta.method_to_api_mapping[method.__name__]
                self._pause(pauses, f"{operation} kept being refused ({code})", self.write_backoff)

    def _delete_prefixed(self, prefixes: Sequence[str]) -> list[int]:
        """The key is the whole primary key, so no Query selects a view version: a Scan of
        keys only, filtered by prefix, finds them page by page, and each page's keys are
        deleted (BatchWriteItem, 25 a request) before the next page is read. A rerun scans
        again and finds only what is left. Counts are of the keys found: of two deletions
        racing over one version, both may count an item (SQLite's count each once)."""
        values = {f":p{index}": {"S": prefix} for index, prefix in enumerate(prefixes)}
        request: dict[str, Any] = {
            "TableName": self.table,
            "ProjectionExpression": "#pk",
            "FilterExpression": " OR ".join(f"begins_with(#pk, {name})" for name in values),
            "ExpressionAttributeNames": {"#pk": KEY},
            "ExpressionAttributeValues": values,
        }
        counts = [0] * len(prefixes)
        while True:
            page = self._patiently(self.write_client.scan, request)
            keys = [item[KEY]["S"] for item in page["Items"]]
            chunks = [keys[start : start + DELETES] for start in range(0, len(keys), DELETES)]
            self._each(self._delete_chunk, chunks, self.concurrent_writes)
            for key in keys:
                counts[next(i for i, prefix in enumerate(prefixes) if key.startswith(prefix))] += 1
            if "LastEvaluatedKey" not in page:
                return counts
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _delete_chunk(self, keys: Sequence[str]) -> None:
        """Delete up to 25 items, sending UnprocessedItems again after `write_backoff` pauses."""
        deletes = [{"DeleteRequest": {"Key": {KEY: {"S": key}}}} for key in keys]
        pauses = self.write_backoff.pauses()
        while deletes:
            request = {"RequestItems": {self.table: deletes}}
            response = self._patiently(self.write_client.batch_write_item, request)
            deletes = response.get("UnprocessedItems", {}).get(self.table, [])
            if deletes:
                what = f"{len(deletes)} deletes stayed unprocessed"
                self._pause(pauses, what, self.write_backoff)

    def _conditional_put(self, item: StoredItem) -> dict[str, Any]:
        key, micros, payload, expires_at = item
        attributes = {KEY: {"S": key}, TIMESTAMP: {"N": str(micros)}, VALUES: {"S": payload}}
        if expires_at is not None:
            attributes[EXPIRES] = {"N": str(expires_at)}
        return {
            "TableName": self.table,
            "Item": attributes,
            "ConditionExpression": NEWER_OR_ABSENT,
            "ExpressionAttributeNames": {"#ts": TIMESTAMP},
            "ExpressionAttributeValues": {":ts": {"N": str(micros)}},
        }

    def _get_chunk(self, keys: Sequence[str]) -> dict[str, StoredItem]:
        request = {"Keys": [{KEY: {"S": key}} for key in keys]}
        if self.consistent_reads:
            request["ConsistentRead"] = True
        found: dict[str, StoredItem] = {}
        pauses = self.backoff.pauses()
        while True:
            response = self._call(self.client.batch_get_item, RequestItems={self.table: request})
            for item in response["Responses"].get(self.table, ()):
                stored = _stored_item(item)
                found[stored[0]] = stored
            request = response.get("UnprocessedKeys", {}).get(self.table)
            if not request:
                return found
            self._pause(pauses, f"{len(request['Keys'])} keys stayed unprocessed", self.backoff)

    def _pause(self, pauses: Iterator[float], what: str, backoff: Backoff) -> None:
        try:
            time.sleep(next(pauses))
        except StopIteration:
            raise StoreThrottled(
                f"DynamoDB table {self.table!r}: {what} after {backoff.retries} retries"
            ) from None

    def _call(self, method: Callable[..., dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        """One client call, retried by botocore; throttling that outlasted the retries is
        `StoreThrottled`, no answer or a server error `StoreUnavailable`."""
        try:
            return method(**kwargs)
        except ClientError as error:
            code = error.response["Error"]["Code"]
            if code in THROTTLING:
                raise StoreThrottled(
                    f"DynamoDB table {self.table!r} is throttling: {code}"
                ) from error
            if error.response["ResponseMetadata"].get("HTTPStatusCode", 0) >= 500:
                raise self._unavailable(error, method, READ_ATTEMPTS) from error
            raise
        except NO_ANSWER as error:
            raise self._unavailable(error, method, READ_ATTEMPTS) from error

    def _unavailable(self, error: Exception, method: Callable, attempts: int) -> StoreUnavailable:
        """The error a user reads: the table, its endpoint, what happened and how often."""
        operation = self.client.meta.method_to_api_mapping.get(method.__name__, method.__name__)
        if isinstance(error, ClientError):
            status = error.response["ResponseMetadata"].get("HTTPStatusCode")
            what = f"{operation} answered HTTP {status} ({error.response['Error']['Code']})"
        else:
            what = f"{operation}: {_no_answer(error, self)} ({type(error).__name__})"
        return StoreUnavailable(
            f"DynamoDB table {self.table!r} at {self.client.meta.endpoint_url} is unavailable: "
            f"{what}, {attempts} attempts"
        )

    def close(self) -> None:
        self._pool.shutdown()
        self.client.close()
        self.write_client.close()


def _no_answer(error: Exception, store: DynamoDBOnlineStore) -> str:
    if isinstance(error, ReadTimeoutError):
        return f"no reply within the {store.read_timeout:g} s read timeout"
    if isinstance(error, ConnectTimeoutError):
        return f"no connection within the {store.connect_timeout:g} s connect timeout"
    if isinstance(error, EndpointConnectionError):
        return "could not connect"
    if isinstance(error, ConnectionClosedError):
        return "the connection closed before a reply"
    return str(error)


def _stored_item(item: Mapping[str, Mapping[str, str]]) -> StoredItem:
    expires = item.get(EXPIRES)
    return (
        item[KEY]["S"],
        int(item[TIMESTAMP]["N"]),
        item[VALUES]["S"],
        None if expires is None else int(expires["N"]),
    )
