"""The Lambda handler over a SQLite store holding records in the push's format."""

import base64
import json
import math
import random
import statistics
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import online.handler
from featureplane import Array, FeatureService, Float32, Repository
from featureplane.aggregation import aggregate, floor_time
from featureplane.online_store import StoreThrottled
from featureplane.registry import build_registry, load_registry, write_registry
from featureplane.serving import FeatureServer, encode_json
from featureplane.serving.request import typed as _typed
from online.client import by_feature
from online.handler import handler
from tests import serving_repo
from tests.serving_repo import (
    AGGREGATIONS,
    HOUR,
    KEY,
    NOW,
    Clock,
    ad_stats,
    appending,
    channel_context,
    feature_server,
    purchase_context,
    registry,
    tiles,
    user_ad_purchases,
    user_stats,
    write_row,
    write_tiles,
)

ROUTE = "/v1/feature-services/{}/get-features"
BATCH = "/v1/feature-services/{}/get-features-batch"
AGGREGATE_NAMES = [f"user_ad_purchases__{a.name}" for a in AGGREGATIONS]


def v1_event(method, path, body=None):
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": method,
        "headers": {"Content-Type": "application/json", "x-api-key": KEY},
        "requestContext": {"stage": "prod", "path": f"/prod{path}"},
        "body": body,
        "isBase64Encoded": False,
    }


def v2_event(method, path, body=None):
    """An HTTP API event on stage `prod`: the raw path carries the stage, the body base64."""
    encoded = None if body is None else base64.b64encode(body.encode()).decode()
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": f"/prod{path}",
        "headers": {"authorization": f"Bearer {KEY}"},
        "requestContext": {"http": {"method": method, "path": f"/prod{path}"}, "stage": "prod"},
        "body": encoded,
        "isBase64Encoded": body is not None,
    }


def url_event(method, path, body=None):
    return {
        "version": "2.0",
        "rawPath": path,
        "headers": {"x-api-key": KEY},
        "requestContext": {
            "domainName": "abc.lambda-url.eu-west-1.on.aws",
            "http": {"method": method, "path": path},
            "stage": "$default",
        },
        "body": body,
        "isBase64Encoded": False,
    }


EVENTS = {"v1": v1_event, "v2": v2_event, "function_url": url_event}


@pytest.fixture
def store_path(tmp_path):
    return tmp_path / "online.sqlite"


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def serve(store_path, clock, monkeypatch):
    """Call the handler with an event kind, method, path and JSON-able body; (status, body)."""
    monkeypatch.setattr(online.handler, "_server", feature_server(store_path, clock))

    def call(method, path, body=None, kind="v1", raw=False):
        text = body if raw or body is None else json.dumps(body)
        response = handler(EVENTS[kind](method, path, text), None)
        assert response["headers"]["content-type"] == "application/json"
        answer = json.loads(response["body"])
        if "results" in answer:  # keyed by feature, for the assertions; checks list lengths
            answer["results"] = by_feature(answer)
        return response["statusCode"], answer

    yield call
    online.handler._server.close()


def purchases(seed: int, count: int = 60) -> list:
    """Random (ts, amount, category) events over the 8 days before NOW."""
    rng = random.Random(seed)
    return [
        (
            NOW - timedelta(seconds=rng.randrange(8 * 86400)),
            round(rng.uniform(1, 100), 2),
            rng.choice("abcde"),
        )
        for _ in range(count)
    ]


def brute_force(aggregation, rows, now):
    """The value from raw events in [floor(now) - window, floor(now)), without tiles."""
    anchor = floor_time(now, HOUR)
    inside = sorted(r for r in rows if anchor - aggregation.time_window <= r[0] < anchor)
    amounts = [amount for _, amount, _ in inside]
    recent = [category for _, _, category in sorted(inside, reverse=True)]
    name = aggregation.fn.name
    if name == "count":
        return len(inside)
    if not inside:
        return None
    return {
        "sum": lambda: sum(amounts),
        "mean": lambda: statistics.fmean(amounts),
        "min": lambda: min(amounts),
        "max": lambda: max(amounts),
        "stddev": lambda: statistics.stdev(amounts) if len(amounts) > 1 else None,
        "last": lambda: recent[0],
        "last_n": lambda: recent[: aggregation.fn.n],
    }[name]()


