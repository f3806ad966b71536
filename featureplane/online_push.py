"""Online push: Arrow batches of a view's latest state become records in the online store.

Record format (the serving handler reads exactly this): key (view name, view version, join key
values in `view.join_keys` order). A row-level record holds every feature by name, the row's
event time and expires at event time + ttl. An aggregate record holds `{"tiles": ...}`, the
entity's tiles packed by `featureplane.aggregation.pack_tiles`, stamped with the end of the
last tile; it never expires, because an entity whose tiles all left every window is served
exactly what the offline store gives it (count 0, other values null), not a missing value.

Spark-free: the batches come from `featureplane.compute.push`. Each batch becomes records
column-wise (one `to_pylist` per column) and one conditional store write, so the only per-row
Python objects are the ones a `Record` is made of.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import repeat

import pyarrow as pa

from featureplane.aggregation import TILES, pack_tiles
from featureplane.feature_view import FeatureView
from featureplane.online_store import OnlineStore, Record, expiry

EVENT_TIME = "event_timestamp"
"""The pushed rows' event-time column: a row's event time, or the end of the last tile."""


@dataclass(frozen=True)
class PushStats:
    """What a push did: rows sent, how the store took them, and the time spent where."""

    rows: int
    written: int
    skipped_stale: int
    fetch_seconds: float
    write_seconds: float

    @property
    def rows_per_second(self) -> float:
        """Throughput of the write path (Arrow to records to the store), fetching excluded."""
        return self.rows / self.write_seconds if self.write_seconds else 0.0


def records(view: FeatureView, batch: pa.RecordBatch) -> Iterator[Record]:
    """The records of one batch of `featureplane.compute.push.push_frame` rows."""
    keys = zip(*(batch.column(key).to_pylist() for key in view.join_keys), strict=True)
    times = batch.column(EVENT_TIME).to_pylist()
    if view.aggregations:
        tiles = batch.column(TILES).to_pylist()
        return map(Record, keys, times, ({TILES: pack_tiles(t)} for t in tiles))
    names = view.feature_names
    rows = zip(*(batch.column(name).to_pylist() for name in names), strict=True)
    values = (dict(zip(names, row, strict=True)) for row in rows)
    expires = (expiry(t, view.ttl) for t in times) if view.ttl else repeat(None)
    return map(Record, keys, times, values, expires)


def push(store: OnlineStore, view: FeatureView, batches: Iterable[pa.RecordBatch]) -> PushStats:
    """Write the batches' records to the store, one conditional write per batch."""
    rows = written = skipped = 0
    fetch = write = 0.0
    batches = iter(batches)
    while True:
        began = time.perf_counter()
        batch = next(batches, None)
        fetched = time.perf_counter()
        fetch += fetched - began
        if batch is None:
            break
        result = store.write(view.name, view.version, records(view, batch))
        write += time.perf_counter() - fetched
        rows += batch.num_rows
        written += result.written
        skipped += result.skipped_stale
    return PushStats(rows, written, skipped, fetch, write)
