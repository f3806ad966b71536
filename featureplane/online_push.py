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
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import chain
from json.encoder import encode_basestring_ascii

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from featureplane.aggregation import (
    RANK_BITS,
    SPLIT,
    SUFFIX,
    TILE_ORIGIN,
    TILE_START,
    TILE_STEP,
    TILES,
    hll_scale,
)
from featureplane.durations import in_words
from featureplane.feature_view import FeatureView
from featureplane.online_store import OnlineStore
from featureplane.online_store.columnar import (
    TEXTS,
    concat,
    epoch_seconds_up,
    int_texts,
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


def stored_items(view: FeatureView, batch: pa.RecordBatch) -> list[StoredItem]:
    """The stored items of one batch of `featureplane.compute.push.push_frame` rows, by key
    (put in order as Python tuples: taking the payload texts in key order would copy them)."""
    keys = item_keys(key_prefix(view.name, view.version), [batch[k] for k in view.join_keys])
    times = micros(batch[EVENT_TIME])
    if view.aggregations:
        payloads = concat(f'{{"{TILES}":', *_packed_parts(batch[TILES], view.interval), "}")
    else:
        names = view.feature_names
        payloads = object_texts(names, [json_texts(batch[name]) for name in names])
    expires = [None] * len(keys)
    if view.ttl and not view.aggregations:
        ttl = view.ttl // timedelta(microseconds=1)
        expires = epoch_seconds_up(pc.add(times, ttl)).to_pylist()
    columns = (keys.to_pylist(), times.to_pylist(), payloads.to_pylist(), expires)
    items = list(zip(*columns, strict=True))
    return [items[i] for i in pc.sort_indices(keys).to_numpy()]


Parts = list[pa.Array | str]
"""Texts to concatenate element-wise, arrays and literals: JSON is built in parts and joined
once, as each concatenation copies the whole text of every entity."""


def packed_tiles(tiles: pa.ListArray, interval: timedelta) -> pa.Array:
    """The JSON of `featureplane.aggregation.pack_tiles` for each list of tiles, built column by
    column; the tiles must be sorted by tile_start, as `push_frame` sorts them."""
    return concat(*_packed_parts(tiles, interval))


def _packed_parts(tiles: pa.ListArray, interval: timedelta) -> Parts:
    rows, offsets = tiles.flatten(), pc.subtract(tiles.offsets, tiles.offsets[0]).to_numpy()
    fields = {rows.type.field(i).name: rows.field(i) for i in range(rows.type.num_fields)}
    starts = micros(fields.pop(TILE_START)).to_numpy()
    unsorted = np.flatnonzero(np.diff(starts) < 0) + 1
    if not np.isin(unsorted, offsets).all():
        raise ValueError("tiles to push must be sorted by tile_start within each entity")
    step = interval // timedelta(microseconds=1)
    if (starts % step).any():
        raise ValueError(f"tile starts must be multiples of the interval, {in_words(interval)}")
    origins = starts[offsets[:-1]]
    index = (starts - np.repeat(origins, np.diff(offsets))) // step
    parts: Parts = [f'{{"{TILE_STEP}":{step},"{TILE_ORIGIN}":', int_texts(pa.array(origins))]
    parts += _member(TILE_START, _lists(offsets, int_texts(pa.array(index))))
    for name in sorted(fields):
        parts += _valued_members(name, fields[name], offsets)
    return [*parts, "}"]


def _member(name: str, value: Parts) -> Parts:
    """A member `name` that follows another in a JSON object."""
    return ["," + encode_basestring_ascii(name) + ":", *value]


def _lists(offsets: np.ndarray, texts: pa.Array, tail: str = "") -> Parts:
    """A JSON list per entity of the texts of its tiles (one at least), and `tail` (",0")."""
    lists = pa.ListArray.from_arrays(pa.array(offsets), texts)
    return ["[", pc.binary_join(lists, ",", memory_pool=TEXTS), tail + "]"]


def _valued_members(name: str, partials: pa.Array, offsets: np.ndarray) -> Parts:
    """The members of `featureplane.aggregation.suffix_columns` of a tile column per entity:
    built for the entities with values in it (`aggregation.valued`) alone, "" for others."""
    kind = name.split("__", 1)[0]
    if kind == "count":
        counting = pc.not_equal(pc.fill_null(partials, 0), 0)
    elif kind == "total":
        counting = pc.greater(pc.struct_field(partials, "n"), 0)
    else:
        counting = pc.is_valid(partials)
    tiles = pc.and_kleene(pc.is_valid(partials), counting).to_numpy(zero_copy_only=False)
    running = np.concatenate([[0], np.cumsum(tiles)])
    valued = running[offsets[1:]] > running[offsets[:-1]]
    if valued.all():
        return _suffix_members(kind, name, partials, offsets)
    if not valued.any():
        return []
    sizes = np.diff(offsets)[valued]
    picked = partials.filter(pa.array(np.repeat(valued, np.diff(offsets))))
    members = _suffix_members(kind, name, picked, np.concatenate([[0], np.cumsum(sizes)]))
    positions = np.full(len(valued), len(sizes))
    positions[valued] = np.arange(len(sizes))
    texts = pa.concat_arrays([concat(*members), _NONE])
    return [pc.take(texts, pa.array(positions), memory_pool=TEXTS)]


_NONE = pa.array([""])


def _suffix_members(kind: str, name: str, partials: pa.Array, offsets: np.ndarray) -> Parts:
    """`suffix_columns` of a tile column as JSON object members, for every entity of the batch
    at once: totals by cumulative sums, extremes and estimates by running maxima over sorted
    values."""
    if kind == "count":
        return _member(SUFFIX + name, _suffix_sums(partials, offsets))
    if kind == "total" and pa.types.is_integer(pc.struct_field(partials, "s").type):
        counts = _suffix_sums(pc.struct_field(partials, "n"), offsets)
        sums = _suffix_sums(pc.struct_field(partials, "s"), offsets)
        return _member(SUFFIX + name, ['{"n":', *counts, ',"s":', *sums, "}"])
    raw = _member(name, _lists(offsets, _partial_texts(partials)))
    if kind in ("min", "max") and pa.types.is_integer(partials.type):
        return raw + _member(SUFFIX + name, _suffix_extremes(kind, partials, offsets))
    if kind.startswith("hll"):
        return raw + _member(SUFFIX + name, _suffix_estimates(partials, offsets, int(kind[3:])))
    return raw


def _suffix_estimates(sketches: pa.Array, offsets: np.ndarray, precision: int) -> Parts:
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
    return _lists(offsets, int_texts(pa.array(rounded)), ",0")


def _high(rank: np.ndarray) -> np.ndarray:
    """A register's share of `hll_estimate`'s sum of ranks up to SPLIT (0: unset), as
    `featureplane.aggregation._term` has it."""
    return np.where(rank <= SPLIT, np.left_shift(1, np.maximum(SPLIT - rank, 0)), 0)


def _low(rank: np.ndarray) -> np.ndarray:
    """A register's share of the sum of ranks above SPLIT."""
    return np.where(rank > SPLIT, np.left_shift(1, np.maximum(2 * SPLIT - rank, 0)), 0)


def _suffix_extremes(kind: str, values: pa.Array, offsets: np.ndarray) -> Parts:
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


def _suffix_sums(values: pa.Array, offsets: np.ndarray) -> Parts:
    """Per entity, the JSON list of the sums of its tiles' values from each tile to the last
    (nulls count 0), and 0. A cumulative sum over the whole batch may wrap around: every
    suffix is then right modulo 2**64, and so is every window, which the reader brings back
    into the int64 range (`aggregation._total`)."""
    values = pc.fill_null(values, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    return _lists(offsets, int_texts(pa.array(_suffix_totals(values, offsets))), ",0")


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
            encoding = None if batch is None else encoder.submit(stored_items, view, batch)
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
