"""Malformed requests get a 4xx with a bounded message, and nothing gets a raw 500: deep nesting,
lone surrogates, unbounded echoes, loose timestamps, a string isBase64Encoded, cross-origin
text/plain posts, an unexpected exception, a damaged store, a registry that does not load, and
a WebSocket upgrade to the HTTP server."""

import json
import logging
import socket

import pytest

import online.handler
from featureplane.serving import FeatureServer
from online.handler import handler
from online.server import serving_process
from tests.serving_repo import KEY, Clock, feature_server, registry

ROUTE = "/v1/feature-services/{}/get-features"
PURCHASE = {"amount": 12.5, "requested_at": "2026-03-10T09:15:00+01:00"}
CONTEXT = {"user_id": 1, "ad_id": "a1"}


def event(method: str, path: str, body: str | None = None, **extra) -> dict:
    headers = {"x-api-key": KEY, **extra.pop("headers", {"Content-Type": "application/json"})}
    return {"httpMethod": method, "path": path, "headers": headers, "body": body, **extra}


@pytest.fixture
def served(tmp_path, monkeypatch):
    server = feature_server(tmp_path / "online.sqlite", Clock())
    monkeypatch.setattr(online.handler, "_server", server)
    yield tmp_path / "online.sqlite"
    server.close()


def answer(response: dict) -> tuple[int, dict, int]:
    return response["statusCode"], json.loads(response["body"]), len(response["body"])


NESTED = "[" * 1000 + "1" + "]" * 1000
"""A value 1,000 arrays deep, as JSON text (Python's json cannot write it)."""


@pytest.mark.parametrize(
    "body",
    [
        f'{{"entities": {{"user_id": {NESTED}, "ad_id": "a1"}}}}',
        f'{{"entities": {json.dumps(CONTEXT)}, "request_data": {{"amount": {NESTED}, '
        '"requested_at": "2026-03-10T09:15:00Z"}}',
    ],
    ids=["join key", "request field"],
)
def test_values_nested_a_thousand_deep_are_400(served, body):
    status, error, size = answer(handler(event("POST", ROUTE.format("context"), body)))
    assert status == 400 and "nested too deep to show" in error["error"] and size < 500


def test_a_lone_surrogate_in_a_text_body_is_400(served):
    body = '{"entities": {"user_id": "\ud800"}}'
    status, error, _ = answer(handler(event("POST", ROUTE.format("users"), body)))
    assert (status, error["error"]) == (400, "body is not valid UTF-8 text")


def test_error_messages_are_bounded_whatever_the_request_sends(served):
    entities = {f"key_{i}": i for i in range(50_000)}
    body = json.dumps({"entities": entities})
    status, error, size = answer(handler(event("POST", ROUTE.format("users"), body)))
    assert status == 400 and "and 49990 more" in error["error"] and size < 1_000
    status, error, size = answer(handler(event("GET", "/" + "x" * 5_000_000)))
    assert status == 404 and size < 300


@pytest.mark.parametrize("moment", ["11111111", "2026-W42-3", "9" * 100_000, "2026-03-10"])
def test_request_timestamps_are_rfc_3339_only(served, moment):
    body = json.dumps({"entities": CONTEXT, "request_data": {**PURCHASE, "requested_at": moment}})
    status, error, size = answer(handler(event("POST", ROUTE.format("context"), body)))
    assert status == 400 and "field 'requested_at' must be Timestamp" in error["error"]
    assert size < 500


def test_an_rfc_3339_timestamp_in_any_offset_is_served(served):
    for moment in ("2026-03-10T09:15:00+01:00", "2026-03-10T08:15:00Z", "2026-03-10 08:15:00"):
        body = json.dumps(
            {"entities": CONTEXT, "request_data": {**PURCHASE, "requested_at": moment}}
        )
        assert handler(event("POST", ROUTE.format("context"), body))["statusCode"] == 200


def test_is_base64_encoded_must_be_a_boolean(served):
    request = event("POST", ROUTE.format("users"), '{"entities": {"user_id": 1}}')
    status, error, _ = answer(handler({**request, "isBase64Encoded": "false"}))
    assert (status, error["error"]) == (400, "isBase64Encoded must be true or false")
    assert handler({**request, "isBase64Encoded": False})["statusCode"] == 200


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("text/plain", 415),
        ("application/x-www-form-urlencoded", 415),
        ("application/json; charset=utf-8", 200),
        ("application/vnd.api+json", 200),
        (None, 200),
    ],
)
def test_a_body_must_be_sent_as_json(served, content_type, status):
    headers = {} if content_type is None else {"content-type": content_type}
    request = event("POST", ROUTE.format("users"), '{"entities": {"user_id": 1}}', headers=headers)
    assert handler(request)["statusCode"] == status


