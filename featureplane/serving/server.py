"""The feature server: routes a request, checks it and serves it from the online store.

Everything that does not depend on the request is computed once per service when the server
is built (key checks, view keys, output names, aggregation windows). A request reads all its
rows and views from the store in one `read_items` and computes view by view, a column at a
time: the features of a view share one list of statuses, event times and ages.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from featureplane.access import AccessDenied, Gate, Principal
from featureplane.errors import OnDemandFeatureViewError
from featureplane.online_store import EntityKeyError, StoreThrottled, StoreUnavailable, open_store
from featureplane.online_store.encoding import (
    entity_texts,
    prefixed_keys,
)
from featureplane.online_store.store import OnlineStore
from featureplane.registry import ServingRegistry
from featureplane.serving.audit import AuditLog
from featureplane.serving.columns import response_columns
from featureplane.serving.openapi import openapi_body
from featureplane.serving.plans import ServicePlan, service_plan
from featureplane.serving.rate_limits import RateLimited, RateLimits
from featureplane.serving.request import (
    Limits,
    RequestError,
    allow_method,
    entity_rows,
    is_json,
    parse_body,
    request_rows,
    row_key_parts,
)
from featureplane.serving.responses import (
    SHOWN_PATH,
    Response,
    cut,
    encode_json,
    error_response,
    internal_error,
    names_shown,
)
from featureplane.settings import unsigned_registry_allowed

HEALTH_PROBE = "_health#probe"
"""A key no record has: `/health` reads it, so the store must answer for health to be ok."""

logger = logging.getLogger(__name__)
SUBSET_CACHE = 256
"""Feature subsets whose plans are kept per service (requests usually repeat a few)."""
REQUEST_FIELDS = frozenset({"entities", "request_data", "features"})
CHALLENGE = ("www-authenticate", 'Bearer realm="featureplane"')
AUTH_OFF = (
    "AUTHENTICATION IS OFF: every request is served to anyone who reaches this server "
    "(featureplane serve --no-auth); never expose it"
)
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
"""A request id a client or API Gateway sent, kept when it is safe to log and echo."""


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
class Admitted:
    """A serving request that passed the door: what `finish` computes. Plain data, so that a
    worker process can compute it."""

    path: str
    served: tuple[str, dict[str, Any], bool]
    """The service's name, the request object, whether it is a batch."""
    rows: int
    """Entity rows asked for: the request's cost."""
    principal: str | None = None
    """Who asks: the authenticated principal's name (None while authentication is off)."""
    request_id: str = ""
    started: float = 0.0
    """`time.monotonic()` at the door (one clock for every process of the machine)."""


