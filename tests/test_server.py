"""`featureplane serve` in a subprocess, called end to end through `online.client`."""

import contextlib
import json
import math
import socket
import time
from datetime import UTC, datetime, timedelta

import pytest

from featureplane.registry import write_registry
from online.client import FeatureClient, FeatureServerError
from online.server import serving_process
from tests.serving_repo import KEY, ad_stats, registry, user_stats, write_row


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    """A served registry over a SQLite store with two users and one ad; yields its URL."""
    root = tmp_path_factory.mktemp("serve")
    store = root / "online.sqlite"
    now = datetime.now(UTC)
    for user_id in (1, 2):
        values = {"clicks": user_id * 10, "country": "FR", "last_seen": now}
        write_row(store, user_stats, (user_id,), now - timedelta(minutes=5), values)
    write_row(store, ad_stats, ("a1",), now - timedelta(hours=1), {"ctr": 0.5, "title": "Shoes"})
    path = write_registry(registry(store), root / "registry.json")
    env = {"FEATUREPLANE_MAX_BATCH_ROWS": "50", "FEATUREPLANE_INLINE_ROWS": "10"}
    with serving_process(path, env=env, timeout=30) as url:
        yield url


@pytest.fixture(scope="module")
def server(url):
    with FeatureClient(url, api_key=KEY) as client:
        yield client


def responses(data: bytes, methods: list[str]) -> list[tuple[bytes, bytes]]:
    """The (status line, body) of each response in `data`, framed by content-length."""
    found = []
    for method in methods:
        head, _, data = data.partition(b"\r\n\r\n")
        status, *fields = head.split(b"\r\n")
        length = next(
            int(f.split(b":")[1]) for f in fields if f.lower().startswith(b"content-length")
        )
        length = 0 if method == "HEAD" else length
        found.append((status, data[:length]))
        data = data[length:]
    assert data == b"", "nothing but the responses"
    return found


def exchange(url: str, data: bytes) -> bytes:
    """Send `data` on a new connection to the server at `url` in one packet; what comes back
    until the server closes (or resets) the connection."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(data)
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := connection.recv(65536):
                received += chunk
    return received


def test_pipelined_and_head_requests_are_answered_whole_and_in_order(url):
    """Three requests in one packet, the middle one HEAD (answered by a head alone): three
    whole answers in order, none waiting for a body that never comes."""
    methods = ["GET", "HEAD", "GET"]
    ask = b"".join(f"{m} /health HTTP/1.1\r\nHost: x\r\n\r\n".encode() for m in methods[:2])
    ask += b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answers = responses(exchange(url, ask), methods)
    statuses = [status for status, _ in answers]
    assert statuses == [b"HTTP/1.1 200 OK", b"HTTP/1.1 405 Method Not Allowed", b"HTTP/1.1 200 OK"]
    assert json.loads(answers[0][1])["status"] == "ok" and answers[1][1] == b""
    assert answers[2][1] == answers[0][1]


def timeless(response: dict) -> list[dict]:
    """A response's results without their ages, which move with the clock."""
    return [{k: v for k, v in result.items() if "age" not in k} for result in response["results"]]


def test_a_batch_for_a_compute_worker_and_requests_after_it_in_one_packet_keep_their_order(
    url, server
):
    """A 20-row batch (more than the 10 rows computed on the event loop: the protocol reads
    and admits it, then hands it to a compute worker), a 1-row request answered at once but
    behind it, and a listing: three answers in order, equal to those asked one at a time."""
    rows = [{"user_id": 1 + i % 3} for i in range(20)]
    asks = [
        ("/v1/feature-services/users/get-features-batch", {"entities": rows}),
        ("/v1/feature-services/users/get-features", {"entities": {"user_id": 2}}),
    ]
    data = b""
    for path, payload in asks:
        body = json.dumps(payload).encode()
        data += f"POST {path} HTTP/1.1\r\nHost: x\r\nx-api-key: {KEY}\r\n".encode()
        data += b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body)
        data += body
    data += f"GET /v1/feature-services HTTP/1.1\r\nx-api-key: {KEY}\r\n".encode()
    data += b"connection: close\r\n\r\n"
    answers = responses(exchange(url, data), ["POST", "POST", "GET"])
    assert [status for status, _ in answers] == [b"HTTP/1.1 200 OK"] * 3
    batch, one, listing = (json.loads(body) for _, body in answers)
    assert timeless(batch) == timeless(server.request("users", rows))
    assert timeless(one) == timeless(server.request("users", {"user_id": 2}))
    assert [s["name"] for s in listing["feature_services"]] == ["checkout", "context", "users"]


