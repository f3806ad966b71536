"""Requests generated from the OpenAPI document, valid and hostile, sent to
`FeatureServer.respond`, to the Lambda handler (v1 and v2 events, text and base64 bodies) and,
fewer, over HTTP to `featureplane serve`. Whatever is sent: nothing raises, nothing is a 500,
the status is one the document gives for the route, the body is JSON valid against its
schema, errors are bounded; a valid request gets 200 and the values of the records the test
wrote to the store (or, as predicted, the 422 of an on-demand function refusing an amount)."""

from __future__ import annotations

import base64
import http.client
import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import online.handler
from featureplane.registry import write_registry
from featureplane.serving.request import RFC3339
from online.server import serving_process
from tests.api_document import ApiDocument
from tests.serving_repo import (
    KEY,
    NOW,
    Clock,
    ad_stats,
    feature_server,
    registry,
    user_stats,
    write_row,
)

USERS = {  # user_id → event time of its user_stats record: fresh, or past the 2-day ttl
    1: NOW - timedelta(minutes=5),
    2: NOW - timedelta(days=3),
    3: NOW - timedelta(hours=30),
}
ADS = {"a1": 0.25, "a2": 0.5}
KEY_POOL = {"user_id": [1, 2, 3, 4, -1], "ad_id": ["a1", "a2", "zz", ""]}
"""Join key values the store holds records for (and some it does not), mixed into generation."""


def user_values(user_id: int) -> dict[str, Any]:
    return {"clicks": user_id * 10, "country": f"C{user_id}", "last_seen": USERS[user_id]}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("api") / "online.sqlite"
    for user_id, event_ts in USERS.items():
        write_row(path, user_stats, (user_id,), event_ts, user_values(user_id))
    for ad_id, ctr in ADS.items():
        write_row(path, ad_stats, (ad_id,), NOW - timedelta(hours=1), {"ctr": ctr, "title": ad_id})
    return path


@pytest.fixture(scope="module")
def server(store):
    server = feature_server(store, Clock())
    yield server
    server.close()


@pytest.fixture(scope="module")
def api(server):
    return ApiDocument(json.loads(server.respond("GET", "/openapi.json", None).body))


# ---- the oracle: what the written records say ------------------------------------------------


def _row_level(view: str, feature: str, row: dict) -> tuple[Any, str, str | None, float | None]:
    """(value, status, event time, age) of a row-level feature, from the records written."""
    if view == "user_stats":
        event_ts = USERS.get(row["user_id"])
        value = user_values(row["user_id"])[feature] if event_ts else None
        expired = event_ts is not None and NOW - event_ts > timedelta(days=2)
    else:
        event_ts = NOW - timedelta(hours=1) if row["ad_id"] in ADS else None
        value = {"ctr": ADS.get(row["ad_id"]), "title": row["ad_id"]}[feature]
        expired = False
    if event_ts is None:
        return None, "missing", None, None
    age = round((NOW - event_ts).total_seconds(), 3)
    if isinstance(value, datetime):
        value = value.isoformat()
    return (
        (None if expired else value),
        ("expired" if expired else "present"),
        (event_ts.isoformat()),
        age,
    )


def expected(feature: str, row: dict, data: dict) -> tuple[Any, str, str | None, float | None]:
    view, name = feature.split("__", 1)
    if view in ("user_stats", "ad_stats"):
        return _row_level(view, name, row)
    if view == "user_ad_purchases":  # no tiles written: the empty window
        return (0 if name == "purchases_1d" else None), "missing", None, None
    clicks = _row_level("user_stats", "clicks", row)[0]
    amount, moment = data["amount"], data["requested_at"]
    hour = None
    if moment is not None:
        parsed = datetime.fromisoformat(moment)
        hour = (parsed.astimezone(UTC) if parsed.tzinfo else parsed).hour
    value = {
        "spend_share": None,  # no week of spend to share
        "log_amount": None if amount is None else math.log(amount),
        "clicks_at_hour": f"{clicks}@{hour}",
    }[name]
    return value, "present", None, None


