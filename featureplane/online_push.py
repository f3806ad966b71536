"""Online push: Arrow batches of a view's latest state become records in the online store.

Record format (the serving handler reads exactly this): key (view name, view version, join key
values in `view.join_keys` order). A row-level record holds every feature by name, the row's
event time and expires at event time + ttl. An aggregate record holds `{"tiles": ...}`, the
entity's tiles packed by `featureplane.aggregation.pack_tiles`, stamped with the end of the
last tile; it never expires, because an entity whose tiles all left every window is served
exactly what the offline store gives it (count 0, other values null), not a missing value.

Spark-free: the batches come from `featureplane.compute.push`. Each batch is encoded a column
at a time with Arrow compute (`featureplane.online_store.columnar`), sorted by key (B-tree stores
insert in key order fastest), and written with one conditional store write: the only per-row
Python objects are the stored item tuples.

Resuming. A push of a window keeps a journal entry in the store (key `_push#view#version#
window`, apart from every record's: view names start with a letter): which attempt runs, and
whether it finished. A push that finds the last attempt unfinished (throttled, unanswered,
killed) resumes it: it reads each batch's keys first and writes only the items not stored as
they are, so what the earlier attempt stored is not sent again. Batches cannot say where the
earlier attempt stopped (Spark does not keep the rows' order, and a batch's transactions run
concurrently), but the reads are cheap: on DynamoDB a read of 100 keys costs a tenth of
rewriting them in a transaction (1 KB items, on-demand prices), and less for larger items.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import chain
from json.encoder import encode_basestring_ascii

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from featureplane.aggregation import RANK_BITS, SPLIT, SUFFIX, TILE_START, TILES, hll_scale
from featureplane.feature_view import FeatureView
from featureplane.online_store import OnlineStore
from featureplane.online_store.columnar import (
    concat,
    epoch_seconds_up,
    item_keys,
    json_texts,
    micros,
    object_texts,
    with_nulls,
)
from featureplane.online_store.encoding import JOURNAL, key_prefix, to_epoch_seconds, to_micros
from featureplane.online_store.store import StoredItem

EVENT_TIME = "event_timestamp"
"""The pushed rows' event-time column: a row's event time, or the end of the last tile."""
JOURNAL_TTL = timedelta(days=7)
"""How long the store keeps a journal entry: a push resumed later rewrites what is stored."""


@dataclass(frozen=True)
class PushStats:
    """What a push did: rows sent, how the store took them, and the time spent where.

    `rows` = `written` + `skipped_stale` + `already_stored` (by an earlier, unfinished attempt
    at the window, which this `attempt` resumed: `resumed_from` says which, and when it began).
    """

    rows: int
    written: int
    skipped_stale: int
    fetch_seconds: float
    write_seconds: float
    throttled_retries: int = 0
    already_stored: int = 0
    attempt: int = 1
    resumed_from: str | None = None
    newest_event: datetime | None = None
    """The newest event time pushed: how fresh the served data is, as far as this push goes."""

    @property
    def rows_per_second(self) -> float:
        """Throughput of the write path (Arrow to records to the store), fetching excluded."""
        return self.rows / self.write_seconds if self.write_seconds else 0.0


def stored_items(view: FeatureView, batch: pa.RecordBatch) -> Iterator[StoredItem]:
    """The stored items of one batch of `featureplane.compute.push.push_frame` rows, by key."""
    keys = item_keys(key_prefix(view.name, view.version), [batch[k] for k in view.join_keys])
    times = micros(batch[EVENT_TIME])
    if view.aggregations:
        payloads = concat(f'{{"{TILES}":', packed_tiles(batch[TILES]), "}")
    else:
        names = view.feature_names
        payloads = object_texts(names, [json_texts(batch[name]) for name in names])
    order = pc.sort_indices(keys)
    keys, times, payloads = (column.take(order) for column in (keys, times, payloads))
    expires = [None] * len(keys)
    if view.ttl and not view.aggregations:
        ttl = view.ttl // timedelta(microseconds=1)
        expires = epoch_seconds_up(pc.add(times, ttl)).to_pylist()
    return zip(keys.to_pylist(), times.to_pylist(), payloads.to_pylist(), expires, strict=True)


def packed_tiles(tiles: pa.ListArray) -> pa.Array:
    """The JSON of `featureplane.aggregation.pack_tiles` for each list of tiles, built column by
    column; the tiles must be sorted by tile_start, as `push_frame` sorts them."""
    rows, offsets = tiles.flatten(), pc.subtract(tiles.offsets, tiles.offsets[0]).to_numpy()
    fields = {rows.type.field(i).name: rows.field(i) for i in range(rows.type.num_fields)}
    starts = micros(fields.pop(TILE_START))
    unsorted = np.flatnonzero(np.diff(starts.to_numpy()) < 0) + 1
    if not np.isin(unsorted, offsets).all():
        raise ValueError("tiles to push must be sorted by tile_start within each entity")
    members = [_member(TILE_START, _lists(offsets, pc.cast(starts, pa.string())))]
    for name in sorted(fields):
        members += _suffix_members(name, fields[name], offsets)
    return concat("{", pc.binary_join_element_wise(*members, ","), "}")


def _member(name: str, texts: pa.Array) -> pa.Array:
    return concat(encode_basestring_ascii(name) + ":", texts)


def _lists(offsets: np.ndarray, texts: pa.Array, tail: str = "") -> pa.Array:
    """A JSON list per entity of the texts of its tiles, and `tail` (",0") after them."""
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), texts), ",")
    if not tail:
        return concat("[", joined, "]")
    whole = concat("[", joined, tail, "]")
    return pc.if_else(pc.equal(joined, ""), pa.scalar(f"[{tail[1:]}]"), whole)


def _suffix_members(name: str, partials: pa.Array, offsets: np.ndarray) -> list[pa.Array]:
    """`featureplane.aggregation.suffix_columns` of a tile column as JSON object members, for
    every entity of the batch at once: totals by cumulative sums, extremes and estimates by
    running maxima over sorted values."""
    kind = name.split("__", 1)[0]
    if kind == "count":
        return [_member(SUFFIX + name, _suffix_sums(partials, offsets))]
    raw = _member(name, _lists(offsets, _partial_texts(partials)))
    if kind == "total":
        sums = pc.struct_field(partials, "s")
        integral = pa.types.is_integer(sums.type)
        counts = _suffix_sums(pc.struct_field(partials, "n"), offsets)
        exact = sums if integral else pa.nulls(len(sums), pa.int64())  # used where all null
        totals = object_texts(["n", "s"], [counts, _suffix_sums(exact, offsets)])
        suffixes = _member(SUFFIX + name, totals)
        if integral or sums.null_count == len(sums):
            return [suffixes]
        no_floats = _without_values(sums, offsets)
        return [pc.if_else(no_floats, suffixes, raw)]  # floats: sums by difference would round
    if kind in ("min", "max"):
        if pa.types.is_integer(partials.type):
            return [raw, _member(SUFFIX + name, _suffix_extremes(kind, partials, offsets))]
        nulls = _lists(offsets, pa.array(["null"] * len(partials), pa.string()), ",null")
        suffixes = concat(raw, ",", _member(SUFFIX + name, nulls))
        return [pc.if_else(_without_values(partials, offsets), suffixes, raw)]
    if not kind.startswith("hll"):
        return [raw]
    estimates = _suffix_estimates(partials, offsets, int(kind[3:]))
    return [raw, _member(SUFFIX + name, estimates)]


def _suffix_estimates(sketches: pa.Array, offsets: np.ndarray, precision: int) -> pa.Array:
    """Per entity, the JSON list of `featureplane.aggregation.suffix_estimates`, for every entity
    at once: the codes of all sketches sorted by (entity, register, tile from the last, rank),
    a running maximum per register gives each code's gain in the estimate's two integer sums,
    and suffix sums of the gains over each entity's tiles give every suffix's sums."""
    parsed = [orjson.loads(s) if isinstance(s, str) else s or () for s in sketches.to_pylist()]
    counts = np.fromiter(map(len, parsed), np.int64, len(parsed))
    codes = np.fromiter(chain.from_iterable(parsed), np.int64, int(counts.sum()))
    tile = np.repeat(np.arange(len(parsed)), counts)
    entity = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))[tile]
    index, rank = codes >> RANK_BITS, codes & ((1 << RANK_BITS) - 1)
    order = np.lexsort((rank, -tile, index, entity))
    tile, index, rank, entity = tile[order], index[order], rank[order], entity[order]
    first = np.r_[True, (entity[1:] != entity[:-1]) | (index[1:] != index[:-1])]
    lift = (np.cumsum(first) - 1) * (1 << RANK_BITS)  # ranks < 2**RANK_BITS stay in their group
    best = np.maximum.accumulate(lift + rank) - lift
    before = np.r_[0, best[:-1]]
    before[first] = 0
    gained = rank > before
    tile, rank, before = tile[gained], rank[gained], before[gained]
    sums = []
    for gain in (_high(rank) - _high(before), _low(rank) - _low(before), before == 0):
        per_tile = np.zeros(len(parsed), np.int64)
        np.add.at(per_tile, tile, gain.astype(np.int64))
        sums.append(_suffix_totals(per_tile, offsets))
    m = 1 << precision
    high, low, unset = (m << SPLIT) + sums[0], sums[1], m - sums[2]
    harmonic = high.astype(np.float64) * 2.0**-SPLIT + low.astype(np.float64) * 2.0 ** (-2 * SPLIT)
    estimate = hll_scale(precision) / harmonic
    linear = (unset > 0) & (estimate <= 2.5 * m)
    estimate[linear] = m * np.log(m / unset[linear])
    rounded = np.floor(estimate + 0.5).astype(np.int64)
    return _lists(offsets, pc.cast(pa.array(rounded), pa.string()), ",0")


def _high(rank: np.ndarray) -> np.ndarray:
    """A register's share of `hll_estimate`'s sum of ranks up to SPLIT (0: unset), as
    `featureplane.aggregation._term` has it."""
    return np.where(rank <= SPLIT, np.left_shift(1, np.maximum(SPLIT - rank, 0)), 0)


def _low(rank: np.ndarray) -> np.ndarray:
    """A register's share of the sum of ranks above SPLIT."""
    return np.where(rank > SPLIT, np.left_shift(1, np.maximum(2 * SPLIT - rank, 0)), 0)


