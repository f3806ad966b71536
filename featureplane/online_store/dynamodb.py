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

Reads are BatchGetItem in chunks of 100 keys run concurrently; UnprocessedKeys are retried with
bounded exponential backoff and full jitter. Whole-request throttling is retried by botocore
(standard mode); what still fails, or stays unprocessed after our retries, raises
`StoreThrottled`, so serving latency stays bounded and the handler can answer 503.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from featureplane.online_store.item_store import (
    EXPIRES,
    KEY,
    TIMESTAMP,
    VALUES,
    ItemStore,
    StoredItem,
    item_bytes,
)
from featureplane.online_store.store import StoreThrottled

CHUNK = 100
"""Items per BatchGetItem and per TransactWriteItems: the most DynamoDB accepts in one."""
MAX_TRANSACTION_BYTES = 4 * 1024 * 1024
THROTTLING = frozenset(
    {"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"}
)
CONDITION_FAILED = "ConditionalCheckFailed"
CONTENDED = frozenset({"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"})
"""Cancellation reasons worth a retry after a pause; "None" items are retried at once."""
NEWER_OR_ABSENT = f"attribute_not_exists({KEY}) OR #ts <= :ts"

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


def client_config(max_pool_connections: int) -> Config:
    """Short timeouts for serving, keep-alive, enough pooled connections for concurrent chunks."""
    return Config(
        retries={"mode": "standard", "total_max_attempts": 3},
        connect_timeout=2,
        read_timeout=5,
        max_pool_connections=max_pool_connections,
        tcp_keepalive=True,
    )


class DynamoDBOnlineStore(ItemStore):
    """The online store in one DynamoDB table.

    `client` is the one boto3 client every call reuses (thread-safe); pass one to stub it.
    `concurrent_writes=False` sends a write's transactions one after another: moto (in-process
    and moto_server) copies the table unsynchronized in each transaction, so concurrent
    transactions crash it; DynamoDB itself runs them concurrently.
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
        client: Any = None,
    ):
        self.table = table
        self.consistent_reads = consistent_reads
        self.concurrent_writes = concurrent_writes
        self.backoff = backoff or Backoff()
        self.client = client or boto3.session.Session().client(
            "dynamodb",
            region_name=region,
            endpoint_url=endpoint_url,
            config=client_config(max_pool_connections=2 * max_workers),
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

    def _put_latest(self, items: Sequence[StoredItem]) -> int:
        return sum(self._each(self._put_chunk, transactions(items), self.concurrent_writes))

    def _get(self, keys: Collection[str]) -> Mapping[str, StoredItem]:
        ordered = list(keys)
        chunks = [ordered[start : start + CHUNK] for start in range(0, len(ordered), CHUNK)]
        found: dict[str, StoredItem] = {}
        for chunk in self._each(self._get_chunk, chunks, concurrent=True):
            found.update(chunk)
        return found

    def _each(self, work: Callable[[T], R], chunks: Sequence[T], concurrent: bool) -> list[R]:
        """`work` on each chunk, concurrently if asked and there are several."""
        if not concurrent or len(chunks) == 1:
            return [work(chunk) for chunk in chunks]
        return list(self._pool.map(work, chunks))

    def _put_chunk(self, items: Sequence[StoredItem]) -> int:
        pending, stale, pauses = list(items), 0, self.backoff.pauses()
        while pending:
            reasons = self._transact(pending)
            if not reasons:
                return stale
            failed, contended = reasons.count(CONDITION_FAILED), CONTENDED & set(reasons)
            unexpected = set(reasons) - CONTENDED - {CONDITION_FAILED, "None"}
            if unexpected or len(reasons) != len(pending) or not (failed or contended):
                raise RuntimeError(f"DynamoDB cancelled a write to {self.table!r}: {reasons}")
            stale += failed
            if contended:
                self._pause(pauses, f"{len(pending)} writes kept conflicting or throttled")
            pending = [
                item
                for item, code in zip(pending, reasons, strict=True)
                if code != CONDITION_FAILED
            ]
        return stale

    def _transact(self, items: Sequence[StoredItem]) -> list[str]:
        """Put items in one transaction; [] if done, else the cancellation reason of each."""
        try:
            self._call(
                self.client.transact_write_items,
                TransactItems=[{"Put": self._conditional_put(item)} for item in items],
            )
        except ClientError as error:
            if error.response["Error"]["Code"] != "TransactionCanceledException":
                raise
            return [reason.get("Code", "None") for reason in error.response["CancellationReasons"]]
        return []

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
            self._pause(pauses, f"{len(request['Keys'])} keys stayed unprocessed")

    def _pause(self, pauses: Iterator[float], what: str) -> None:
        try:
            time.sleep(next(pauses))
        except StopIteration:
            raise StoreThrottled(
                f"DynamoDB table {self.table!r}: {what} after {self.backoff.retries} retries"
            ) from None

    def _call(self, method: Callable[..., dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        """One client call; throttling that outlasted botocore's retries is `StoreThrottled`."""
        try:
            return method(**kwargs)
        except ClientError as error:
            code = error.response["Error"]["Code"]
            if code in THROTTLING:
                raise StoreThrottled(
                    f"DynamoDB table {self.table!r} is throttling: {code}"
                ) from error
            raise

    def close(self) -> None:
        self._pool.shutdown()
        self.client.close()


def _stored_item(item: Mapping[str, Mapping[str, str]]) -> StoredItem:
    expires = item.get(EXPIRES)
    return (
        item[KEY]["S"],
        int(item[TIMESTAMP]["N"]),
        item[VALUES]["S"],
        None if expires is None else int(expires["N"]),
    )