def oracle(plan_features: list[str], request: dict, batch: bool) -> tuple[int, list | None]:
    """The status and, for a 200, the results a valid request must get."""
    rows = request["entities"] if batch else [request["entities"]]
    data = request.get("request_data") or {}
    per_row = data if isinstance(data, list) else [data] * len(rows)
    features = request.get("features") or plan_features
    if any(f.startswith("purchase_context__") for f in features) and any(
        d["amount"] is not None and d["amount"] <= 0 for d in per_row
    ):
        return 422, None  # math.log refuses it: the function fails on the request's values
    results = []
    for feature in features:
        cells = [expected(feature, row, d) for row, d in zip(rows, per_row, strict=True)]
        results.append(
            {
                "values": [c[0] for c in cells],
                "status": [c[1] for c in cells],
                "event_timestamps": [c[2] for c in cells],
                "age_seconds": [c[3] for c in cells],
            }
        )
    return 200, results


# ---- requests from the document ---------------------------------------------------------------


def from_schema(api: ApiDocument, schema: dict, name: str | None = None) -> st.SearchStrategy:
    """Values valid against a schema of the document (the subset of JSON Schema it uses); a
    join key also takes values of KEY_POOL, and an RFC 3339 pattern real moments."""
    if "$ref" in schema:
        target = schema["$ref"].rsplit("/", 1)[1]
        return from_schema(api, api.document["components"]["schemas"][target], name)
    if "anyOf" in schema:
        return st.one_of([from_schema(api, option, name) for option in schema["anyOf"]])
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    strategies = [_typed(api, schema, kind, name) for kind in types]
    if name in KEY_POOL:
        strategies.append(st.sampled_from(KEY_POOL[name]))
    return st.one_of(strategies)


def _typed(api: ApiDocument, schema: dict, kind: str, name: str | None) -> st.SearchStrategy:
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False)
    if kind == "string":
        if schema.get("pattern") == f"^{RFC3339.pattern}$":
            moments = st.datetimes(timezones=st.sampled_from([UTC, None]))
            return moments.map(lambda moment: moment.isoformat())
        return st.text(max_size=20)
    if kind == "array":
        items = from_schema(api, schema["items"])
        unique = json.dumps if schema.get("uniqueItems") else None
        size = min(schema.get("maxItems", 4), 4)
        return st.lists(items, min_size=schema.get("minItems", 0), max_size=size, unique_by=unique)
    assert kind == "object", kind
    if schema.get("maxProperties") == 0:
        return st.just({})
    properties = {key: from_schema(api, value, key) for key, value in schema["properties"].items()}
    required = schema.get("required", list(properties))
    return st.fixed_dictionaries(
        {key: properties[key] for key in required},
        optional={key: value for key, value in properties.items() if key not in required},
    )


SERVICES = ["checkout", "context", "users"]
ROUTES = ["get-features", "get-features-batch"]


@st.composite
def valid_requests(draw, api: ApiDocument) -> tuple[str, str, dict, bool]:
    """(service, path, request, batch) generated from the service's documented operation."""
    service, route = draw(st.sampled_from(SERVICES)), draw(st.sampled_from(ROUTES))
    path = f"/v1/feature-services/{service}/{route}"
    _, found = api.operation("POST", path)
    schema = found["requestBody"]["content"]["application/json"]["schema"]
    request = draw(from_schema(api, schema))
    batch = route.endswith("batch")
    data = request.get("request_data")
    if batch and isinstance(data, list):  # one object per row: as many as the rows
        request["request_data"] = (data * len(request["entities"]))[: len(request["entities"])]
    return service, path, request, batch


