"""The OpenAPI document at `/openapi.json` says what the server answers: a valid OpenAPI 3.1
document, every route the server answers documented and every documented one answered, each
service's request shape, and the responses the serving suite produces valid against it."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate

from featureplane.serving.openapi import openapi_document
from tests.api_document import ApiDocument
from tests.serving_repo import HEADERS, NOW, Clock, feature_server, user_stats, write_row


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    store = tmp_path_factory.mktemp("openapi") / "online.sqlite"
    write_row(store, user_stats, (1,), NOW, {"clicks": 3, "country": "FR", "last_seen": NOW})
    server = feature_server(store, Clock())
    yield server, ApiDocument(json.loads(server.respond("GET", "/openapi.json", None).body))
    server.close()


def test_the_document_is_valid_openapi_3_1_and_is_what_the_server_builds(served):
    server, api = served
    validate(api.document)
    assert api.document == openapi_document(server)


def test_every_documented_operation_is_answered_and_other_methods_are_405(served):
    server, api = served
    for path, item in api.document["paths"].items():
        concrete = path.replace("{name}", "users")
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"):
            response = server.respond(method, concrete, b'{"entities": {"user_id": 1}}', HEADERS)
            error = json.loads(response.body).get("error", "")
            assert not error.startswith("no route"), (method, path)
            assert (response.status == 405) == (method.lower() not in item), (method, path)
            api.check(method, concrete, response.status, response.body)


SEGMENTS = st.sampled_from(
    ["health", "openapi.json", "v1", "feature-services", "users", "nope", "get-features"]
    + ["get-features-batch", "", "v2", "Health"]
)


@settings(max_examples=300, deadline=None)
@given(segments=st.lists(SEGMENTS, min_size=1, max_size=5), method=st.sampled_from(["GET", "POST"]))
def test_every_route_the_server_answers_is_documented(served, segments, method):
    server, api = served
    path = "/" + "/".join(segments)
    response = server.respond(method, path, b'{"entities": {"user_id": 1}}', HEADERS)
    routed = not json.loads(response.body).get("error", "").startswith("no route")
    assert routed == (api.operation(method, path)[0] is not None), path
    api.check(method, path, response.status, response.body)


def test_each_service_is_documented_with_its_keys_fields_and_features(served):
    _, api = served
    schemas = api.document["components"]["schemas"]
    assert schemas["checkout.Entities"]["properties"] == {
        "user_id": {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1},
        "ad_id": {"type": "string"},
    }
    assert schemas["context.GetFeaturesRequest"]["required"] == ["entities", "request_data"]
    assert set(schemas["context.RequestData"]["properties"]) == {"amount", "requested_at"}
    features = schemas["users.GetFeaturesRequest"]["properties"]["features"]["items"]["enum"]
    assert features == ["user_stats__clicks", "user_stats__country", "user_stats__last_seen"]
    statuses = schemas["FeatureResult"]["properties"]["status"]["items"]["enum"]
    assert statuses == ["present", "missing", "expired"]


def test_feature_service_routes_need_credentials_and_health_does_not(served):
    _, api = served
    paths = api.document["paths"]
    for path, item in paths.items():
        for operation in item.values():
            open_route = path in ("/health", "/openapi.json")
            assert operation["security"] == (
                [] if open_route else [{"bearerAuth": []}, {"apiKey": []}]
            )
            assert open_route or {"401", "403", "429"} <= operation["responses"].keys()
    components = api.document["components"]
    assert components["securitySchemes"]["apiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
    }
    assert "Retry-After" in components["responses"]["TooManyRequests"]["headers"]
    templated = paths["/v1/feature-services/{name}/get-features"]["post"]["responses"]
    assert "404" in templated
    assert "404" not in paths["/v1/feature-services/users/get-features"]["post"]["responses"]


ANSWERS = [
    ("GET", "/health", None),
    ("GET", "/v1/feature-services", None),
    ("POST", "/v1/feature-services/users/get-features", {"entities": {"user_id": 1}}),
    (
        "POST",
        "/v1/feature-services/checkout/get-features",
        {"entities": {"user_id": 1, "ad_id": "a"}},
    ),
    (
        "POST",
        "/v1/feature-services/context/get-features-batch",
        {
            "entities": [{"user_id": 1, "ad_id": "a"}, {"user_id": 2, "ad_id": "b"}],
            "request_data": [
                {"amount": 2.0, "requested_at": "2026-03-10T09:15:00Z"},
                {"amount": None, "requested_at": None},
            ],
        },
    ),
    ("POST", "/v1/feature-services/users/get-features", {"entities": {"user_id": "1"}}),
    ("POST", "/v1/feature-services/nope/get-features", {"entities": {"user_id": 1}}),
    (
        "POST",
        "/v1/feature-services/context/get-features",
        {
            "entities": {"user_id": 1, "ad_id": "a"},
            "request_data": {"amount": -1.0, "requested_at": None},
        },
    ),
]


@pytest.mark.parametrize(("method", "path", "body"), ANSWERS, ids=range(len(ANSWERS)))
def test_the_answers_are_valid_against_the_document(served, method, path, body):
    server, api = served
    text = None if body is None else json.dumps(body)
    response = server.respond(method, path, text, HEADERS)
    api.check(method, path, response.status, response.body)


def test_a_response_field_the_document_lacks_fails_the_check(served):
    """The check catches drift: a response with a field its schema does not name."""
    server, api = served
    response = server.respond("GET", "/health", None)
    drifted = json.dumps({**json.loads(response.body), "uptime": 3}).encode()
    with pytest.raises(AssertionError, match="uptime"):
        api.check("GET", "/health", 200, drifted)
