"""Online feature serving over a registry and an online store: the one dispatch behind the
Lambda handler, the local HTTP server and `FeatureStore.get_online_features`.

Routes (`FeatureServer.respond(method, path, body)`):
- `GET /health` → `{"status": "ok", "registry_format": 1, "feature_services": 2}`
- `GET /v1/feature-services` → `{"feature_services": [{"name", "description", "owner", "tags",
  "join_keys": [{"name", "type"}], "request_data": [{"name", "type"}], "features": [...]}]}`
- `POST /v1/feature-services/{name}/get-features` with
  `{"entities": {"user_id": 1, "ad_id": 7}, "request_data": {...}, "features": [...]}`
- `POST /v1/feature-services/{name}/get-features-batch` with `{"entities": [{...}, ...], ...}`
  (one object per row, at most `Limits.max_batch_rows`).

`entities` must hold exactly the service's join keys, of their declared types (an Int64 key
takes a JSON integer, not `"12"` nor `true`; bodies are parsed with 64-bit integers, and a
larger one reads as a float, which no integer key accepts); `features` optionally picks a subset
of the service's features, served in its order, with the same join keys and request data as the
whole service; `request_data` holds exactly the request fields of the service's on-demand views
(timestamps and dates as ISO 8601 text), and may be left out when the features asked for need
none: one object, or in a batch one for every row or a list of one per row. On-demand features
are computed from the fields of the view's own request source and the features it reads, by the
function the registry ships; they are `present`, with no event time or age. A function that
fails on the request's values gives 422.

Features are named `<view>__<feature>`, as in training data, so a name is unique across the
views of a service. Response (both routes; one result per feature, in the order of the
response's `features` (the service's, or the request's subset), each a column over the entity
rows in request order, as Feast's feature server answers):

    {"service": "ctr", "features": ["ad_delivery__impressions_7d", ...],
     "results": [{"values": [12, 0, ...],
                  "status": ["present" | "missing" | "expired", ...],
                  "event_timestamps": ["2026-10-03T10:00:00+00:00" | null, ...],
                  "age_seconds": [5400.0 | null, ...]}, ...],
     "metadata": {"served_at": "...", "feature_versions": {view: version}}}

`online.client.by_feature` turns a response into one mapping per row, keyed by feature.
Bodies are strict JSON: a NaN or infinite value is sent as null (its status says present).

Status: `missing` when the store has no record (no data for the entity, or an offline-only
view); `expired` when a row-level view has a ttl and the record is older than it (value null,
time and age still reported); `present` otherwise. Aggregations are finalized from the record's
tiles at request time for the current time; an entity without a record is `missing` with the
value of an empty window (counts 0, others null), which is what training data holds for it. The
event time of aggregates is the end of their latest tile.

Errors are `{"error": message}`: 400 for malformed JSON, missing, extra or mistyped join keys,
unknown features or too many rows; 404 for an unknown route or service; 405 for a wrong
method; 413 for a body over `Limits.max_body_bytes`; 503 when the store stays throttled.

Everything that does not depend on the request is computed once per service when the server
is built (key checks, view keys, output names, aggregation windows). A request reads all its
rows and views from the store in one `read_items` and computes view by view, a column at a
time: the features of a view share one list of statuses, event times and ages.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from copy import deepcopy
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import orjson

from featureplane.aggregation import TILES, WindowReader, anchor_micros
from featureplane.errors import OnDemandFeatureViewError
from featureplane.feature_service import served_name
from featureplane.on_demand import OutputSchema, compute_columns
from featureplane.online_store import EntityKeyError, StoreThrottled, StoreUnavailable, open_store
from featureplane.online_store.encoding import (
    MICROSECOND,
    decode_values,
    entity_texts,
    from_micros,
    key_part,
    key_prefix,
    prefixed_keys,
    to_micros,
)
from featureplane.online_store.store import OnlineStore, StoredItem
from featureplane.registry import OnDemandSpec, ServiceSpec, ServingRegistry, ViewSpec
from featureplane.types import DType, Field, dtype_named, float32

JSON_HEADERS = (("content-type", "application/json"),)
SHOWN_NAMES = 10
"""Names an error message lists at most: it never echoes an unbounded request."""
SHOWN_PATH = 100
"""Characters of a request's path an error message shows at most."""
HEALTH_PROBE = "_health#probe"
"""A key no record has: `/health` reads it, so the store must answer for health to be ok."""
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})?")
"""Timestamps requests may send: RFC 3339 date-times (no offset means UTC), nothing else
`datetime.fromisoformat` would read (`"11111111"`, `"2026-W42-3"`)."""
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
logger = logging.getLogger(__name__)
SUBSET_CACHE = 256
"""Feature subsets whose plans are kept per service (requests usually repeat a few)."""
REQUEST_FIELDS = frozenset({"entities", "request_data", "features"})


