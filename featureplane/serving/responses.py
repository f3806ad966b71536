"""HTTP responses: the JSON body encoding and the error answers, whose messages never echo
a request without bound."""

from __future__ import annotations

import base64
import json
import logging
import math
import os
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import orjson

logger = logging.getLogger(__name__)


JSON_HEADERS = (("content-type", "application/json"),)
SHOWN_NAMES = 10
"""Names an error message lists at most: it never echoes an unbounded request."""
SHOWN_PATH = 100
"""Characters of a request's path an error message shows at most."""


@dataclass(frozen=True)
class Response:
    """An HTTP response: status, JSON body bytes and headers."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = JSON_HEADERS


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


def cut(text: str, limit: int = SHOWN_PATH) -> str:
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def internal_error(request: str, status: int = 500, request_id: str | None = None) -> Response:
    """A 500 for an unexpected error (503: nothing to serve with, such as a registry that does
    not load), logged with its traceback under a request id, which the answer gives instead of
    the error: it may hold what a client must not see."""
    request_id = request_id or os.urandom(8).hex()
    logger.exception("request %s failed, request id %s", request, request_id)
    retry = (("retry-after", "5"),) if status == 503 else ()
    error = "internal server error" if status == 500 else "service unavailable, retry later"
    return Response(
        status,
        encode_json({"error": error, "request_id": request_id}),
        (*JSON_HEADERS, ("x-request-id", request_id), *retry),
    )


def error_response(status: int, message: str, retry_after: int | None = None) -> Response:
    """`{"error": message}`; with `retry_after`, the seconds a client should wait (429, 503)."""
    if retry_after is None:
        return Response(status, encode_json({"error": message}))
    headers = (*JSON_HEADERS, ("retry-after", str(retry_after)))
    return Response(status, encode_json({"error": message}), headers)


def names_shown(names: list[str]) -> str:
    listed = [cut(name, 40) for name in names[:SHOWN_NAMES]]
    more = f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else ""
    return f"{listed}{more}"


def shown(value: Any) -> str:
    """A request value as JSON, cut to 40 characters for an error message (a value nested
    too deep to encode is named by its type)."""
    try:
        text = orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return f"a {type(value).__name__} nested too deep to show"
    return cut(text, 40)
