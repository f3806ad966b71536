"""The applied registry: append-only versions with history, one winner per version, locally
and on S3 (moto), and a handler that serves the latest applied version."""

import json
import threading
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws
from moto.s3.responses import S3Response

import online.handler
from featureplane import Repository
from featureplane.registry import build_registry, load_registry, registry_text
from featureplane.registry_store import RegistryConflict, RegistryStore
from online.handler import handler
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


def test_a_version_file_is_the_canonical_registry_text_plus_meta(tmp_path):
    store = RegistryStore(str(tmp_path))
    applied = store.apply(FULL, None, [], applied_by="ana")
    text = (tmp_path / "v000001.json").read_text()
    assert text == registry_text({**FULL, "meta": applied.meta})
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
    start = threading.Barrier(len(writers))
    outcomes: dict[int, object] = {}

    def apply(index: int) -> None:
        start.wait()
        try:
            outcomes[index] = writers[index].apply(USERS_ONLY, 1, [], applied_by=f"w{index}")
        except RegistryConflict as conflict:
            outcomes[index] = conflict

    threads = [threading.Thread(target=apply, args=(i,)) for i in range(len(writers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    conflicts = [i for i, o in outcomes.items() if isinstance(o, RegistryConflict)]
    winners = [i for i in outcomes if i not in conflicts]
    assert len(winners) == 1 and len(conflicts) == len(writers) - 1
    winner = RegistryStore(location).get(2).meta["applied_by"]
    assert winner == f"w{winners[0]}"
    for index in conflicts:
        assert outcomes[index].version == 2
        assert outcomes[index].winner in (None, RegistryStore(location).get(2).meta)
    loser = writers[conflicts[0]]
    retried = loser.apply(FULL, loser.latest().version, [], applied_by="retry")
    assert retried.version == 3 and RegistryStore(location).versions() == [1, 2, 3]


@pytest.fixture
def applied_store(tmp_path, monkeypatch) -> RegistryStore:
    """A registry store the handler follows, checking for new versions on every request."""
    monkeypatch.setenv("FEATUREPLANE_REGISTRY", str(tmp_path / "registry"))
    monkeypatch.setenv("FEATUREPLANE_REGISTRY_REFRESH_SECONDS", "0")
    for name in ("_server", "_store", "_version"):
        monkeypatch.setattr(online.handler, name, None)
    store = RegistryStore(str(tmp_path / "registry"))
    registry = build_registry(serving_repo.repository(), {**STORE, "path": str(tmp_path / "db")})
    store.apply(registry, None, [])
    return store


def health() -> dict:
    event = {"requestContext": {"http": {"method": "GET", "path": "/health"}}, "rawPath": "/health"}
    return json.loads(handler(event)["body"])


def test_the_handler_serves_the_latest_applied_registry(applied_store, tmp_path):
    assert health()["feature_services"] == 3
    first = online.handler.server()
    narrower = build_registry(
        Repository.from_objects([serving_repo.users]), {**STORE, "path": str(tmp_path / "db")}
    )
    applied_store.apply(narrower, 1, ["- feature_service checkout", "- feature_service context"])
    assert health()["feature_services"] == 1
    assert online.handler.server() is not first
    assert online.handler.server().store is first.store, "same settings: the client is kept"
    online.handler.server().close()


def test_a_failed_refresh_keeps_serving_the_version_at_hand(applied_store, monkeypatch, caplog):
    assert health()["feature_services"] == 3

    def unreachable():
        raise OSError("registry store unreachable")

    monkeypatch.setattr(online.handler._store, "versions", unreachable)
    assert health()["feature_services"] == 3
    assert "registry refresh from" in caplog.text and "unreachable" in caplog.text
    online.handler.server().close()


def test_the_handler_refuses_an_empty_registry_store(tmp_path, monkeypatch):
    (tmp_path / "registry").mkdir()
    monkeypatch.setenv("FEATUREPLANE_REGISTRY", str(tmp_path / "registry"))
    for name in ("_server", "_store", "_version"):
        monkeypatch.setattr(online.handler, name, None)
    with pytest.raises(RuntimeError, match="no registry applied at .*featureplane apply"):
        online.handler.server()
