"""Online/offline consistency: what the online store holds against the point-in-time values.

Each sampled stored record is compared with the offline values at the moment the record speaks
for, whatever push wrote it (a rerun of a past window leaves newer records in place):
- a row-level record at its event time: the offline row of that entity and time;
- an aggregate record, written by a push of a window ending at some `E`, holds every tile of
  the entity in [E - longest window, E), the first starting at `F` and the last ending at its
  event time `L`. So F >= E - longest, and each aggregation (window `w`) is compared at
  max(L, F + w): its window then ends at or after the last tile and starts at or after `F`, so
  both sides read the same tiles, and it holds the last tile or the first one, so the
  comparison is never vacuous. The offline side includes tiles written after the push: late
  events that no push brought online show as mismatches.
An entity pushed in the window but absent from the store is compared at the window's end
(`moment`), where the push left it. Values are compared exactly, floats too: both sides read
the same rows or merge the same tiles. Spark-free; the Dagster check feeds it the sampled
records and the offline values at their moments.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from featureplane.aggregation import TILES, aggregate_before, anchor_micros, first_tile_micros
from featureplane.feature_view import FeatureView
from featureplane.online_store import Record
from featureplane.online_store.encoding import from_micros

EXAMPLES = 10
EntityKey = tuple[str | int, ...]


def moment(view: FeatureView, window_end: datetime) -> datetime:
    """When the push of a window ending at `window_end` left an entity's record: the latest
    row at or before the window's last microsecond, or the windows closing at its end."""
    return window_end if view.aggregations else window_end - timedelta(microseconds=1)


def moments(view: FeatureView, record: Record | None, window_end: datetime) -> dict[str, datetime]:
    """When each feature of an entity's stored `record` is compared (see the module docstring)."""
    if record is None:
        return dict.fromkeys(view.feature_names, moment(view, window_end))
    if not view.aggregations:
        return dict.fromkeys(view.feature_names, record.event_timestamp)
    first = from_micros(first_tile_micros(record.values[TILES]))
    last_end = record.event_timestamp
    return {a.name: max(last_end, first + a.time_window) for a in view.aggregations}


def online_values(view: FeatureView, record: Record | None, at: datetime) -> dict[str, Any]:
    """The feature values the online store serves at `at` from `record` (None: no record):
    nulls for a row-level view; an aggregate view merges the tiles as the handler does."""
    if view.aggregations:
        tiles = record.values[TILES] if record is not None else {}
        values = aggregate_before(view.aggregations, tiles, anchor_micros(at, view.interval))
        return dict(zip(view.feature_names, values, strict=True))
    if record is None:
        return dict.fromkeys(view.feature_names)
    return {name: record.values.get(name) for name in view.feature_names}


@dataclass(frozen=True)
class Mismatch:
    """One feature of one entity whose online value differs from its offline value at `at`."""

    entity_key: EntityKey
    feature: str
    at: datetime
    online: Any
    offline: Any


@dataclass(frozen=True)
class ConsistencyReport:
    """How many sampled entities match in every feature, and examples of those that do not."""

    sampled: int
    matched: int
    examples: list[Mismatch] = field(default_factory=list)

    @property
    def match_rate(self) -> float:
        return self.matched / self.sampled if self.sampled else 1.0


def compare(
    view: FeatureView,
    window_end: datetime,
    records: Mapping[EntityKey, Record | None],
    offline: Mapping[tuple[EntityKey, datetime], Mapping[str, Any]],
    examples: int = EXAMPLES,
) -> ConsistencyReport:
    """Compare the stored records of the entities pushed in a window ending at `window_end`
    with the offline values (features by name) of each (entity key, moment) of `moments`."""
    matched = 0
    found: list[Mismatch] = []
    for key, record in records.items():
        wanted = moments(view, record, window_end)
        served = {at: online_values(view, record, at) for at in set(wanted.values())}
        wrong = [
            Mismatch(key, name, at, served[at][name], offline[key, at][name])
            for name, at in wanted.items()
            if not same(served[at][name], offline[key, at][name])
        ]
        matched += not wrong
        found += wrong
    return ConsistencyReport(len(records), matched, found[:examples])


def same(online: Any, offline: Any) -> bool:
    """Exact equality, where NaN equals NaN and a naive datetime is UTC."""
    if isinstance(online, float) and isinstance(offline, float):
        return online == offline or (math.isnan(online) and math.isnan(offline))
    if isinstance(online, datetime) and isinstance(offline, datetime):
        return as_utc(online) == as_utc(offline)
    if isinstance(online, list | tuple) and isinstance(offline, list | tuple):
        return len(online) == len(offline) and all(map(same, online, offline))
    return type(online) is type(offline) and online == offline


def as_utc(moment: datetime) -> datetime:
    """`moment` with a naive datetime read as UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
