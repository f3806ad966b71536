"""The local HTTP server: the Lambda handler's dispatch as a raw ASGI app, served by uvicorn.

No web framework: `decide` lets `FeatureServer.admit` decide at the door and computes the
request, and `ServingProtocol` writes its response as soon as the request is read (the ASGI
`app` serves what the protocol hands over and the requests it leaves to uvicorn, reading the
body and refusing one over the limit before reading it all), which keeps the per-request
overhead to the dispatch itself. Uvicorn runs it on uvloop and httptools,
production-grade and already pinned through dagster-webserver.

Where a request is computed: one of at most `$FEATUREPLANE_INLINE_ROWS` rows (100) on the event
loop, at once (SQLite reads take microseconds; other stores' reads block on the network and
run in a thread); a bigger one by the process's compute workers (`online.workers`), in fair
order by principal, so that big batches never hold up small requests (a worker writes a big
body into the connection itself, `_Connection`). `serve` starts one server
process per core (`workers`), each with its own registry, store client and compute workers, as
Lambda instances would have; they share the listening socket and the principals' rate-limit
buckets (`featureplane.serving.rate_limits`). Connections go through `online.protocol`, which
times out slow heads and bodies and bounds open connections.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from featureplane.serving import Response, encode_json
from featureplane.serving.rate_limits import RateLimits
from featureplane.serving.server import Admitted
from featureplane.settings import compute_workers, inline_rows
from online.handler import server
from online.processes import ROOT, child_environment, stop
from online.protocol import HANDED_OVER, TRANSPORT, LimitedProtocol, header_map
from online.workers import WRITE_TIMEOUT, ComputePool

Scope = dict[str, Any]
_pool: ComputePool | None = None
"""The compute workers of this server process (None: every request is computed inline)."""
_inline_rows = 0
"""Rows a request may have to be computed on the event loop (read at startup)."""
_local = False
"""Whether the store is a local file (SQLite), read on the event loop (read at startup)."""
CHUNK = 256 * 1024
"""Bytes of a response body written at a time."""


async def app(scope: Scope, receive: Any, send: Any) -> None:
    """The ASGI application (http and lifespan scopes)."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] == "websocket":  # closing before accepting answers the upgrade with 403
        await send({"type": "websocket.close", "code": 1008})
        return
    if scope["type"] != "http":
        return
    handed_over = scope["extensions"].get(HANDED_OVER)
    if handed_over is not None:  # read and admitted by ServingProtocol, for a compute worker
        response = await _pool.finish(handed_over, _Connection(scope, send))  # type: ignore[union-attr]
    else:
        response = await _answer(scope, receive, send)
    if response is not None:  # else a compute worker wrote it
        await _write(response, send)


