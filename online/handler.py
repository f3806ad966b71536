"""The AWS Lambda handler: API Gateway REST (v1), HTTP API (v2) and function-URL events.

`handler(event, context)` turns the event into (method, path, body), runs
`featureplane.serving.FeatureServer.respond` (routes, request and response formats are
documented there) and returns the proxy response. The registry (`$FEATUREPLANE_REGISTRY`,
default `<data dir>/registry.json`) and the online store client are loaded on the first
invocation and kept for the life of the process, so warm invocations reuse both.

Cold import cost matters here: this module imports only the Spark-, Dagster- and pandas-free
serving core, and the store backend on first use.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from featureplane.registry import load_registry
from featureplane.serving import FeatureServer, Response, encode_json
from featureplane.settings import registry_path

_server: FeatureServer | None = None


def server() -> FeatureServer:
    """The process's FeatureServer, built from the registry on first use."""
    global _server
    if _server is None:
        _server = FeatureServer(load_registry(registry_path()))
    return _server


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Serve one API Gateway or function-URL proxy event."""
    try:
        method, path, body = parse_event(event)
    except ValueError as error:
        response = Response(400, encode_json({"error": str(error)}).encode())
    else:
        response = server().respond(method, path, body)
    return {
        "statusCode": response.status,
        "headers": dict(response.headers),
        "body": response.body.decode(),
        "isBase64Encoded": False,
    }


def parse_event(event: Any) -> tuple[str, str, bytes | str | None]:
    """(method, path, body) of a v1 or v2 (HTTP API, function URL) proxy event.

    A v2 path carries the stage unless it is `$default`; it is removed so routes match.
    """
    if not isinstance(event, dict):
        raise ValueError("the event is not an API Gateway or function-URL proxy event")
    context = event.get("requestContext") or {}
    http = context.get("http") if isinstance(context, dict) else None
    if isinstance(http, dict):
        method, path = http.get("method"), event.get("rawPath") or http.get("path")
        stage = context.get("stage")
        if isinstance(path, str) and stage and stage != "$default":
            prefix = f"/{stage}"
            if path == prefix or path.startswith(f"{prefix}/"):
                path = path[len(prefix) :] or "/"
    else:
        method, path = event.get("httpMethod"), event.get("path")
    if not isinstance(method, str) or not isinstance(path, str):
        raise ValueError("the event has no HTTP method and path")
    body = event.get("body")
    if body is not None and not isinstance(body, str):
        raise ValueError("the event body is not a string")
    if body and event.get("isBase64Encoded"):
        try:
            body = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("the body is marked base64 but is not valid base64") from None
    return method, path, body
