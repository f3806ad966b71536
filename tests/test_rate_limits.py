"""Rate limits per principal: token buckets of requests and rows, 429 with Retry-After, the
server's defaults, and one budget shared by every process of a server."""

import json
import multiprocessing
import os
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featureplane import Repository
from featureplane.access import AccessPolicy, Principals
from featureplane.registry import build_registry, load_registry, write_registry
from featureplane.serving import FeatureServer
from featureplane.serving.audit import AuditLog
from featureplane.serving.rate_limits import Budget, RateLimited, RateLimits
from online.client import FeatureClient, FeatureServerError
from online.server import serving_process
from tests.serving_repo import START, Clock, checkout, context, users

ROUTE = "/v1/feature-services/users/get-features"
BATCH = "/v1/feature-services/users/get-features-batch"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_of_the_budget_goes_in_then_429_says_when_to_retry():
    clock = FakeClock()
    limits = RateLimits(clock=clock)
    budget = Budget(requests_per_second=5, rows_per_second=None)
    for _ in range(5):
        limits.take("ranker", budget, 1)
    with pytest.raises(RateLimited) as refused:
        limits.take("ranker", budget, 1)
    assert refused.value.retry_after == 1
    assert "'ranker' is over its budget of 5 requests per second" in str(refused.value)
    limits.take("analyst", budget, 1)  # another principal has its own buckets
    clock.now += 0.2  # a fifth of a second refills one request
    limits.take("ranker", budget, 1)
    with pytest.raises(RateLimited):
        limits.take("ranker", budget, 1)


def test_a_batch_bigger_than_the_rows_budget_goes_in_once_and_leaves_a_debt():
    clock = FakeClock()
    limits = RateLimits(clock=clock)
    budget = Budget(requests_per_second=None, rows_per_second=100)
    limits.take("scorer", budget, 1000)  # never refused forever: in, with 900 rows of debt
    with pytest.raises(RateLimited) as refused:
        limits.take("scorer", budget, 1)
    assert refused.value.retry_after == 9
    clock.now += 8.9
    with pytest.raises(RateLimited) as refused:
        limits.take("scorer", budget, 1)
    assert refused.value.retry_after == 1
    clock.now += 0.2
    limits.take("scorer", budget, 1)


@settings(max_examples=200, deadline=None)
@given(
    requests_per_second=st.one_of(st.none(), st.floats(0.2, 500)),
    rows_per_second=st.one_of(st.none(), st.floats(1, 5000)),
    burst=st.floats(0.1, 5),
    arrivals=st.lists(st.tuples(st.floats(0, 0.5), st.integers(0, 1000)), max_size=200),
)
def test_what_is_let_in_stays_within_the_budget_and_a_retry_when_told_goes_in(
    requests_per_second, rows_per_second, burst, arrivals
):
    """Over every stretch of time, the requests let in are at most a burst plus the rate
    times its length, and the rows too plus one request's (its debt); a client alone that
    waits the Retry-After it was given is let in."""
    clock = FakeClock()
    limits = RateLimits(burst_seconds=burst, clock=clock)
    budget = Budget(requests_per_second, rows_per_second)
    admitted = []
    for gap, rows in arrivals:
        clock.now += gap
        try:
            limits.take("p", budget, rows)
        except RateLimited as refused:
            clock.now += refused.retry_after
            limits.take("p", budget, rows)  # raises if the hint was too short
        admitted.append((clock.now, rows))
    largest = max((rows for _, rows in admitted), default=0)
    for first in range(len(admitted)):
        for last in range(first, len(admitted)):
            span = admitted[last][0] - admitted[first][0]
            window = admitted[first : last + 1]
            if requests_per_second is not None:
                cap = max(requests_per_second * burst, 1.0)
                assert len(window) <= cap + requests_per_second * span + 1e-6
            if rows_per_second is not None:
                rows = sum(r for _, r in window)
                assert rows <= rows_per_second * (burst + span) + largest + 1e-6


def _hammer(path: str, seconds: float, admitted) -> None:
    limits = RateLimits(path)
    budget = Budget(requests_per_second=50, rows_per_second=None)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            limits.take("shared", budget, 1)
            with admitted.get_lock():
                admitted.value += 1
        except RateLimited:
            time.sleep(0.001)


