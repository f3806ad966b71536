"""The AWS Lambda handler: API Gateway REST (v1), HTTP API (v2) and function-URL events.

`handler(event, context)` turns the event into (method, path, body), runs
`featureplane.serving.FeatureServer.respond` (routes, request and response formats are
documented there) and returns the proxy response. The registry and the online store client are
loaded on the first invocation and kept, so warm invocations reuse both. `$FEATUREPLANE_REGISTRY`
(default `<data dir>/registry.json`) names either a registry file, loaded once, or a registry
store (a directory or `s3://` URI, `featureplane.registry_store`) whose serving version is
served (not its latest: a version serves once it is cut over to): the handler looks at the
serving pointer at most every `$FEATUREPLANE_REGISTRY_REFRESH_SECONDS` (60), so warm instances
pick up a cut-over. A look that fails (the store unreachable for a moment, a corrupt pointer)
is logged and the version at hand served meanwhile. A version that is corrupt
(`RegistryCorrupt`) is skipped, its file and problem logged once, and the newest readable
version before it served: a bad version file never takes a fleet down, cold or warm. A corrupt
pointer leaves nothing to choose by, so a cold start fails with it, as with a registry file
given alone: a corrupt one fails the first request (and `featureplane serve` at start) with its
one-line RegistryCorrupt.

Every file read is verified (`featureplane.signing`): one not signed by a trusted key, a
version, pointer or access document, is never served. A warm server logs the refusal and keeps
serving the version and principals it has; a cold start fails with the one-line
RegistryUntrusted, as `featureplane serve` does at start (an untrusted version is not skipped
for an older one: a store someone could write to is not to be guessed from).

Cold import cost matters here: this module imports only the Spark-, Dagster- and pandas-free
serving core, and the store backend on first use.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from dataclasses import replace
from typing import Any

from featureplane.access import Principals
from featureplane.errors import RegistryCorrupt, RegistryUntrusted
from featureplane.registry import ServingRegistry, load_registry
from featureplane.registry_store import RegistryStore, is_store_location
from featureplane.serving import FeatureServer, Response, encode_json, internal_error
from featureplane.settings import auth_disabled, registry_location, registry_refresh_seconds

logger = logging.getLogger(__name__)
_server: FeatureServer | None = None
_store: RegistryStore | None = None
"""Set when `$FEATUREPLANE_REGISTRY` names a registry store: the server follows its versions."""
_version: int | None = None
_access: int | None = None
"""The number of the store's access document served (None: the store has none)."""
_checked_at = 0.0
_skipped: dict[int, str] = {}
"""Corrupt versions of the store already logged, with their problem: each is logged once."""


def server() -> FeatureServer:
    """The process's FeatureServer, built from the registry on first use (and, from a registry
    store, rebuilt when a newer version has been applied)."""
    global _server, _store
    if _server is None and _store is None:
        location = registry_location()
        if not is_store_location(location):
            _server = _built(load_registry(location))
            return _server
        _store = RegistryStore(location)
    if _store is None:
        return _server  # type: ignore[return-value]
    if _server is None:
        _follow(_store)
    elif time.monotonic() - _checked_at >= registry_refresh_seconds():
        try:
            _follow(_store)
        except RegistryUntrusted as untrusted:
            logger.error("refused %s; serving version %s", untrusted, _version)
        except Exception:  # noqa: BLE001 - requests the version at hand answers must not fail
            logger.exception(
                "registry refresh from %s failed; serving version %s", _store.location, _version
            )
    return _server  # type: ignore[return-value]


