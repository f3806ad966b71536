"""The applied registry: append-only versions with history, one winner per version, a serving
pointer that only cut-overs move, locally and on S3 (moto), and servers that follow it."""

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest
from moto import mock_aws
from moto.s3.responses import S3Response

import online.handler
from featureplane import Repository
from featureplane.errors import RegistryCorrupt
from featureplane.registry import build_registry, load_registry, registry_text
from featureplane.registry_store import CutOverRefused, RegistryConflict, RegistryStore
from featureplane.settings import registry_store_location
from featureplane.signing import signed
from online.client import FeatureClient
from online.handler import handler
from online.server import serving_process
from tests import serving_repo

STORE = {"type": "sqlite", "path": "/tmp/online.sqlite"}
FULL = build_registry(serving_repo.repository(), STORE)
USERS_ONLY = build_registry(Repository.from_objects([serving_repo.users]), STORE)


@pytest.fixture(params=["local", "s3"])
def location(request, tmp_path, monkeypatch) -> Iterator[str]:
    """A registry store location: a directory, or a prefix of a moto S3 bucket."""
    if request.param == "local":
        yield str(tmp_path / "offline" / "registry")
        return
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    # S3 applies a conditional PUT (If-None-Match) atomically; moto checks, then stores, so
    # two racing writers can both pass its check: serialize its PUTs as S3 does
    put, lock = S3Response.put_object, threading.Lock()

    def atomic_put(self):
        with lock:
            return put(self)

    monkeypatch.setattr(S3Response, "put_object", atomic_put)
    with mock_aws():
        boto3.client("s3").create_bucket(
            Bucket="lake", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
        )
        yield "s3://lake/offline/registry"


def race(calls: list[Callable[[], object]], expected: type[Exception]) -> list[object]:
    """Each call on its own thread, all released at once: what each returned, or raised of
    `expected`."""
    start = threading.Barrier(len(calls))
    outcomes: list[object] = [None] * len(calls)

    def run(index: int) -> None:
        start.wait()
        try:
            outcomes[index] = calls[index]()
        except expected as error:
            outcomes[index] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_versions_append_with_history(location):
    store = RegistryStore(location)
    assert (store.latest(), store.versions(), store.history()) == (None, [], [])
    first = store.apply(FULL, None, ["+ feature_service checkout"], applied_by="ana")
    second = store.apply(USERS_ONLY, first.version, ["- feature_service checkout"], "bo")
    assert (first.version, second.version, store.versions()) == (1, 2, [1, 2])
    latest = store.latest()
    assert (latest.version, latest.registry, latest.meta) == (2, USERS_ONLY, second.meta)
    assert store.get(1).registry == FULL
    assert set(load_registry(latest.registry).services) == {"users"}
    history = store.history()
    assert [(m["version"], m["parent"], m["applied_by"]) for m in history] == [
        (1, None, "ana"),
        (2, 1, "bo"),
    ]
    assert history[1]["changes"] == ["- feature_service checkout"]
    assert history[0]["applied_at"].endswith("+00:00")


def test_a_version_file_is_the_canonical_registry_text_plus_meta_signed(tmp_path):
    store = RegistryStore(str(tmp_path))
    applied = store.apply(FULL, None, [], applied_by="ana")
    text = (tmp_path / "v000001.json").read_text()
    assert text == registry_text(signed({**FULL, "meta": applied.meta}))  # Ed25519: deterministic
    assert [p.name for p in tmp_path.iterdir()] == ["v000001.json"]


def test_a_stale_parent_conflicts_and_names_the_winner(location):
    store = RegistryStore(location)
    store.apply(FULL, None, [], applied_by="ana")
    store.apply(USERS_ONLY, 1, [], applied_by="bo")
    with pytest.raises(RegistryConflict, match="registry version 2 was applied concurrently by bo"):
        store.apply(FULL, 1, [], applied_by="cy")
    assert store.versions() == [1, 2]
    assert store.latest().registry == USERS_ONLY


