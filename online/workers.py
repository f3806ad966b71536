"""Compute workers of the HTTP server: processes that finish the requests too big to compute
on the event loop, taken in fair order by principal.

Why: one event loop reads all of a server process's connections, and a 1,000-row request of a
52-feature service computes for about 70 ms, during which nothing else on that loop moves; 20
clients sending such batches kept a 1-row request waiting for seconds. So a request of more
than `$FEATUREPLANE_INLINE_ROWS` rows (100) is admitted on the loop (who asks, may they, their
budget, the body's parse) and finished by a worker process, while the loop goes on answering
small requests at once. Workers run at the idle scheduling policy (`SCHED_IDLE`): when both
kinds want a core, the kernel gives it to the small request at once, and the workers have the
cores whenever nothing else wants them. (So a flood of small requests that keeps every core
busy holds big ones back: per-principal rate limits bound such floods.) Waiting big requests
queue in start-time fair order by principal and rows (`featureplane.serving.fair_queue`), so
one client's flood of batches gets its share of the workers, not all of them.

A big body goes from the worker straight into the client's connection: its server process
passes the connection's socket with the request, and when the answer is a body of at least
`DIRECT_BYTES`, the worker sends back only its head (`Head`), the server process writes that
(with chunked framing), and the worker then writes the body as one chunk. So the megabytes of a
batch's answer are copied once, by a process at the idle policy, not twice more by the server
process that small requests wait for (through the socket pair, then into the connection).

A worker is `python -m online.workers FD FDS`, with one end of each of two socket pairs to its
server process: frames on the first, a length and a pickle (`Admitted` one way, `Response` or
`Head` the other, all plain data made by our own code: no byte from a client is unpickled), and
the connections' sockets on the second. A worker follows the registry as its server process
does (`online.handler.server`). One that dies answers its request 503 (or closes the
connection, when the head has gone) and is started again; when the server process goes, its
workers read end-of-file and exit.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Protocol

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
DIRECT_BYTES = 64 * 1024
"""A body at least this long is written by the worker into the client's connection."""
WRITE_TIMEOUT = 30.0
"""Seconds a worker waits for a client to take a body's bytes before it gives up."""
GO, STOP = b"go", b"stop"


class Stream(Protocol):
    """The client's connection, as the worker's server process writes a response into it."""

    started: bool
    """Whether the response's head has been written (no other answer can be given then)."""

    def socket(self) -> socket.socket | None:
        """The connection's socket, or None when the body cannot go into it directly."""

    async def start(self, head: Response) -> bool:
        """Write the head of a response whose body follows in chunks; whether the body may
        now be written into the socket (everything before it has left the server process)."""

    async def end(self, written: bool) -> None:
        """End the response whose body was written, or close the connection if it was not."""


@dataclass(frozen=True)
class Head:
    """A worker's answer whose body it writes into the connection itself: the response less
    its body."""

    response: Response


@dataclass
class _Worker:
    process: subprocess.Popen
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    sockets: socket.socket
    """The server process's end of the pair the connections' sockets go through."""

    async def finish(self, admitted: Admitted, stream: Stream | None) -> Response | None:
        """The response, or None when the worker wrote it into `stream`'s connection."""
        connection = None if stream is None else stream.socket()
        if connection is not None:  # sent at once: the socket is the request's connection's
            socket.send_fds(self.sockets, [b"s"], [connection.fileno()])
        self._send(pickle.dumps((admitted, connection is not None), pickle.HIGHEST_PROTOCOL))
        await self.writer.drain()
        answer = pickle.loads(await _frame(self.reader))
        if not isinstance(answer, Head):
            return answer
        assert stream is not None
        go = await stream.start(answer.response)
        self._send(GO if go else STOP)
        await self.writer.drain()
        await stream.end(await _frame(self.reader) == GO)
        return None

    def _send(self, data: bytes) -> None:
        self.writer.write(FRAME.pack(len(data)) + data)

    def close(self) -> None:
        """Stop the worker at once (a server stops once its requests are answered, so the
        worker is idle): closing its socket would take effect only when the loop runs again."""
        stop(self.process, 5.0)
        self.writer.close()
        self.sockets.close()


Waiting = tuple[Admitted, "Stream | None", "asyncio.Future[Response | None]"]


