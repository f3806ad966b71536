"""The local HTTP server: the Lambda handler's dispatch as a raw ASGI app, served by uvicorn.

No web framework: `app` reads the body (refusing one over the limit before reading it all),
calls `FeatureServer.respond` and writes the response, which keeps the per-request overhead
to the dispatch itself. Uvicorn runs it on uvloop and httptools, production-grade and already
pinned through dagster-webserver. SQLite reads take microseconds and run on the event loop;
other stores' reads block on the network and run in a thread. Several `workers` are separate
processes, each with its own registry and store client, as Lambda instances would have.
Connections go through `online.protocol`, which times out slow heads and bodies and bounds
open connections.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from featureplane.serving import Response, encode_json
from online.handler import server

Scope = dict[str, Any]


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
    feature_server = server()
    limit = feature_server.limits.max_body_bytes
    body = await _read_body(scope, receive, limit)
    if body is None:
        response = Response(413, encode_json({"error": f"body is over {limit} bytes"}))
    else:
        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
        }
        request = (scope["method"], scope["path"], body, headers)
        if feature_server.registry.online_store.get("type", "sqlite") == "sqlite":
            response = feature_server.respond(*request)
        else:
            loop = asyncio.get_running_loop()
            response = await loop.run_in_executor(None, feature_server.respond, *request)
    headers = [(name.encode(), value.encode()) for name, value in response.headers]
    headers.append((b"content-length", str(len(response.body)).encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


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
    """Load the registry and open the store at startup, close the store at shutdown."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                server()
            except Exception as error:  # noqa: BLE001 - reported to uvicorn, which exits
                await send({"type": "lifespan.startup.failed", "message": str(error)})
                return
            gc.freeze()  # a full collection mid-request then skips everything startup made
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            server().close()
            await send({"type": "lifespan.shutdown.complete"})
            return


def serve(
    registry: str | Path, host: str = "127.0.0.1", port: int = 8000, workers: int = 1
) -> None:
    """Serve the feature services of a registry file or store over HTTP until interrupted.

    The registry is loaded before the port is bound, so one that cannot be served (a corrupt
    file, a store without a readable version) raises its one-line error here, not in a worker.
    """
    import uvicorn

    from online.protocol import connection_limits

    connection_limits()  # a bad limit in the environment fails here, not in a connection
    location = str(registry)
    os.environ["FEATUREPLANE_REGISTRY"] = (
        location if "://" in location else str(Path(location).resolve())
    )
    server()
    uvicorn.run(
        "online.server:app",
        host=host,
        port=port,
        workers=workers,
        access_log=False,
        lifespan="on",
        http="online.protocol:LimitedProtocol",
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for servers started by us)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serving_process(
    registry: str | Path,
    workers: int = 1,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> Iterator[str]:
    """`featureplane serve` in a subprocess on a free 127.0.0.1 port; yields its base URL once
    `/health` answers and always stops it, for demos and benchmarks that talk HTTP to it."""
    from online.client import FeatureClient

    port = free_port()
    root = str(Path(__file__).resolve().parents[1])
    environment = {**os.environ, **(env or {})}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [root, environment.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "featureplane.cli", "serve", "--registry", str(registry)]
    command += ["--port", str(port), "--workers", str(workers)]
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL)
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


def stop(process: subprocess.Popen) -> None:
    """Stop a server process: terminate, and kill it if it has not exited in 10 seconds."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
