"""The `OnlineStore` contract written once over encoded items; backends only put and get them.

Everything both backends must agree on lives here and in `encoding`: key and value encoding,
collapsing a batch to the latest row per key, the write counts, and the order of reads. A
backend implements a conditional put of items with distinct keys and a get by keys.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Self

from featureplane.online_store.encoding import (
    JOURNAL,
    decode_values,
    encode_values,
    from_epoch_seconds,
    from_micros,
    item_key,
    key_prefix,
    prefixed_key,
    to_epoch_seconds,
    to_micros,
)
from featureplane.online_store.store import (
    ItemTooLarge,
    Record,
    RecordKey,
    StoredItem,
    WriteResult,
)

KEY, TIMESTAMP, VALUES, EXPIRES = "pk", "ts", "v", "exp"
"""DynamoDB's attribute names of an item (`featureplane.online_store.dynamodb`)."""
MAX_ITEM_BYTES = 400 * 1024
"""DynamoDB's limit on an item, applied to every backend so that they agree (as the key's)."""
NUMBER_BYTES = 21
"""The most a DynamoDB number occupies (38 digits); `ts` and `exp` are counted at that."""


def item_bytes(item: StoredItem) -> int:
    """The item's size as DynamoDB meters it: attribute names plus values, in UTF-8 bytes."""
    key, _, payload, expires_at = item
    payload_bytes = len(payload) if payload.isascii() else len(payload.encode())
    size = len(KEY) + len(key) + len(TIMESTAMP) + NUMBER_BYTES + len(VALUES) + payload_bytes
    return size if expires_at is None else size + len(EXPIRES) + NUMBER_BYTES


def _check_sizes(items: Collection[StoredItem]) -> None:
    """Raise `ItemTooLarge` for an item over the limit. A text takes at most 4 UTF-8 bytes a
    character, so items are only sized one by one when the longest texts could exceed it."""
    if not items:
        return
    longest = max(map(len, map(itemgetter(0), items))) + max(map(len, map(itemgetter(2), items)))
    if 4 * longest + 4 * NUMBER_BYTES <= MAX_ITEM_BYTES:
        return
    for item in items:
        size = item_bytes(item)
        if size > MAX_ITEM_BYTES:
            raise ItemTooLarge(
                f"record {item[0]} is {size:,} bytes stored, over the {MAX_ITEM_BYTES:,} "
                "of a DynamoDB item; nothing of this write was stored"
            )


class ItemStore(ABC):
    """An `OnlineStore` over a backend of `StoredItem`s."""

    @abstractmethod
    def ensure_table(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def _put_latest(self, items: Sequence[StoredItem]) -> tuple[int, int]:
        """Put items with distinct keys, each only over an equal or older event time, atomically
        per item; return how many were skipped because the stored one is newer, and how many
        requests were throttled and sent again."""

    @abstractmethod
    def _get(self, keys: Collection[str]) -> Mapping[str, StoredItem]:
        """The stored items of distinct keys; absent keys are left out."""

    @abstractmethod
    def _delete_prefixed(self, prefixes: Sequence[str]) -> list[int]:
        """Delete every item whose key starts with one of `prefixes` (none a prefix of
        another); return how many were deleted under each."""

    def write(self, view: str, version: str, records: Iterable[Record]) -> WriteResult:
        prefix = key_prefix(view, version)
        return self.write_items(
            (
                prefixed_key(prefix, entity_key),
                to_micros(event_timestamp),
                encode_values(values),
                None if expires_at is None else to_epoch_seconds(expires_at),
            )
            for entity_key, event_timestamp, values, expires_at in records
        )

    def write_items(self, items: Iterable[StoredItem]) -> WriteResult:
        items = list(items)
        rows = len(items)
        if len(set(map(itemgetter(0), items))) < rows:  # several of a key: the latest wins
            latest: dict[str, StoredItem] = {}
            for item in items:
                current = latest.get(item[0])
                if current is None or item[1] >= current[1]:
                    latest[item[0]] = item
            items = list(latest.values())
        _check_sizes(items)
        stale, throttled = self._put_latest(items) if items else (0, 0)
        written = len(items) - stale
        return WriteResult(written, skipped_stale=rows - written, throttled_retries=throttled)

    def read(
        self, view: str, version: str, entity_keys: Sequence[Sequence[str | int]]
    ) -> list[Record | None]:
        return self.read_many([RecordKey(view, version, key) for key in entity_keys])

    def read_many(self, keys: Sequence[RecordKey]) -> list[Record | None]:
        items = self.read_items([item_key(*key) for key in keys])
        return [_record(key.entity_key, item) for key, item in zip(keys, items, strict=True)]

    def read_items(self, keys: Sequence[str]) -> list[StoredItem | None]:
        found = self._get(set(keys)) if keys else {}
        return [found.get(key) for key in keys]

    def delete_version(self, view: str, version: str) -> int:
        prefix = key_prefix(view, version)
        records, _ = self._delete_prefixed([prefix, JOURNAL + prefix])
        return records

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _record(entity_key: Sequence[str | int], item: StoredItem | None) -> Record | None:
    if item is None:
        return None
    _, micros, payload, expires_at = item
    expires = None if expires_at is None else from_epoch_seconds(expires_at)
    return Record(tuple(entity_key), from_micros(micros), decode_values(payload), expires)
