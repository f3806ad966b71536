"""The Python client against a scripted HTTP server: 429 and 503 retried with backoff, at least
as late as Retry-After asks; answers that are not a feature server's raise MalformedResponse;
integers beyond 64 bits are read exactly."""

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from online.client import FeatureClient, FeatureServerError, MalformedResponse


class Scripted(BaseHTTPRequestHandler):
    """Answers each request with the next (status, headers, body) of `script`."""

    script: list[tuple[int, dict[str, str], bytes]] = []
    seen: list[float] = []
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 (http.server's name)
        Scripted.seen.append(time.monotonic())
        status, headers, body = Scripted.script.pop(0)
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        self.do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server() -> Iterator[str]:
    Scripted.script, Scripted.seen = [], []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


HEALTHY = (200, {}, b'{"status": "ok"}')


def test_a_503_and_a_429_are_retried_no_sooner_than_retry_after(server):
    Scripted.script = [(503, {"Retry-After": "1"}, b'{"error": "online store throttled"}')]
    Scripted.script += [(429, {}, b'{"error": "slow down"}'), HEALTHY]
    with FeatureClient(server, backoff=0.05) as client:
        assert client.health() == {"status": "ok"}
    first, second, third = Scripted.seen
    assert second - first >= 1.0, "Retry-After: 1 waited for"
    assert third - second >= 0.1, "the backoff doubled (0.05, then 0.1)"


def test_retries_end_with_the_servers_error(server):
    Scripted.script = [(503, {"Retry-After": "0"}, b'{"error": "unavailable"}')] * 3
    client = FeatureClient(server, retries=2, backoff=0.01)
    with client, pytest.raises(FeatureServerError, match="503: unavailable") as raised:
        client.health()
    assert raised.value.status == 503 and len(Scripted.seen) == 3
    Scripted.script = [(400, {}, b'{"error": "bad join key"}')]
    with FeatureClient(server) as client, pytest.raises(FeatureServerError, match="400"):
        client.health()
    assert len(Scripted.seen) == 4, "a client error is not retried"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>gateway</html>", "not JSON"),
        (b"[1, 2]", "a JSON list, not an object"),
        (b'{"features": ["a"]}', "not a features response: KeyError"),
        (b'{"features": ["a", "b"], "results": [{"values": [1]}]}', "not a features response"),
        (b'{"features": ["a"], "results": []}', None),
    ],
)
def test_an_answer_that_is_not_a_feature_servers_is_malformed(server, body, message):
    Scripted.script = [(200, {}, body)]
    with FeatureClient(server) as client:
        if message is None:  # no rows: a valid, empty answer
            assert client.get_features_batch("x", []) == []
            return
        with pytest.raises(MalformedResponse, match=message):
            client.get_features_batch("x", [])


def test_a_response_over_the_cap_is_refused(server):
    Scripted.script = [(200, {}, b'{"status": "' + b"x" * 2_000 + b'"}'), HEALTHY]
    with FeatureClient(server, max_response_bytes=1_000) as client:
        with pytest.raises(MalformedResponse, match="over 1000 bytes"):
            client.health()
        assert client.health() == {"status": "ok"}, "the next call opens a new connection"


def test_integers_beyond_64_bits_are_read_exactly(server):
    big = 2**70 + 1
    Scripted.script = [(200, {}, json.dumps({"n": big, "m": -big, "x": 1.5e300}).encode())]
    with FeatureClient(server) as client:
        assert client.health() == {"n": big, "m": -big, "x": 1.5e300}
