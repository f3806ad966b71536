"""What a training dataset's manifest records of each feature view it read, to rebuild it later.

A rebuild reads every input at its recorded Delta version; after a definition change the view
has a new version and a table of its own, and the repository may no longer hold the definition
that read the old table (a feature removed or retyped, a ttl changed). So each read records the
view's retrieval definition — entities and join keys, event time, ttl, stored columns and
types, aggregations — and `recorded_view` turns it back into a `FeatureView` that retrieves
exactly as the original did (its transformation is never run: the rows are stored).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pyarrow.fs as pafs

from featureplane.entity import Entity
from featureplane.errors import ManifestCorrupt
from featureplane.feature_view import FeatureView
from featureplane.registry import aggregation_from_json, aggregation_json, duration, seconds
from featureplane.types import Field, dtype_named

RECORDED_SOURCE = "recorded"
"""The one source name a recorded view carries: retrieval never reads sources."""

MANIFESTS = "_manifests"
"""The folder of a training dataset's table that holds one manifest per Delta version: its name
starts with an underscore, so Delta (and vacuum) leave it alone."""


def manifest_uri(dataset_uri: str, version: int) -> str:
    """Where the manifest of one version of the training dataset table at `dataset_uri` is."""
    return f"{dataset_uri}/{MANIFESTS}/v{version:08d}.json"


def read_manifest(uri: str) -> dict[str, Any]:
    filesystem, path = pafs.FileSystem.from_uri(uri)
    with filesystem.open_input_stream(path) as stream:
        text = stream.read().decode()
    try:
        manifest = json.loads(text)
    except ValueError as error:
        raise ManifestCorrupt(f"{uri}: not valid JSON ({error})") from error
    missing = {"training_dataset", "version", "created_at", "spine", "features"} - set(manifest)
    if missing:
        raise ManifestCorrupt(f"{uri}: no {', '.join(sorted(missing))}")
    return manifest


def recorded_manifests(dataset_uri: str) -> list[dict[str, Any]]:
    """Every manifest of the training dataset table at `dataset_uri`, oldest version first."""
    filesystem, path = pafs.FileSystem.from_uri(dataset_uri)
    selector = pafs.FileSelector(f"{path}/{MANIFESTS}", allow_not_found=True)
    found = sorted(info.path for info in filesystem.get_file_info(selector) if info.is_file)
    return [read_manifest(f"{dataset_uri}/{MANIFESTS}/{p.rsplit('/', 1)[-1]}") for p in found]


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
