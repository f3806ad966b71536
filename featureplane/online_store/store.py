"""The online store contract: the latest feature values of each entity, by view version.

A store holds one record per (feature view, version, entity key): the event time of the values,
the values themselves (a JSON-able mapping; for aggregate views an encoded payload of tiles that
the reader merges) and optionally when they expire. Writes are conditional on the event time:
an equal or newer event time replaces the stored record, an older one is skipped and counted,
so replays and out-of-order backfills never move a value back in time. Reads take many keys,
across views, in one call, because a feature service spans views and the handler wants one
round trip.

`open_store` builds a store from settings; backends are imported on first use, so importing
this module costs neither boto3 nor sqlite3.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple, Protocol, runtime_checkable


class Record(NamedTuple):
    """The values of one entity of a view version at `event_timestamp` (UTC, to the microsecond).

    `expires_at` is kept to the second, rounded up (DynamoDB TTL's precision); past it a value
    must not be served, though a backend may still return it until it deletes it.
    """

    entity_key: tuple[str | int, ...]
    event_timestamp: datetime
    values: Mapping[str, Any]
    expires_at: datetime | None = None


StoredItem = tuple[str, int, str, int | None]
"""A record as backends store it: (key, event microseconds, encoded values, expiry in epoch
seconds); see `encoding`. A plain tuple: a NamedTuple would cost a push 0.7 µs a row."""


class RecordKey(NamedTuple):
    """Where a record lives: a view, its version and an entity key in join-key order."""

    view: str
    version: str
    entity_key: tuple[str | int, ...]


@dataclass(frozen=True)
class WriteResult:
    """Of the rows given to `write`: how many are now stored, how many were older than what is.

    A row counts as stale when the store, or a later row of the same batch, holds an equal or
    newer event time for its key (ties go to the later row, as a newer materialization).
    `throttled_retries`: requests the store refused for throttling and that were sent again.
    """

    written: int
    skipped_stale: int
    throttled_retries: int = 0


class ItemTooLarge(ValueError):
    """A record too large for DynamoDB (400 KB), refused by every store so that they agree."""


class StoreThrottled(RuntimeError):
    """The backend kept refusing work after bounded retries; try again later (HTTP 503)."""


class StoreUnavailable(StoreThrottled):
    """The backend did not answer (timeouts, refused or closed connections, server errors)
    after bounded retries. A kind of `StoreThrottled`: for a caller both mean "retry later"
    (serving answers 503), and a write may have been applied or not, so retrying it is safe."""


@runtime_checkable
class OnlineStore(Protocol):
    """What the push and the online handler need from a store; see the module docstring."""

    def ensure_table(self) -> None:
        """Create the table if missing; safe to call again and from several processes."""

    def write(self, view: str, version: str, records: Iterable[Record]) -> WriteResult:
        """Store records of one view version, each unless a newer one is stored."""

    def write_items(self, items: Iterable[StoredItem]) -> WriteResult:
        """Store records already encoded (by `encoding`, or by `columnar` for whole batches)
        as `write` does: per key the latest item, each unless a newer one is stored; an item
        over 400 KB raises `ItemTooLarge` before any is stored."""

    def read(
        self, view: str, version: str, entity_keys: Sequence[Sequence[str | int]]
    ) -> list[Record | None]:
        """The records of `entity_keys`, in order, None where there is none."""

    def read_many(self, keys: Sequence[RecordKey]) -> list[Record | None]:
        """The records of keys across views and versions, in order, in as few round trips."""

    def read_items(self, keys: Sequence[str]) -> list[StoredItem | None]:
        """`read_many` of keys already encoded (`encoding.prefixed_key`), left encoded: what
        the online handler reads, decoding only what it serves."""

    def delete_version(self, view: str, version: str) -> int:
        """Delete every record of one view version, and its push journal entries; return how
        many records it deleted. Nothing else is touched; an interrupted deletion is finished
        by calling it again, and a finished one deletes 0."""

    def close(self) -> None:
        """Release connections and threads."""


def expiry(event_timestamp: datetime, ttl: timedelta | None) -> datetime | None:
    """When a row-level value stops being served: its event time plus the view's ttl."""
    return None if ttl is None else event_timestamp + ttl


BACKENDS = {
    "sqlite": ("featureplane.online_store.sqlite", "SQLiteOnlineStore"),
    "dynamodb": ("featureplane.online_store.dynamodb", "DynamoDBOnlineStore"),
}


def open_store(settings: Mapping[str, Any]) -> OnlineStore:
    """A store from settings, e.g. `{"type": "sqlite", "path": "online.sqlite"}` or
    `{"type": "dynamodb", "table": "features", "region": "eu-west-1", "endpoint_url": ...}`.

    The other keys are the backend's constructor arguments; unknown keys are an error, so a
    misspelt setting does not silently fall back to a default.
    """
    options = dict(settings)
    kind = options.pop("type", "sqlite")
    if kind not in BACKENDS:
        raise ValueError(f"online store type {kind!r} is not one of {', '.join(BACKENDS)}")
    module, name = BACKENDS[kind]
    backend = getattr(importlib.import_module(module), name)
    unknown = set(options) - set(inspect.signature(backend).parameters)
    if unknown:
        raise ValueError(f"unknown {kind} online store settings: {', '.join(sorted(unknown))}")
    return backend(**options)