@pytest.mark.parametrize("kind", sorted(EVENTS))
def test_values_statuses_times_and_ages_through_each_event_kind(serve, store_path, kind):
    seen = NOW - timedelta(hours=5)
    write_row(
        store_path, user_stats, (1,), NOW - HOUR, {"clicks": 4, "country": "FR", "last_seen": seen}
    )
    write_row(store_path, ad_stats, ("a1",), NOW - 2 * HOUR, {"ctr": 0.25, "title": "Shoes"})
    write_tiles(store_path, (1, "a1"), purchases(1))
    status, body = serve(
        "POST", ROUTE.format("checkout"), {"entities": {"user_id": 1, "ad_id": "a1"}}, kind=kind
    )
    assert status == 200, body
    assert body["service"] == "checkout"
    assert body["features"][:4] == [
        "user_stats__clicks",
        "user_stats__country",
        "user_stats__last_seen",
        "ad_stats__ctr",
    ]
    (result,) = body["results"]
    assert set(result["values"]) == set(body["features"])
    assert result["values"]["user_stats__clicks"] == 4
    assert result["values"]["user_stats__last_seen"] == seen.isoformat()
    assert result["values"]["ad_stats__ctr"] == 0.25
    assert set(result["status"].values()) == {"present"}
    assert result["event_timestamps"]["user_stats__country"] == (NOW - HOUR).isoformat()
    assert result["age_seconds"]["user_stats__country"] == 3600
    assert result["age_seconds"]["ad_stats__ctr"] == 7200
    last_tile_end = floor_time(max(ts for ts, _, _ in purchases(1)), HOUR) + HOUR
    assert result["event_timestamps"]["user_ad_purchases__spend_7d"] == last_tile_end.isoformat()
    assert body["metadata"]["feature_versions"]["user_stats"] == user_stats.version
    assert body["metadata"]["served_at"] == NOW.isoformat()


def test_results_are_columns_over_the_rows_that_follow_the_features(serve, store_path):
    write_row(store_path, ad_stats, ("a1",), NOW - 2 * HOUR, {"ctr": 0.25, "title": "Shoes"})
    rows = [{"user_id": 1, "ad_id": "a1"}, {"user_id": 2, "ad_id": "a2"}]
    response = handler(
        v2_event("POST", BATCH.format("checkout"), json.dumps({"entities": rows})), None
    )
    answer = json.loads(response["body"])
    names, results = answer["features"], answer["results"]
    assert len(results) == len(names)
    for result in results:
        assert set(result) == {"values", "status", "event_timestamps", "age_seconds"}
        assert all(len(column) == len(rows) for column in result.values())
    ctr, clicks = results[names.index("ad_stats__ctr")], results[names.index("user_stats__clicks")]
    assert (ctr["values"], ctr["status"]) == ([0.25, None], ["present", "missing"])
    assert ctr["age_seconds"] == [7200, None]
    assert (clicks["values"], clicks["status"]) == ([None, None], ["missing", "missing"])