def test_the_processes_of_a_server_share_each_budget(tmp_path):
    path = RateLimits.create_state(str(tmp_path))
    context = multiprocessing.get_context("spawn")
    admitted = context.Value("i", 0)
    began = time.monotonic()
    workers = [context.Process(target=_hammer, args=(path, 1.5, admitted)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    elapsed = time.monotonic() - began
    assert all(worker.exitcode == 0 for worker in workers)
    assert 50 <= admitted.value <= 50 + 50 * elapsed + 1, admitted.value  # not twice that


def test_a_file_that_is_not_a_state_is_refused(tmp_path):
    stray = tmp_path / "stray"
    stray.write_bytes(b"x" * 10)
    with pytest.raises(ValueError, match="not ours"):
        RateLimits(str(stray))


def limited_server(tmp_path, monkeypatch, **budgets):
    """A server whose principal `ranker` has `budgets`, `analyst` none, and its audit file."""
    principals, keys = Principals.none(), {}
    principals, keys["ranker"] = principals.create("ranker", START, **budgets)
    principals, keys["analyst"] = principals.create("analyst", START)
    registry = build_registry(repository("ranker", "analyst"), store(tmp_path))
    audit = tmp_path / "audit.jsonl"
    server = FeatureServer(
        load_registry({**registry, "access": principals.to_json()}),
        clock=Clock(),
        audit=AuditLog(str(audit)),
    )
    return server, keys, audit


def repository(*readers):
    """The serving repository, every service of which `readers` may read."""
    policy = AccessPolicy("readers", members=list(readers), read=["*"])
    return Repository.from_objects([checkout, users, context, policy])


def store(tmp_path):
    return {"type": "sqlite", "path": str(tmp_path / "online.sqlite")}


def test_a_principal_over_its_budget_gets_429_with_retry_after_and_an_audit_line(
    tmp_path, monkeypatch
):
    server, keys, audit = limited_server(tmp_path, monkeypatch, requests_per_second=2)
    ask = lambda key, body='{"entities": {"user_id": 1}}': server.respond(  # noqa: E731
        "POST", ROUTE, body, {"x-api-key": key}
    )
    assert [ask(keys["ranker"]).status for _ in range(2)] == [200, 200]
    refused = ask(keys["ranker"])
    assert refused.status == 429
    assert dict(refused.headers)["retry-after"] == "1"
    assert "over its budget of 2 requests per second" in json.loads(refused.body)["error"]
    assert all(ask(keys["analyst"]).status == 200 for _ in range(10)), "others are not limited"
    listing = server.respond("GET", "/v1/feature-services", None, {"x-api-key": keys["ranker"]})
    assert listing.status == 429, "the listing is a request too"
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [line["status"] for line in lines if line["principal"] == "ranker"] == [
        200,
        200,
        429,
        429,
    ]
    server.close()


def test_rows_are_a_budget_of_their_own(tmp_path, monkeypatch):
    server, keys, _ = limited_server(tmp_path, monkeypatch, rows_per_second=5)
    batch = json.dumps({"entities": [{"user_id": n} for n in range(10)]})
    headers = {"x-api-key": keys["ranker"]}
    assert server.respond("POST", BATCH, batch, headers).status == 200
    refused = server.respond("POST", BATCH, batch, headers)
    assert refused.status == 429 and dict(refused.headers)["retry-after"] == "1"
    assert "5 rows per second" in json.loads(refused.body)["error"]
    server.close()


def test_the_server_default_budget_holds_for_principals_without_one(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATUREPLANE_REQUESTS_PER_SECOND", "1")
    server, keys, _ = limited_server(tmp_path, monkeypatch, requests_per_second=100)
    statuses = {
        name: [
            server.respond("POST", ROUTE, '{"entities": {"user_id": 1}}', {"x-api-key": key})
            for _ in range(3)
        ]
        for name, key in keys.items()
    }
    assert [r.status for r in statuses["analyst"]] == [200, 429, 429]
    assert [r.status for r in statuses["ranker"]] == [200, 200, 200], "its own budget wins"
    server.close()
    monkeypatch.setenv("FEATUREPLANE_ROWS_PER_SECOND", "lots")
    with pytest.raises(ValueError, match="FEATUREPLANE_ROWS_PER_SECOND must be a number"):
        RateLimits.from_env()


def test_over_http_two_server_processes_hold_one_budget_and_the_client_waits_it_out(tmp_path):
    principals, key = Principals.none().create("ranker", START, requests_per_second=4)
    path = tmp_path / "registry.json"
    registry = build_registry(repository("ranker"), store(tmp_path))
    write_registry({**registry, "access": principals.to_json()}, path)
    with serving_process(path, workers=2, compute=0) as url:
        clients = [FeatureClient(url, api_key=key, retries=0) for _ in range(4)]
        began, statuses = time.monotonic(), []
        for _ in range(5):
            for client in clients:  # four connections, spread over both processes
                try:
                    client.get_features("users", {"user_id": 1})
                    statuses.append(200)
                except FeatureServerError as error:
                    statuses.append(error.status)
        elapsed = time.monotonic() - began
        assert set(statuses) == {200, 429}
        assert statuses.count(200) <= 4 + 4 * elapsed + 1, statuses
        patient = FeatureClient(url, api_key=key, retries=3, backoff=0.01)
        assert "values" in patient.get_features("users", {"user_id": 1})
        for client in [*clients, patient]:
            client.close()


def test_serve_refuses_a_bad_budget_in_one_line(tmp_path):
    path = tmp_path / "registry.json"
    write_registry(build_registry(repository("ranker"), store(tmp_path)), path)
    env = {**os.environ, "FEATUREPLANE_ROWS_PER_SECOND": "-5"}
    command = [sys.executable, "-m", "featureplane.cli", "serve", "--registry", str(path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: SettingError: FEATUREPLANE_ROWS_PER_SECOND must be a number above 0, got '-5'"
    ]