def _follow(store: RegistryStore) -> None:
    """Serve the store's serving version, or the newest readable one before it, with the
    principals of its access document in force; the online store client is kept while its
    settings are. Corrupt versions are skipped and logged; an untrusted document raises
    RegistryUntrusted before anything changes."""
    global _server, _version, _access, _checked_at
    _checked_at = time.monotonic()
    serving = store.serving_version()
    if serving is None:
        raise RuntimeError(f"no registry applied at {store.location}: run `featureplane apply`")
    access = store.access()
    number = None if access is None else access.number
    principals = Principals.none() if access is None else access.principals
    if serving == _version:
        if number != _access and _server is not None:
            _server = _built(replace(_server.registry, principals=principals), _server)
            _access = number
        return
    newest: RegistryCorrupt | None = None
    for version in reversed([version for version in store.versions() if version <= serving]):
        if version == _version:
            return
        try:
            registry = load_registry(store.get(version).registry, store.path(version))
        except RegistryCorrupt as corrupt:
            newest = newest or corrupt
            _skip(version, corrupt)
            continue
        _server = _built(replace(registry, principals=principals), _server)
        _version, _access = version, number
        if version != serving:
            logger.warning(
                "serving registry version %s, the newest readable one up to %s", version, serving
            )
        return
    raise RegistryCorrupt(
        store.location, f"no readable registry version; the newest, {newest}"
    ) from newest


def _built(registry: ServingRegistry, previous: FeatureServer | None = None) -> FeatureServer:
    """A server of `registry`, keeping the `previous` one's audit log and rate-limit buckets,
    and its online store client while the settings are the same."""
    same = previous is not None and previous.registry.online_store == registry.online_store
    return FeatureServer(
        registry,
        store=previous.store if same else None,  # type: ignore[union-attr]
        authenticate=not auth_disabled(),
        audit=None if previous is None else previous.audit,
        rate_limits=None if previous is None else previous.rate_limits,
    )


def _skip(version: int, corrupt: RegistryCorrupt) -> None:
    if _skipped.get(version) != str(corrupt):
        _skipped[version] = str(corrupt)
        logger.warning("skipped registry version %s: %s", version, corrupt)


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Serve one API Gateway or function-URL proxy event. Nothing raises out of it: a bad
    event is a 400, a registry that cannot be loaded a logged 503, anything else a logged 500
    with a request id."""
    try:
        method, path, body, headers, caller = parse_event(event)
    except ValueError as error:
        response = Response(400, encode_json({"error": str(error)}))
    else:
        try:
            feature_server = server()
        except Exception:  # noqa: BLE001 - a corrupt or unreachable registry: logged, retried
            response = internal_error(f"{method[:10]} {path[:100]}: the registry", status=503)
        else:
            response = feature_server.respond(method, path, body, headers, caller)
    return {
        "statusCode": response.status,
        "headers": dict(response.headers),
        "body": response.body.decode(),
        "isBase64Encoded": False,
    }


def parse_event(
    event: Any,
) -> tuple[str, str, bytes | str | None, dict[str, str], str | None]:
    """(method, path, body, headers by lower-case name, caller) of a v1 or v2 (HTTP API,
    function URL) proxy event; the caller is who API Gateway or IAM established, if anyone.

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
    encoded = event.get("isBase64Encoded", False)
    if type(encoded) is not bool:
        raise ValueError("isBase64Encoded must be true or false")
    if body and encoded:
        try:
            body = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("the body is marked base64 but is not valid base64") from None
    return method, path, body, _headers(event.get("headers")), _caller(context)


def _headers(headers: Any) -> dict[str, str]:
    """The event's headers by lower-case name (names are case-insensitive); others dropped."""
    if not isinstance(headers, dict):
        return {}
    return {
        name.lower(): value
        for name, value in headers.items()
        if isinstance(name, str) and isinstance(value, str)
    }


CALLERS = (
    ("authorizer", "principalId"),  # REST API, Lambda authorizer
    ("authorizer", "claims", "sub"),  # REST API, Cognito user pool
    ("authorizer", "jwt", "claims", "sub"),  # HTTP API, JWT authorizer
    ("authorizer", "lambda", "principalId"),  # HTTP API, Lambda authorizer's context
    ("authorizer", "iam", "userArn"),  # HTTP API or function URL, IAM auth
    ("identity", "userArn"),  # REST API, IAM auth
)
"""Where API Gateway puts the caller it established, per kind of authorizer."""


def _caller(context: Any) -> str | None:
    """The caller API Gateway or IAM established for the event, if any: only API Gateway
    writes `requestContext`, so a client cannot claim one (over HTTP there is none)."""
    for path in CALLERS:
        value = context
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, str) and value:
            return value
    return None