def test_of_concurrent_applies_exactly_one_wins_and_a_loser_can_retry(location):
    """Writers racing for version 2 (each with its own client, as separate processes would)."""
    RegistryStore(location).apply(FULL, None, [], applied_by="base")
    writers = [RegistryStore(location) for _ in range(6)]
    outcomes = race(
        [lambda i=i: writers[i].apply(USERS_ONLY, 1, [], applied_by=f"w{i}") for i in range(6)],
        RegistryConflict,
    )
    conflicts = [i for i, o in enumerate(outcomes) if isinstance(o, RegistryConflict)]
    winners = [i for i in range(len(outcomes)) if i not in conflicts]
    assert len(winners) == 1 and len(conflicts) == len(writers) - 1
    winner = RegistryStore(location).get(2).meta["applied_by"]
    assert winner == f"w{winners[0]}"
    for index in conflicts:
        assert outcomes[index].version == 2
        assert outcomes[index].winner in (None, RegistryStore(location).get(2).meta)
    loser = writers[conflicts[0]]
    retried = loser.apply(FULL, loser.latest().version, [], applied_by="retry")
    assert retried.version == 3 and RegistryStore(location).versions() == [1, 2, 3]


def put(location: str, name: str, text: str) -> None:
    """Write a file of the store as an operator or a fault would, bypassing the store."""
    if location.startswith("s3://"):
        boto3.client("s3").put_object(Bucket="lake", Key=f"offline/registry/{name}", Body=text)
    else:
        with open(f"{location}/{name}", "w") as file:
            file.write(text)


def test_an_apply_leaves_serving_to_the_cut_over(location):
    store = RegistryStore(location)
    assert (store.serving_version(), store.serving(), store.cut_overs()) == (None, None, [])
    store.apply(FULL, None, [], applied_by="ana")
    assert (store.serving_version(), store.cut_overs()) == (1, []), "the first serves at once"
    store.apply(USERS_ONLY, 1, [], applied_by="bo")
    assert store.serving_version() == 1 and store.serving().registry == FULL
    [pinned] = store.cut_overs()
    assert (pinned.number, pinned.serving, pinned.previous, pinned.by) == (1, 1, None, "bo")

    moved = store.cut_over(2, by="cut-over sensor")
    assert (moved.number, moved.serving, moved.previous, moved.by) == (2, 2, 1, "cut-over sensor")
    assert moved.at.endswith("+00:00")
    assert store.serving().registry == USERS_ONLY and store.latest().version == 2
    assert RegistryStore(location).cut_overs() == [pinned, moved]
    assert store.cut_over(2, by="again") == moved, "cutting over to what serves changes nothing"
    store.apply(FULL, 2, [])
    assert store.serving_version() == 2 and len(store.cut_overs()) == 2


def test_a_cut_over_to_a_version_not_applied_or_older_is_refused(location):
    store = RegistryStore(location)
    with pytest.raises(CutOverRefused, match=r"version 1 is not applied at .* \(applied: none\)"):
        store.cut_over(1)
    store.apply(FULL, None, [])
    store.apply(USERS_ONLY, 1, [])
    with pytest.raises(CutOverRefused, match=r"version 3 is not applied .* \(applied: 1, 2\)"):
        store.cut_over(3)
    store.cut_over(2, by="ana")
    with pytest.raises(
        CutOverRefused, match=r"version 2 serves since .* \(by ana\), newer than version 1"
    ):
        store.cut_over(1)
    assert store.serving_version() == 2 and len(store.cut_overs()) == 2


def test_a_store_without_a_pointer_serves_its_latest_until_a_cut_over(tmp_path):
    """As a store written before the pointer existed: versions and no `serving-*` file."""
    store = RegistryStore(str(tmp_path))
    store.apply(FULL, None, [])
    store.apply(USERS_ONLY, 1, [])
    store.apply(FULL, 2, [])
    (tmp_path / "serving-000001.json").unlink()
    assert store.serving_version() == 3
    with pytest.raises(CutOverRefused, match="version 3 serves, newer than version 2"):
        store.cut_over(2)
    assert store.cut_over(3).previous is None and store.serving_version() == 3