def test_on_demand_features_are_computed_from_the_request_and_read_features(serve, store_path):
    """The shipped function gets the request fields (typed) and the features it reads, which
    are not served themselves; its result equals the definition's function on the values the
    same store serves for those features."""
    write_row(store_path, user_stats, (1,), NOW - HOUR, {"clicks": 4, "country": "FR"})
    write_row(store_path, ad_stats, ("a1",), NOW - 2 * HOUR, {"ctr": 0.25, "title": "Shoes"})
    write_tiles(store_path, (1, "a1"), purchases(2))
    entities = {"user_id": 1, "ad_id": "a1"}
    request = {"amount": 12.5, "requested_at": "2026-03-10T09:15:00+01:00"}
    status, body = serve(
        "POST", ROUTE.format("context"), {"entities": entities, "request_data": request}
    )
    assert status == 200, body
    names = ["spend_share", "log_amount", "clicks_at_hour"]
    assert body["features"] == ["ad_stats__ctr", *(f"purchase_context__{n}" for n in names)]
    _, served = serve("POST", ROUTE.format("checkout"), {"entities": entities})
    read = served["results"][0]["values"]
    expected = purchase_context.function(
        {"amount": 12.5, "requested_at": datetime(2026, 3, 10, 8, 15, tzinfo=UTC)},
        {"clicks": read["user_stats__clicks"]},
        {"spend_7d": read["user_ad_purchases__spend_7d"]},
    )
    (result,) = body["results"]
    assert result["values"] == {
        "ad_stats__ctr": 0.25,
        **{f"purchase_context__{name}": value for name, value in expected.items()},
    }
    assert result["values"]["purchase_context__clicks_at_hour"] == "4@8"
    assert result["status"]["purchase_context__log_amount"] == "present"
    assert result["event_timestamps"]["purchase_context__log_amount"] is None


def test_on_demand_request_data_per_row_in_a_batch(serve, store_path):
    write_row(store_path, user_stats, (1,), NOW - HOUR, {"clicks": 4, "country": "FR"})
    rows = [{"user_id": 1, "ad_id": "a1"}, {"user_id": 2, "ad_id": "a1"}]
    data = [
        {"amount": 1, "requested_at": "2026-03-10T03:00:00"},
        {"amount": None, "requested_at": None},
    ]
    status, body = serve("POST", BATCH.format("context"), {"entities": rows, "request_data": data})
    assert status == 200, body
    first, second = (result["values"] for result in body["results"])
    assert first["purchase_context__log_amount"] == 0.0
    assert first["purchase_context__clicks_at_hour"] == "4@3"
    assert second["purchase_context__log_amount"] is None
    assert second["purchase_context__clicks_at_hour"] == "None@None"


@pytest.mark.parametrize(
    ("request_data", "status", "message"),
    [
        (None, 400, "needs 'request_data' with fields ['amount', 'requested_at']"),
        ({"amount": 1.0}, 400, "missing fields ['requested_at']"),
        ({"amount": 1.0, "requested_at": None, "x": 1}, 400, "unexpected fields ['x']"),
        ({"amount": "1.0", "requested_at": None}, 400, "field 'amount' must be Float64"),
        ({"amount": True, "requested_at": None}, 400, "field 'amount' must be Float64"),
        ({"amount": 1.0, "requested_at": "yesterday"}, 400, "'requested_at' must be Timestamp"),
        ({"amount": 1.0, "requested_at": 1700000000}, 400, "'requested_at' must be Timestamp"),
        ({"amount": 1.0, "requested_at": "0001-01-01T00:00:00+01:00"}, 400, "must be Timestamp"),
        ([{"amount": 1.0, "requested_at": None}], 400, "must be a JSON object"),
        ({"amount": -1.0, "requested_at": None}, 422, "purchase_context"),
    ],
)
def test_on_demand_request_data_errors(serve, request_data, status, message):
    body = {"entities": {"user_id": 1, "ad_id": "a1"}}
    if request_data is not None:
        body["request_data"] = request_data
    got, answer = serve("POST", ROUTE.format("context"), body)
    assert got == status
    assert message in answer["error"]


def test_an_entity_without_records_is_missing_with_empty_window_aggregates(serve):
    status, body = serve(
        "POST", ROUTE.format("checkout"), {"entities": {"user_id": 2, "ad_id": "zz"}}
    )
    assert status == 200
    (result,) = body["results"]
    assert set(result["status"].values()) == {"missing"}
    assert set(result["event_timestamps"].values()) == {None}
    assert set(result["age_seconds"].values()) == {None}
    assert result["values"]["user_ad_purchases__purchases_1d"] == 0
    assert result["values"]["user_ad_purchases__spend_7d"] is None
    assert result["values"]["user_stats__clicks"] is None