HOLE = "\x00hole\x00"
HOSTILE = st.sampled_from(
    [
        "[" * 1100 + "]" * 1100,
        '{"a":' * 1050 + "1" + "}" * 1050,
        "[" * 1000 + "1" + "]" * 1000,
        '"\\ud800"',
        '"\\udfff\\ud800x"',
        str(2**64),
        str(-(2**70)),
        "9" * 100_000,
        "0." + "1" * 100_000,
        json.dumps("s" * 100_000),
        "true",
        "null",
        "1.5",
        '"1"',
        "[]",
        "{}",
        "1e400",
        "NaN",
    ]
)


@st.composite
def hostile_requests(draw, api: ApiDocument) -> tuple[str, str, str, dict, str]:
    """(method, path, body, headers, kind of change): a valid request with one hostile
    change."""
    service, path, request, batch = draw(valid_requests(api))
    headers = {"content-type": "application/json", "x-api-key": KEY}
    method = "POST"
    kinds = ["value", "duplicate", "unexpected", "path", "method", "type", "surrogate", "key"]
    kind = draw(st.sampled_from(kinds))
    rows = request["entities"] if batch else [request["entities"]]
    if kind == "value":
        target = draw(st.sampled_from(["key", "data", "top", "features"]))
        if target == "key":
            rows[0][draw(st.sampled_from(sorted(rows[0])))] = HOLE
        elif target == "data" and isinstance(request.get("request_data"), dict):
            data = request["request_data"]
            data[draw(st.sampled_from(sorted(data) or ["x"]))] = HOLE
        elif target == "features":
            request["features"] = [HOLE]
        else:
            request["entities"] = HOLE
        body = json.dumps(request).replace(json.dumps(HOLE), draw(HOSTILE))
    elif kind == "duplicate":
        key = sorted(rows[0])[0]
        text = json.dumps(rows[0])
        body = json.dumps(request).replace(text, text[:-1] + f", {json.dumps(key)}: 0}}", 1)
    elif kind == "unexpected":
        where = draw(st.sampled_from(["top", "entities"]))
        (request if where == "top" else rows[0])[draw(st.text(max_size=5))] = 1
        body = json.dumps(request)
    elif kind == "path":
        path = draw(st.sampled_from(["/", "/v1", path + "/x", "/" + "p" * 100_000, path + "%2F"]))
        body = json.dumps(request)
    elif kind == "method":
        method = draw(st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "OPTIONS"]))
        body = json.dumps(request)
    elif kind == "type":
        headers["content-type"] = draw(st.sampled_from(["text/plain", "application/xml", "x"]))
        body = json.dumps(request)
    elif kind == "key":
        forged = st.sampled_from(["", KEY[:-1] + ("A" if KEY[-1] != "A" else "B"), "Bearer x"])
        headers = {"content-type": "application/json", "x-api-key": draw(forged | HOSTILE)}
        body = json.dumps(request)
    else:
        body = json.dumps(request, ensure_ascii=False)[:-1] + ', "\ud800": 1}'
    return method, path, body, headers, kind


EXPECTED = {"duplicate": 400, "unexpected": 400, "method": 405, "type": 415, "surrogate": 400}
"""The status of a hostile change that leaves no doubt; a changed value may still be valid (a
string key, a null field), and a changed path reach another route."""


def _check(api: ApiDocument, method: str, path: str, status: int, body: bytes) -> Any:
    assert status < 500 or status == 503, (status, body[:300])
    return api.check(method, path, status, body)


def _assert_served(server, api, generated, status: int, body: bytes) -> None:
    service, path, request, batch = generated
    answer = _check(api, "POST", path, status, body)
    want, results = oracle(list(server.plans[service].outputs), request, batch)
    assert status == want, answer
    if status == 200:
        assert answer["results"] == results


# ---- through FeatureServer.respond ---------------------------------------------------------------

PROPERTIES = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTIES
@given(data=st.data())
def test_valid_requests_are_served_as_the_store_holds(server, api, data):
    generated = data.draw(valid_requests(api))
    response = server.respond("POST", generated[1], json.dumps(generated[2]), {"x-api-key": KEY})
    _assert_served(server, api, generated, response.status, response.body)