async def _write(response: Response, send: Any) -> None:
    headers = _encoded(response)
    headers.append((b"content-length", str(len(response.body)).encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    body, start = response.body, 0
    while len(body) - start > CHUNK:  # a big body goes out a piece at a time: on loopback one
        piece = body[start : start + CHUNK]  # write of megabytes holds the loop for milliseconds
        await send({"type": "http.response.body", "body": piece, "more_body": True})
        start += CHUNK
        await asyncio.sleep(0)  # the requests that came meanwhile go first
    await send({"type": "http.response.body", "body": body[start:] if start else body})


def _encoded(response: Response) -> list[tuple[bytes, bytes]]:
    return [(name.encode(), value.encode()) for name, value in response.headers]


class ServingProtocol(LimitedProtocol):
    """The server's connections: a request whose store is local is answered as soon as it is
    read, by `decide` and one write, without the ASGI application and its task, messages and
    second write (`LimitedProtocol.answer`); one for a compute worker goes on to `app`."""

    @property
    def answers_directly(self) -> bool:  # type: ignore[override]
        return _local

    def answer(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> Any:
        limit = server().limits.max_body_bytes
        return too_big(limit) if len(body) > limit else decide(method, path, body, headers)


class _Connection:
    """The request's connection, for a compute worker to write a body into (`online.workers`):
    the head goes out through uvicorn, which frames the body in chunks when no length is given
    and ends it, and the worker writes the body between the two as one chunk."""

    def __init__(self, scope: Scope, send: Any):
        self._scope = scope
        self._send = send
        self._transport = scope.get("extensions", {}).get(TRANSPORT)
        self.started = False

    def socket(self) -> socket.socket | None:
        transport = self._transport
        if transport is None or transport.is_closing() or self._scope["http_version"] != "1.1":
            return None
        return transport.get_extra_info("socket")

    async def start(self, head: Response) -> bool:
        self.started = True
        await self._send(
            {"type": "http.response.start", "status": head.status, "headers": _encoded(head)}
        )
        transport, loop = self._transport, asyncio.get_running_loop()
        deadline = loop.time() + WRITE_TIMEOUT
        while transport.get_write_buffer_size() and not transport.is_closing():
            if loop.time() > deadline:  # the client takes nothing: the worker gives up
                return False
            await asyncio.sleep(0.001)  # a client that is slow to read the previous answer
        return not transport.is_closing()

    async def end(self, written: bool) -> None:
        if written:
            await self._send({"type": "http.response.body", "body": b""})
        else:
            self._transport.close()


async def _answer(scope: Scope, receive: Any, send: Any) -> Response | None:
    """Read the body and `decide`, here or in a thread (a store over the network); a request
    for a compute worker is computed there (None when the worker wrote the response into the
    connection)."""
    limit = server().limits.max_body_bytes
    body = await _read_body(scope, receive, limit)
    if body is None:
        return too_big(limit)
    request = (scope["method"], scope["path"], body, header_map(scope["headers"]))
    if _local:
        decided = decide(*request)
    else:
        decided = await asyncio.get_running_loop().run_in_executor(None, decide, *request)
    if isinstance(decided, Admitted):
        return await _pool.finish(decided, _Connection(scope, send))  # type: ignore[union-attr]
    return decided


def decide(method: str, path: str, body: bytes, headers: dict[str, str]) -> Response | Admitted:
    """The response to a request, or, for one with more rows than are computed here, its
    admission, for a compute worker."""
    feature_server = server()
    admitted = feature_server.admit(method, path, body, headers)
    if not isinstance(admitted, Admitted) or (_pool is not None and admitted.rows > _inline_rows):
        return admitted
    return feature_server.finish(admitted)


def too_big(limit: int) -> Response:
    return Response(413, encode_json({"error": f"body is over {limit} bytes"}))


async def _read_body(scope: Scope, receive: Any, limit: int) -> bytes | None:
    """The request body, or None as soon as it is known to be over `limit` bytes."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            return None
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b""
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _lifespan(receive: Any, send: Any) -> None:
    """Load the registry, open the store and start the compute workers at startup; stop them
    and close the store at shutdown."""
    global _pool, _inline_rows, _local
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                _local = server().registry.online_store.get("type", "sqlite") == "sqlite"
                _inline_rows = inline_rows()
                workers = compute_workers()
                if workers:
                    _pool = ComputePool(workers)
                    await _pool.start()
            except Exception as error:  # noqa: BLE001 - reported to uvicorn, which exits
                await send({"type": "lifespan.startup.failed", "message": str(error)})
                return
            gc.freeze()  # a full collection mid-request then skips everything startup made
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if _pool is not None:
                _pool.close()
            server().close()
            await send({"type": "lifespan.shutdown.complete"})
            return


def serve(
    registry: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int | None = None,
    compute: int | None = None,
) -> None:
    """Serve the feature services of a registry file or store over HTTP until interrupted:
    `workers` server processes (default: one per core), each with `compute` compute workers
    (default: the cores shared out among them, at least one; 0 computes every request on the
    event loop).

    The registry is loaded before the port is bound, so one that cannot be served (a corrupt
    file, a store without a readable version) raises its one-line error here, not in a worker.
    """
    import uvicorn

    from online.protocol import connection_limits

    cores = os.cpu_count() or 1
    workers = workers or cores
    compute = max(1, cores // workers) if compute is None else compute
    connection_limits()  # a bad limit in the environment fails here, not in a connection
    RateLimits.from_env().close()  # and so does a bad default budget,
    inline_rows()  # or a bad inline size
    location = str(registry)
    os.environ["FEATUREPLANE_REGISTRY"] = (
        location if "://" in location else str(Path(location).resolve())
    )
    os.environ["FEATUREPLANE_COMPUTE_WORKERS"] = str(compute)
    state = os.environ["FEATUREPLANE_RATE_STATE"] = RateLimits.create_state()
    # uvicorn ends a graceful SIGTERM shutdown by raising the signal again: as SystemExit, it
    # unwinds through the `finally` below, which removes the state file
    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        server()
        uvicorn.run(
            "online.server:app",
            host=host,
            port=port,
            workers=workers,
            access_log=False,
            lifespan="on",
            http="online.server:ServingProtocol",
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
        os.unlink(state)
        del os.environ["FEATUREPLANE_RATE_STATE"]


def _exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for servers started by us)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serving_process(
    registry: str | Path,
    workers: int | None = 1,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    compute: int | None = None,
    project: Path | None = None,
) -> Iterator[str]:
    """`featureplane serve` in a subprocess on a free 127.0.0.1 port, with `workers` server
    processes and `compute` compute workers each (None: serve's defaults); yields its base
    URL once `/health` answers and always stops it, for demos, tests and benchmarks. The code
    is this project's, or that of the tree at `project` (another version of it)."""
    from online.client import FeatureClient

    port = free_port()
    environment = child_environment(env, str(project) if project else ROOT)
    command = [sys.executable, "-m", "featureplane.cli", "serve", "--registry", str(registry)]
    command += ["--port", str(port)]
    command += [] if workers is None else ["--workers", str(workers)]
    command += [] if compute is None else ["--compute-workers", str(compute)]
    process = subprocess.Popen(command, env=environment, cwd=project, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        with FeatureClient(url, timeout=1.0) as client:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"the server exited with {process.returncode}")
                try:
                    client.health()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"the server did not answer in {timeout:.0f}s") from None
                    time.sleep(0.05)
        yield url
    finally:
        stop(process)