def _without_values(values: pa.Array, offsets: np.ndarray) -> pa.Array:
    """Per entity, whether all its tiles' values are null: `suffix_columns` judges a column
    by the types of the values it holds, which an entity without any leaves open."""
    valid = np.concatenate([[0], np.cumsum(pc.is_valid(values).to_numpy(zero_copy_only=False))])
    return pa.array(valid[offsets[1:]] == valid[offsets[:-1]])


def _suffix_extremes(kind: str, values: pa.Array, offsets: np.ndarray) -> pa.Array:
    """Per entity, the JSON list of the min or max of its tiles' integers from each tile to
    the last (null while there is none), and null. Values are ranked, entity by entity the
    ranks are lifted above every later entity's, and one running maximum over the reversed
    batch then never carries a rank across entities."""
    valid = pc.is_valid(values).to_numpy(zero_copy_only=False)
    numbers = pc.fill_null(values, 0).to_numpy(zero_copy_only=False)
    distinct, ranks = np.unique(numbers[valid], return_inverse=True)
    rank = np.zeros(len(numbers), np.int64)
    rank[valid] = ranks + 1 if kind == "max" else len(distinct) - ranks
    entities = len(offsets) - 1
    base = (entities - 1 - np.repeat(np.arange(entities), np.diff(offsets))) * (len(distinct) + 1)
    best = np.maximum.accumulate((base + rank)[::-1])[::-1] - base
    found = best > 0
    extremes = np.zeros(len(numbers), numbers.dtype)
    extremes[found] = distinct[best[found] - 1 if kind == "max" else len(distinct) - best[found]]
    texts = json_texts(pa.array(extremes, values.type, mask=~found))
    return _lists(offsets, texts, ",null")