class RequestError(ValueError):
    """A request that cannot be served as sent; `status` is its HTTP status (4xx)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """Request limits; `from_env` reads `FEATUREPLANE_MAX_BATCH_ROWS` and
    `FEATUREPLANE_MAX_BODY_BYTES`."""

    max_batch_rows: int = 1000
    max_body_bytes: int = 1 << 20

    @classmethod
    def from_env(cls) -> Limits:
        return cls(
            max_batch_rows=int(os.environ.get("FEATUREPLANE_MAX_BATCH_ROWS", cls.max_batch_rows)),
            max_body_bytes=int(os.environ.get("FEATUREPLANE_MAX_BODY_BYTES", cls.max_body_bytes)),
        )


def clock_from_env() -> Callable[[], datetime]:
    """The serving clock: real time, or the fixed moment `$FEATUREPLANE_AS_OF` (ISO 8601, UTC
    unless it says otherwise), which lets demos and benchmarks serve historical data that would
    be expired or out of every window by now. It sets the request time only: the store's
    records are the latest, so a row written after that moment is served, with a negative age."""
    text = os.environ.get("FEATUREPLANE_AS_OF")
    if not text:
        return lambda: datetime.now(UTC)
    moment = datetime.fromisoformat(text)
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return lambda: moment


@dataclass(frozen=True)
class Response:
    """An HTTP response: status, JSON body bytes and headers."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = JSON_HEADERS


def _int_check(bits: int) -> Callable[[Any], bool]:
    low, high = -(1 << (bits - 1)), 1 << (bits - 1)
    return lambda value: type(value) is int and low <= value < high


KEY_CHECKS: dict[str | None, tuple[Callable[[Any], bool], str]] = {
    "String": (lambda value: type(value) is str, "a string"),
    "Int64": (_int_check(64), "an integer (64-bit)"),
    "Int32": (_int_check(32), "an integer (32-bit)"),
    None: (lambda value: type(value) in (str, int), "a string or an integer"),
}
"""Join key type → (check of a decoded JSON value, what it expects); bool is not an int."""


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"cannot serve a {type(value).__name__} value")


_encode_exact = json.JSONEncoder(
    separators=(",", ":"), allow_nan=False, default=_json_default
).encode


def _finite(value: Any) -> Any:
    """`value` with NaN and infinities as None in its dicts and lists, as orjson writes them."""
    if type(value) is float:
        return value if math.isfinite(value) else None
    if type(value) is dict:
        return {key: _finite(item) for key, item in value.items()}
    if type(value) in (list, tuple):
        return [_finite(item) for item in value]
    return value


def encode_json(payload: Any) -> bytes:
    """A response body: compact JSON by orjson, NaN and infinities as null (JSON has none);
    through `json` only when an int is beyond 64 bits, which orjson refuses."""
    try:
        return orjson.dumps(payload, default=_json_default)
    except orjson.JSONEncodeError:
        return _encode_exact(_finite(payload)).encode()


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