class ComputePool:
    """`size` worker processes and the fair queue of the requests waiting for them."""

    def __init__(self, size: int):
        self.size = size
        self._idle: list[_Worker] = []
        self._all: list[_Worker] = []
        self._waiting: FairQueue[Waiting] = FairQueue()

    async def start(self) -> None:
        """Start the workers and wait until each has loaded the registry."""
        workers = await asyncio.gather(*(_start() for _ in range(self.size)))
        self._all += workers
        self._idle += workers

    async def finish(self, admitted: Admitted, stream: Stream | None = None) -> Response | None:
        """The response to `admitted`, from the next worker free in fair order (503 when no
        worker could be started again), or None when the worker wrote it into `stream`."""
        if not self._all:
            return unavailable("the server has no compute worker", admitted.request_id)
        future: asyncio.Future[Response | None] = asyncio.get_running_loop().create_future()
        self._waiting.put(admitted.principal or "", admitted.rows, (admitted, stream, future))
        self._dispatch()
        return await future

    def _dispatch(self) -> None:
        while self._idle and len(self._waiting):
            admitted, stream, future = self._waiting.get()
            if not future.cancelled():
                asyncio.ensure_future(self._run(self._idle.pop(), admitted, stream, future))

    async def _run(
        self,
        worker: _Worker,
        admitted: Admitted,
        stream: Stream | None,
        future: asyncio.Future[Response | None],
    ) -> None:
        replacement: _Worker | None = worker
        response: Response | None
        try:
            response = await worker.finish(admitted, stream)
        except Exception:  # noqa: BLE001 - the worker's state is unknown: it is replaced
            self._all.remove(worker)
            worker.close()
            logger.exception(
                "compute worker %s failed (exit code %s) on request %s; starting another",
                worker.process.pid,
                worker.process.returncode,
                admitted.request_id,
            )
            response = unavailable("the server's compute worker died", admitted.request_id)
            if stream is not None and stream.started:  # too late for an answer
                await stream.end(False)
                response = None
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
    sockets, their_sockets = socket.socketpair()
    fds = (theirs.fileno(), their_sockets.fileno())
    process = subprocess.Popen(
        [sys.executable, "-m", "online.workers", *map(str, fds)],
        pass_fds=fds,
        env=child_environment(),
    )
    theirs.close()
    their_sockets.close()
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    try:
        ready = await asyncio.wait_for(_frame(reader), START_TIMEOUT)
    except (OSError, EOFError, asyncio.IncompleteReadError, TimeoutError) as error:
        writer.close()
        sockets.close()
        stop(process, 0.0)
        raise RuntimeError(f"a compute worker did not start: {error!r}") from error
    if ready != READY:
        raise RuntimeError(f"a compute worker said {ready[:80]!r}, not ready")
    return _Worker(process, reader, writer, sockets)


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


def _write_chunk(connection: socket.socket, body: bytes) -> bool:
    """Write `body` as one HTTP chunk into the client's connection, whether it all went. The
    socket is the server process's, non-blocking: wait for room, at most `WRITE_TIMEOUT`."""
    pieces = [memoryview(b"%x\r\n" % len(body)), memoryview(body), memoryview(b"\r\n")]
    poller = select.poll()
    poller.register(connection, select.POLLOUT)
    deadline = time.monotonic() + WRITE_TIMEOUT
    try:
        while pieces:
            try:
                sent = connection.sendmsg(pieces)
            except BlockingIOError:
                sent = 0
            while pieces and sent >= len(pieces[0]):
                sent -= len(pieces.pop(0))
            if pieces:
                pieces[0] = pieces[0][sent:]
                left = deadline - time.monotonic()
                if left <= 0 or not poller.poll(left * 1000):
                    return False
    except OSError:  # the client went
        return False
    return True


def _answer(frames: io.BufferedRWPair, sockets: socket.socket, request: bytes) -> None:
    """Finish one request and answer it: the response, or its head and then its body straight
    into the client's connection."""
    from online.handler import server

    admitted, direct = pickle.loads(request)
    connection = None
    if direct:
        _, (fd,), _, _ = socket.recv_fds(sockets, 1, 1)
        connection = socket.socket(fileno=fd)
    try:
        response = server().finish(admitted)
        if connection is None or response.status != 200 or len(response.body) < DIRECT_BYTES:
            _write_frame(frames, pickle.dumps(response, pickle.HIGHEST_PROTOCOL))
            return
        head = Head(Response(response.status, b"", response.headers))
        _write_frame(frames, pickle.dumps(head, pickle.HIGHEST_PROTOCOL))
        go = _read_frame(frames) == GO
        _write_frame(frames, GO if go and _write_chunk(connection, response.body) else STOP)
    finally:
        if connection is not None:
            connection.close()


def _write_frame(frames: io.BufferedRWPair, data: bytes) -> None:
    frames.write(FRAME.pack(len(data)))
    frames.write(data)
    frames.flush()


def _read_frame(frames: io.BufferedRWPair) -> bytes | None:
    """The next frame, or None at end of file."""
    head = frames.read(FRAME.size)
    if len(head) < FRAME.size:
        return None
    (size,) = FRAME.unpack(head)
    return frames.read(size)


def main(fd: int, fds: int) -> None:
    """A worker's life: load the registry, say ready, then finish requests until end of file."""
    from online.handler import server

    _yield_the_cpu()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group: the server stops us
    with (
        socket.socket(fileno=fd) as connection,
        socket.socket(fileno=fds) as sockets,
        connection.makefile("rwb") as frames,
    ):
        server()
        _write_frame(frames, READY)
        while (request := _read_frame(frames)) is not None:
            _answer(frames, sockets, request)
    server().close()


if __name__ == "__main__":  # as online.workers, so that what it pickles names its module
    from online import workers

    workers.main(int(sys.argv[1]), int(sys.argv[2]))
