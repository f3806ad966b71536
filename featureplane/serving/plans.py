"""Service plans: what a service (or a feature subset of it) reads and serves, computed once
per service when the server is built."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from featureplane.aggregation import WindowReader
from featureplane.feature_service import served_name
from featureplane.on_demand import OutputSchema
from featureplane.online_store.encoding import (
    MICROSECOND,
    key_prefix,
)
from featureplane.registry import OnDemandSpec, ServiceSpec, ServingRegistry, ViewSpec
from featureplane.serving.request import KEY_CHECKS
from featureplane.types import Field


@dataclass(frozen=True)
class ViewPlan:
    """How one view of a service is read and reported, precomputed. `outputs` name the
    features served; None marks one read only as an input of an on-demand view."""

    view: ViewSpec
    prefix: str
    """The stored key prefix of the view version (`encoding.key_prefix`)."""
    key_positions: tuple[int, ...]
    features: tuple[str, ...]
    outputs: tuple[str | None, ...]
    windows: WindowReader | None
    """The aggregations of the features, for an aggregate view."""
    ttl_micros: int | None


@dataclass(frozen=True)
class OnDemandPlan:
    """An on-demand view of a service: its spec, the names of the features it serves, and where
    its inputs come from: per source, None for the request (with its fields' names) or the
    index of the view plan, with the features' names and positions among that plan's features,
    and the names of the inputs that are arrays (copied for each call: the function may change
    them, and they are also served or shared by the request's rows)."""

    spec: OnDemandSpec
    outputs: tuple[str, ...]
    output: OutputSchema
    positions: tuple[int, ...]
    """Where each served feature sits among the function's outputs."""
    inputs: tuple[tuple[int | None, tuple[str, ...], tuple[int, ...], tuple[str, ...]], ...]


def _on_demand_plan(
    spec: OnDemandSpec, features: Sequence[str], outputs: Sequence[str], views: Sequence[ViewPlan]
) -> OnDemandPlan:
    names = [view.view.name for view in views]
    request_types = {field.name: field.dtype.name for field in spec.request_fields}
    inputs = []
    for source, wanted in spec.sources:
        if source is None:
            index, at, types = None, (), request_types
        else:
            index = names.index(source)
            plan = views[index]
            at = tuple(plan.features.index(f) for f in wanted)
            types = dict(zip(plan.view.features, plan.view.feature_types, strict=True))
        arrays = tuple(f for f in wanted if types[f].startswith("Array("))
        inputs.append((index, wanted, at, arrays))
    output = OutputSchema.of(spec.schema)
    names = [name for name, _ in output.columns]
    return OnDemandPlan(
        spec=spec,
        outputs=tuple(outputs),
        output=output,
        positions=tuple(names.index(feature) for feature in features),
        inputs=tuple(inputs),
    )


@dataclass(frozen=True)
class ServicePlan:
    """A service (or a feature subset of it) ready to serve."""

    name: str
    join_keys: tuple[str, ...]
    key_set: frozenset[str]
    key_types: tuple[str | None, ...]
    key_checks: tuple[tuple[str, Callable[[Any], bool], str], ...]
    views: tuple[ViewPlan, ...]
    on_demand: tuple[OnDemandPlan, ...]
    request_fields: dict[str, Field]
    """The request fields of the whole service's on-demand views: what `request_data` holds."""
    request_needed: bool
    """Whether the on-demand views served need request data (a subset may need none)."""
    outputs: tuple[str, ...]
    positions: tuple[int, ...] | None
    """Where each output sits among the features as computed (every view's, then every
    on-demand view's); None when they are computed in output order."""
    versions: dict[str, str]


def _view_plan(
    view: ViewSpec, features: Mapping[str, str | None], join_keys: Sequence[str]
) -> ViewPlan:
    by_name = {a.name: a for a in view.aggregations}
    aggregations = [by_name[f] for f in features] if view.aggregations else []
    return ViewPlan(
        view=view,
        prefix=key_prefix(view.name, view.version),
        key_positions=tuple(join_keys.index(key) for key in view.join_keys),
        features=tuple(features),
        outputs=tuple(features.values()),
        windows=WindowReader(aggregations) if aggregations else None,
        ttl_micros=None if view.ttl is None else view.ttl // MICROSECOND,
    )


Selected = tuple[
    dict[str, dict[str, str | None]], list[tuple[OnDemandSpec, list[str], list[str]]], list[str]
]


def _selected(
    service: ServiceSpec, registry: ServingRegistry, wanted: Collection[str] | None
) -> Selected:
    """The features of a service (or the `wanted` ones) to read per view, named as served or
    None when read only as an on-demand input; the on-demand views with their features; and
    the served names in the service's order."""
    reads: dict[str, dict[str, str | None]] = {}
    on_demand: list[tuple[OnDemandSpec, list[str], list[str]]] = []
    outputs: list[str] = []
    for view_name, features in service.selections:
        chosen = [f for f in features if wanted is None or served_name(view_name, f) in wanted]
        named = [served_name(view_name, f) for f in chosen]
        outputs += named
        spec = registry.on_demand.get(view_name)
        if spec is None:
            if chosen:
                reads.setdefault(view_name, {}).update(zip(chosen, named, strict=True))
            continue
        if chosen:
            on_demand.append((spec, chosen, named))
            for source, inputs in spec.sources:
                if source is not None:
                    read = reads.setdefault(source, {})
                    for feature in inputs:
                        read.setdefault(feature, None)
    return reads, on_demand, outputs


def service_plan(
    service: ServiceSpec, registry: ServingRegistry, wanted: Sequence[str] | None = None
) -> ServicePlan:
    """The plan of a service, or of the `wanted` features of it, served in that order. Views
    are read once each: for their served features and for the inputs of the on-demand views.
    A subset takes the same join keys and request fields as the whole service, so that a
    client keeps one request shape whatever features it picks."""
    service_reads, service_on_demand, outputs = _selected(service, registry, None)
    reads, on_demand = service_reads, service_on_demand
    if wanted is not None:
        reads, on_demand, _ = _selected(service, registry, set(wanted))
        outputs = list(wanted)
    join_keys: list[str] = []
    key_types: dict[str, str | None] = {}
    for view_name in service_reads:
        view = registry.views[view_name]
        for key, dtype in zip(view.join_keys, view.join_key_types, strict=True):
            if key not in key_types or key_types[key] is None:
                key_types[key] = dtype
            if key not in join_keys:
                join_keys.append(key)
    plans = [_view_plan(registry.views[name], read, join_keys) for name, read in reads.items()]
    on_demand_plans = [_on_demand_plan(*args, plans) for args in on_demand]
    computed = [name for plan in plans for name in plan.outputs]
    computed += [name for plan in on_demand_plans for name in plan.outputs]
    return ServicePlan(
        name=service.name,
        join_keys=tuple(join_keys),
        key_set=frozenset(join_keys),
        key_types=tuple(key_types[key] for key in join_keys),
        key_checks=tuple((key, *KEY_CHECKS[key_types[key]]) for key in join_keys),
        views=tuple(plans),
        on_demand=tuple(on_demand_plans),
        request_fields={f.name: f for spec, _, _ in service_on_demand for f in spec.request_fields},
        request_needed=any(spec.request_fields for spec, _, _ in on_demand),
        outputs=tuple(outputs),
        positions=None if computed == outputs else tuple(map(computed.index, outputs)),
        versions={
            **{plan.view.name: plan.view.version for plan in plans},
            **{spec.name: spec.version for spec, _, _ in on_demand},
        },
    )