def test_an_unreadable_version_is_never_cut_over_to(tmp_path):
    store = RegistryStore(str(tmp_path))
    store.apply(FULL, None, [])
    store.apply(USERS_ONLY, 1, [])
    (tmp_path / "v000002.json").write_text("{}")
    with pytest.raises(RegistryCorrupt, match="v000002.json: missing 'format'"):
        store.cut_over(2)
    assert store.serving_version() == 1 and len(store.cut_overs()) == 1


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"serving": 2, "previous"', "not valid JSON"),
        ('{"serving": "2", "previous": 1, "cut_over_at": "x", "cut_over_by": "a"}', "serving"),
        (  # a dict: signed, as a pointer written by a cut-over is
            {
                "serving": 7,
                "previous": 1,
                "cut_over_at": "2026-01-01T00:00:00+00:00",
                "cut_over_by": "a",
            },
            "serving is version 7, which is not applied",
        ),
    ],
)
def test_a_corrupt_pointer_is_reported_and_stops_cut_overs_until_set_aside(location, text, problem):
    store = RegistryStore(location)
    store.apply(FULL, None, [])
    store.apply(USERS_ONLY, 1, [])
    store.cut_over(2)
    text = registry_text(signed(text)) if isinstance(text, dict) else text
    put(location, "serving-000002.json", text)
    path = f"{location}/serving-000002.json"
    for read in (store.serving_version, store.serving, lambda: store.cut_over(2)):
        with pytest.raises(RegistryCorrupt) as raised:
            read()
        assert str(raised.value).startswith(f"{path}: ") and problem in raised.value.problem
        assert "set it aside as serving-000002.json.corrupt" in raised.value.remedy
    put(location, "serving-000002.json.corrupt", text)  # set aside: a rename, on S3 a copy
    if location.startswith("s3://"):
        boto3.client("s3").delete_object(Bucket="lake", Key="offline/registry/serving-000002.json")
    else:
        (Path(location) / "serving-000002.json").unlink()
    assert store.serving_version() == 1, "the cut-over before it holds"
    assert store.cut_over(2).number == 2


def test_of_concurrent_cut_overs_the_newest_version_serves(location):
    """Cut-overs racing to versions 2 to 5 from their own clients (as separate processes):
    whichever order they land in, version 5 serves, and the pointer's history is a chain."""
    store = RegistryStore(location)
    store.apply(FULL, None, [])
    for parent in range(1, 5):
        store.apply(USERS_ONLY, parent, [])
    targets = [2, 3, 4, 5] * 2
    random.Random(7).shuffle(targets)
    racers = [RegistryStore(location) for _ in targets]
    outcomes = race(
        [lambda i=i: racers[i].cut_over(targets[i], by=f"r{i}") for i in range(len(targets))],
        CutOverRefused,
    )
    assert store.serving_version() == 5
    moves = store.cut_overs()
    assert [move.number for move in moves] == list(range(1, len(moves) + 1))
    chain = [(move.previous, move.serving) for move in moves[1:]]
    assert all(previous < serving for previous, serving in chain)
    assert [previous for previous, _ in chain] == [1] + [serving for _, serving in chain[:-1]]
    for target, outcome in zip(targets, outcomes, strict=True):
        if isinstance(outcome, CutOverRefused):
            assert "newer than version" in str(outcome)
        else:
            assert outcome.serving == target and outcome in moves


def test_history_and_describe_say_which_version_serves(cli):
    cli("apply", "--repository", "plan_repo_v1", "--yes", "--no-backfill")  # serves at once
    cli("apply", "--repository", "plan_repo_v2", "--yes", "--allow-breaking")  # waits
    code, out, _ = cli("history")
    pinned = RegistryStore(registry_store_location()).cut_overs()[0]
    assert code == 0
    assert out.splitlines()[-1] == f"serving: version 1 since {pinned.at} (by {pinned.by})"
    assert f"  serving since {pinned.at} (by {pinned.by})" in out.splitlines()
    code, out, _ = cli("describe", "user_stats", "--repository", "plan_repo_v2")
    assert out.splitlines()[0] == (
        f"(applied registry version 2; serving: version 1 since {pinned.at} (by {pinned.by}))"
    )

    moved = RegistryStore(registry_store_location()).cut_over(2, by="sensor")
    code, out, _ = cli("history")
    lines = out.splitlines()
    assert lines[-1] == f"serving: version 2 since {moved.at}, cut over from version 1 (by sensor)"
    version_2 = lines[[line.split("  ")[0] for line in lines].index("version 2") :]
    assert f"  cut over from version 1 at {moved.at} (by sensor)" in version_2

    pointer = Path(registry_store_location()) / "serving-000002.json"
    pointer.write_text("")
    for command in (("history",), ("describe", "user_stats", "--repository", "plan_repo_v2")):
        code, out, err = cli(*command)
        assert (code, out) == (1, "")
        assert err.startswith(f"error: RegistryCorrupt: {pointer}: the file is empty; it is the ")


