"""Compute workers of the HTTP server: processes that finish the requests too big to compute
on the event loop, taken in fair order by principal.

Why: one event loop reads all of a server process's connections, and a 1,000-row request of a
52-feature service computes for about 70 ms, during which nothing else on that loop moves; 20
clients sending such batches kept a 1-row request waiting for seconds. So a request of more
than `$FEATUREPLANE_INLINE_ROWS` rows (10) is admitted on the loop (who asks, may they, their
budget, the body's parse) and finished by a worker process, while the loop goes on answering
small requests at once. Workers run at the idle scheduling policy (`SCHED_IDLE`): when both
kinds want a core, the kernel gives it to the small request at once, and the workers have the
cores whenever nothing else wants them. (So a flood of small requests that keeps every core
busy holds big ones back: per-principal rate limits bound such floods.) Waiting big requests
queue in start-time fair order by principal and rows (`featureplane.serving.fair_queue`), so
one client's flood of batches gets its share of the workers, not all of them.

A worker is `python -m online.workers FD`, with one end of a socket pair to its server
process. Frames are a length and a pickle: `Admitted` one way, `Response` the other, both plain
data made by our own code (no byte from a client is unpickled). A worker follows the registry
as its server process does (`online.handler.server`). One that dies answers its request 503
and is started again; when the server process goes, its workers read end-of-file and exit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
from dataclasses import dataclass

from featureplane.serving import Response
from featureplane.serving.fair_queue import FairQueue
from featureplane.serving.responses import error_response
from featureplane.serving.server import Admitted
from online.processes import child_environment, stop

logger = logging.getLogger(__name__)
FRAME = struct.Struct("<Q")
NICE = 10
READY = b"ready"
START_TIMEOUT = 60.0


@dataclass
class _Worker:
    process: subprocess.Popen
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def finish(self, admitted: Admitted) -> Response:
        data = pickle.dumps(admitted, protocol=pickle.HIGHEST_PROTOCOL)
        self.writer.write(FRAME.pack(len(data)) + data)
        await self.writer.drain()
        return pickle.loads(await _frame(self.reader))

    def close(self) -> None:
        """Stop the worker at once (a server stops once its requests are answered, so the
        worker is idle): closing its socket would take effect only when the loop runs again."""
        stop(self.process, 5.0)
        self.writer.close()


class ComputePool:
    """`size` worker processes and the fair queue of the requests waiting for them."""

    def __init__(self, size: int):
        self.size = size
        self._idle: list[_Worker] = []
        self._all: list[_Worker] = []
        self._waiting: FairQueue[tuple[Admitted, asyncio.Future[Response]]] = FairQueue()

    async def start(self) -> None:
        """Start the workers and wait until each has loaded the registry."""
        workers = await asyncio.gather(*(_start() for _ in range(self.size)))
        self._all += workers
        self._idle += workers

    async def finish(self, admitted: Admitted) -> Response:
        """The response to `admitted`, from the next worker free in fair order (503 when no
        worker could be started again)."""
        if not self._all:
            return unavailable("the server has no compute worker", admitted.request_id)
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._waiting.put(admitted.principal or "", admitted.rows, (admitted, future))
        self._dispatch()
        return await future

    def _dispatch(self) -> None:
        while self._idle and len(self._waiting):
            admitted, future = self._waiting.get()
            if not future.cancelled():
                asyncio.ensure_future(self._run(self._idle.pop(), admitted, future))

    async def _run(
        self, worker: _Worker, admitted: Admitted, future: asyncio.Future[Response]
    ) -> None:
        replacement: _Worker | None = worker
        try:
            response = await worker.finish(admitted)
        except (OSError, EOFError, asyncio.IncompleteReadError, pickle.UnpicklingError):
            self._all.remove(worker)
            worker.close()
            logger.error(
                "compute worker %s died (exit code %s) on request %s; starting another",
                worker.process.pid,
                worker.process.returncode,
                admitted.request_id,
            )
            response = unavailable("the server's compute worker died", admitted.request_id)
            replacement = await self._replacement()
        if not future.done():
            future.set_result(response)
        if replacement is not None:
            self._idle.append(replacement)
        self._dispatch()

    async def _replacement(self) -> _Worker | None:
        try:
            worker = await _start()
        except Exception:  # noqa: BLE001 - the pool serves on with one worker fewer
            logger.exception("could not start a compute worker")
            return None
        self._all.append(worker)
        return worker

    def close(self) -> None:
        for worker in self._all:
            worker.close()
        self._all.clear()
        self._idle.clear()


def unavailable(problem: str, request_id: str) -> Response:
    """A 503 to retry: the request was not computed."""
    response = error_response(503, f"{problem}; retry (request id {request_id})", retry_after=1)
    return Response(503, response.body, (*response.headers, ("x-request-id", request_id)))


async def _start() -> _Worker:
    ours, theirs = socket.socketpair()
    process = subprocess.Popen(
        [sys.executable, "-m", "online.workers", str(theirs.fileno())],
        pass_fds=(theirs.fileno(),),
        env=child_environment(),
    )
    theirs.close()
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    try:
        ready = await asyncio.wait_for(_frame(reader), START_TIMEOUT)
    except (OSError, EOFError, asyncio.IncompleteReadError, TimeoutError) as error:
        writer.close()
        stop(process, 0.0)
        raise RuntimeError(f"a compute worker did not start: {error!r}") from error
    if ready != READY:
        raise RuntimeError(f"a compute worker said {ready[:80]!r}, not ready")
    return _Worker(process, reader, writer)


async def _frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = FRAME.unpack(await reader.readexactly(FRAME.size))
    return await reader.readexactly(size)


def _yield_the_cpu() -> None:
    """Run this process at the idle scheduling policy, where the kernel preempts it at once for
    any normal process that wakes, as a server process does for a small request (a nice level
    alone left that request waiting for the worker's time slice, up to 4 ms); nice where the
    policy is not to be had."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(NICE)


def main(fd: int) -> None:
    """A worker's life: load the registry, say ready, then finish requests until end of file."""
    from online.handler import server

    _yield_the_cpu()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group: the server stops us
    with socket.socket(fileno=fd) as connection, connection.makefile("rwb") as stream:
        server()
        stream.write(FRAME.pack(len(READY)) + READY)
        stream.flush()
        while head := stream.read(FRAME.size):
            (size,) = FRAME.unpack(head)
            admitted = pickle.loads(stream.read(size))
            data = pickle.dumps(server().finish(admitted), protocol=pickle.HIGHEST_PROTOCOL)
            stream.write(FRAME.pack(len(data)))
            stream.write(data)
            stream.flush()
    server().close()


if __name__ == "__main__":
    main(int(sys.argv[1]))