def test_values_older_than_the_ttl_are_expired(serve, store_path, clock):
    event_ts = NOW - HOUR
    write_row(
        store_path, user_stats, (1,), event_ts, {"clicks": 4, "country": "FR", "last_seen": NOW}
    )
    write_row(store_path, ad_stats, ("a1",), event_ts, {"ctr": 0.5, "title": "Shoes"})
    clock.now = event_ts + timedelta(days=2)
    _, body = serve("POST", ROUTE.format("checkout"), {"entities": {"user_id": 1, "ad_id": "a1"}})
    assert body["results"][0]["status"]["user_stats__clicks"] == "present"
    clock.now = event_ts + timedelta(days=2, microseconds=1)
    _, body = serve("POST", ROUTE.format("checkout"), {"entities": {"user_id": 1, "ad_id": "a1"}})
    result = body["results"][0]
    assert result["status"]["user_stats__clicks"] == "expired"
    assert result["values"]["user_stats__clicks"] is None
    assert result["event_timestamps"]["user_stats__clicks"] == event_ts.isoformat()
    assert result["status"]["ad_stats__ctr"] == "present"  # no ttl
    assert result["values"]["ad_stats__ctr"] == 0.5


@pytest.mark.parametrize("seed", range(4))
def test_aggregates_are_finalized_from_tiles_at_request_time(serve, store_path, clock, seed):
    rows = purchases(seed)
    write_tiles(store_path, (7, "a7"), rows)
    stored = tiles(rows)
    for now in (
        NOW,
        NOW + 30 * timedelta(minutes=1),
        floor_time(NOW, HOUR),
        NOW + timedelta(days=3),
    ):
        clock.now = now
        _, body = serve(
            "POST", ROUTE.format("checkout"), {"entities": {"user_id": 7, "ad_id": "a7"}}
        )
        values = body["results"][0]["values"]
        for aggregation, name in zip(AGGREGATIONS, AGGREGATE_NAMES, strict=True):
            expected = aggregate(aggregation, stored, now, HOUR)
            assert values[name] == (
                pytest.approx(expected) if isinstance(expected, float) else expected
            )
            assert values[name] == pytest.approx(brute_force(aggregation, rows, now)), name
        assert body["results"][0]["status"]["user_ad_purchases__spend_7d"] == "present"


def test_batch_answers_each_row_in_order(serve, store_path):
    write_row(
        store_path, user_stats, (1,), NOW - HOUR, {"clicks": 1, "country": "FR", "last_seen": NOW}
    )
    write_row(
        store_path, user_stats, (3,), NOW - HOUR, {"clicks": 3, "country": "DE", "last_seen": NOW}
    )
    rows = [{"user_id": 3}, {"user_id": 2}, {"user_id": 1}, {"user_id": 3}]
    status, body = serve("POST", BATCH.format("users"), {"entities": rows})
    assert status == 200
    assert [r["values"]["user_stats__clicks"] for r in body["results"]] == [3, None, 1, 3]
    assert [r["status"]["user_stats__clicks"] for r in body["results"]] == [
        "present",
        "missing",
        "present",
        "present",
    ]


def test_a_feature_subset_is_served_alone(serve, store_path):
    write_row(store_path, ad_stats, ("a1",), NOW - HOUR, {"ctr": 0.5, "title": "Shoes"})
    wanted = ["ad_stats__ctr", "user_ad_purchases__purchases_1d"]
    request = {"entities": {"user_id": 1, "ad_id": "a1"}, "features": wanted}
    for _ in range(2):  # the second request uses the cached plan
        _, body = serve("POST", ROUTE.format("checkout"), request)
        assert body["features"] == wanted
        assert body["results"][0]["values"] == {
            "ad_stats__ctr": 0.5,
            "user_ad_purchases__purchases_1d": 0,
        }
        assert list(body["metadata"]["feature_versions"]) == ["ad_stats", "user_ad_purchases"]


