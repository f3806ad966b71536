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
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import cache
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from featureplane import settings
from featureplane.serving import encode_json

TRANSPORT = "featureplane.transport"
"""The scope's extension that holds the connection's transport."""


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

    def on_headers_complete(self) -> None:
        self.scope["extensions"] = {TRANSPORT: self.transport}
        super().on_headers_complete()
        self._head = None
        if self.parser.should_upgrade() and self._should_upgrade():
            self._cancel()  # the WebSocket protocol takes the connection over
            return
        self._in_body = True
        self._arm(self.limits.body_timeout, self._body_timed_out)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_body = False
        self._cancel()
        cycle = self.cycle  # None on a WebSocket upgrade
        if cycle is not None and cycle.response_complete and not self.transport.is_closing():
            self._await_head()  # answered before its body ended: the next request's head

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
        head = [STATUS_LINE[status]]
        head += [
            name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers
        ]
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body))
        self.transport.write(b"".join([*head, headers, b"connection: close\r\n\r\n", body]))
        self.transport.close()
