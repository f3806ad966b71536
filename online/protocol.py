"""The HTTP server's connection protocol: uvicorn's httptools protocol with the limits it lacks
against slow and greedy clients, given to uvicorn as its `http` protocol.

Uvicorn waits for a request's headers and body without end (its keep-alive timeout covers only
idle connections between requests, and stops at a request's first byte) and holds any number
of connections, so a hundred sockets sending a byte now and then each hold a connection, and
up to a body's worth of memory, for as long as they like. Here, per process:

- the request line and headers must arrive within `header_timeout_seconds` of the connection
  or of the previous response (else 408 and closed; closed silently when nothing came), and
  within `max_head_bytes` (else 431);
- the body must arrive within `body_timeout_seconds` of its headers (else 408 and closed);
- at most `max_connections` are open; another is answered 503 and closed.

The answers are JSON error bodies, as the feature server's, and so is that of a request the
parser refuses (400). The request's scope carries the connection's transport (`TRANSPORT`), so
that a compute worker can write a big body straight into the connection (`online.server`).

A subclass may answer requests itself (`answers_directly`, `answer`): a small GET or POST,
read whole, is answered in one write as soon as its body is in, without an ASGI task, its
message dicts and a second write for the body; on a 1-row request that is about a tenth of
the server's CPU. Whenever uvicorn must keep order or wait (a request still under way on the
connection, pipelined ones queued, a client not reading, `Expect: 100-continue`, a chunked or
big body, HEAD, an upgrade), the request goes through uvicorn's cycle as before.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import cache
from typing import Any
from urllib.parse import unquote

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from featureplane import settings
from featureplane.serving import Response, encode_json, internal_error
from featureplane.serving.responses import SHOWN_PATH

TRANSPORT = "featureplane.transport"
"""The scope's extension that holds the connection's transport."""
HANDED_OVER = "featureplane.handed_over"
"""The scope's extension that holds what `answer` decided for a request it handed over."""


DIRECT_BODY = 64 * 1024
"""Bytes of body at most of a request that `answer` may answer at once (bigger ones are
batches for the compute workers, and their bodies are streamed through the application)."""


def header_map(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """A request's headers (lower-case names, as uvicorn gives them) by name, as text."""
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in headers}


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float
    body_timeout: float
    max_connections: int
    max_head_bytes: int


@cache
def connection_limits() -> ConnectionLimits:
    """The limits from the environment, read once per process."""
    return ConnectionLimits(
        header_timeout=settings.header_timeout_seconds(),
        body_timeout=settings.body_timeout_seconds(),
        max_connections=settings.max_connections(),
        max_head_bytes=settings.max_head_bytes(),
    )


class LimitedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with timeouts for the head and the body of each request,
    a bound on the head's size and one on the process's open connections."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = connection_limits()
        self._timer: asyncio.TimerHandle | None = None
        self._head: int | None = None
        """Bytes received while waiting for a request's head; None while a request is served."""
        self._in_body = False
        """Whether a request's body is still coming (it may be, after an early answer: 413)."""
        self._direct: bytearray | None = None
        """The body so far of a request answered without the application (`answer`)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self.transport = transport  # connection_lost closes it
            self._refuse(503, "too many open connections, retry later", b"retry-after: 1\r\n")
            return
        super().connection_made(transport)
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        room = None if self._head is None else self.limits.max_head_bytes - self._head
        if room is None or len(data) <= room:
            if self._head is not None:
                self._head += len(data)
            super().data_received(data)
            return
        self._head = self.limits.max_head_bytes
        super().data_received(data[:room])  # the head may end within the limit
        if self._head is not None:
            self._refuse(431, f"request line and headers over {self._head} bytes")
        elif not self.transport.is_closing():
            super().data_received(data[room:])

    answers_directly = False
    """Whether requests that may be answered at once go to `answer` (see `_direct_request`)."""

    def answer(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> Any:
        """The `Response` to a request read whole, written without the ASGI application; any
        other value hands the request over to the application, in the scope's extension
        `HANDED_OVER`. Only called when `answers_directly`."""
        raise NotImplementedError

    def on_headers_complete(self) -> None:
        self._head = None
        if self._direct_request():
            self._direct = bytearray()
        else:
            self._start_cycle()
            if self.parser.should_upgrade() and self._should_upgrade():
                self._cancel()  # the WebSocket protocol takes the connection over
                return
        self._in_body = True
        self._arm(self.limits.body_timeout, self._body_timed_out)

    def _start_cycle(self) -> None:
        """Start the request's ASGI cycle, as uvicorn does when its headers are in."""
        self.scope["extensions"] = {TRANSPORT: self.transport}
        super().on_headers_complete()

    def _direct_request(self) -> bool:
        """Whether the request goes to `answer`: a GET or POST with a body of known length
        up to `DIRECT_BODY`, on a connection with no other request under way and a client
        that reads its answers (else uvicorn's cycle keeps the order and waits for it)."""
        cycle = self.cycle
        if not (
            self.answers_directly
            and (cycle is None or cycle.response_complete)
            and not self.pipeline
            and not self.flow.write_paused
            and not self.expect_100_continue
            and self.parser.get_method() in (b"GET", b"POST")
            and not self.parser.should_upgrade()
        ):
            return False
        for name, value in self.headers:
            if name == b"transfer-encoding" or (
                name == b"content-length" and not (value.isdigit() and int(value) <= DIRECT_BODY)
            ):
                return False
        return True

    def on_body(self, body: bytes) -> None:
        if self._direct is None:
            super().on_body(body)
        else:
            self._direct += body

    def on_message_complete(self) -> None:
        self._in_body = False
        self._cancel()
        if self._direct is not None:
            body, self._direct = bytes(self._direct), None
            self._answer_directly(body)
            return
        super().on_message_complete()
        cycle = self.cycle  # None on a WebSocket upgrade
        if cycle is not None and cycle.response_complete and not self.transport.is_closing():
            self._await_head()  # answered before its body ended: the next request's head

    def _answer_directly(self, body: bytes) -> None:
        """`answer` the request and write its response in one write, or hand it over."""
        method = self.parser.get_method().decode("ascii")
        keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
        headers = header_map(self.headers)
        try:
            path = httptools.parse_url(self.url).path.decode("ascii")
            path = unquote(path) if "%" in path else path
            response = self.answer(method, path, body, headers)
        except Exception:  # noqa: BLE001 - an answer, never a connection left hanging
            response = internal_error(f"{method} {self.url[:SHOWN_PATH]!r}")
        if not isinstance(response, Response):
            self._start_cycle()
            self.scope["extensions"][HANDED_OVER] = response
            self.cycle.more_body = False  # read whole: the application takes it from here
            self.cycle.message_event.set()
            return
        fields = "".join(f"{name}: {value}\r\n" for name, value in response.headers).encode()
        self.transport.write(self._message(response.status, fields, response.body, keep_alive))
        self.server_state.total_requests += 1
        if not keep_alive:
            self.transport.close()
        elif not self.transport.is_closing():
            self._await_head()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)  # its head is in: its body is timed, if still coming
        super().on_response_complete()
        if not (pipelined or self._in_body or self.transport.is_closing()):
            self._await_head()

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, f"invalid HTTP request: {msg}")

    def _await_head(self) -> None:
        self._head = 0
        self._arm(self.limits.header_timeout, self._head_timed_out)

    def _arm(self, seconds: float, callback: Any) -> None:
        self._cancel()
        self._timer = self.loop.call_later(seconds, callback)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        if self._head:
            self._refuse(408, f"request headers not received in {self.limits.header_timeout:g} s")
        else:
            self.transport.close()

    def _body_timed_out(self) -> None:
        if self._direct is not None:
            self._refuse(408, f"request body not received in {self.limits.body_timeout:g} s")
            return
        cycle = self.cycle
        if cycle is None or cycle.response_started:
            self.transport.close()
            return
        cycle.disconnected = True  # the application's receive ends, its answer is dropped
        cycle.message_event.set()
        self._refuse(408, f"request body not received in {self.limits.body_timeout:g} s")

    def _refuse(self, status: int, message: str, headers: bytes = b"") -> None:
        """Answer `status` with a JSON error and close the connection."""
        self._cancel()
        if self.transport.is_closing():
            return
        body = encode_json({"error": message})
        fields = b"content-type: application/json\r\n" + headers
        self.transport.write(self._message(status, fields, body, keep_alive=False))
        self.transport.close()

    def _message(self, status: int, fields: bytes, body: bytes, keep_alive: bool) -> bytes:
        """A whole response: status line, the server's default headers, `fields` (header
        lines), the body's length and, unless kept alive, `connection: close`."""
        head = [STATUS_LINE[status]]
        head += [
            name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers
        ]
        head += [fields, b"content-length: %d\r\n" % len(body)]
        if not keep_alive:
            head.append(b"connection: close\r\n")
        return b"".join([*head, b"\r\n", body])
