"""The audit log: one JSON line per serving request — who asked for what, and the answer.

    {"at": "2026-12-02T10:41:07.123Z", "request_id": "9f2c…", "principal": "ranker",
     "method": "POST", "path": "/v1/feature-services/ctr/get-features", "service": "ctr",
     "rows": 1, "features": 9, "status": 200, "latency_ms": 0.41}

`$FEATUREPLANE_AUDIT_LOG` names the sink: `stdout` (the default: Lambda's stdout is
CloudWatch), a file path (appended to; several server processes share it safely, since each
line is one `write` of an `O_APPEND` file), or `off`. `$FEATUREPLANE_AUDIT_SAMPLE` (0 to 1,
default 1) keeps that share of answered requests; refusals (401, 403, 429) and errors (5xx)
are always kept: they are what an audit is read for.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import orjson

from featureplane.settings import audit_sample, audit_sink

ALWAYS = frozenset({401, 403, 429})


class AuditLog:
    """Writes audit lines to one sink (a file descriptor), sampling answered requests."""

    def __init__(self, sink: str = "stdout", sample: float = 1.0):
        self.sink, self.sample = sink, sample
        if sink == "off":
            self._fd: int | None = None
        elif sink == "stdout":
            self._fd = 1
        else:
            self._fd = os.open(sink, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    @classmethod
    def from_env(cls) -> AuditLog:
        return cls(audit_sink(), audit_sample())

    def record(self, status: int, **fields: Any) -> None:
        """Write one line of `fields` with the answer's status, if it is kept."""
        if self._fd is None:
            return
        sampled = status < 500 and status not in ALWAYS
        if sampled and self.sample < 1.0 and random.random() >= self.sample:
            return
        line = {"at": _utc(time.time()), **fields, "status": status}
        os.write(self._fd, orjson.dumps(line) + b"\n")

    def close(self) -> None:
        if self._fd is not None and self._fd > 2:
            os.close(self._fd)
        self._fd = None


def _utc(seconds: float) -> str:
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{whole}.{int(seconds % 1 * 1000):03d}Z"
