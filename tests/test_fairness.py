"""Fairness under load: big requests are computed by compute workers in start-time fair order
by principal, small ones at once on the event loop, and a worker that dies costs one 503."""

import http.client
import json
import os
import signal
import socket
import statistics
import threading
import time
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from featureplane import Repository
from featureplane.access import AccessPolicy, Principals
from featureplane.registry import build_registry, write_registry
from featureplane.serving.fair_queue import FairQueue
from online.client import FeatureClient, FeatureServerError
from online.server import serving_process
from tests.serving_repo import START, checkout, context, user_stats, users, write_row

BATCH_ROWS = 1000
AS_OF = {"FEATUREPLANE_AS_OF": "2026-01-02T00:00:00+00:00"}
FLOOD = 40


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcd"), st.integers(1, 1000)), min_size=1, max_size=80))
def test_backlogged_principals_share_by_cost_within_one_request_of_each_other(arrivals):
    """With every request queued before the first is taken, each principal's are taken in
    its own order, and while two principals both still wait, the rows served to each differ
    by at most the largest request of either (the start-time fair queueing bound)."""
    queue: FairQueue[tuple[str, int, int]] = FairQueue()
    for index, (principal, cost) in enumerate(arrivals):
        queue.put(principal, cost, (principal, cost, index))
    taken = [queue.get() for _ in range(len(arrivals))]
    assert sorted(index for *_, index in taken) == list(range(len(arrivals)))
    for principal in "abcd":
        mine = [index for p, _, index in taken if p == principal]
        assert mine == sorted(mine), "each principal's requests in arrival order"
    largest = {p: max((c for q, c in arrivals if q == p), default=0) for p in "abcd"}
    left = {p: sum(1 for q, _ in arrivals if q == p) for p in "abcd"}
    served = dict.fromkeys("abcd", 0)
    for principal, cost, _ in taken:
        # the bound holds for principals that are both still backlogged once this one is taken
        waiting = [p for p in "abcd" if left[p] > 0]
        for p in waiting:
            for q in waiting:
                assert served[p] - served[q] <= largest[p] + largest[q]
        served[principal] += cost
        left[principal] -= 1


def test_an_idle_principal_is_owed_nothing_for_the_time_it_was_away():
    queue: FairQueue[str] = FairQueue()
    for n in range(10):
        queue.put("busy", 100, f"busy{n}")
    assert [queue.get() for _ in range(5)] == [f"busy{n}" for n in range(5)]
    queue.put("back", 100, "back0")
    queue.put("back", 100, "back1")
    order = [queue.get() for _ in range(7)]
    assert order.index("back0") <= 1, "it goes next, without a burst of credit"
    assert order.index("back1") - order.index("back0") == 2, "then takes turns"


def serving(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A registry file of the serving repository readable by `flood` and `other`, and a
    store holding a user for every row of a batch."""
    principals, keys = Principals.none(), {}
    for name in ("flood", "other"):
        principals, keys[name] = principals.create(name, START)
    policy = AccessPolicy("readers", members=["flood", "other"], read=["*"])
    store = tmp_path / "online.sqlite"
    for user_id in range(0, BATCH_ROWS, 7):
        values = {"clicks": user_id, "country": "fr", "last_seen": START}
        write_row(store, user_stats, (user_id,), START, values)
    registry = build_registry(
        Repository.from_objects([checkout, users, context, policy]),
        {"type": "sqlite", "path": str(store)},
    )
    path = tmp_path / "registry.json"
    write_registry({**registry, "access": principals.to_json()}, path)
    return path, keys


BATCH = [{"user_id": n} for n in range(BATCH_ROWS)]
STALLED_ROWS = 100_000
"""Rows of an answer (9 MB) bigger than the socket buffers between a server and a client."""
ROUTE = "/v1/feature-services/users/get-features-batch"


def test_a_flood_of_batches_neither_holds_up_small_requests_nor_another_principal(tmp_path):
    """One principal keeps FLOOD batches queued on a server with one compute worker; a 1-row
    request of another principal is answered at once, and its batch takes the next turn of
    the worker instead of waiting for the flood: each takes a fraction of a flood batch's
    time."""
    path, keys = serving(tmp_path)
    with serving_process(path, workers=1, compute=1) as url:
        took: dict[str, list[float]] = {"flood": [], "small": [], "other": []}
        started = threading.Event()

        def send(name: str, key: str, rows: list, times: int) -> None:
            with FeatureClient(url, api_key=key, timeout=120) as client:
                for _ in range(times):
                    began = time.monotonic()
                    client.request("users", rows)  # columns: no mapping per row to build
                    took[name].append(time.monotonic() - began)
                    started.set()

        flood = [
            threading.Thread(target=send, args=("flood", keys["flood"], BATCH, 3))
            for _ in range(FLOOD)
        ]
        for thread in flood:
            thread.start()
        started.wait(60)
        send("small", keys["other"], BATCH[:1], 1)
        send("other", keys["other"], BATCH, 1)
        for thread in flood:
            thread.join(300)
        assert len(took["flood"]) == 3 * FLOOD
        typical = statistics.median(took["flood"])
        assert took["small"][0] < typical / 4, (took["small"], typical)
        assert took["other"][0] < typical / 2, (took["other"], typical)


def post(connection: http.client.HTTPConnection, key: str, rows: list) -> tuple[str, dict]:
    """POST `rows` to the users service: how the body was framed, and the body."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    connection.request("POST", ROUTE, json.dumps({"entities": rows}), headers)
    response = connection.getresponse()
    assert response.status == 200
    framing = "chunked" if response.getheader("transfer-encoding") == "chunked" else "length"
    answer = json.loads(response.read())
    answer["metadata"].pop("served_at")
    return framing, answer


def test_a_batch_computed_by_a_worker_is_the_batch_computed_inline(tmp_path):
    """Inline, framed back through the server process (200 rows), written by the worker into
    the connection (1,000 rows, chunked): the same answers, and the connection serves on."""
    path, keys = serving(tmp_path)
    answers = {}
    for compute in (0, 1):
        with serving_process(path, workers=1, env=AS_OF, compute=compute) as url:
            connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=30)
            for rows in (BATCH[:200], BATCH, BATCH[:1], BATCH):  # one kept-alive connection
                answers[compute, len(rows)] = post(connection, keys["other"], rows)
            connection.close()
    for rows in (1, 200, BATCH_ROWS):
        assert answers[0, rows][1] == answers[1, rows][1]
        assert answers[0, rows][0] == "length"
    assert answers[1, BATCH_ROWS][0] == "chunked" and answers[1, 200][0] == "length"
    text = json.dumps(answers[0, BATCH_ROWS][1])
    assert '"present"' in text and '"missing"' in text