def test_an_unexpected_error_is_a_logged_500_with_a_request_id(served, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(FeatureServer, "_serve", broken)
    with caplog.at_level(logging.ERROR):
        response = handler(event("POST", ROUTE.format("users"), '{"entities": {"user_id": 1}}'))
    status, error, _ = answer(response)
    assert (status, error["error"]) == (500, "internal server error")
    assert response["headers"]["x-request-id"] == error["request_id"]
    assert error["request_id"] in caplog.text and "KeyError: 'a bug'" in caplog.text
    assert "a bug" not in response["body"], "the error itself stays in the log"


def test_a_damaged_store_is_503_and_health_says_so(served):
    assert handler(event("GET", "/health"))["statusCode"] == 200
    online.handler._server.close()  # its connections: the next read opens the damaged file
    served.write_bytes(b"not a database" * 100)
    for name in ("-wal", "-shm"):
        served.with_name(served.name + name).unlink(missing_ok=True)
    for request in (
        event("GET", "/health"),
        event("POST", ROUTE.format("users"), '{"entities": {"user_id": 1}}'),
    ):
        status, error, _ = answer(handler(request))
        assert status == 503 and "online store unavailable" in error["error"]


def test_a_registry_that_does_not_load_is_a_logged_503(tmp_path, monkeypatch, caplog):
    (tmp_path / "registry.json").write_text("{")
    monkeypatch.setenv("FEATUREPLANE_REGISTRY", str(tmp_path / "registry.json"))
    for name in ("_server", "_store", "_version", "_access"):
        monkeypatch.setattr(online.handler, name, None)
    with caplog.at_level(logging.ERROR):
        response = handler(event("GET", "/health"))
    status, error, _ = answer(response)
    assert (status, response["headers"]["retry-after"]) == (503, "5")
    assert "RegistryCorrupt" in caplog.text and error["request_id"] in caplog.text


def test_a_websocket_upgrade_to_the_server_is_refused_with_a_4xx(tmp_path):
    from featureplane.registry import write_registry

    path = write_registry(registry(tmp_path / "online.sqlite"), tmp_path / "registry.json")
    with serving_process(path) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            connection.sendall(
                b"GET /health HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            status_line = connection.recv(4096).split(b"\r\n", 1)[0]
    assert status_line.split()[1] == b"403", status_line


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ('{"entities": {"user_id": 1, "user_id": 2}}', "user_id"),
        ('{"entities": {"user_id": 1}, "entities": {"user_id": 2}}', "entities"),
        ('{"entities": {"user_id": 1, "u\\u0073er_id": 2}}', "user_id"),
        ('{"entities": {"user_id" : 1, "user_id":2}}', "user_id"),
        ('{"entities": {"user_id": 1}, "x": [[{"k": "a:b", "k": 1}]]}', "k"),
        (
            '{"entities": {"user_id": 1}, "x": ' + "[" * 300 + '{"d": 1, "d": 2}' + "]" * 300 + "}",
            "d",
        ),
    ],
)
def test_a_key_twice_in_one_object_is_400_naming_it(served, body, key):
    status, error, _ = answer(handler(event("POST", ROUTE.format("users"), body)))
    assert (status, error["error"]) == (400, f'key "{key}" appears twice in one object of the body')


@pytest.mark.parametrize(
    "entities",
    ['{"user_id": 1}', '{"user_id" : 1}', '{"user_id": 1, "other": {"user_id": 2}}'],
)
def test_the_same_key_in_different_objects_or_strings_is_no_duplicate(served, entities):
    body = f'{{"entities": {entities}, "features": ["user_stats__clicks"], "x": "\\":\\" : :"}}'
    status, error, _ = answer(handler(event("POST", ROUTE.format("users"), body)))
    assert status == 400 and "appears twice" not in error["error"]
    assert "unexpected fields ['x']" in error["error"] or "unexpected keys" in error["error"]