def test_health_and_services(server):
    assert server.health()["status"] == "ok"
    assert [s["name"] for s in server.services()] == ["checkout", "context", "users"]


def test_get_features_end_to_end(server):
    result = server.get_features("checkout", {"user_id": 2, "ad_id": "a1"})
    assert result["values"]["user_stats__clicks"] == 20
    assert result["values"]["ad_stats__ctr"] == 0.5
    assert result["status"]["user_ad_purchases__purchases_1d"] == "missing"
    assert 3500 < result["age_seconds"]["ad_stats__ctr"] < 3700


def test_batch_and_subset(server):
    rows = [{"user_id": 1}, {"user_id": 3}, {"user_id": 2}]
    results = server.get_features_batch("users", rows, features=["user_stats__clicks"])
    assert [r["values"] for r in results] == [
        {"user_stats__clicks": 10},
        {"user_stats__clicks": None},
        {"user_stats__clicks": 20},
    ]


def test_request_data_for_every_row_or_one_per_row(server):
    rows = [{"user_id": 1, "ad_id": "a1"}, {"user_id": 2, "ad_id": "a1"}]
    one = {"amount": math.e, "requested_at": None}
    results = server.get_features_batch("context", rows, request_data=one)
    assert [r["values"]["purchase_context__log_amount"] for r in results] == [1.0, 1.0]
    per_row = [one, {"amount": 1.0, "requested_at": "2026-03-10T09:00:00Z"}]
    results = server.get_features_batch("context", rows, request_data=per_row)
    assert [r["values"]["purchase_context__log_amount"] for r in results] == [1.0, 0.0]
    assert results[1]["values"]["purchase_context__clicks_at_hour"] == "20@9"


def test_the_raw_response_holds_a_column_per_feature(server):
    response = server.request("users", [{"user_id": 2}, {"user_id": 1}])
    clicks = response["results"][response["features"].index("user_stats__clicks")]
    assert clicks["values"] == [20, 10]
    assert clicks["status"] == ["present", "present"]


def test_errors_carry_the_servers_message(server):
    with pytest.raises(FeatureServerError, match="join key 'user_id' must be an integer") as error:
        server.get_features("users", {"user_id": "1"})
    assert error.value.status == 400
    with pytest.raises(FeatureServerError, match=r"must be an integer \(64-bit\)"):
        server.get_features("users", {"user_id": 2**71})  # sent, although orjson refuses it
    with pytest.raises(FeatureServerError, match="no feature service 'nope'"):
        server.get_features("nope", {"user_id": 1})
    with pytest.raises(FeatureServerError, match="too many rows: 51, the limit is 50"):
        server.get_features_batch("users", [{"user_id": i} for i in range(51)])
    assert server.health()["status"] == "ok"  # the connection survives errors


def test_an_oversized_body_is_refused_before_it_is_read(server):
    with pytest.raises(FeatureServerError) as error:
        server.get_features("users", {"user_id": 1}, request_data={"x": "y" * (2 << 20)})
    assert error.value.status == 413
    assert server.health()["status"] == "ok"


def test_latency_of_one_row(server):
    """Not a benchmark: prints p50/p99 of 2,000 one-row requests, bounds them loosely."""
    timings = []
    for i in range(2000):
        began = time.perf_counter()
        server.get_features("checkout", {"user_id": 1 + i % 3, "ad_id": "a1"})
        timings.append(time.perf_counter() - began)
    timings.sort()
    p50, p99 = timings[1000] * 1000, timings[1980] * 1000
    print(f"1-row get-features over HTTP on SQLite: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    assert p50 < 20
