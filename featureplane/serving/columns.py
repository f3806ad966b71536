"""Feature columns of a response: the stored records of each view as values, statuses, event
times and ages, and the on-demand features computed from them row by row."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from copy import deepcopy
from datetime import datetime
from typing import Any

from featureplane.aggregation import TILES, anchor_micros
from featureplane.on_demand import compute_columns
from featureplane.online_store.encoding import (
    decode_values,
    from_micros,
    to_micros,
)
from featureplane.online_store.store import StoredItem
from featureplane.serving.plans import OnDemandPlan, ServicePlan, ViewPlan

ISO_CACHE = 1 << 16
"""Event times whose ISO text is kept (rows share a few: the end of a day, of a tile)."""
_iso: dict[int, str] = {}


def _iso_text(micros: int) -> str:
    text = _iso.get(micros)
    if text is None:
        if len(_iso) >= ISO_CACHE:
            _iso.clear()
        text = _iso[micros] = from_micros(micros).isoformat()
    return text


Column = list[Any]
State = dict[str, Column]
"""The status, event time and age of every row, shared by the features of one view."""


def response_columns(
    plan: ServicePlan,
    items: Sequence[StoredItem | None],
    requests: Sequence[dict[str, Any]],
    now: datetime,
) -> list[dict[str, Column]]:
    """One result per feature of `plan.outputs`, each a column over the rows (computed for
    every feature read, then picked by `plan.positions`): from the rows' stored items (every
    row of the first online view, then of the next) and request data, view by view;
    on-demand features are computed row by row from both."""
    count = len(requests)
    micros = to_micros(now)
    results: list[dict[str, Column]] = []
    read: list[list[Column]] = []
    taken = 0
    for view in plan.views:
        if view.view.online:
            records, taken = items[taken : taken + count], taken + count
        else:
            records = [None] * count
        columns, state = _view_columns(view, records, now, micros)
        read.append(columns)
        results += [{"values": column, **state} for column in columns]
    if plan.on_demand:
        state = {
            "status": ["present"] * count,
            "event_timestamps": [None] * count,
            "age_seconds": [None] * count,
        }
        for on_demand in plan.on_demand:
            columns = _on_demand_columns(on_demand, read, requests)
            results += [{"values": column, **state} for column in columns]
    positions = plan.positions
    return results if positions is None else [results[i] for i in positions]


NO_RECORD: Mapping[str, Any] = {}
"""What an entity without a record reads: null values, and for aggregates empty windows."""


def _view_columns(
    view: ViewPlan, items: Sequence[StoredItem | None], now: datetime, micros: int
) -> tuple[list[Column], State]:
    """A view's feature columns over the rows, and the rows' state: `missing` without a
    record, `expired` past a row-level view's ttl (value null, time and age reported; the tiles
    of an aggregate view leave its windows instead), else `present`."""
    status, stamps, ages, payloads = [], [], [], []
    windows, ttl = view.windows, view.ttl_micros
    for item in items:
        if item is None:
            status.append("missing")
            stamps.append(None)
            ages.append(None)
            payloads.append(None)
            continue
        event = item[1]
        stamps.append(_iso_text(event))
        ages.append(round((micros - event) / 1_000_000, 3))
        if windows is None and ttl is not None and micros - event > ttl:
            status.append("expired")
            payloads.append(None)
        else:
            status.append("present")
            payloads.append(item[2])
    state = {"status": status, "event_timestamps": stamps, "age_seconds": ages}
    if windows is None:
        records = [NO_RECORD if text is None else decode_values(text) for text in payloads]
        return [[record.get(f) for record in records] for f in view.features], state
    records = [
        NO_RECORD if text is None else decode_values(text).get(TILES) or NO_RECORD
        for text in payloads
    ]
    return windows.columns(records, anchor_micros(now, view.view.interval)), state


def _on_demand_columns(
    on_demand: OnDemandPlan, read: Sequence[Sequence[Column]], requests: Sequence[dict[str, Any]]
) -> list[Column]:
    """The on-demand view's feature columns, computed row by row from fresh dicts of its
    sources' values (its own request fields; datetimes in UTC, as decoded and as typed)."""
    sources: list[Iterable[dict[str, Any]]] = []
    for view, names, at, arrays in on_demand.inputs:
        if view is None:
            rows = [{name: row[name] for name in names} for row in requests]
        else:
            columns = zip(*[read[view][i] for i in at], strict=True)
            rows = [dict(zip(names, row, strict=True)) for row in columns]
        for row in rows if arrays else ():
            row.update((name, deepcopy(row[name])) for name in arrays)
        sources.append(rows)
    spec = on_demand.spec
    computed = compute_columns(
        spec.function, spec.name, on_demand.output, zip(*sources, strict=True)
    )
    return [computed[i] for i in on_demand.positions]
