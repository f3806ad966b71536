"""A small Python client of the feature server, over one kept-alive HTTP connection.

`online.connection` for HTTP/1.1 (a third of `http.client`'s CPU per call, which a model
server calling for every prediction feels), and orjson (a dependency of the handler) for the
JSON both ways: it parses a 100-row response about three times faster than `json`; a response
with an integer beyond 64 bits, which orjson would read as a float, is read exactly by `json`.
Reusing the connection saves
a TCP handshake per call. A connection the server closed while idle is reopened once, and a
429 or 503 is retried with backoff, waiting at least what its `Retry-After` asks (every call
is a read, safe to repeat). A response over `max_response_bytes` or not in the server's format
raises `MalformedResponse`. An API key (`api_key`, or `$FEATUREPLANE_API_KEY`) goes with
every request as a bearer token. Not thread-safe: use one client per thread.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from online.connection import BadResponse, Connection


class FeatureServerError(RuntimeError):
    """The server answered with an error status; the message is the server's."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class MalformedResponse(RuntimeError):
    """The server's answer is not a feature server's: not JSON, the wrong shape, or too big."""


DIGITS = bytes(48 if 48 <= byte <= 57 else 32 for byte in range(256))
"""A table that turns every digit into `0` and every other byte into a space."""
LONG_RUN = b"0" * 19
"""19 digits in a row: perhaps an integer beyond 64 bits (orjson never writes a float so, and
one in a string is read exactly too). Looked for in the body translated by DIGITS, which takes
a tenth of what a regular expression takes to scan a response."""
RETRIED = (429, 503)
"""Statuses that mean "later": throttled by the server, or its store."""


def _error_message(text: bytes) -> str:
    """The server's `{"error": ...}` message, or the raw text of a non-JSON error."""
    try:
        return orjson.loads(text)["error"]
    except (ValueError, TypeError, KeyError):
        return text.decode(errors="replace")


def by_feature(response: Mapping[str, Any]) -> list[dict[str, dict[str, Any]]]:
    """A features response as one result per entity row whose values, statuses, event times
    and ages are mappings keyed by feature name (on the wire, one column per feature);
    MalformedResponse when it is not in that shape."""
    try:
        names, results = response["features"], response["results"]
        fields = results[0].keys() if results else ()
        rows = len(results[0]["values"]) if results else 0
        return [
            {
                field: {
                    name: result[field][row] for name, result in zip(names, results, strict=True)
                }
                for field in fields
            }
            for row in range(rows)
        ]
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as error:
        raise MalformedResponse(f"not a features response: {type(error).__name__}") from error


def _decoded(text: bytes) -> Any:
    """A JSON response, its integers exact (orjson reads one beyond 64 bits as a float: a
    response with a 19-digit run is read by `json`); MalformedResponse if it is not JSON."""
    if LONG_RUN not in text.translate(DIGITS):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass  # `json` says why, below
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as error:
        shown = text[:60].decode(errors="replace")
        raise MalformedResponse(f"the response is not JSON: {shown!r}") from error


def _encoded(body: Any) -> bytes:
    """A request body by orjson; by `json` when an int is beyond 64 bits, which orjson refuses
    (the server then names the out-of-range join key in a 400)."""
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:
        return json.dumps(body).encode()


class FeatureClient:
    """`FeatureClient("http://127.0.0.1:8000").get_features("ctr", {"user_id": 1, "ad_id": 7})`."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.1,
        max_response_bytes: int = 64 * 2**20,
        api_key: str | None = None,
    ):
        """`retries` of a 429 or 503, the first after `backoff` seconds (doubling, and never
        sooner than the answer's Retry-After, of at most 30 s). `api_key` (default
        `$FEATUREPLANE_API_KEY`) is sent as `Authorization: Bearer <key>` with every request."""
        self.retries, self.backoff = retries, backoff
        api_key = api_key or os.environ.get("FEATUREPLANE_API_KEY")
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.max_response_bytes = max_response_bytes
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"base_url must be http(s)://host[:port], got {base_url!r}")
        self._connection = Connection(url.hostname, url.port, timeout, url.scheme == "https")
        self._prefix = url.path.rstrip("/")

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/health")

    def services(self) -> list[dict[str, Any]]:
        """The served feature services: names, join keys and types, feature names."""
        return self._request("GET", "/v1/feature-services")["feature_services"]

    def get_features(
        self,
        service: str,
        entities: Mapping[str, Any],
        request_data: Mapping[str, Any] | None = None,
        features: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """The features of one entity row: values, status, event times and ages by feature."""
        response = self.request(service, dict(entities), request_data, features)
        return by_feature(response)[0]

    def get_features_batch(
        self,
        service: str,
        entities: Sequence[Mapping[str, Any]],
        request_data: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        features: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """The features of many entity rows, one result per row in order (see `get_features`);
        `request_data` is one mapping for every row, or a list of one per row."""
        response = self.request(service, [dict(row) for row in entities], request_data, features)
        return by_feature(response)

    def request(
        self,
        service: str,
        entities: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        request_data: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        features: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """The server's response as sent (one column over the rows per feature, in the order
        of its `features`), for one row (a mapping) or a batch (a list): what a caller that
        builds a feature matrix wants, without building a mapping per row."""
        route = "get-features" if isinstance(entities, Mapping) else "get-features-batch"
        body: dict[str, Any] = {"entities": entities}
        if request_data is not None:
            body["request_data"] = (
                dict(request_data)
                if isinstance(request_data, Mapping)
                else [dict(row) for row in request_data]
            )
        if features is not None:
            body["features"] = list(features)
        return self._request(
            "POST", f"/v1/feature-services/{quote(service, safe='')}/{route}", body
        )

    def _request(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        payload = None if body is None else _encoded(body)
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        headers.update(self._auth)
        for attempt in range(self.retries + 1):
            status, retry_after, text = self._send(method, path, payload, headers)
            if status not in RETRIED or attempt == self.retries:
                break
            time.sleep(min(30.0, max(self.backoff * 2**attempt, retry_after)))
        if status >= 400:
            raise FeatureServerError(status, _error_message(text))
        decoded = _decoded(text)
        if type(decoded) is not dict:
            raise MalformedResponse(
                f"the response is a JSON {type(decoded).__name__}, not an object"
            )
        return decoded

    def _send(
        self, method: str, path: str, payload: bytes | None, headers: dict[str, str]
    ) -> tuple[int, float, bytes]:
        """(status, seconds its Retry-After asks, body) of one request."""
        try:
            status, fields, text = self._connection.exchange(
                method, self._prefix + path, headers, payload, self.max_response_bytes
            )
        except BadResponse as error:
            raise MalformedResponse(str(error)) from error
        wait = fields.get("retry-after", "0")
        return status, float(wait) if wait.isdigit() else 0.0, text

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> FeatureClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
