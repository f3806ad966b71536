"""Rate limits per principal: token buckets of requests and of entity rows per second.

A principal's budget is what `featureplane access create --requests-per-second N
--rows-per-second M` stored with it, else the server's defaults (`$FEATUREPLANE_REQUESTS_PER_
SECOND`, `$FEATUREPLANE_ROWS_PER_SECOND`; unset, no limit). Each bucket refills at the budget's
rate and holds at most `$FEATUREPLANE_RATE_BURST_SECONDS` (1) of it, so a client that paused may
spend a second's budget at once. A request is let in while its principal has a request token
and its rows bucket is not in debt, and takes one request and its rows: a batch larger than the
rows budget is let in when the bucket is full and leaves it in debt until it is paid, so big
batches are slowed to the budget, never refused forever. Otherwise the answer is 429 with
`Retry-After`, the whole seconds until the request would be let in.

The processes of one `featureplane serve` share the buckets: they live in a file that `serve`
creates in shared memory (`$FEATUREPLANE_RATE_STATE`), mapped by every process, one slot per
principal updated under an exclusive `flock`, so a principal's budget is the server's, whichever
process its connections reach. Without that file (the Lambda handler, a notebook) the buckets are
an anonymous mapping of the process: on Lambda a budget holds per instance, and API Gateway's
usage plans bound the whole.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import mmap
import os
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from featureplane.settings import (
    default_requests_per_second,
    default_rows_per_second,
    rate_burst_seconds,
    rate_state,
)

SLOT = struct.Struct("<16sddd")
"""A principal's buckets: digest of its name, request tokens, row tokens, last refill."""
SLOTS = 4096
"""Principals one server keeps buckets for; a principal whose 64 probed slots are all held
takes over the least recently used of them (whose owner starts again with full buckets)."""
SIZE = SLOT.size * SLOTS
EMPTY = bytes(16)
SLACK = 1e-6
"""Tokens a bucket may lack and still let a request in: what float sums lose on the way."""


class RateLimited(Exception):
    """A request over its principal's budget: answered 429, retry after `retry_after` s."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Budget:
    """Requests and rows per second (None: no limit)."""

    requests_per_second: float | None
    rows_per_second: float | None

    @property
    def unlimited(self) -> bool:
        return self.requests_per_second is None and self.rows_per_second is None


class RateLimits:
    """The buckets of every principal, in a shared file (`path`) or this process's memory."""

    def __init__(
        self,
        path: str | None = None,
        defaults: Budget | None = None,
        burst_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.defaults = defaults or Budget(None, None)
        self.burst = burst_seconds
        self._clock = clock  # CLOCK_MONOTONIC: one clock for every process of the machine
        self._threads = threading.Lock()
        self._digests: dict[str, bytes] = {}
        if path is None:
            self._fd: int | None = None
            self._map = mmap.mmap(-1, SIZE)
        else:
            self._fd = os.open(path, os.O_RDWR)
            if os.fstat(self._fd).st_size != SIZE:
                os.close(self._fd)
                raise ValueError(f"rate-limit state {path} is not {SIZE} bytes: not ours")
            self._map = mmap.mmap(self._fd, SIZE)

    @classmethod
    def from_env(cls) -> RateLimits:
        defaults = Budget(default_requests_per_second(), default_rows_per_second())
        return cls(rate_state(), defaults, rate_burst_seconds())

    @staticmethod
    def create_state(directory: str | None = None) -> str:
        """A new zeroed state file for the processes of one server (in /dev/shm when there is
        one: a memory file); its owner removes it when the server stops."""
        if directory is None and os.path.isdir("/dev/shm"):
            directory = "/dev/shm"
        fd, path = tempfile.mkstemp(prefix="featureplane-rates-", dir=directory)
        os.ftruncate(fd, SIZE)
        os.close(fd)
        return path

    def budget(self, requests_per_second: float | None, rows_per_second: float | None) -> Budget:
        """A principal's budget: its own limits, each falling back to the server's default."""
        return Budget(
            requests_per_second
            if requests_per_second is not None
            else self.defaults.requests_per_second,
            rows_per_second if rows_per_second is not None else self.defaults.rows_per_second,
        )

    def take(self, name: str, budget: Budget, rows: int) -> None:
        """Charge one request of `rows` rows to `name`'s buckets, or raise RateLimited (and
        charge nothing)."""
        if budget.unlimited:
            return
        digest = self._digests.get(name)
        if digest is None:
            digest = self._digests[name] = hashlib.blake2b(name.encode(), digest_size=16).digest()
        with self._locked():
            now = self._clock()
            at = self._slot(digest, now)
            _, requests, row_tokens, last = SLOT.unpack_from(self._map, at)
            elapsed = max(0.0, now - last)
            wait = 0.0
            per_second = budget.requests_per_second
            if per_second is not None:
                cap = max(per_second * self.burst, 1.0)
                requests = min(cap, requests + per_second * elapsed)
                wait = max(wait, (1.0 - SLACK - requests) / per_second)
            per_second = budget.rows_per_second
            if per_second is not None:
                cap = per_second * self.burst
                row_tokens = min(cap, row_tokens + per_second * elapsed)
                wait = max(wait, (-SLACK - row_tokens) / per_second)
            if wait <= 0:
                requests -= 1.0
                row_tokens -= rows
            SLOT.pack_into(self._map, at, digest, requests, row_tokens, now)
        if wait > 0:
            raise RateLimited(_message(name, budget, wait), max(1, math.ceil(wait)))

    def _slot(self, digest: bytes, now: float) -> int:
        """The offset of `digest`'s slot: found by linear probing from its hash, else the
        first empty one (its buckets full), else the least recently used of the probe."""
        start = int.from_bytes(digest[:4], "little") % SLOTS
        oldest, oldest_at = start, math.inf
        for step in range(64):
            at = ((start + step) % SLOTS) * SLOT.size
            held = self._map[at : at + 16]
            if held == digest:
                return at
            if held == EMPTY:
                break
            last = struct.unpack_from("<d", self._map, at + 32)[0]
            if last < oldest_at:
                oldest, oldest_at = at, last
        else:
            at = oldest
        SLOT.pack_into(self._map, at, digest, math.inf, math.inf, now)  # full, capped on use
        return at

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._threads:
            if self._fd is None:
                yield
                return
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self._map.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _message(name: str, budget: Budget, wait: float) -> str:
    parts = []
    if budget.requests_per_second is not None:
        parts.append(f"{budget.requests_per_second:g} requests")
    if budget.rows_per_second is not None:
        parts.append(f"{budget.rows_per_second:g} rows")
    return (
        f"principal {name!r} is over its budget of {' and '.join(parts)} per second; "
        f"retry in {wait:.2f} s"
    )
