"""moto_server behind a proxy that throttles, fails or loses DynamoDB writes, as a busy table.

`FaultyDynamoDB` is a small HTTP proxy on 127.0.0.1 in front of a moto_server. It forwards every
request, except writes (TransactWriteItems, BatchWriteItem, PutItem, named by the
`X-Amz-Target` header) that the current `Faults` pick: a share of them is refused with
DynamoDB's throttling answer (400, `ThrottlingException`); after a number of writes, all are
throttled or fail (500) for a while; or a write is forwarded, so committed, and its reply held
back past the client's read timeout and dropped. It counts what it saw: requests and refusals
per operation, and the keys (put or deleted) and ClientRequestTokens of the writes it forwarded.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal
from urllib.parse import urlsplit

from featureplane.online_push import JOURNAL

WRITES = frozenset({"TransactWriteItems", "BatchWriteItem", "PutItem"})
JSON = {"Content-Type": "application/x-amz-json-1.0"}
ANSWERS = {
    "throttle": (400, "ThrottlingException", "Rate of requests exceeds the allowed throughput."),
    "error": (500, "InternalServerError", "Internal server error"),
}


@dataclass(frozen=True)
class Faults:
    """What happens to writes.

    `refuse`: the share of writes throttled (drawn from a random sequence seeded by `seed`).
    `allow`: after this many forwarded writes, every write is answered with `failure`, until a
    push journals attempt `until_attempt` (None: for good). `lose`: the first so many forwarded
    writes (-1: all) are committed and their replies held for `hold_seconds`, then dropped.
    """

    refuse: float = 0.0
    allow: int | None = None
    failure: Literal["throttle", "error"] = "throttle"
    until_attempt: int | None = None
    lose: int = 0
    hold_seconds: float = 0.0
    seed: int = 13


class FaultyDynamoDB:
    """The proxy in front of `upstream` (a moto_server URL); `endpoint` is its URL."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.proxy = ThreadingHTTPServer(("127.0.0.1", 0), _Forward)
        self.proxy.daemon_threads = True
        self.proxy.faulty = self  # type: ignore[attr-defined]
        self.released = threading.Event()
        self._lock = threading.Lock()
        self.set(Faults())

    @property
    def endpoint(self) -> str:
        host, port = self.proxy.server_address[:2]
        return f"http://{host}:{port}"

    def set(self, faults: Faults) -> None:
        """New faults, and counts from zero."""
        with self._lock:
            self.faults = faults
            self._random = random.Random(faults.seed)
            self._lost = self._forwarded = 0
            self._recovered = False
            self.requests: Counter[str] = Counter()
            self.refused: Counter[str] = Counter()
            self.written_keys: list[str] = []
            self.tokens: list[str] = []

    def decide(self, operation: str, body: bytes) -> str:
        """`forward`, `lose` or one of `ANSWERS` for one request, counted."""
        with self._lock:
            self.requests[operation] += 1
            faults = self.faults
            if operation not in WRITES:
                return "forward"
            request = json.loads(body)
            keys = _keys(operation, request)
            if self._in_outage(faults, request, keys):
                self.refused[operation] += 1
                return faults.failure
            if self._random.random() < faults.refuse:
                self.refused[operation] += 1
                return "throttle"
            self._forwarded += 1
            self.written_keys += keys
            self.tokens.append(request.get("ClientRequestToken", ""))
            if faults.lose < 0 or self._lost < faults.lose:
                self._lost += 1
                return "lose"
            return "forward"

    def _in_outage(self, faults: Faults, request: dict, keys: list[str]) -> bool:
        if faults.allow is None or self._forwarded < faults.allow or self._recovered:
            return False
        if faults.until_attempt is not None and keys[0].startswith(JOURNAL):
            attempt = json.loads(request["TransactItems"][0]["Put"]["Item"]["v"]["S"])["attempt"]
            self._recovered = attempt >= faults.until_attempt
        return not self._recovered

    def __enter__(self) -> FaultyDynamoDB:
        threading.Thread(target=self.proxy.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.released.set()
        self.proxy.shutdown()
        self.proxy.server_close()


def _keys(operation: str, request: dict) -> list[str]:
    if operation == "TransactWriteItems":
        return [item["Put"]["Item"]["pk"]["S"] for item in request["TransactItems"]]
    if operation == "PutItem":
        return [request["Item"]["pk"]["S"]]
    return [
        write["PutRequest"]["Item"]["pk"]["S"]
        if "PutRequest" in write
        else write["DeleteRequest"]["Key"]["pk"]["S"]
        for writes in request["RequestItems"].values()
        for write in writes
    ]


class _Forward(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore's pool expects

    def do_POST(self) -> None:
        faulty: FaultyDynamoDB = self.server.faulty  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        operation = self.headers.get("X-Amz-Target", "").rpartition(".")[2]
        decision = faulty.decide(operation, body)
        if decision in ANSWERS:
            status, code, message = ANSWERS[decision]
            error = {"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": message}
            self._reply(status, JSON, json.dumps(error).encode())
            return
        status, headers, reply = self._forward(faulty, body)
        if decision == "lose":
            faulty.released.wait(faulty.faults.hold_seconds)
            self.close_connection = True
            return
        self._reply(status, headers, reply)

    def _forward(self, faulty: FaultyDynamoDB, body: bytes) -> tuple[int, dict, bytes]:
        upstream = faulty.upstream
        connection = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
            connection.request("POST", self.path, body, headers)
            response = connection.getresponse()
            reply = response.read()
            kept = {
                k: v
                for k, v in response.getheaders()
                if k.lower() not in ("connection", "content-length", "transfer-encoding")
            }
            return response.status, kept, reply
        finally:
            connection.close()

    def _reply(self, status: int, headers: dict, body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        """Quiet: the tests assert on counts, not on logs."""