@PROPERTIES
@given(data=st.data())
def test_hostile_requests_get_a_documented_4xx(server, api, data):
    method, path, body, headers, kind = data.draw(hostile_requests(api))
    response = server.respond(method, path, body, headers)
    answer = _check(api, method, path, response.status, response.body)
    assert response.status == EXPECTED.get(kind, response.status), answer
    if kind == "duplicate":
        assert "appears twice in one object" in answer["error"], answer


# ---- through the Lambda handler ------------------------------------------------------------


def event(kind: str, method: str, path: str, body: bytes | str, headers: dict) -> dict:
    """A v1 or v2 proxy event; the body as text, or base64 (as API Gateway sends binary)."""
    encoded = kind.endswith("base64")
    if encoded:
        raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
        body = base64.b64encode(raw).decode()
    if kind.startswith("v1"):
        return {"httpMethod": method, "path": path, "headers": headers, "body": body,
                "isBase64Encoded": encoded}  # fmt: skip
    return {
        "version": "2.0",
        "rawPath": path,
        "headers": headers,
        "requestContext": {"http": {"method": method, "path": path}, "stage": "$default"},
        "body": body,
        "isBase64Encoded": encoded,
    }


EVENT_KINDS = st.sampled_from(["v1", "v1-base64", "v2", "v2-base64"])


@pytest.fixture(scope="module")
def handled(server):
    previous = online.handler._server
    online.handler._server = server
    yield online.handler.handler
    online.handler._server = previous


@PROPERTIES
@given(data=st.data(), kind=EVENT_KINDS)
def test_the_lambda_handler_serves_valid_requests(handled, server, api, data, kind):
    generated = data.draw(valid_requests(api))
    body = json.dumps(generated[2])
    response = handled(event(kind, "POST", generated[1], body, {"x-api-key": KEY}))
    _assert_served(server, api, generated, response["statusCode"], response["body"].encode())


@PROPERTIES
@given(data=st.data(), kind=EVENT_KINDS)
def test_the_lambda_handler_answers_hostile_requests_with_a_documented_4xx(
    handled, api, data, kind
):
    method, path, body, headers, change = data.draw(hostile_requests(api))
    response = handled(event(kind, method, path, body, headers))
    status = response["statusCode"]
    answer = _check(api, method, path, status, response["body"].encode())
    assert status == EXPECTED.get(change, status), answer


# ---- over HTTP ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http_server(store, tmp_path_factory):
    path = write_registry(registry(store), tmp_path_factory.mktemp("api-http") / "registry.json")
    env = {"FEATUREPLANE_AS_OF": NOW.isoformat()}
    with serving_process(path, env=env) as url:
        connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=30)
        yield connection
        connection.close()


def _over_http(connection, method: str, path: str, body: bytes | str, headers: dict):
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    connection.request(
        method, path.encode("utf-8", "surrogatepass").decode("latin-1"), raw, headers
    )
    response = connection.getresponse()
    answer = response.read()
    if response.getheader("connection") == "close":
        connection.close()
    return response.status, answer


HTTP = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@HTTP
@given(data=st.data())
def test_over_http_valid_requests_are_served(http_server, server, api, data):
    generated = data.draw(valid_requests(api))
    status, body = _over_http(
        http_server,
        "POST",
        generated[1],
        json.dumps(generated[2]),
        {"content-type": "application/json", "x-api-key": KEY},
    )
    _assert_served(server, api, generated, status, body)


@HTTP
@given(data=st.data())
def test_over_http_hostile_requests_get_a_documented_4xx(http_server, api, data):
    method, path, body, headers, change = data.draw(hostile_requests(api))
    status, answer = _over_http(http_server, method, path, body, headers)
    if status == 431:  # the request line and headers are limited before any route
        assert len(path) + sum(len(name) + len(value) for name, value in headers.items()) > 60_000
    _check(api, method, unquote(path), status, answer)  # the server routes the decoded path
    assert status == EXPECTED.get(change, status), answer