@pytest.fixture
def applied_store(tmp_path, monkeypatch) -> RegistryStore:
    """A registry store the handler follows, checking for new versions on every request."""
    monkeypatch.setenv("FEATUREPLANE_REGISTRY", str(tmp_path / "registry"))
    monkeypatch.setenv("FEATUREPLANE_REGISTRY_REFRESH_SECONDS", "0")
    for name in ("_server", "_store", "_version", "_access"):
        monkeypatch.setattr(online.handler, name, None)
    store = RegistryStore(str(tmp_path / "registry"))
    registry = build_registry(serving_repo.repository(), {**STORE, "path": str(tmp_path / "db")})
    store.apply(registry, None, [])
    return store


def health() -> dict:
    event = {"requestContext": {"http": {"method": "GET", "path": "/health"}}, "rawPath": "/health"}
    return json.loads(handler(event)["body"])


def narrower(tmp_path) -> dict:
    """The users service alone, over the `applied_store`'s online store."""
    online_store = {**STORE, "path": str(tmp_path / "db")}
    return build_registry(Repository.from_objects([serving_repo.users]), online_store)


def test_the_handler_serves_the_version_cut_over_to_not_the_latest(applied_store, tmp_path):
    assert health()["feature_services"] == 3
    first = online.handler.server()
    removed = ["- feature_service checkout", "- feature_service context"]
    applied_store.apply(narrower(tmp_path), 1, removed)
    assert health()["feature_services"] == 3, "applied, not yet cut over to"
    assert online.handler.server() is first
    applied_store.cut_over(2)
    assert health()["feature_services"] == 1
    assert online.handler.server() is not first
    assert online.handler.server().store is first.store, "same settings: the client is kept"
    online.handler.server().close()


def test_a_failed_refresh_keeps_serving_the_version_at_hand(
    applied_store, tmp_path, monkeypatch, caplog
):
    assert health()["feature_services"] == 3
    applied_store.apply(narrower(tmp_path), 1, [])
    applied_store.cut_over(2)

    def unreachable():
        raise OSError("registry store unreachable")

    monkeypatch.setattr(online.handler._store, "serving_version", unreachable)
    assert health()["feature_services"] == 3
    assert "registry refresh from" in caplog.text and "unreachable" in caplog.text
    online.handler.server().close()


def test_a_corrupt_pointer_keeps_a_warm_server_on_its_version_and_fails_a_cold_one(
    applied_store, tmp_path, monkeypatch, caplog
):
    assert health()["feature_services"] == 3
    applied_store.apply(narrower(tmp_path), 1, [])
    pointer = tmp_path / "registry" / "serving-000001.json"
    pointer.write_text('{"serving": 2, "previous": 1')
    assert health()["feature_services"] == 3
    assert "serving version 1" in caplog.text and f"RegistryCorrupt: {pointer}" in caplog.text
    online.handler.server().close()
    for name in ("_server", "_store", "_version", "_access"):
        monkeypatch.setattr(online.handler, name, None)
    with pytest.raises(RegistryCorrupt, match="serving-000001.json: not valid JSON .* set it"):
        online.handler.server()


def test_the_handler_refuses_an_empty_registry_store(tmp_path, monkeypatch):
    (tmp_path / "registry").mkdir()
    monkeypatch.setenv("FEATUREPLANE_REGISTRY", str(tmp_path / "registry"))
    for name in ("_server", "_store", "_version", "_access"):
        monkeypatch.setattr(online.handler, name, None)
    with pytest.raises(RuntimeError, match="no registry applied at .*featureplane apply"):
        online.handler.server()


def test_a_server_process_following_a_store_switches_only_on_the_cut_over(tmp_path):
    """`featureplane serve` on a store, refreshing every 0.1 s: an apply leaves it serving
    version 1 for many refreshes, and the cut-over switches it within a few."""
    store = RegistryStore(str(tmp_path / "registry"))
    online_store = {**STORE, "path": str(tmp_path / "db")}
    store.apply(build_registry(serving_repo.repository(), online_store), None, [])
    refresh = {"FEATUREPLANE_REGISTRY_REFRESH_SECONDS": "0.1"}
    with (
        serving_process(store.location, env=refresh, timeout=30) as url,
        FeatureClient(url) as client,
    ):
        assert client.health()["feature_services"] == 3
        store.apply(narrower(tmp_path), 1, [])
        for _ in range(10):
            time.sleep(0.1)
            assert client.health()["feature_services"] == 3, "applied, not cut over to"
        store.cut_over(2)
        deadline = time.monotonic() + 10
        while client.health()["feature_services"] != 1:
            assert time.monotonic() < deadline, "the cut-over was not picked up"
            time.sleep(0.05)
