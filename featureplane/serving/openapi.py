"""The OpenAPI 3.1 document of the feature server, built from its loaded registry and limits
(served at `GET /openapi.json`), so it says what this server answers and cannot drift from it.

Every route is documented twice over for the feature services: once templated
(`/v1/feature-services/{name}/get-features`, any name, 404 for an unknown one) and once per
loaded service, with that service's join keys and their types, request fields and features, so
a client generated from the document gets one typed call per service. Response schemas are
closed (`additionalProperties: false`): a field added to a response without its schema fails
the test that validates the suite's responses against them. Every status the server can
answer is listed per route, including those of the HTTP server's protocol (408, 431) and of
authentication (401, 403, 429).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from featureplane.serving.request import DATE, RFC3339, Limits
from featureplane.serving.responses import encode_json

if TYPE_CHECKING:
    from featureplane.serving.plans import ServicePlan
    from featureplane.serving.server import FeatureServer

Schema = dict[str, Any]

FEATURES_ROUTE = "/v1/feature-services/{name}/get-features"
BATCH_ROUTE = "/v1/feature-services/{name}/get-features-batch"
SECURED = [{"bearerAuth": []}, {"apiKey": []}]
"""Either scheme authenticates a feature-service route; `/health` and `/openapi.json` are open."""
INT_RANGE = {
    bits: {"minimum": -(1 << (bits - 1)), "maximum": (1 << (bits - 1)) - 1} for bits in (32, 64)
}
STATUSES = ("present", "missing", "expired")

ERRORS: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "The request cannot be served as sent; the message names the problem."),
    401: ("Unauthorized", "No valid credentials (`Authorization: Bearer <key>` or `x-api-key`)."),
    403: ("Forbidden", "The principal may not read this feature service."),
    404: ("NotFound", "No such feature service."),
    405: ("MethodNotAllowed", "The route takes another method."),
    408: ("RequestTimeout", "The request body did not arrive within the body timeout."),
    413: ("PayloadTooLarge", "The body is over the size limit."),
    415: ("UnsupportedMediaType", "A body sent as anything but JSON."),
    422: ("Unprocessable", "An on-demand function failed on the request's values."),
    429: ("TooManyRequests", "Over the principal's rate limit; retry after `Retry-After`."),
    431: ("HeadersTooLarge", "The request line and headers are over the size limit."),
    500: ("InternalError", "Unexpected; logged under the request id, which the body gives."),
    503: ("Unavailable", "The online store or the registry does not answer; retry later."),
}
COMMON = (400, 405, 408, 413, 431, 500, 503)
"""What any route may answer: an unreadable request or Lambda event, a wrong method, the
protocol's limits, and a server that cannot answer."""
SERVICE_ROUTE = (*COMMON, 401, 403, 429)
FEATURES = (*SERVICE_ROUTE, 415, 422)


def openapi_document(server: FeatureServer) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `server`'s routes, for its registry and limits."""
    limits, plans = server.limits, server.plans
    schemas: dict[str, Schema] = {**_shared_schemas(), **_listing_schemas()}
    paths: dict[str, Any] = {
        "/health": {"get": _operation("health", "Whether the online store answers.", "Health")},
        "/openapi.json": {
            "get": _operation("openapi", "This document.", "OpenAPI"),
        },
        "/v1/feature-services": {
            "get": _operation(
                "listFeatureServices",
                "The feature services: join keys, request fields and features.",
                "FeatureServices",
                SERVICE_ROUTE,
            )
        },
    }
    schemas["GetFeaturesRequest"], schemas["GetFeaturesBatchRequest"] = _any_requests(limits)
    schemas["FeaturesResponse"] = _response_schema(None)
    paths[FEATURES_ROUTE], paths[BATCH_ROUTE] = _features_paths(None, limits)
    for name in sorted(plans):
        schemas.update(_service_schemas(plans[name], limits))
        one, batch = _features_paths(
            plans[name], limits, server.registry.services[name].description
        )
        paths[FEATURES_ROUTE.replace("{name}", name)] = one
        paths[BATCH_ROUTE.replace("{name}", name)] = batch
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "featureplane feature server",
            "version": f"1 (registry format {server.registry.format})",
            "description": (
                "Online features of the loaded registry's feature services. Leading and "
                "trailing slashes of a path are ignored. Bodies are strict UTF-8 JSON objects, "
                "each key at most once per object; integers are 64-bit (an integer join key "
                'takes a JSON integer, not `1.0`, `"1"` nor `true`).'
            ),
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {
                title: _error_response(status, description)
                for status, (title, description) in ERRORS.items()
            },
            "headers": {
                "Retry-After": {
                    "description": "Seconds to wait before retrying.",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                },
                "X-Request-Id": {
                    "description": "The id the server logged the error under.",
                    "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                },
            },
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "`Authorization: Bearer <key>`, a service account's API key.",
                },
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
    }


