"""The client's HTTP/1.1 connection against a raw socket server that sends scripted bytes:
bodies by length, chunks or close, informational answers skipped, a kept-alive connection the
server closed reopened once, and anything that is not HTTP refused without a hang."""

import socket
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from online.client import FeatureClient, MalformedResponse
from online.connection import BadResponse, Connection

LIMIT = 1 << 20
CLOSE = b"<close>"


class RawServer:
    """Accepts connections; for each request read, sends the next scripted bytes (None closes
    the connection instead of answering; bytes ending in CLOSE close it after answering)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.script: list[bytes | None] = []
        self.requests: list[bytes] = []
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._talk, args=(connection,), daemon=True).start()

    def _talk(self, connection: socket.socket) -> None:
        with connection:
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = connection.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, rest = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                while len(rest) < length:
                    rest += connection.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + rest[:length])
                buffer = rest[length:]
                answer = self.script.pop(0)
                if answer is None:
                    return
                connection.sendall(answer.removesuffix(CLOSE))
                if answer.endswith(CLOSE):
                    return

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def raw() -> Iterator[RawServer]:
    server = RawServer()
    yield server
    server.close()


def exchange(raw: RawServer, *answers: bytes | None, payload: bytes | None = None):
    raw.script = list(answers)
    connection = Connection("127.0.0.1", raw.port, 5.0)
    try:
        return connection.exchange("POST", "/x", {"A": "b"}, payload, LIMIT)
    finally:
        connection.close()


def test_a_request_is_one_write_with_its_length_and_the_body_comes_by_length(raw):
    status, fields, body = exchange(
        raw,
        b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\nX-Thing:  spaced \r\n\r\nhello",
        payload=b'{"a":1}',
    )
    assert (status, fields["x-thing"], body) == (201, "spaced", b"hello")
    assert raw.requests == [
        b"POST /x HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nA: b\r\nContent-Length: 7\r\n\r\n"
        b'{"a":1}' % raw.port
    ]


def test_chunks_informational_answers_and_bodies_up_to_the_close(raw):
    chunked = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4;ext=1\r\nhell\r\n1\r\no\r\n0\r\nTrailer: x\r\n\r\n"
    )
    assert exchange(raw, chunked)[2] == b"hello"
    assert exchange(raw, b"HTTP/1.0 200 OK\r\n\r\nto the end" + CLOSE)[2] == b"to the end"


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (b"SSH-2.0-OpenSSH\r\n", "not an HTTP response"),
        (b"HTTP/1.1 OK\r\n\r\n", "not an HTTP response"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "not a header field"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "Content-Length is '-1'"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort" + CLOSE, "ended 5 bytes early"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 9999999\r\n\r\n", "over 1048576 bytes"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "not a chunk size"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n", "over 100 header fields"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000 + b"\r\n\r\n", "over 64 KiB"),
    ],
)
def test_what_is_not_http_is_refused(raw, answer, problem):
    raw.script = [answer, None]
    connection = Connection("127.0.0.1", raw.port, 5.0)
    with pytest.raises(BadResponse, match=problem):
        connection.exchange("GET", "/", {}, None, LIMIT)
    assert connection._socket is None, "a connection in an unknown state is closed"


def test_a_kept_connection_the_server_closed_is_opened_again_once(raw):
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
    raw.script = [ok, None, ok]
    with FeatureClient(f"http://127.0.0.1:{raw.port}") as client:
        assert client.health() == {}
        assert client.health() == {}, "the server hung up on the kept connection: reopened"
    assert raw.accepted == 2
    raw.script = [None]
    with FeatureClient(f"http://127.0.0.1:{raw.port}") as client, pytest.raises(ConnectionError):
        client.health()  # a new connection closed at once is the server's answer


def test_a_response_that_is_not_http_is_a_malformed_response_to_the_client(raw):
    raw.script = [b"garbage\r\n\r\n"]
    with (
        FeatureClient(f"http://127.0.0.1:{raw.port}") as client,
        pytest.raises(MalformedResponse, match="not an HTTP response"),
    ):
        client.health()


@settings(max_examples=60, deadline=None)
@given(
    body=st.binary(max_size=3000),
    cuts=st.lists(st.integers(1, 500), max_size=8),
    fields=st.dictionaries(
        st.from_regex(r"X-[a-z]{1,8}", fullmatch=True),  # names differ in more than case
        st.from_regex(r"[ -~]{0,30}", fullmatch=True).map(str.strip),
        max_size=5,
    ),
)
def test_any_body_in_any_chunks_arrives_whole(body, cuts, fields):
    """A body sent in chunks of any sizes is the body; header fields arrive trimmed."""
    chunks, rest = [], body
    for cut in cuts:
        if rest:
            chunks.append(rest[:cut])
            rest = rest[cut:]
    if rest:
        chunks.append(rest)
    head = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
    encoded = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks)
    answer = (
        b"HTTP/1.1 200 OK\r\n"
        + head.encode()
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + encoded
        + b"0\r\n\r\n"
    )
    server = RawServer()
    try:
        status, received, got = exchange(server, answer)
    finally:
        server.close()
    assert (status, got) == (200, body)
    assert all(received[name.lower()] == value for name, value in fields.items())
