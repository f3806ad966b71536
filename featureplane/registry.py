"""The serving registry: the repository's services and views as JSON, what `online/` reads.

The online handler must not import the feature repository (that imports Spark and every
transformation), so `build_registry` writes down what serving needs — services, views,
versions, join keys and types, features and types, ttl, aggregations, store settings — and
`load_registry` turns it back into immutable specs with `Aggregation` objects, importing
neither Spark, pandas nor Dagster.

The same text is the applied registry (`featureplane.registry_store`, `plan/apply`): a `format`
version that readers check, every list sorted by name (features keep their definition order,
which is meaningful), and `write_registry` prints sorted keys with a fixed indent, so the same
repository always gives the same bytes and a diff of two registries is a plan. Every reader
checks a registry against the format first (`featureplane.registry_format`): a corrupt file is
refused naming the file and the part, never half read.

    {"format": 1,
     "online_store": {"type": "sqlite", "path": "..."},
     "feature_views": [{"name", "version", "online", "join_keys": [{"name", "type"}],
                        "features": [{"name", "type"}], "ttl_seconds",
                        "aggregation_interval_seconds",
                        "aggregations": [{"name", "column", "function", "n",
                                          "time_window_seconds"}],
                        "description", "owner", "tags"}],
     "feature_services": [{"name", "features": [{"view", "features": [...]}],
                           "description", "owner", "tags"}],
     "on_demand_views": [{"name", "version", "features": [{"name", "type", "description"}],
                          "request": {"name", "fields": [{"name", "type", "description"}]}
                                     | null,
                          "sources": [{"request": name} | {"view", "features": [...]}],
                          "function_source", "description", "owner", "tags"}]}

Plan/apply (`featureplane.plan`) diff two registries, so the registry also records what serving
ignores: views' `feature_start_time`, `batch_schedule_seconds`, `offline`, `entities` and
`sources` (names) and each feature's `description`, and three sections `load_registry` skips:

     "entities": [{"name", "join_keys": [{"name", "type"}], "description", "owner"}],
     "sources": [{"name", "path", "table", "timestamp_field", "description", "owner"}],
     "training_datasets": [{"name", "version", "spine", "service", "timestamp_column",
                            "full_feature_names", "description", "owner", "tags"}]

Two sections are optional (registries applied before access existed lack them):
`"access_policies": [{"name", "members", "read", "apply", "description", "owner"}]`
(`featureplane.access.policy`), and in a registry file served alone `"access"`, the
principals with their key digests (`featureplane.access.principals`).

A join key's type is null when its entity does not declare it. A service's selection names a
feature view or an on-demand view. An on-demand view's function travels as source text and is
rebuilt at load (`featureplane.on_demand.function_from_source`, builtins plus a few modules in
scope): a registry is deployed code, to be written only by `featureplane registry`/`apply`,
which sign it; a registry file is verified before any of it is built (`featureplane.signing`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from featureplane.access.gate import PolicySpec
from featureplane.access.principals import Principals
from featureplane.aggregation import Aggregation, approx_count_distinct, last_n
from featureplane.errors import RegistryCorrupt
from featureplane.on_demand import function_from_source
from featureplane.quality import quality_lines
from featureplane.registry_format import (
    FORMAT,
    parse_registry_json,
    registry_problem,
    registry_text,
)
from featureplane.signing import signed, verified
from featureplane.types import DType, Field, dtype_named

if TYPE_CHECKING:
    from featureplane.entity import Entity
    from featureplane.feature_service import FeatureService
    from featureplane.feature_view import FeatureView
    from featureplane.on_demand import OnDemandFeatureView
    from featureplane.repository import Repository
    from featureplane.source import BatchSource
    from featureplane.training_dataset import TrainingDataset


@dataclass(frozen=True)
class ViewSpec:
    """What serving knows of a feature view version; `features` are what it serves."""

    name: str
    version: str
    online: bool
    join_keys: tuple[str, ...]
    join_key_types: tuple[str | None, ...]
    features: tuple[str, ...]
    feature_types: tuple[str, ...]
    ttl: timedelta | None
    interval: timedelta | None
    aggregations: tuple[Aggregation, ...]
    description: str
    owner: str | None
    tags: Mapping[str, str]


@dataclass(frozen=True)
class OnDemandSpec:
    """An on-demand view as served: its function, output schema, and inputs in order — the
    request fields (`None`, fields) or a feature view's features (view name, features)."""

    name: str
    version: str
    schema: tuple[Field, ...]
    request_fields: tuple[Field, ...]
    sources: tuple[tuple[str | None, tuple[str, ...]], ...]
    function: Callable[..., Any]
    description: str
    owner: str | None
    tags: Mapping[str, str]

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.schema)