def test_a_subset_keeps_the_services_request_shape_and_answers_in_its_order(serve, store_path):
    """Join keys and request data stay the whole service's whatever features are picked, and
    the results follow the request's list."""
    write_row(store_path, ad_stats, ("a1",), NOW - HOUR, {"ctr": 0.5, "title": "Shoes"})
    wanted = ["user_ad_purchases__purchases_1d", "ad_stats__ctr"]  # not the service's order
    request = {"entities": {"user_id": 1, "ad_id": "a1"}, "features": wanted}
    status, body = serve("POST", ROUTE.format("checkout"), request)
    assert (status, body["features"]) == (200, wanted)
    assert body["results"][0]["values"] == {wanted[0]: 0, wanted[1]: 0.5}
    request = {"entities": {"ad_id": "a1", "user_id": 1}, "features": ["ad_stats__ctr"]}
    status, body = serve("POST", ROUTE.format("context"), request)  # no request data needed
    assert (status, body["results"][0]["values"]) == (200, {"ad_stats__ctr": 0.5})
    data = {"amount": 3.0, "requested_at": "2026-03-10T12:00:00Z"}
    status, body = serve("POST", ROUTE.format("context"), {**request, "request_data": data})
    assert (status, body["results"][0]["values"]) == (200, {"ad_stats__ctr": 0.5})
    status, body = serve(
        "POST", ROUTE.format("context"), {**request, "request_data": {**data, "amount": "3"}}
    )
    assert status == 400 and "'amount' must be Float64" in body["error"]
    status, body = serve("POST", ROUTE.format("checkout"), {**request, "entities": {"ad_id": "a1"}})
    assert status == 400 and "missing join keys ['user_id']" in body["error"]


def test_each_on_demand_view_is_given_its_own_request_fields(store_path, clock):
    service = FeatureService("both", features=[purchase_context, channel_context])
    settings = {"type": "sqlite", "path": str(store_path)}
    built = build_registry(Repository.from_objects([service]), settings)
    server = FeatureServer(load_registry(built), clock=clock)
    data = {"amount": 2.0, "requested_at": None, "channel": "web"}
    (row,) = by_feature(server.get_features("both", {"user_id": 1, "ad_id": "a1"}, data))
    server.close()
    assert row["values"]["channel_context__fields_seen"] == "channel"


def test_float32_request_values_are_rounded_as_the_offline_column_rounds_them():
    """Offline a Float32 request field is a float32 spine column: the function sees 0.1 as
    0.10000000149011612, so it must online too (numpy is the oracle)."""
    assert _typed(0.1, Float32) == float(np.float32(0.1)) != 0.1
    assert _typed(7, Float32) == 7.0
    assert _typed([0.1, None], Array(Float32)) == [float(np.float32(0.1)), None]
    assert _typed(1e39, Float32) == math.inf


def test_a_body_with_an_int_beyond_64_bits_is_still_strict_json():
    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    body = encode_json({"a": [float("nan"), 2**70, (float("-inf"), 1.5)], "b": float("inf")})
    assert json.loads(body, parse_constant=refuse) == {"a": [None, 2**70, [None, 1.5]], "b": None}


def test_a_function_changing_its_array_inputs_changes_nothing_else(store_path, clock):
    """Offline every row's inputs are new objects; online they are copied to be so too."""
    write_tiles(store_path, (1, "a1"), purchases(1))
    service = FeatureService(
        "appends", features=[user_ad_purchases[["last_3_categories_7d"]], appending]
    )
    settings = {"type": "sqlite", "path": str(store_path)}
    built = build_registry(Repository.from_objects([service]), settings)
    server = FeatureServer(load_registry(built), clock=clock)
    rows = [{"user_id": 1, "ad_id": "a1"}] * 2
    body = server.get_features("appends", rows, {"tags": ["x"]})
    server.close()
    categories, tags_seen, categories_seen = (r["values"] for r in body["results"])
    assert tags_seen == [2, 2]
    assert categories_seen == [len(categories[0]) + 1] * 2
    assert "seen" not in categories[0] and categories[0] == categories[1]


