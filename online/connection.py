"""One kept-alive HTTP/1.1 connection, for the feature client.

Why not `http.client`: it parses every response's head through the email package and sends a
request's head and body in two writes (so the server wakes twice). Measured on a 1-row
request of the demo's 52-feature service, those cost more CPU than the rest of the client's
call. Here a request goes out in one `sendall`, and the head of the response is split by
hand; the body comes by `Content-Length`, in chunks, or up to the close, and never past
`limit` bytes. Anything that is not HTTP raises `BadResponse`; the connection is closed
after any error, since its state is then unknown.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Mapping

MAX_LINE = 65536
MAX_FIELDS = 100


class BadResponse(Exception):
    """The server's bytes are not an HTTP/1.x response, or its body is over the limit."""


class Disconnected(ConnectionError):
    """The server closed the connection before a response began (a kept-alive connection it
    closed while idle, say)."""


class Connection:
    """`Connection(host, port, timeout, tls).exchange("GET", "/health", {}, None, limit)`."""

    def __init__(self, host: str, port: int | None, timeout: float, tls: bool = False):
        self.host, self.timeout, self.tls = host, timeout, tls
        self.port = port or (443 if tls else 80)
        self._host_field = host if port is None else f"{host}:{port}"
        self._socket: socket.socket | None = None
        self._file = None

    def exchange(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        payload: bytes | None,
        limit: int,
    ) -> tuple[int, dict[str, str], bytes]:
        """(status, header fields by lower-case name, body) of one request. A connection kept
        from an earlier request that the server has closed is opened again once."""
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self._host_field}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if payload is not None:
            lines.append(f"Content-Length: {len(payload)}")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (payload or b"")
        kept = self._socket is not None
        try:
            try:
                if not kept:
                    self._open()
                self._socket.sendall(request)  # type: ignore[union-attr]
                status, fields = self._head()
            except (Disconnected, ConnectionResetError, BrokenPipeError):
                if not kept:
                    raise
                self.close()
                self._open()
                self._socket.sendall(request)  # type: ignore[union-attr]
                status, fields = self._head()
            body = self._body(fields, limit)
        except BaseException:
            self.close()
            raise
        if fields.get("connection", "").lower() == "close":
            self.close()
        return status, fields, body

    def _open(self) -> None:
        connection = socket.create_connection((self.host, self.port), self.timeout)
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls:
            context = ssl.create_default_context()
            connection = context.wrap_socket(connection, server_hostname=self.host)
        self._socket, self._file = connection, connection.makefile("rb")

    def _line(self) -> bytes:
        line = self._file.readline(MAX_LINE + 1)  # type: ignore[union-attr]
        if len(line) > MAX_LINE:
            raise BadResponse("a response line is over 64 KiB")
        return line

    def _head(self) -> tuple[int, dict[str, str]]:
        while True:
            line = self._line()
            if not line:
                raise Disconnected("the server closed the connection")
            parts = line.split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
                raise BadResponse(f"not an HTTP response: {line[:60]!r}")
            status, fields = int(parts[1]), {}
            for _ in range(MAX_FIELDS + 1):
                line = self._line()
                if line in (b"\r\n", b"\n", b""):
                    break
                name, colon, value = line.decode("latin-1").partition(":")
                if not colon:
                    raise BadResponse(f"not a header field: {line[:60]!r}")
                fields[name.strip().lower()] = value.strip()
            else:
                raise BadResponse(f"over {MAX_FIELDS} header fields")
            if not 100 <= status < 200:  # informational answers precede the response
                return status, fields

    def _body(self, fields: Mapping[str, str], limit: int) -> bytes:
        if "chunked" in fields.get("transfer-encoding", "").lower():
            chunks, size = [], 0
            while True:
                text = self._line().split(b";")[0].strip()
                try:
                    length = int(text, 16)
                except ValueError:
                    raise BadResponse(f"not a chunk size: {text[:20]!r}") from None
                if length == 0:
                    while self._line() not in (b"\r\n", b"\n", b""):
                        pass  # trailer fields
                    return b"".join(chunks)
                size += length
                if size > limit:
                    raise BadResponse(f"the response is over {limit} bytes")
                chunks.append(self._exactly(length))
                self._exactly(2)
        length = fields.get("content-length")
        if length is None:
            body = self._file.read(limit + 1)  # type: ignore[union-attr]
            self.close()
        elif not length.isdigit():
            raise BadResponse(f"Content-Length is {length[:20]!r}")
        elif int(length) > limit:
            raise BadResponse(f"the response is over {limit} bytes")
        else:
            body = self._exactly(int(length))
        if len(body) > limit:
            raise BadResponse(f"the response is over {limit} bytes")
        return body

    def _exactly(self, size: int) -> bytes:
        data = self._file.read(size)  # type: ignore[union-attr]
        if len(data) < size:
            raise BadResponse(f"the response ended {size - len(data)} bytes early")
        return data

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._socket is not None:
            self._socket.close()
        self._socket = self._file = None