@dataclass(frozen=True)
class ServiceSpec:
    """A feature service: (view name, feature names) selections in definition order."""

    name: str
    selections: tuple[tuple[str, tuple[str, ...]], ...]
    description: str
    owner: str | None
    tags: Mapping[str, str]


@dataclass(frozen=True)
class ServingRegistry:
    """A loaded registry: specs by name and the online store's settings."""

    format: int
    online_store: Mapping[str, Any]
    views: Mapping[str, ViewSpec]
    services: Mapping[str, ServiceSpec]
    on_demand: Mapping[str, OnDemandSpec]
    policies: tuple[PolicySpec, ...] = ()
    principals: Principals = field(default_factory=Principals.none)
    """Who holds API keys: the registry store's access document, or a file's copy of one."""


def seconds(span: timedelta | None) -> int | float | None:
    """A duration as JSON: whole seconds as an int, else a float; None stays None."""
    if span is None:
        return None
    total = span.total_seconds()
    return int(total) if total.is_integer() else total


def duration(total: float | None) -> timedelta | None:
    """`seconds` read back."""
    return None if total is None else timedelta(seconds=total)


def aggregation_json(aggregation: Aggregation) -> dict[str, Any]:
    """An aggregation as the registry (and a training dataset's manifest) records it."""
    return {
        "name": aggregation.name,
        "column": aggregation.column,
        "function": aggregation.fn.name,
        "n": aggregation.fn.n,
        "time_window_seconds": seconds(aggregation.time_window),
    }


def aggregation_from_json(spec: Mapping[str, Any]) -> Aggregation:
    """`aggregation_json` read back."""
    name, n = spec["function"], spec["n"]
    function = last_n(n) if name == "last_n" else name
    if name == "approx_count_distinct":
        function = approx_count_distinct(n)
    aggregation = Aggregation(
        spec["column"], function, duration(spec["time_window_seconds"]), spec["name"]
    )
    problem = aggregation.definition_problem()
    if problem:
        raise ValueError(problem)
    return aggregation


def _key_types_json(key_types: Mapping[str, DType | None]) -> list[dict[str, str | None]]:
    return [
        {"name": key, "type": None if dtype is None else dtype.name}
        for key, dtype in key_types.items()
    ]


def _view_json(view: FeatureView) -> dict[str, Any]:
    descriptions = {column.name: column.description for column in view.schema}
    return {
        "name": view.name,
        "version": view.version,
        "online": view.online,
        "join_keys": _key_types_json(view.join_key_types),
        "features": [
            {"name": name, "type": dtype.name, "description": descriptions.get(name, "")}
            for name, dtype in view.feature_types.items()
        ],
        "ttl_seconds": seconds(view.ttl),
        "offline": view.offline,
        "feature_start_time": view.feature_start_time.isoformat(),
        "batch_schedule_seconds": seconds(view.batch_schedule),
        "entities": [entity.name for entity in view.entities],
        "sources": list(view.source_names),
        "aggregation_interval_seconds": seconds(view.interval) if view.aggregations else None,
        "aggregations": [aggregation_json(a) for a in view.aggregations],
        "description": view.description,
        "owner": view.owner,
        "tags": dict(view.tags),
    } | _quality_json(quality_lines(view.expectations, view.volume_guard, view.max_invalid_share))


