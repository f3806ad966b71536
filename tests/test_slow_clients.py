"""Slow and greedy clients against `featureplane serve`, over real sockets: headers sent a byte
at a time are cut off at the header timeout while a normal client is served as fast as ever,
a trickled body gets 408, heads over the limit 431, and connections past the bound 503."""

import contextlib
import json
import socket
import statistics
import threading
import time

import pytest

from featureplane.registry import write_registry
from online.client import FeatureClient
from online.server import serving_process
from tests.serving_repo import KEY, registry

TIMEOUT = 1.5
LIMITS = {
    "FEATUREPLANE_HEADER_TIMEOUT_SECONDS": str(TIMEOUT),
    "FEATUREPLANE_BODY_TIMEOUT_SECONDS": str(TIMEOUT),
    "FEATUREPLANE_MAX_CONNECTIONS": "150",
}
REQUEST = (
    f"POST /v1/feature-services/users/get-features HTTP/1.1\r\nHost: x\r\nx-api-key: {KEY}\r\n"
).encode()
BODY = b'{"entities": {"user_id": 1}}'


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    root = tmp_path_factory.mktemp("slow")
    path = write_registry(registry(root / "online.sqlite"), root / "registry.json")
    with serving_process(path, env=LIMITS) as url:
        yield url


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def answer(connection: socket.socket) -> bytes:
    """What the server sends until it closes the connection (or resets it: it closes with what
    the client sent unread)."""
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := connection.recv(65536):
            received += chunk
    return received


def latencies(url: str, count: int = 200) -> list[float]:
    timings = []
    with FeatureClient(url, api_key=KEY) as client:
        for _ in range(count):
            began = time.perf_counter()
            client.get_features("users", {"user_id": 1})
            timings.append(time.perf_counter() - began)
    return timings


def test_headers_sent_a_byte_at_a_time_are_cut_off_and_others_are_served_meanwhile(url):
    baseline = statistics.median(latencies(url))
    sockets = [connect(url) for _ in range(100)]
    closed_at: dict[int, float] = {}
    began = time.monotonic()

    def trickle(index: int, connection: socket.socket) -> None:
        try:
            for byte in REQUEST:
                connection.sendall(bytes([byte]))
                time.sleep(0.05)
        except OSError:  # reset by the server
            pass
        else:
            connection.settimeout(10)
            answer(connection)
        closed_at[index] = time.monotonic() - began

    threads = [threading.Thread(target=trickle, args=item) for item in enumerate(sockets)]
    for thread in threads:
        thread.start()
    during = latencies(url)
    for thread in threads:
        thread.join(timeout=30)
    for connection in sockets:
        connection.close()
    assert len(closed_at) == 100
    assert max(closed_at.values()) < TIMEOUT + 3, max(closed_at.values())  # shared machines
    median = statistics.median(during)
    print(f"1-row latency: {baseline * 1000:.2f} ms alone, {median * 1000:.2f} ms with 100 slow")
    assert median < max(5 * baseline, 0.01)


def test_a_body_trickled_slower_than_the_timeout_is_408_and_the_server_keeps_serving(url):
    connection = connect(url)
    connection.sendall(REQUEST + b"Content-Length: %d\r\n\r\n" % len(BODY))
    began = time.monotonic()
    with contextlib.suppress(OSError):  # reset once answered
        for byte in BODY:
            connection.sendall(bytes([byte]))
            time.sleep(0.2)
    received = answer(connection)
    status_line, _, rest = received.partition(b"\r\n")
    assert status_line.split()[1] == b"408", received
    assert "request body not received" in json.loads(rest.split(b"\r\n\r\n", 1)[1])["error"]
    assert time.monotonic() - began < TIMEOUT + 1.0
    with FeatureClient(url, api_key=KEY) as client:
        assert client.get_features("users", {"user_id": 1})["status"]["user_stats__clicks"]


def test_a_connection_that_sends_nothing_is_closed_silently(url):
    connection = connect(url)
    began = time.monotonic()
    assert answer(connection) == b""
    assert time.monotonic() - began < TIMEOUT + 1.0


def test_headers_over_the_limit_are_431(url):
    connection = connect(url)
    connection.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 66_000)
    assert answer(connection).split(b"\r\n", 1)[0].split()[1] == b"431"


def test_connections_past_the_bound_are_503(url):
    held = [connect(url) for _ in range(150)]
    try:
        time.sleep(0.2)
        extra = connect(url)
        status_line = answer(extra).split(b"\r\n", 1)[0]
        assert status_line.split()[1] == b"503", status_line
    finally:
        for connection in held:
            connection.close()
    time.sleep(0.2)
    with FeatureClient(url, api_key=KEY) as client:
        assert client.health()["status"] == "ok"