_bodies: WeakKeyDictionary[FeatureServer, bytes] = WeakKeyDictionary()


def openapi_body(server: FeatureServer) -> bytes:
    """The document as JSON, built once per server: the route is open, so it costs a lookup."""
    body = _bodies.get(server)
    if body is None:
        body = _bodies[server] = encode_json(openapi_document(server))
    return body


def _ref(name: str, kind: str = "schemas") -> Schema:
    return {"$ref": f"#/components/{kind}/{name}"}


def _operation(
    operation_id: str,
    summary: str,
    schema: str,
    statuses: tuple[int, ...] = COMMON,
    body: Schema | None = None,
    parameters: list[Schema] | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "security": SECURED if 401 in statuses else [],
        "responses": {
            "200": {
                "description": summary,
                "content": {"application/json": {"schema": _ref(schema)}},
            },
            **{str(s): _ref(ERRORS[s][0], "responses") for s in sorted(statuses)},
        },
    }
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
    return operation


def _features_paths(
    plan: ServicePlan | None, limits: Limits, description: str = ""
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The path items of get-features and get-features-batch: of one service (`plan`), or
    templated by name, which may answer 404."""
    service = plan.name if plan else None
    prefix = f"{service}." if service else ""
    statuses = FEATURES if plan else (*FEATURES, 404)
    parameters = (
        None
        if plan
        else [
            {
                "name": "name",
                "in": "path",
                "required": True,
                "description": "The feature service.",
                "schema": {"type": "string"},
            }
        ]
    )
    response = f"{prefix}FeaturesResponse"
    suffix = f"_{service}" if service else ""
    about = f" {description}" if description else ""
    one = _operation(
        f"getFeatures{suffix}",
        f"Features of {service or 'a service'} for one entity row.{about}",
        response,
        statuses,
        _ref(f"{prefix}GetFeaturesRequest"),
        parameters,
    )
    many = _operation(
        f"getFeaturesBatch{suffix}",
        f"Features of {service or 'a service'} for up to {limits.max_batch_rows} entity rows, "
        f"in order.{about}",
        response,
        statuses,
        _ref(f"{prefix}GetFeaturesBatchRequest"),
        parameters,
    )
    return {"post": one}, {"post": many}


def _closed(properties: Mapping[str, Schema], required: list[str] | None = None) -> Schema:
    return {
        "type": "object",
        "properties": dict(properties),
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
    }


def _shared_schemas() -> dict[str, Schema]:
    nullable_time = {"type": ["string", "null"], "format": "date-time"}
    return {
        "Error": _closed(
            {
                "error": {"type": "string", "description": "What is wrong, bounded in size."},
                "request_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
            },
            ["error"],
        ),
        "Health": _closed(
            {
                "status": {"const": "ok"},
                "registry_format": {"type": "integer"},
                "feature_services": {"type": "integer", "minimum": 0},
                "auth": {"enum": ["on", "off"]},
                "registry_signatures": {
                    "enum": ["required", "optional"],
                    "description": "optional: FEATUREPLANE_ALLOW_UNSIGNED_REGISTRY is set.",
                },
            }
        ),
        "OpenAPI": {
            "type": "object",
            "required": ["openapi", "info", "paths", "components"],
            "properties": {"openapi": {"const": "3.1.0"}},
        },
        "FeatureResult": _closed(
            {
                "values": {
                    "type": "array",
                    "description": "The feature's value per entity row, null when unknown.",
                },
                "status": {"type": "array", "items": {"enum": list(STATUSES)}},
                "event_timestamps": {"type": "array", "items": nullable_time},
                "age_seconds": {"type": "array", "items": {"type": ["number", "null"]}},
            }
        ),
    }


def _listing_schemas() -> dict[str, Schema]:
    named = _closed({"name": {"type": "string"}, "type": {"type": ["string", "null"]}})
    service = _closed(
        {
            "name": {"type": "string"},
            "description": {"type": "string"},
            "owner": {"type": ["string", "null"]},
            "tags": {"type": "object", "additionalProperties": {"type": "string"}},
            "join_keys": {"type": "array", "items": named},
            "request_data": {"type": "array", "items": named},
            "features": {"type": "array", "items": {"type": "string"}},
        }
    )
    return {
        "FeatureService": service,
        "FeatureServices": _closed(
            {"feature_services": {"type": "array", "items": _ref("FeatureService")}}
        ),
    }


def _any_requests(limits: Limits) -> tuple[Schema, Schema]:
    """The request shapes of any service: join keys and fields as the service's listing says."""
    key = {"type": ["string", "integer"]}
    entities = {"type": "object", "additionalProperties": key, "minProperties": 1}
    data = {"type": "object"}
    features = {"type": "array", "items": {"type": "string"}, "minItems": 1, "uniqueItems": True}
    one = _closed({"entities": entities, "request_data": data, "features": features}, ["entities"])
    rows = {"type": "array", "items": entities, "minItems": 1, "maxItems": limits.max_batch_rows}
    many = _closed(
        {
            "entities": rows,
            "request_data": {"anyOf": [data, {"type": "array", "items": data}]},
            "features": features,
        },
        ["entities"],
    )
    return one, many


def _key_schema(dtype: str | None) -> Schema:
    if dtype == "String":
        return {"type": "string"}
    if dtype in ("Int64", "Int32"):
        return {"type": "integer", **INT_RANGE[int(dtype[3:])]}
    return {"type": ["string", "integer"]}


def _value_schema(dtype: str) -> Schema:
    """A request field of `dtype` as JSON (null is every type's missing value). Timestamps are
    RFC 3339 date-times, where no offset means UTC: a pattern, not `format: date-time`, which
    requires one."""
    if dtype.startswith("Array("):
        return {"type": ["array", "null"], "items": _value_schema(dtype[len("Array(") : -1])}
    if dtype in ("Int64", "Int32"):
        return {"type": ["integer", "null"], **INT_RANGE[int(dtype[3:])]}
    if dtype == "Timestamp":
        return {"type": ["string", "null"], "pattern": f"^{RFC3339.pattern}$"}
    if dtype == "Date":
        return {"type": ["string", "null"], "format": "date", "pattern": f"^{DATE.pattern}$"}
    json_type = {"String": "string", "Bool": "boolean", "Float32": "number", "Float64": "number"}
    return {"type": [json_type[dtype], "null"]}


def _service_schemas(plan: ServicePlan, limits: Limits) -> dict[str, Schema]:
    """The request and response schemas of one service, named `<service>.<Schema>`."""
    name = plan.name
    entities = _closed(
        {key: _key_schema(dtype) for key, dtype in zip(plan.join_keys, plan.key_types, strict=True)}
    )
    if plan.request_fields:
        data: Schema = _closed(
            {field: _value_schema(spec.dtype.name) for field, spec in plan.request_fields.items()}
        )
        per_row = {"type": "array", "items": _ref(f"{name}.RequestData"), "minItems": 1}
        batch_data: Schema = {"anyOf": [_ref(f"{name}.RequestData"), per_row]}
    else:
        data = batch_data = {"type": ["object", "null"], "maxProperties": 0}
    required = ["entities", "request_data"] if plan.request_needed else ["entities"]
    features = {
        "type": "array",
        "items": {"enum": list(plan.outputs)},
        "minItems": 1,
        "uniqueItems": True,
        "description": "A subset of the service's features, answered in this order.",
    }
    rows = {
        "type": "array",
        "items": _ref(f"{name}.Entities"),
        "minItems": 1,
        "maxItems": limits.max_batch_rows,
    }
    return {
        f"{name}.Entities": entities,
        f"{name}.RequestData": data,
        f"{name}.GetFeaturesRequest": _closed(
            {
                "entities": _ref(f"{name}.Entities"),
                "request_data": _ref(f"{name}.RequestData"),
                "features": features,
            },
            required,
        ),
        f"{name}.GetFeaturesBatchRequest": _closed(
            {
                "entities": rows,
                "request_data": {
                    **batch_data,
                    "description": "One object for every row, or a list of one per row.",
                },
                "features": features,
            },
            required,
        ),
        f"{name}.FeaturesResponse": _response_schema(plan),
    }


def _response_schema(plan: ServicePlan | None) -> Schema:
    """A features response: of one service (its name, features and view versions), or any."""
    if plan is None:
        service, feature, versions = (
            {"type": "string"},
            {"type": "string"},
            {
                "type": "object",
                "additionalProperties": {"type": "string"},
            },
        )
    else:
        service, feature = {"const": plan.name}, {"enum": list(plan.outputs)}
        versions = _closed({view: {"const": v} for view, v in plan.versions.items()}, [])
    return _closed(
        {
            "service": service,
            "features": {"type": "array", "items": feature, "uniqueItems": True},
            "results": {
                "type": "array",
                "items": _ref("FeatureResult"),
                "description": "One result per feature, in the order of `features`.",
            },
            "metadata": _closed(
                {
                    "served_at": {"type": "string", "format": "date-time"},
                    "feature_versions": versions,
                }
            ),
        }
    )


def _error_response(status: int, description: str) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    if status in (429, 503):
        headers["Retry-After"] = _ref("Retry-After", "headers")
    if status in (500, 503):
        headers["X-Request-Id"] = _ref("X-Request-Id", "headers")
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": _ref("Error")}},
    }
    if headers:
        response["headers"] = headers
    return response