def test_health_and_the_list_of_services(serve):
    assert serve("GET", "/health") == (
        200,
        {
            "status": "ok",
            "registry_format": 1,
            "feature_services": 3,
            "auth": "on",
            "registry_signatures": "required",
        },
    )
    status, body = serve("GET", "/v1/feature-services/", kind="v2")
    assert status == 200
    assert [s["name"] for s in body["feature_services"]] == ["checkout", "context", "users"]
    checkout, context, users = body["feature_services"]
    assert checkout["join_keys"] == [
        {"name": "user_id", "type": "Int64"},
        {"name": "ad_id", "type": "String"},
    ]
    assert checkout["request_data"] == []
    assert context["join_keys"] == [
        {"name": "ad_id", "type": "String"},
        {"name": "user_id", "type": "Int64"},
    ]
    assert context["request_data"] == [
        {"name": "amount", "type": "Float64"},
        {"name": "requested_at", "type": "Timestamp"},
    ]
    assert users["owner"] == "team:x"


ENTITY = {"user_id": 1, "ad_id": "a1"}
CLIENT_ERRORS = {
    "malformed JSON": ("POST", ROUTE.format("checkout"), '{"entities": ', 400, "not valid JSON"),
    "not an object": ("POST", ROUTE.format("checkout"), "[1, 2]", 400, "JSON object"),
    "empty body": ("POST", ROUTE.format("checkout"), None, 400, "empty body"),
    "deep nesting": ("POST", ROUTE.format("checkout"), "[" * 4000, 400, "not valid JSON"),
    "missing key": (
        "POST",
        ROUTE.format("checkout"),
        {"entities": {"user_id": 1}},
        400,
        "missing join keys ['ad_id']",
    ),
    "extra key": (
        "POST",
        ROUTE.format("users"),
        {"entities": {"user_id": 1, "ad_id": "a1"}},
        400,
        "unexpected keys ['ad_id']",
    ),
    "int as string": (
        "POST",
        ROUTE.format("users"),
        {"entities": {"user_id": "12"}},
        400,
        "join key 'user_id' must be an integer",
    ),
    "bool as int": (
        "POST",
        ROUTE.format("users"),
        {"entities": {"user_id": True}},
        400,
        "'user_id' must be an integer",
    ),
    "float as int": (
        "POST",
        ROUTE.format("users"),
        {"entities": {"user_id": 1.0}},
        400,
        "'user_id' must be an integer",
    ),
    "int too large": (
        "POST",
        ROUTE.format("users"),
        {"entities": {"user_id": 2**63}},
        400,
        "64-bit",
    ),
    "int as string key": (
        "POST",
        ROUTE.format("checkout"),
        {"entities": {"user_id": 1, "ad_id": 5}},
        400,
        "'ad_id' must be a string",
    ),
    "entities not an object": (
        "POST",
        ROUTE.format("users"),
        {"entities": [{"user_id": 1}]},
        400,
        "'entities' must be a JSON object",
    ),
    "no entities": (
        "POST",
        ROUTE.format("users"),
        {"features": ["user_stats__clicks"]},
        400,
        "'entities'",
    ),
    "unexpected field": (
        "POST",
        ROUTE.format("users"),
        {"entities": {"user_id": 1}, "rows": 1},
        400,
        "unexpected fields ['rows']",
    ),
    "unknown service": (
        "POST",
        ROUTE.format("nope"),
        {"entities": ENTITY},
        404,
        "no feature service 'nope' (known: checkout, context, users)",
    ),
    "unknown feature": (
        "POST",
        ROUTE.format("checkout"),
        {"entities": ENTITY, "features": ["ad_stats__title"]},
        400,
        "unknown features ['ad_stats__title']",
    ),
    "features not a list": (
        "POST",
        ROUTE.format("checkout"),
        {"entities": ENTITY, "features": "ad_stats__ctr"},
        400,
        "'features' must be",
    ),
    "features not strings": (
        "POST",
        ROUTE.format("users"),
        {"entities": {"user_id": 1}, "features": [[]]},
        400,
        "feature names (strings)",
    ),
    "repeated feature": (
        "POST",
        ROUTE.format("checkout"),
        {"entities": ENTITY, "features": ["ad_stats__ctr"] * 2},
        400,
        "twice",
    ),
    "request_data not an object": (
        "POST",
        ROUTE.format("users"),
        {"entities": {"user_id": 1}, "request_data": 3},
        400,
        "'request_data'",
    ),
    "too many rows": (
        "POST",
        BATCH.format("users"),
        {"entities": [{"user_id": i} for i in range(11)]},
        400,
        "too many rows: 11, the limit is 10",
    ),
    "empty batch": ("POST", BATCH.format("users"), {"entities": []}, 400, "non-empty JSON array"),
    "bad batch row": (
        "POST",
        BATCH.format("users"),
        {"entities": [{"user_id": 1}, {"user": 2}]},
        400,
        "entities[1]: missing join keys ['user_id']",
    ),
    "oversized body": (
        "POST",
        ROUTE.format("users"),
        {"entities": {"user_id": 1}, "request_data": {"x": "y" * 5000}},
        413,
        "over the limit of 4096",
    ),
    "unknown route": ("GET", "/v2/things", None, 404, "no route"),
    "wrong method": ("GET", ROUTE.format("users"), None, 405, "takes POST, not GET"),
    "wrong method on health": ("POST", "/health", "{}", 405, "takes GET"),
}


