"""Online/offline consistency: what the online store serves against the point-in-time values.

After a push of the window [start, end), the online value of an entity at the moment `T` must
equal the offline point-in-time value at `T`: for a row-level view `T = end - 1 µs` (the pushed
row is the latest at or before it), for an aggregate view `T = end` (its windows close at
`end`). Values are compared exactly, floats too: both sides read the same rows or merge the
same tiles. Spark-free; the Dagster check feeds it sampled offline rows and online records.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from featureplane.aggregation import TILES, aggregate_before, anchor_micros
from featureplane.feature_view import FeatureView
from featureplane.online_store import Record

EXAMPLES = 10


def moment(view: FeatureView, window_end: datetime) -> datetime:
    """The time at which a push of a window ending at `window_end` is compared."""
    return window_end if view.aggregations else window_end - timedelta(microseconds=1)


def online_values(view: FeatureView, record: Record | None, at: datetime) -> dict[str, Any]:
    """The feature values the online store serves at `at` from `record` (None: no record).

    A missing or expired row-level record serves nulls, as the offline join does past the ttl;
    an aggregate view merges the record's tiles like the handler does.
    """
    if view.aggregations:
        tiles = record.values[TILES] if record is not None else {}
        values = aggregate_before(view.aggregations, tiles, anchor_micros(at, view.interval))
        return dict(zip(view.feature_names, values, strict=True))
    if record is None or (record.expires_at is not None and at > record.expires_at):
        return dict.fromkeys(view.feature_names)
    return {name: record.values.get(name) for name in view.feature_names}


@dataclass(frozen=True)
class Mismatch:
    """One feature of one entity whose online value differs from its offline value."""

    entity_key: tuple[str | int, ...]
    feature: str
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
    at: datetime,
    offline: Sequence[Mapping[str, Any]],
    online: Sequence[Record | None],
    examples: int = EXAMPLES,
) -> ConsistencyReport:
    """Compare offline point-in-time rows (join keys and features by name) with the online
    records of the same entities, in the same order, at `at`."""
    matched = 0
    found: list[Mismatch] = []
    for row, record in zip(offline, online, strict=True):
        served = online_values(view, record, at)
        wrong = [name for name in view.feature_names if not same(served[name], row[name])]
        matched += not wrong
        key = tuple(row[k] for k in view.join_keys)
        found += [Mismatch(key, name, served[name], row[name]) for name in wrong]
    return ConsistencyReport(len(offline), matched, found[:examples])


def same(online: Any, offline: Any) -> bool:
    """Exact equality, where NaN equals NaN and a naive datetime is UTC."""
    if isinstance(online, float) and isinstance(offline, float):
        return online == offline or (math.isnan(online) and math.isnan(offline))
    if isinstance(online, datetime) and isinstance(offline, datetime):
        return _utc(online) == _utc(offline)
    if isinstance(online, list | tuple) and isinstance(offline, list | tuple):
        return len(online) == len(offline) and all(map(same, online, offline))
    return type(online) is type(offline) and online == offline


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
