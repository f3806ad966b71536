"""A small Python client of the feature server, over one kept-alive HTTP connection.

Stdlib `http.client`, and orjson (a dependency of the handler) for the JSON both ways: it
parses a 100-row response about three times faster than `json`. Reusing the connection saves
a TCP handshake per call. A connection the server closed while idle is reopened once (every call is
a read, safe to repeat). Not thread-safe: use one client per thread.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

import orjson


class FeatureServerError(RuntimeError):
    """The server answered with an error status; the message is the server's."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


def _error_message(text: bytes) -> str:
    """The server's `{"error": ...}` message, or the raw text of a non-JSON error."""
    try:
        return orjson.loads(text)["error"]
    except (ValueError, TypeError, KeyError):
        return text.decode(errors="replace")


def by_feature(response: Mapping[str, Any]) -> list[dict[str, dict[str, Any]]]:
    """A features response as one result per entity row whose values, statuses, event times
    and ages are mappings keyed by feature name (on the wire, one column per feature)."""
    names, results = response["features"], response["results"]
    fields = results[0].keys() if results else ()
    rows = len(results[0]["values"]) if results else 0
    return [
        {
            field: {name: result[field][row] for name, result in zip(names, results, strict=True)}
            for field in fields
        }
        for row in range(rows)
    ]


def _encoded(body: Any) -> bytes:
    """A request body by orjson; by `json` when an int is beyond 64 bits, which orjson refuses
    (the server then names the out-of-range join key in a 400)."""
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:
        return json.dumps(body).encode()


class FeatureClient:
    """`FeatureClient("http://127.0.0.1:8000").get_features("ctr", {"user_id": 1, "ad_id": 7})`."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", timeout: float = 10.0):
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"base_url must be http(s)://host[:port], got {base_url!r}")
        connection = (
            http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        )
        self._connection = connection(url.hostname, url.port, timeout=timeout)
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
        for attempt in (1, 2):
            try:
                self._connection.request(method, self._prefix + path, payload, headers)
                response = self._connection.getresponse()
                text = response.read()
                break
            except (http.client.RemoteDisconnected, ConnectionError, http.client.CannotSendRequest):
                self._connection.close()
                if attempt == 2:
                    raise
        if response.status >= 400:
            raise FeatureServerError(response.status, _error_message(text))
        return orjson.loads(text)

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> FeatureClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