@pytest.mark.parametrize("case", sorted(CLIENT_ERRORS))
@pytest.mark.parametrize("kind", sorted(EVENTS))
def test_client_errors_are_4xx_naming_the_problem(store_path, clock, monkeypatch, case, kind):
    server = feature_server(store_path, clock, max_batch_rows=10, max_body_bytes=4096)
    monkeypatch.setattr(online.handler, "_server", server)
    method, path, body, expected_status, message = CLIENT_ERRORS[case]
    text = body if body is None or isinstance(body, str) else json.dumps(body)
    response = handler(EVENTS[kind](method, path, text), None)
    assert response["statusCode"] == expected_status
    assert message in json.loads(response["body"])["error"]
    server.close()


def test_events_that_are_not_http_are_400():
    assert handler({"hello": "world"}, None)["statusCode"] == 400
    event = url_event("POST", ROUTE.format("users"), "not base64!")
    event["isBase64Encoded"] = True
    assert "base64" in json.loads(handler(event, None)["body"])["error"]


class ThrottledStore:
    def read_items(self, keys):
        raise StoreThrottled("table 'features': 3 keys stayed unprocessed after 8 retries")

    def close(self):
        pass


def test_a_throttled_store_is_503(store_path, monkeypatch):
    server = FeatureServer(load_registry(registry(store_path)), store=ThrottledStore())
    monkeypatch.setattr(online.handler, "_server", server)
    response = handler(v1_event("POST", ROUTE.format("users"), '{"entities": {"user_id": 1}}'))
    assert response["statusCode"] == 503
    assert response["headers"]["retry-after"] == "1"
    assert "unprocessed" in json.loads(response["body"])["error"]


def test_the_serving_clock_can_be_fixed_by_the_environment(store_path, monkeypatch):
    """`$FEATUREPLANE_AS_OF` serves as of a past moment: there the value is fresh, not expired."""
    as_of = datetime(2024, 3, 10, 12, 0, tzinfo=UTC)
    write_row(store_path, user_stats, (1,), as_of - HOUR, {"clicks": 7, "country": "FR"})
    monkeypatch.setenv("FEATUREPLANE_AS_OF", "2024-03-10T12:00:00")
    server = FeatureServer(load_registry(registry(store_path)))
    body = server.get_features("users", {"user_id": 1})
    server.close()
    assert body["metadata"]["served_at"] == as_of.isoformat()
    (result,) = by_feature(body)
    assert result["status"]["user_stats__clicks"] == "present"
    assert (
        result["values"]["user_stats__clicks"],
        result["age_seconds"]["user_stats__clicks"],
    ) == (
        7,
        3600,
    )