class FeatureServer:
    """Serves a registry's feature services from an online store; see the module docstring.

    `clock` gives the request time (UTC), which decides expiry, ages and aggregation windows
    (default: `clock_from_env`). `authenticate=False` lets every request in as nobody (for
    `featureplane serve --no-auth`, and loud about it: logged, and in `/health`, as is
    `$FEATUREPLANE_ALLOW_UNSIGNED_REGISTRY`, `registry_signatures: optional`); the
    programmatic `get_features` never asks. `audit` writes a line per request (default:
    `AuditLog.from_env`). `rate_limits` holds every principal's buckets (default:
    `RateLimits.from_env`); a server rebuilt for a new registry takes over the previous one's.
    """

    def __init__(
        self,
        registry: ServingRegistry,
        store: OnlineStore | None = None,
        limits: Limits | None = None,
        clock: Callable[[], datetime] | None = None,
        authenticate: bool = True,
        audit: AuditLog | None = None,
        rate_limits: RateLimits | None = None,
    ):
        self.registry = registry
        self.store = store if store is not None else _open(registry.online_store)
        self.limits = limits or Limits.from_env()
        self.clock = clock or clock_from_env()
        self.gate = Gate(registry.principals, registry.policies) if authenticate else None
        self.audit = audit or AuditLog.from_env()
        self.rate_limits = rate_limits or RateLimits.from_env()
        self._budgets = {
            name: self.rate_limits.budget(p.requests_per_second, p.rows_per_second)
            for name, p in registry.principals.by_name.items()
        }
        self.plans = {
            name: service_plan(service, registry) for name, service in registry.services.items()
        }
        self._subsets: dict[tuple[str, tuple[str, ...]], ServicePlan] = {}
        self._descriptions = {name: self._describe(name) for name in sorted(self.plans)}
        self._health = {
            "status": "ok",
            "registry_format": registry.format,
            "feature_services": len(self.plans),
            "auth": "on" if authenticate else "off",
            "registry_signatures": "optional" if unsigned_registry_allowed() else "required",
        }
        if not authenticate:
            logger.warning(AUTH_OFF)

    def close(self) -> None:
        self.store.close()
        self.audit.close()
        self.rate_limits.close()

    # ---- HTTP-shaped entry point ---------------------------------------------------------------

    def respond(
        self,
        method: str,
        path: str,
        body: bytes | str | None,
        headers: Mapping[str, str] | None = None,
        caller: str | None = None,
    ) -> Response:
        """The response to one HTTP request (`headers` by lower-case name; `caller`, the
        identity API Gateway or IAM established, from a Lambda event only): `admit`, then
        `finish`. Client errors become 4xx, a store that does not answer 503, anything
        unexpected a logged 500 with a request id (never an exception)."""
        admitted = self.admit(method, path, body, headers, caller)
        return admitted if isinstance(admitted, Response) else self.finish(admitted)

    def admit(
        self,
        method: str,
        path: str,
        body: bytes | str | None,
        headers: Mapping[str, str] | None = None,
        caller: str | None = None,
    ) -> Admitted | Response:
        """What is decided at the door, cheaply: the route, who asks and whether they may
        (401, 403), the body's parse and the request's size. A serving request comes back
        `Admitted`, for `finish` (here or in a worker process); every other request is
        answered, and audited, here. A body sent with a content type other than JSON is
        refused (415): browsers send cross-origin `text/plain` posts without asking."""
        started = time.monotonic()
        headers = headers or {}
        request_id = _request_id(headers.get("x-request-id"))
        seen: dict[str, Any] = {}
        answer = self._guarded(
            method,
            path,
            lambda: self._route(
                method.upper(), path, body, headers, caller, seen, request_id, started
            ),
            request_id,
        )
        if isinstance(answer, Admitted):
            return answer
        if seen.pop("audited", True):
            self._record(answer, request_id, started, method, path, **seen)
        return answer

    def finish(self, admitted: Admitted) -> Response:
        """The response to an admitted serving request, audited."""
        name, request, _ = admitted.served
        response = self._guarded(
            "POST",
            admitted.path,
            lambda: Response(200, encode_json(self._serve(*admitted.served))),
            admitted.request_id,
        )
        features = request.get("features")
        self._record(
            response,
            admitted.request_id,
            admitted.started,
            "POST",
            admitted.path,
            principal=admitted.principal,
            service=name,
            rows=admitted.rows,
            features=len(features) if type(features) is list else _count(self.plans.get(name)),
        )
        return response

    def _record(
        self,
        response: Response,
        request_id: str,
        started: float,
        method: str,
        path: str,
        **fields: Any,
    ) -> None:
        self.audit.record(
            response.status,
            request_id=request_id,
            principal=fields.get("principal"),
            method=method[:10],
            path=cut(path),
            service=fields.get("service"),
            rows=fields.get("rows", 0),
            features=fields.get("features", 0),
            latency_ms=round((time.monotonic() - started) * 1000, 3),
        )

    def _guarded(self, method: str, path: str, answer: Callable[[], Any], request_id: str) -> Any:
        """`answer()`, or the error response of what it raised; responses carry the request
        id."""
        try:
            result = answer()
        except RequestError as error:
            result = error_response(error.status, str(error))
        except AccessDenied as error:
            result = error_response(error.status, str(error))
            if error.status == 401:
                result = replace(result, headers=(*result.headers, CHALLENGE))
        except RateLimited as error:
            result = error_response(429, str(error), error.retry_after)
        except EntityKeyError as error:
            result = error_response(400, str(error))
        except OnDemandFeatureViewError as error:
            result = error_response(
                422, f"cannot compute the request's on-demand features: {error}"
            )
        except StoreThrottled as error:  # StoreUnavailable too: no answer, or no connection
            state = "unavailable" if isinstance(error, StoreUnavailable) else "throttled"
            result = error_response(503, f"online store {state}, retry later: {error}", 1)
        except Exception:  # noqa: BLE001 - a server error is logged and answered, never raised
            return internal_error(f"{method[:10]} {path[:SHOWN_PATH]}", request_id=request_id)
        if isinstance(result, Response):
            return Response(
                result.status, result.body, (*result.headers, ("x-request-id", request_id))
            )
        return result

    def _route(
        self,
        method: str,
        path: str,
        body: bytes | str | None,
        headers: Mapping[str, str],
        caller: str | None,
        seen: dict[str, Any],
        request_id: str,
        started: float,
    ) -> Admitted | Response:
        parts = path.strip("/").split("/")
        if parts == ["health"]:
            seen["audited"] = False  # load balancers ask every few seconds
            allow_method(method, "GET", path)
            self.store.read_items([HEALTH_PROBE])  # raises when the store does not answer
            return Response(200, encode_json(self._health))
        if parts == ["openapi.json"]:
            allow_method(method, "GET", path)
            return Response(200, openapi_body(self))
        if parts[:2] != ["v1", "feature-services"]:
            raise RequestError(404, f"no route {cut(path)!r}")
        if len(parts) == 2:
            allow_method(method, "GET", path)
            principal = self._principal(headers, caller, seen)
            self._charge(principal, 0)
            listing = {
                "feature_services": [
                    description
                    for name, description in self._descriptions.items()
                    if principal is None or self.gate.may_read(principal, name)  # type: ignore[union-attr]
                ]
            }
            return Response(200, encode_json(listing))
        if len(parts) == 4 and parts[3] in ("get-features", "get-features-batch"):
            allow_method(method, "POST", path)
            principal = self._principal(headers, caller, seen)
            seen["service"] = name = parts[2]
            if principal is not None:
                self.gate.check_read(principal, name)  # type: ignore[union-attr]
            content_type = headers.get("content-type")
            if body and content_type and not is_json(content_type):
                raise RequestError(
                    415, f"send the body as application/json, not {content_type[:60]!r}"
                )
            request = parse_body(body, self.limits)
            batch = parts[3] == "get-features-batch"
            entities = request.get("entities")
            seen["rows"] = rows = len(entities) if batch and type(entities) is list else 1
            self._charge(principal, rows)
            return Admitted(
                path=path,
                served=(name, request, batch),
                rows=rows,
                principal=None if principal is None else principal.name,
                request_id=request_id,
                started=started,
            )
        raise RequestError(404, f"no route {cut(path)!r}")

    def _principal(
        self, headers: Mapping[str, str], caller: str | None, seen: dict[str, Any]
    ) -> Principal | None:
        """Who asks (None while authentication is off); AccessDenied (401) if nobody known."""
        if self.gate is None:
            return None
        principal = self.gate.authenticate(headers, caller)
        seen["principal"] = principal.name
        return principal

    def _charge(self, principal: Principal | None, rows: int) -> None:
        """Take a request of `rows` rows from the principal's budget; RateLimited (429) if
        it is spent. Nobody (authentication off) has no budget."""
        if principal is not None:
            self.rate_limits.take(principal.name, self._budgets[principal.name], rows)

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
        rows = entity_rows(request.get("entities"), batch, self.limits)
        keys = [
            row_key_parts(plan, row, index if batch else None) for index, row in enumerate(rows)
        ]
        inputs = request_rows(plan, request.get("request_data"), len(rows), batch)
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
            "results": response_columns(plan, items, inputs, now),
            "metadata": {"served_at": now.isoformat(), "feature_versions": plan.versions},
        }

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
                f"unknown features {names_shown(unknown)} for service {plan.name!r} "
                f"(features: {', '.join(plan.outputs)})",
            )
        if len(set(wanted)) != len(wanted):
            raise RequestError(400, "'features' names a feature twice")
        service = self.registry.services[plan.name]
        subset = service_plan(service, self.registry, wanted)
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


def _request_id(sent: str | None) -> str:
    """The request's id: the one sent in `x-request-id` when it is safe to echo, else new."""
    return sent if sent is not None and REQUEST_ID.fullmatch(sent) else os.urandom(8).hex()


def _count(plan: ServicePlan | None) -> int:
    return 0 if plan is None else len(plan.outputs)