def _service_plan(
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


class FeatureServer:
    """Serves a registry's feature services from an online store; see the module docstring.

    `clock` gives the request time (UTC), which decides expiry, ages and aggregation windows
    (default: `clock_from_env`).
    """

    def __init__(
        self,
        registry: ServingRegistry,
        store: OnlineStore | None = None,
        limits: Limits | None = None,
        clock: Callable[[], datetime] | None = None,
    ):
        self.registry = registry
        self.store = store if store is not None else _open(registry.online_store)
        self.limits = limits or Limits.from_env()
        self.clock = clock or clock_from_env()
        self.plans = {
            name: _service_plan(service, registry) for name, service in registry.services.items()
        }
        self._subsets: dict[tuple[str, tuple[str, ...]], ServicePlan] = {}
        self._listing = {"feature_services": [self._describe(name) for name in sorted(self.plans)]}
        self._health = {
            "status": "ok",
            "registry_format": registry.format,
            "feature_services": len(self.plans),
        }

    def close(self) -> None:
        self.store.close()

    # ---- HTTP-shaped entry point ---------------------------------------------------------------

    def respond(
        self,
        method: str,
        path: str,
        body: bytes | str | None,
        content_type: str | None = None,
    ) -> Response:
        """The response to one HTTP request; client errors become 4xx, a store that does not
        answer 503, anything unexpected a logged 500 with a request id (never an exception).
        A body sent with a `content_type` other than JSON is refused (415): browsers send
        cross-origin `text/plain` posts without asking."""
        try:
            if body and content_type and not _json_type(content_type):
                raise RequestError(
                    415, f"send the body as application/json, not {content_type[:60]!r}"
                )
            payload = self._route(method.upper(), path, body)
        except RequestError as error:
            return _error(error.status, str(error))
        except EntityKeyError as error:
            return _error(400, str(error))
        except OnDemandFeatureViewError as error:
            return _error(422, f"cannot compute the request's on-demand features: {error}")
        except StoreThrottled as error:  # StoreUnavailable too: no answer, or no connection
            state = "unavailable" if isinstance(error, StoreUnavailable) else "throttled"
            return Response(
                503,
                encode_json({"error": f"online store {state}, retry later: {error}"}),
                (*JSON_HEADERS, ("retry-after", "1")),
            )
        except Exception:  # noqa: BLE001 - a server error is logged and answered, never raised
            return internal_error(f"{method[:10]} {path[:SHOWN_PATH]}")
        return Response(200, encode_json(payload))

    def _route(self, method: str, path: str, body: bytes | str | None) -> dict[str, Any]:
        parts = path.strip("/").split("/")
        if parts == ["health"]:
            _allow(method, "GET", path)
            self.store.read_items([HEALTH_PROBE])  # raises when the store does not answer
            return self._health
        if parts[:2] != ["v1", "feature-services"]:
            raise RequestError(404, f"no route {_cut(path)!r}")
        if len(parts) == 2:
            _allow(method, "GET", path)
            return self._listing
        if len(parts) == 4 and parts[3] in ("get-features", "get-features-batch"):
            _allow(method, "POST", path)
            request = self._parse(body)
            return self._serve(parts[2], request, batch=parts[3] == "get-features-batch")
        raise RequestError(404, f"no route {_cut(path)!r}")

    def _parse(self, body: bytes | str | None) -> dict[str, Any]:
        if isinstance(body, str):
            try:
                body = body.encode()
            except UnicodeEncodeError:  # a lone surrogate: no UTF-8 text has one
                raise RequestError(400, "body is not valid UTF-8 text") from None
        if not body:
            raise RequestError(400, 'empty body: send a JSON object like {"entities": {...}}')
        if len(body) > self.limits.max_body_bytes:
            raise RequestError(
                413, f"body of {len(body)} bytes is over the limit of {self.limits.max_body_bytes}"
            )
        try:
            request = orjson.loads(body)
        except (ValueError, RecursionError) as error:
            raise RequestError(400, f"body is not valid JSON: {error}") from None
        if type(request) is not dict:
            raise RequestError(400, "body must be a JSON object with an 'entities' field")
        return request

    # ---- programmatic entry point ---------------------------------------------------------------

    def get_features(
        self,
        service: str,
        entities: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        request_data: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        features: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """The response for one entity row (a mapping) or a batch (a list of mappings), whose
        lists are the caller's to change (a response to encode shares them within a view).
        `request_data`: one mapping for every row, or in a batch a list of one per row."""
        batch = not isinstance(entities, Mapping)
        request: dict[str, Any] = {
            "entities": [dict(row) for row in entities] if batch else dict(entities)
        }
        if request_data is not None:
            request["request_data"] = (
                dict(request_data)
                if isinstance(request_data, Mapping)
                else [dict(row) for row in request_data]
            )
        if features is not None:
            request["features"] = list(features)
        response = self._serve(service, request, batch)
        response["results"] = [
            {field: list(column) for field, column in result.items()}
            for result in response["results"]
        ]
        return response

    # ---- serving --------------------------------------------------------------------------------

    def _serve(self, name: str, request: dict[str, Any], batch: bool) -> dict[str, Any]:
        plan = self.plans.get(name)
        if plan is None:
            known = ", ".join(sorted(self.plans)) or "none"
            raise RequestError(404, f"no feature service {name!r} (known: {known})")
        unexpected = request.keys() - REQUEST_FIELDS
        if unexpected:
            raise RequestError(
                400,
                f"unexpected fields {sorted(unexpected)}; a request has "
                "'entities', optionally 'request_data' and 'features'",
            )
        if "features" in request:
            plan = self._subset(plan, request["features"])
        rows = self._rows(request.get("entities"), batch)
        keys = [_key_parts(plan, row, index if batch else None) for index, row in enumerate(rows)]
        inputs = _request_rows(plan, request.get("request_data"), len(rows), batch)
        now = self.clock()
        texts: dict[tuple[int, ...], list[str]] = {}  # per join keys, shared by their views
        item_keys: list[str] = []
        for view in plan.views:
            if view.view.online:
                at = view.key_positions
                if at not in texts:
                    texts[at] = entity_texts([[k[i] for i in at] for k in keys])
                item_keys += prefixed_keys(view.prefix, texts[at])
        items = self.store.read_items(item_keys) if item_keys else []
        return {
            "service": plan.name,
            "features": list(plan.outputs),
            "results": _columns(plan, items, inputs, now),
            "metadata": {"served_at": now.isoformat(), "feature_versions": plan.versions},
        }

    def _rows(self, entities: Any, batch: bool) -> list[Any]:
        if not batch:
            if type(entities) is not dict:
                raise RequestError(400, "'entities' must be a JSON object of join key values")
            return [entities]
        if type(entities) is not list or not entities:
            raise RequestError(400, "'entities' must be a non-empty JSON array of join key objects")
        if len(entities) > self.limits.max_batch_rows:
            raise RequestError(
                400,
                f"too many rows: {len(entities)}, the limit is {self.limits.max_batch_rows}",
            )
        return entities

    def _subset(self, plan: ServicePlan, features: Any) -> ServicePlan:
        if type(features) is not list or not features:
            raise RequestError(400, "'features' must be a non-empty JSON array of feature names")
        wanted = tuple(features)
        if not all(type(f) is str for f in wanted):
            raise RequestError(400, "'features' must be a JSON array of feature names (strings)")
        cached = self._subsets.get((plan.name, wanted))
        if cached is not None:
            return cached
        unknown = [f for f in wanted if f not in plan.outputs]
        if unknown:
            raise RequestError(
                400,
                f"unknown features {unknown[:10]} for service {plan.name!r} "
                f"(features: {', '.join(plan.outputs)})",
            )
        if len(set(wanted)) != len(wanted):
            raise RequestError(400, "'features' names a feature twice")
        service = self.registry.services[plan.name]
        subset = _service_plan(service, self.registry, wanted)
        if len(self._subsets) < SUBSET_CACHE:
            self._subsets[(plan.name, wanted)] = subset
        return subset

    def _describe(self, name: str) -> dict[str, Any]:
        service, plan = self.registry.services[name], self.plans[name]
        return {
            "name": name,
            "description": service.description,
            "owner": service.owner,
            "tags": dict(service.tags),
            "join_keys": [
                {"name": key, "type": dtype}
                for key, dtype in zip(plan.join_keys, plan.key_types, strict=True)
            ],
            "request_data": [
                {"name": field.name, "type": field.dtype.name}
                for field in plan.request_fields.values()
            ],
            "features": list(plan.outputs),
        }


def _open(settings: Mapping[str, Any]) -> OnlineStore:
    """The store of the settings; an embedded SQLite file gets its table (a DynamoDB table is
    provisioned, not created by a Lambda cold start)."""
    store = open_store(settings)
    if settings.get("type", "sqlite") == "sqlite":
        store.ensure_table()
    return store


def _allow(method: str, allowed: str, path: str) -> None:
    if method != allowed:
        raise RequestError(405, f"{_cut(path)} takes {allowed}, not {_cut(method)}")


def _cut(text: str, limit: int = SHOWN_PATH) -> str:
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _json_type(content_type: str) -> bool:
    """`application/json` or a `+json` type, parameters aside."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def internal_error(request: str, status: int = 500) -> Response:
    """A 500 for an unexpected error (503: nothing to serve with, such as a registry that does
    not load), logged with its traceback under a request id, which the answer gives instead of
    the error: it may hold what a client must not see."""
    request_id = os.urandom(16).hex()
    logger.exception("request %s failed, request id %s", request, request_id)
    retry = (("retry-after", "5"),) if status == 503 else ()
    error = "internal server error" if status == 500 else "service unavailable, retry later"
    return Response(
        status,
        encode_json({"error": error, "request_id": request_id}),
        (*JSON_HEADERS, ("x-request-id", request_id), *retry),
    )


def _error(status: int, message: str) -> Response:
    return Response(status, encode_json({"error": message}))


def _key_parts(plan: ServicePlan, row: Any, index: int | None) -> list[str]:
    """The row's join key values in the service's order, checked against their types, as
    `encoding.key_part` texts."""
    where = "entities" if index is None else f"entities[{index}]"
    if type(row) is not dict:
        raise RequestError(400, f"{where} must be a JSON object of join key values")
    if row.keys() != plan.key_set:
        problems = _mismatch(plan.join_keys, row, "join keys")
        raise RequestError(
            400,
            f"{where}: {problems}; service {plan.name!r} takes join keys {list(plan.join_keys)}",
        )
    values = []
    for key, check, expects in plan.key_checks:
        value = row[key]
        if not check(value):
            raise RequestError(
                400, f"{where}: join key {key!r} must be {expects}, got {_shown(value)}"
            )
        values.append(key_part(value))
    return values


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


def _columns(
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


def _mismatch(expected: Collection[str], given: Mapping[str, Any], what: str) -> str:
    """What is missing from and extra in `given` against the `expected` names (the first
    few of each: a request's names are not echoed without bound)."""
    missing = [name for name in expected if name not in given]
    extra = [name for name in given if name not in expected]
    problems = [f"missing {what} {_names(missing)}"] if missing else []
    kind = "keys" if what == "join keys" else what
    problems += [f"unexpected {kind} {_names(extra)}"] if extra else []
    return " and ".join(problems)


def _names(names: list[str]) -> str:
    shown = [_cut(name, 40) for name in names[:SHOWN_NAMES]]
    more = f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else ""
    return f"{shown}{more}"


def _shown(value: Any) -> str:
    """A request value as JSON, cut to 40 characters for an error message (a value nested
    too deep to encode is named by its type)."""
    try:
        shown = orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return f"a {type(value).__name__} nested too deep to show"
    return _cut(shown, 40)


def _request_rows(plan: ServicePlan, data: Any, rows: int, batch: bool) -> list[dict[str, Any]]:
    """Each row's request data, checked and typed for the service's on-demand views: one
    object for every row, or in a batch a list of one object per row."""
    if not plan.request_fields:
        if data not in (None, {}):
            raise RequestError(400, f"service {plan.name!r} takes no 'request_data'")
        return [{}] * rows
    if data is None:
        if not plan.request_needed:
            return [{}] * rows
        raise RequestError(
            400,
            f"service {plan.name!r} needs 'request_data' with fields {list(plan.request_fields)}",
        )
    if batch and type(data) is list:
        if len(data) != rows:
            raise RequestError(
                400, f"'request_data' has {len(data)} objects for {rows} entity rows"
            )
        return [_request_row(plan, row, f"request_data[{i}]") for i, row in enumerate(data)]
    return [_request_row(plan, data, "request_data")] * rows


def _request_row(plan: ServicePlan, data: Any, where: str) -> dict[str, Any]:
    fields = plan.request_fields
    if type(data) is not dict:
        raise RequestError(400, f"{where} must be a JSON object with fields {list(fields)}")
    if data.keys() != fields.keys():
        problems = _mismatch(fields, data, "fields")
        raise RequestError(400, f"{where}: {problems}; service {plan.name!r} takes {list(fields)}")
    typed = {}
    for name, field in fields.items():
        try:
            typed[name] = _typed(data[name], field.dtype)
        except (TypeError, ValueError, OverflowError):  # overflow: beyond the years 1-9999 in UTC
            raise RequestError(
                400, f"{where}: field {name!r} must be {field.dtype.name}, got {_shown(data[name])}"
            ) from None
    return typed


def _typed(value: Any, dtype: DType) -> Any:
    """A decoded JSON value as a value of `dtype` (timestamps and dates from ISO 8601 text;
    timestamps in UTC, and one without an offset is UTC), or TypeError/ValueError (or
    OverflowError for a moment outside the years 1-9999 in UTC)."""
    if value is None:
        return None
    name = dtype.name
    if name.startswith("Array("):
        if type(value) is not list:
            raise TypeError(value)
        element = dtype_named(name[len("Array(") : -1])
        return [_typed(item, element) for item in value]
    if name in ("Int32", "Int64"):
        if not _int_check(32 if name == "Int32" else 64)(value):
            raise TypeError(value)
        return value
    if name in ("Float32", "Float64"):
        if type(value) not in (int, float):
            raise TypeError(value)
        return float32(value) if name == "Float32" else float(value)  # as the offline column
    if name == "Timestamp":
        if type(value) is not str or not RFC3339.fullmatch(value):
            raise ValueError(value)
        moment = datetime.fromisoformat(value)
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    if name == "Date":
        if type(value) is not str or not DATE.fullmatch(value):
            raise ValueError(value)
        return date.fromisoformat(value)
    if type(value) is not {"String": str, "Bool": bool}[name]:
        raise TypeError(value)
    return value