def test_the_handler_loads_the_registry_named_by_the_environment(tmp_path, monkeypatch, store_path):
    path = write_registry(registry(store_path), tmp_path / "registry.json")
    recent = datetime.now(UTC) - HOUR  # the handler's own clock: real time
    write_row(
        store_path, user_stats, (1,), recent, {"clicks": 9, "country": "FR", "last_seen": NOW}
    )
    monkeypatch.setenv("FEATUREPLANE_REGISTRY", str(path))
    monkeypatch.setattr(online.handler, "_server", None)
    response = handler(url_event("POST", ROUTE.format("users"), '{"entities": {"user_id": 1}}'))
    assert by_feature(json.loads(response["body"]))[0]["values"]["user_stats__clicks"] == 9
    assert online.handler.server() is online.handler.server()
    online.handler.server().close()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
KEYS = st.sampled_from(["user_id", "ad_id", "entities", "features", "x"]) | st.text(max_size=6)
REQUESTS = st.fixed_dictionaries(
    {},
    optional={
        "entities": st.dictionaries(KEYS, JSON, max_size=3)
        | st.lists(st.dictionaries(KEYS, JSON, max_size=3), max_size=4)
        | JSON,
        "features": st.lists(
            st.sampled_from(["ad_stats__ctr", "user_stats__clicks"]) | st.text(max_size=5),
            max_size=3,
        )
        | JSON,
        "request_data": JSON,
    },
).map(json.dumps)
BODIES = (
    st.none()
    | REQUESTS
    | st.binary(max_size=64).map(lambda b: b.decode("latin-1"))
    | JSON.map(json.dumps)
)
PATHS = st.sampled_from(
    [
        "/health",
        "/v1/feature-services",
        ROUTE.format("checkout"),
        BATCH.format("users"),
        ROUTE.format("x/y"),
    ]
) | st.text(max_size=30).map(lambda text: "/" + text)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "patch"]),
    path=PATHS,
    body=BODIES,
    kind=st.sampled_from(sorted(EVENTS)),
)
def test_no_request_is_a_server_error(serve, method, path, body, kind):
    status, answer = serve(method, path, body, kind=kind, raw=True)
    assert status < 500
    assert status == 200 or "error" in answer


def test_feature_store_serves_in_process(tmp_path, monkeypatch, store_path):
    """`FeatureStore.get_online_features` runs the same dispatch without HTTP (no Spark needed)."""
    from featureplane.feature_store import FeatureStore

    recent = datetime.now(UTC) - HOUR
    write_row(store_path, ad_stats, ("a1",), recent, {"ctr": 0.5, "title": "Shoes"})
    settings = json.dumps({"type": "sqlite", "path": str(store_path)})
    monkeypatch.setenv("FEATUREPLANE_ONLINE_STORE", settings)
    with FeatureStore(serving_repo.repository(), spark=None) as store:
        one = store.get_online_features("checkout", {"user_id": 1, "ad_id": "a1"})
        assert by_feature(one)[0]["values"]["ad_stats__ctr"] == 0.5
        many = store.get_online_features("users", [{"user_id": 1}, {"user_id": 2}])
        assert [r["status"]["user_stats__clicks"] for r in by_feature(many)] == ["missing"] * 2
        clicks, country = (
            many["results"][many["features"].index(f"user_stats__{name}")]
            for name in ("clicks", "country")
        )
        data = [{"amount": 1.0, "requested_at": None}, {"amount": 2.0, "requested_at": None}]
        pair = [{"user_id": 1, "ad_id": "a1"}, {"user_id": 2, "ad_id": "a1"}]
        computed = store.get_online_features(
            "context", pair, data, ["purchase_context__log_amount"]
        )
        assert computed["results"][0]["values"] == [0.0, math.log(2.0)]
        clicks["status"][0] = "changed by the caller"
        assert country["status"] == ["missing"] * 2  # features of a view share no lists
        with pytest.raises(ValueError, match="missing join keys"):
            store.get_online_features("checkout", {"user_id": 1})