def _suffix_sums(values: pa.Array, offsets: np.ndarray) -> pa.Array:
    """Per entity, the JSON list of the sums of its tiles' values from each tile to the last
    (nulls count 0), and 0. A cumulative sum over the whole batch may wrap around: every
    suffix is then right modulo 2**64, and so is every window, which the reader brings back
    into the int64 range (`aggregation._total`)."""
    values = pc.fill_null(values, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    return _lists(offsets, pc.cast(pa.array(_suffix_totals(values, offsets)), pa.string()), ",0")


def _suffix_totals(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Each value plus the later values of its entity."""
    running = np.cumsum(values)
    return running[np.repeat(offsets[1:] - 1, np.diff(offsets))] - running + values


def _partial_texts(partials: pa.Array) -> pa.Array:
    """A tile column's partials as `pack_tiles` keeps them: first/last event times (`ts`) as
    epoch microseconds, the rest as JSON values."""
    kind = partials.type
    if not pa.types.is_struct(kind):
        return json_texts(partials)
    names = [kind.field(i).name for i in range(kind.num_fields)]
    texts = []
    for name in names:
        values = partials.field(name)
        if name == "ts" and pa.types.is_timestamp(values.type):
            texts.append(pc.fill_null(pc.cast(micros(values), pa.string()), "null"))
        else:
            texts.append(json_texts(values))
    return with_nulls(partials, object_texts(names, texts))


class Journal:
    """A push's entry in the store, for one view version and window: see the module docstring."""

    def __init__(self, store: OnlineStore, view: FeatureView, window: tuple[datetime, datetime]):
        start, end = (moment.astimezone(UTC).isoformat() for moment in window)
        prefix = JOURNAL + key_prefix(view.name, view.version)
        self.store, self.key = store, f"{prefix}{start}/{end}"
        self.attempt, self.resumed_from, self.throttled_retries = 1, None, 0
        self.began = datetime.now(UTC).isoformat(timespec="seconds")
        self._micros = 0

    def begin(self) -> None:
        """Record this attempt as running: the successor of the last one if it is unfinished."""
        [entry] = self.store.read_items([self.key])
        if entry is not None:
            self._micros = entry[1]
            last = orjson.loads(entry[2])
            if not last["finished"]:
                self.attempt = last["attempt"] + 1
                self.resumed_from = f"attempt {last['attempt']}, begun {last['began']}"
        self._write(finished=False)

    def finish(self) -> None:
        self._write(finished=True)

    def _write(self, finished: bool) -> None:
        now = datetime.now(UTC)
        self._micros = max(to_micros(now), self._micros + 1)  # replaces the entry it finds
        entry = {"attempt": self.attempt, "began": self.began, "finished": finished}
        expires = to_epoch_seconds(now + JOURNAL_TTL)
        item = (self.key, self._micros, orjson.dumps(entry).decode(), expires)
        self.throttled_retries += self.store.write_items([item]).throttled_retries


def push(
    store: OnlineStore,
    view: FeatureView,
    batches: Iterable[pa.RecordBatch],
    window: tuple[datetime, datetime] | None = None,
) -> PushStats:
    """Write the batches' records to the store, one conditional write per batch; a push of a
    `window` (start, end) is journaled, and resumes an unfinished attempt at the same window.

    The next batch is encoded in a thread while the store writes the current one: Arrow
    compute and SQLite release the GIL, so on two cores the encoding mostly hides behind the
    write (a third of the time of a row-level push).
    """
    journal = None if window is None else Journal(store, view, window)
    if journal is not None:
        journal.begin()
    resuming = journal is not None and journal.resumed_from is not None
    rows = written = skipped = throttled = already = 0
    fetch = write = 0.0
    newest: datetime | None = None
    batches = iter(batches)
    with ThreadPoolExecutor(1) as encoder:
        pending: Future[list[StoredItem]] | None = None
        while True:
            began = time.perf_counter()
            batch = next(batches, None)
            fetched = time.perf_counter()
            fetch += fetched - began
            encoding = None if batch is None else encoder.submit(_items, view, batch)
            if pending is not None:
                items = pending.result()
                if resuming:
                    items, stored, stale = _unstored(store, items)
                    already, skipped = already + stored, skipped + stale
                result = store.write_items(items)
                written += result.written
                skipped += result.skipped_stale
                throttled += result.throttled_retries
            write += time.perf_counter() - fetched
            if batch is None:
                break
            rows += batch.num_rows
            latest = pc.max(batch[EVENT_TIME]).as_py()
            newest = latest if newest is None or (latest and latest > newest) else newest
            pending = encoding
    if journal is None:
        return PushStats(rows, written, skipped, fetch, write, throttled, newest_event=newest)
    journal.finish()
    throttled += journal.throttled_retries
    resumed = {"attempt": journal.attempt, "resumed_from": journal.resumed_from}
    return PushStats(
        rows, written, skipped, fetch, write, throttled, already, **resumed, newest_event=newest
    )


def _unstored(store: OnlineStore, items: list[StoredItem]) -> tuple[list[StoredItem], int, int]:
    """Of a resumed push's items: those to write, how many are stored as they are, and how
    many are older than what is stored (counted stale, as the write would)."""
    unstored, same, stale = [], 0, 0
    for item, stored in zip(items, store.read_items([item[0] for item in items]), strict=True):
        if stored == item:
            same += 1
        elif stored is not None and stored[1] > item[1]:
            stale += 1
        else:
            unstored.append(item)
    return unstored, same, stale


def _items(view: FeatureView, batch: pa.RecordBatch) -> list[StoredItem]:
    return list(stored_items(view, batch))