def test_a_worker_killed_while_writing_into_a_connection_closes_only_that_one(tmp_path):
    """A client that reads slowly holds a worker in its write of a big body; killing the
    worker then closes that connection (its head has gone: no answer can follow), and the
    next request is served by a worker started again."""
    path, keys = serving(tmp_path)
    rows = [{"user_id": n % BATCH_ROWS} for n in range(STALLED_ROWS)]
    env = {
        **AS_OF,
        "FEATUREPLANE_MAX_BATCH_ROWS": str(STALLED_ROWS),
        "FEATUREPLANE_MAX_BODY_BYTES": str(4 << 20),
    }
    with serving_process(path, workers=1, env=env, compute=1) as url:
        pid = server_pid(url)
        host, port = url.removeprefix("http://").split(":")
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect((host, int(port)))
        body = json.dumps({"entities": rows})
        stalled.sendall(
            (
                f"POST {ROUTE} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {keys['flood']}"
                f"\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body.encode()
        )
        stalled.settimeout(30)
        received = stalled.recv(1024)  # the head: the worker is writing the body
        time.sleep(0.5)
        (worker,) = workers_of(pid)
        os.kill(worker, signal.SIGKILL)
        while chunk := stalled.recv(65536):  # read to the end: the server closed it
            received += chunk
        stalled.close()
        head, _, rest = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head
        assert not rest.endswith(b"0\r\n\r\n"), "the body was cut, never ended as if whole"
        with FeatureClient(url, api_key=keys["other"]) as client:
            assert len(client.get_features_batch("users", BATCH)) == BATCH_ROWS
        (replacement,) = workers_of(pid)
        assert replacement != worker


def workers_of(server_pid: int) -> list[int]:
    """The compute workers below a `featureplane serve` process (by their command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            status = (entry / "status").read_text()
        except OSError:
            continue
        parent = int(next(line for line in status.splitlines() if line.startswith("PPid:"))[5:])
        if b"online.workers" in command and parent == server_pid:
            found.append(int(entry.name))
    return found


def server_pid(url: str) -> int:
    port = url.rsplit(":", 1)[1]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"serve" in command and port.encode() in command:
                return int(entry.name)
    raise AssertionError("no server process")


def test_a_worker_killed_costs_its_request_a_503_and_is_replaced(tmp_path, caplog):
    path, keys = serving(tmp_path)
    with serving_process(path, workers=1, env=AS_OF, compute=1) as url:
        pid = server_pid(url)
        (worker,) = workers_of(pid)
        os.kill(worker, signal.SIGKILL)
        with FeatureClient(url, api_key=keys["other"], retries=0) as client:
            try:
                client.get_features_batch("users", BATCH[:200])  # over the inline rows
                first = 200
            except FeatureServerError as error:
                first = error.status
                assert "compute worker died" in error.message
            assert first == 503
            assert len(client.get_features_batch("users", BATCH[:200])) == 200
            assert client.get_features("users", {"user_id": 7})["status"]["user_stats__clicks"] == (
                "present"
            )
        (replacement,) = workers_of(pid)
        assert replacement != worker


def test_a_stopped_server_leaves_no_worker_and_no_rate_file_behind(tmp_path):
    """SIGTERM stops the server gracefully within seconds: its compute workers exit and the
    rate-limit file it made is removed (uvicorn ends by raising the signal again)."""
    path, _ = serving(tmp_path)
    files = set(Path("/dev/shm").glob("featureplane-rates-*"))
    with serving_process(path, workers=1, compute=2) as url:
        workers = workers_of(server_pid(url))
        assert len(workers) == 2
        assert len(set(Path("/dev/shm").glob("featureplane-rates-*")) - files) == 1
        began = time.monotonic()
    assert time.monotonic() - began < 5, "stopped gracefully, not killed after 10 s"
    assert set(Path("/dev/shm").glob("featureplane-rates-*")) == files
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]
