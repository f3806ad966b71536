"""What a training dataset's manifest records of each feature view it read, to rebuild it later.

A rebuild reads every input at its recorded Delta version; after a definition change the view
has a new version and a table of its own, and the repository may no longer hold the definition
that read the old table (a feature removed or retyped, a ttl changed). So each read records the
view's retrieval definition — entities and join keys, event time, ttl, stored columns and
types, aggregations — and `recorded_view` turns it back into a `FeatureView` that retrieves
exactly as the original did (its transformation is never run: the rows are stored).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from featureplane.entity import Entity
from featureplane.feature_view import FeatureView
from featureplane.registry import aggregation_from_json, aggregation_json, duration, seconds
from featureplane.types import Field, dtype_named

RECORDED_SOURCE = "recorded"
"""The one source name a recorded view carries: retrieval never reads sources."""


def retrieval_definition(view: FeatureView) -> dict[str, Any]:
    """What retrieval needs of a view, as JSON."""
    return {
        "entities": [{"name": e.name, "join_keys": list(e.join_keys)} for e in view.entities],
        "timestamp_field": view.timestamp_field,
        "ttl_seconds": seconds(view.ttl),
        "schema": [{"name": c.name, "type": c.dtype.name} for c in view.schema],
        "aggregation_interval_seconds": seconds(view.interval) if view.aggregations else None,
        "aggregations": [aggregation_json(a) for a in view.aggregations],
    }


def _stored(rows):
    """A recorded view's transformation: never run, retrieval reads its stored table."""
    return rows


def recorded_view(name: str, definition: Mapping[str, Any]) -> FeatureView:
    """The view `retrieval_definition` recorded, for reading its recorded table."""
    return FeatureView(
        name=name,
        function=_stored,
        mode="pyspark",
        sources=(RECORDED_SOURCE,),
        entities=tuple(Entity(e["name"], join_keys=e["join_keys"]) for e in definition["entities"]),
        schema=tuple(Field(c["name"], dtype_named(c["type"])) for c in definition["schema"]),
        timestamp_field=definition["timestamp_field"],
        feature_start_time=datetime(1970, 1, 1, tzinfo=UTC),
        ttl=duration(definition["ttl_seconds"]),
        aggregations=tuple(aggregation_from_json(a) for a in definition["aggregations"]),
        aggregation_interval=duration(definition["aggregation_interval_seconds"]),
    )