def _quality_json(lines: list[str]) -> dict[str, Any]:
    """`quality` where a definition declares any (serving ignores it; plan shows its changes)."""
    return {"quality": lines} if lines else {}


def _fields_json(fields: Sequence[Field]) -> list[dict[str, str]]:
    return [{"name": f.name, "type": f.dtype.name, "description": f.description} for f in fields]


def _fields(specs: Sequence[Mapping[str, str]]) -> tuple[Field, ...]:
    return tuple(
        Field(spec["name"], dtype_named(spec["type"]), spec["description"]) for spec in specs
    )


def _on_demand_json(view: OnDemandFeatureView) -> dict[str, Any]:
    request = view.request_source
    return {
        "name": view.name,
        "version": view.version,
        "features": _fields_json(view.schema),
        "request": None
        if request is None
        else {"name": request.name, "fields": _fields_json(request.schema)},
        "sources": [
            {"request": source.name}
            if source is request
            else {"view": source.view_name, "features": list(source.features)}
            for source in view.sources
        ],
        "function_source": view.function_source,
        "description": view.description,
        "owner": view.owner,
        "tags": dict(view.tags),
    }


def _service_json(service: FeatureService) -> dict[str, Any]:
    return {
        "name": service.name,
        "features": [{"view": s.view_name, "features": list(s.features)} for s in service.features],
        "description": service.description,
        "owner": service.owner,
        "tags": dict(service.tags),
    }


def _entity_json(entity: Entity) -> dict[str, Any]:
    key_types = {key: entity.join_key_types.get(key) for key in entity.join_keys}
    return {
        "name": entity.name,
        "join_keys": _key_types_json(key_types),
        "description": entity.description,
        "owner": entity.owner,
    }


def _source_json(source: BatchSource) -> dict[str, Any]:
    return {
        "name": source.name,
        "path": source.path,
        "table": source.table,
        "timestamp_field": source.timestamp_field,
        "description": source.description,
        "owner": source.owner,
    } | _quality_json(
        quality_lines(source.expectations, source=source.name, quiet_period=source.quiet_period)
    )


def _dataset_json(dataset: TrainingDataset) -> dict[str, Any]:
    return {
        "name": dataset.name,
        "version": dataset.version,
        "spine": dataset.spine_name,
        "service": dataset.features.name,
        "timestamp_column": dataset.spine_timestamp,
        "full_feature_names": dataset.full_feature_names,
        "description": dataset.description,
        "owner": dataset.owner,
        "tags": dict(dataset.tags),
    }


def build_registry(
    repository: Repository,
    online_store: Mapping[str, Any],
    principals: Principals | None = None,
) -> dict[str, Any]:
    """The registry of a repository served from the store of `online_store` settings; a
    registry file to serve alone carries the `principals` too (a registry store keeps them
    apart: `featureplane.access.principals`)."""
    access = {} if principals is None else {"access": principals.to_json()}
    return {
        **access,
        "format": FORMAT,
        "access_policies": [p.to_json() for _, p in sorted(repository.access_policies.items())],
        "online_store": dict(online_store),
        "entities": [_entity_json(e) for _, e in sorted(repository.entities.items())],
        "sources": [_source_json(s) for _, s in sorted(repository.sources.items())],
        "training_datasets": [
            _dataset_json(d) for _, d in sorted(repository.training_datasets.items())
        ],
        "feature_views": [_view_json(v) for _, v in sorted(repository.feature_views.items())],
        "feature_services": [
            _service_json(s) for _, s in sorted(repository.feature_services.items())
        ],
        "on_demand_views": [
            _on_demand_json(v) for _, v in sorted(repository.on_demand_views.items())
        ],
    }


