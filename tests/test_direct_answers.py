"""`online.protocol.LimitedProtocol` answering requests itself (`answer`), in a real uvicorn
server on a thread, over raw sockets: one write per answer with its length, keep-alive and
HTTP/1.0 close, requests pipelined in one packet answered in order whichever way each goes
(direct, handed over to the application, or the application's alone), an error in `answer` a
JSON 500 on a connection that serves on, and a trickled body still a 408."""

import asyncio
import json
import socket
import threading
import time

import pytest
import uvicorn

from featureplane.serving import Response, encode_json
from online import protocol
from online.protocol import HANDED_OVER, LimitedProtocol
from tests.test_server import exchange, responses

BODY_TIMEOUT = 1.0
answered: list[str] = []
"""The paths `Answering.answer` saw, in order."""


class Answering(LimitedProtocol):
    """Answers `/echo` with its method and body, hands `/hand-over` to the application and
    fails on `/boom`."""

    answers_directly = True

    def answer(self, method, path, body, headers):
        answered.append(path)
        if path == "/boom":
            raise RuntimeError("a bug in answer")
        if path == "/hand-over":
            return {"decided": body.decode()}
        return Response(200, encode_json({"method": method, "body": body.decode()}))


async def app(scope, receive, send):
    """The application: echoes what was handed over, or says it answered itself (HEAD,
    chunked bodies)."""
    if scope["type"] != "http":
        return
    handed = scope["extensions"].get(HANDED_OVER)
    body = encode_json({"handed_over": handed} if handed else {"app": scope["method"]})
    await asyncio.sleep(0.05)  # the pipelined requests after it must wait their turn
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def url(monkeypatch_module):
    monkeypatch_module.setenv("FEATUREPLANE_BODY_TIMEOUT_SECONDS", str(BODY_TIMEOUT))
    protocol.connection_limits.cache_clear()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        app, port=port, http=Answering, lifespan="off", log_level="critical", loop="uvloop"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
    protocol.connection_limits.cache_clear()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def request(method: str, path: str, body: bytes = b"", close: bool = False) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\ncontent-length: {len(body)}\r\n"
    return head.encode() + (b"connection: close\r\n" if close else b"") + b"\r\n" + body


def test_requests_pipelined_in_one_packet_are_answered_in_order_whichever_way_they_go(url):
    """Direct, handed over (the application waits 50 ms), HEAD (the application's), direct,
    chunked (the application's), direct and closing: six answers, in order, each framed by
    its length, and `answer` saw only the requests that go to it."""
    answered.clear()
    chunked = (
        b"POST /chunked HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\n\r\n"
        b"2\r\nab\r\n0\r\n\r\n"
    )
    data = b"".join(
        [
            request("POST", "/echo", b"one"),
            request("POST", "/hand-over", b"two"),
            request("HEAD", "/echo"),
            request("GET", "/echo"),
            chunked,
            request("POST", "/echo", b"six", close=True),
        ]
    )
    answers = responses(exchange(url, data), ["POST", "POST", "HEAD", "GET", "POST", "POST"])
    assert [status for status, _ in answers] == [b"HTTP/1.1 200 OK"] * 6
    bodies = [json.loads(body) if body else None for _, body in answers]
    assert bodies == [
        {"method": "POST", "body": "one"},
        {"handed_over": {"decided": "two"}},
        None,  # HEAD: a head alone
        {"app": "GET"},  # asked while the hand-over was under way: the application's, in turn
        {"app": "POST"},
        {"app": "POST"},
    ]
    assert answered == ["/echo", "/hand-over"]


def test_a_direct_answer_is_one_write_kept_alive_or_closed_for_http_1_0(url):
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        for body in (b"a", b"bb"):
            connection.sendall(request("POST", "/echo", body))
            head, _, rest = connection.recv(65536).partition(b"\r\n\r\n")
            assert b"content-length: %d" % len(rest) in head
            assert json.loads(rest) == {"method": "POST", "body": body.decode()}
    old = b"GET /echo HTTP/1.0\r\nHost: x\r\n\r\n"
    head, _, body = exchange(url, old).partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower() and json.loads(body)["method"] == "GET"


def test_an_error_in_answer_is_a_json_500_and_the_connection_serves_on(url):
    data = request("GET", "/boom") + request("GET", "/echo", close=True)
    (boom, boom_body), (ok, ok_body) = responses(exchange(url, data), ["GET", "GET"])
    assert boom == b"HTTP/1.1 500 Internal Server Error"
    error = json.loads(boom_body)
    assert error["error"] == "internal server error" and error["request_id"]
    assert "a bug" not in boom_body.decode(), "what failed is logged, not told"
    assert ok == b"HTTP/1.1 200 OK" and json.loads(ok_body)["method"] == "GET"


def test_a_trickled_body_of_a_direct_request_is_refused_with_408(url):
    began = time.monotonic()
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(request("POST", "/echo", b"x" * 10)[:-5])  # five bytes short
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 408 ")
    assert "request body not received" in json.loads(received.partition(b"\r\n\r\n")[2])["error"]
    assert BODY_TIMEOUT <= time.monotonic() - began < BODY_TIMEOUT + 5