def write_registry(registry: Mapping[str, Any], path: str | Path) -> Path:
    """Write the registry signed (servers run its code: `featureplane.signing`) and atomically
    (a process loading it never sees half a file, nor a file and another's signature)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(registry_text(signed(registry)))
    partial.replace(path)
    return path


def _view(spec: Mapping[str, Any]) -> ViewSpec:
    return ViewSpec(
        name=spec["name"],
        version=spec["version"],
        online=spec["online"],
        join_keys=tuple(key["name"] for key in spec["join_keys"]),
        join_key_types=tuple(key["type"] for key in spec["join_keys"]),
        features=tuple(feature["name"] for feature in spec["features"]),
        feature_types=tuple(feature["type"] for feature in spec["features"]),
        ttl=duration(spec["ttl_seconds"]),
        interval=duration(spec["aggregation_interval_seconds"]),
        aggregations=tuple(aggregation_from_json(a) for a in spec["aggregations"]),
        description=spec["description"],
        owner=spec["owner"],
        tags=MappingProxyType(dict(spec["tags"])),
    )


def _on_demand(spec: Mapping[str, Any]) -> OnDemandSpec:
    request = spec["request"]
    sources = [
        (None, tuple(f["name"] for f in request["fields"]))
        if "request" in source
        else (source["view"], tuple(source["features"]))
        for source in spec["sources"]
    ]
    try:
        function = function_from_source(spec["function_source"], spec["name"])
    except Exception as error:  # noqa: BLE001 - whatever shipped code does, it is not a function
        raise ValueError(f"function_source: {type(error).__name__}: {error}") from error
    return OnDemandSpec(
        name=spec["name"],
        version=spec["version"],
        schema=_fields(spec["features"]),
        request_fields=_fields(request["fields"]) if request else (),
        sources=tuple(sources),
        function=function,
        description=spec["description"],
        owner=spec["owner"],
        tags=MappingProxyType(dict(spec["tags"])),
    )


def _service(spec: Mapping[str, Any]) -> ServiceSpec:
    return ServiceSpec(
        name=spec["name"],
        selections=tuple((s["view"], tuple(s["features"])) for s in spec["features"]),
        description=spec["description"],
        owner=spec["owner"],
        tags=MappingProxyType(dict(spec["tags"])),
    )


def _specs(
    registry: Mapping[str, Any],
    section: str,
    build: Callable[[Mapping[str, Any]], Any],
    origin: str,
) -> dict[str, Any]:
    """The section's specs by name; a value no spec can be built of names its object."""
    specs = {}
    for spec in registry[section]:
        try:
            specs[spec["name"]] = build(spec)
        except ValueError as error:
            raise RegistryCorrupt(origin, f"{section}[{spec['name']}]: {error}") from error
    return specs


def load_registry(
    source: str | Path | Mapping[str, Any], origin: str | None = None
) -> ServingRegistry:
    """A registry from its file or its dict (read from `origin`, which errors name).

    Anything that is not a registry of this format — truncated, not JSON, another format, a
    part missing, mistyped or naming what is not there — raises RegistryCorrupt naming the
    file and the part, checked before any spec is built (`featureplane.registry_format`). A
    file not signed by a trusted key then raises RegistryUntrusted (`featureplane.signing`);
    a dict is the caller's to have verified (`RegistryStore` reads do) or built.
    """
    if isinstance(source, Mapping):
        registry, origin = source, origin or "<registry>"
    else:
        origin = origin or str(source)
        registry = parse_registry_json(Path(source).read_bytes(), origin)
    problem = registry_problem(registry)
    if problem:
        raise RegistryCorrupt(origin, problem)
    if not isinstance(source, Mapping):
        registry = verified(registry, origin)
    return ServingRegistry(
        format=FORMAT,
        online_store=MappingProxyType(dict(registry["online_store"])),
        views=MappingProxyType(_specs(registry, "feature_views", _view, origin)),
        services=MappingProxyType(_specs(registry, "feature_services", _service, origin)),
        on_demand=MappingProxyType(_specs(registry, "on_demand_views", _on_demand, origin)),
        policies=tuple(map(PolicySpec.from_json, registry.get("access_policies", []))),
        principals=Principals.from_json(registry["access"])
        if "access" in registry
        else Principals.none(),
    )
