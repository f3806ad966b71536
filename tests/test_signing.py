"""Registry integrity: every file servers trust is signed when written and verified when read.
A byte of an on-demand function changed, a signature removed or made by another key is refused
with one line naming the file; a following server keeps what it serves and its principals; a
server starting on an untrusted registry does not start; verify keys rotate; the allow switch
loads anyway, loudly; racing commands make one local key pair."""

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import online.handler
from featureplane.access import AccessPolicy, Principals
from featureplane.cli import main
from featureplane.errors import RegistryCorrupt, RegistryUntrusted
from featureplane.registry import build_registry, load_registry, registry_text, write_registry
from featureplane.registry_store import RegistryStore
from featureplane.settings import registry_store_location
from featureplane.signing import (
    KEY_FILE,
    Ed25519Signer,
    Verifier,
    decode_key,
    generate_key,
    signed,
    signer,
    verified,
)
from online.handler import handler
from tests import serving_repo
from tests.serving_repo import START, checkout, context, users

CHANGED_CODE = ("amount / spend", "amount * spend")
"""One byte of the on-demand function `purchase_context`, as its version file spells it."""
ROUTE = "/v1/feature-services/users/get-features"


def registry(tmp_path: Path, *policies) -> dict:
    objects = [checkout, users, context, *policies]
    online_store = {"type": "sqlite", "path": str(tmp_path / "online.sqlite")}
    return build_registry(serving_repo.Repository.from_objects(objects), online_store)


def tamper(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} is not in {path} once"
    path.write_text(text.replace(old, new))


def rewrite(path: Path, edit) -> None:
    """Rewrite the JSON document at `path` as `edit` returns it, in canonical text."""
    path.write_text(registry_text(edit(json.loads(path.read_text()))))


def foreign_signer() -> Ed25519Signer:
    return Ed25519Signer(decode_key(generate_key(), "a key nobody trusts"))


@pytest.fixture
def fresh_handler(tmp_path, monkeypatch):
    """The handler as a new process has it, following `$FEATUREPLANE_REGISTRY` (a store at
    `<tmp>/registry`) and refreshing on every request."""
    monkeypatch.setenv("FEATUREPLANE_REGISTRY", str(tmp_path / "registry"))
    monkeypatch.setenv("FEATUREPLANE_REGISTRY_REFRESH_SECONDS", "0")
    for name in ("_server", "_store", "_version", "_access"):
        monkeypatch.setattr(online.handler, name, None)
    monkeypatch.setattr(online.handler, "_skipped", {})
    yield
    if online.handler._server is not None:
        online.handler._server.close()


def health() -> tuple[int, dict]:
    event = {"requestContext": {"http": {"method": "GET", "path": "/health"}}, "rawPath": "/health"}
    response = handler(event)
    return response["statusCode"], json.loads(response["body"])


def status(key: str) -> int:
    event = {"httpMethod": "POST", "path": ROUTE, "body": '{"entities": {"user_id": 1}}'}
    return handler({**event, "headers": {"x-api-key": key}})["statusCode"]


def test_a_signed_document_verifies_and_any_change_of_it_does_not():
    document = {"format": 1, "code": "def f(): return 1"}
    signature = signed(document)["signature"]
    assert signature["key_id"] == signer().key_id
    assert verified(signed(document), "doc.json") == document
    data = registry_text(document).encode()
    assert Verifier([signer().public_key]).verify(data, signature) is None
    assert Verifier([signer().public_key]).verify(data[:-2] + b"2\n", signature) == (
        "signature does not match"
    )
    with pytest.raises(RegistryUntrusted, match="^doc.json: signature does not match$"):
        verified({**signed(document), "code": "def f(): return 2"}, "doc.json")


def test_a_byte_of_an_on_demand_function_changed_in_a_version_is_refused(
    cli, data_dir, fresh_handler, monkeypatch, caplog
):
    """Refused by every reader: the store, a following server (which keeps serving the version
    it has), plan (which would extend it) and history (which lists it in place)."""
    store = RegistryStore(registry_store_location())
    monkeypatch.setenv("FEATUREPLANE_REGISTRY", store.location)
    store.apply(registry(data_dir), None, [])
    assert health()[1]["feature_services"] == 3
    narrower = build_registry(
        serving_repo.Repository.from_objects([context]), registry(data_dir)["online_store"]
    )
    store.apply(narrower, 1, [])
    store.cut_over(2)
    path = Path(store.path(2))
    tamper(path, *CHANGED_CODE)
    message = f"{path}: signature does not match"
    with pytest.raises(RegistryUntrusted) as raised:
        store.get(2)
    assert str(raised.value) == message
    assert health()[1]["feature_services"] == 3, "the version it has still serves"
    refusal = f"refused {message}; serving version 1"
    assert refusal in [record.getMessage() for record in caplog.records]

    assert cli("plan", "--repository", "plan_repo_v1", "--no-validate") == (
        1,
        "",
        f"error: RegistryUntrusted: {message}\n",
    )
    code, out, err = cli("history")
    assert code == 1 and f"version 2  untrusted: {path}" in out
    assert err.splitlines()[-1] == f"error: RegistryUntrusted: {message}"


def test_a_signature_removed_or_made_by_another_key_is_refused(tmp_path):
    store = RegistryStore(str(tmp_path))
    store.apply(registry(tmp_path), None, [])
    path = Path(store.path(1))
    rewrite(path, lambda document: {k: v for k, v in document.items() if k != "signature"})
    with pytest.raises(RegistryUntrusted) as raised:
        store.get(1)
    assert str(raised.value) == f"{path}: not signed"

    intruder = foreign_signer()
    rewrite(path, lambda document: signed(document, intruder))
    with pytest.raises(RegistryUntrusted) as raised:
        store.latest()
    assert str(raised.value) == (
        f"{path}: signed by unknown key {intruder.key_id} (trusted: {signer().key_id})"
    )


def test_a_signed_pointer_copied_to_a_later_number_does_not_roll_servers_back(tmp_path):
    store = RegistryStore(str(tmp_path))
    store.apply(registry(tmp_path), None, [])
    store.apply(registry(tmp_path), 1, [])
    store.cut_over(2)
    copy = tmp_path / "serving-000003.json"
    copy.write_bytes((tmp_path / "serving-000001.json").read_bytes())
    with pytest.raises(
        RegistryCorrupt, match="serving-000003.json: number is 1, but the file is 3"
    ):
        store.serving_version()


def test_verify_keys_rotate_old_and_new_trusted_then_the_old_dropped(tmp_path, monkeypatch):
    old, new = generate_key(), generate_key()
    old_public = Ed25519Signer(decode_key(old, "old")).public_key_text
    new_signer = Ed25519Signer(decode_key(new, "new"))
    store = RegistryStore(str(tmp_path))
    monkeypatch.setenv("FEATUREPLANE_SIGNING_KEY", old)
    monkeypatch.setenv("FEATUREPLANE_VERIFY_KEYS", old_public)
    store.apply(registry(tmp_path), None, [])

    monkeypatch.setenv("FEATUREPLANE_VERIFY_KEYS", f"{old_public}, {new_signer.public_key_text}")
    assert store.serving().version == 1, "servers trust both before the signer changes"
    monkeypatch.setenv("FEATUREPLANE_SIGNING_KEY", new)
    store.apply(registry(tmp_path), 1, [])
    store.cut_over(2)
    assert [store.get(version).version for version in (1, 2)] == [1, 2]

    monkeypatch.setenv("FEATUREPLANE_VERIFY_KEYS", new_signer.public_key_text)
    assert store.serving().version == 2
    with pytest.raises(RegistryUntrusted, match="v000001.json: signed by unknown key"):
        store.get(1)


def test_a_forged_access_document_is_refused_and_the_server_keeps_its_principals(
    tmp_path, fresh_handler, caplog
):
    readers = AccessPolicy("readers_read_users", members=["group:readers"], read=["users"])
    store = RegistryStore(str(tmp_path / "registry"))
    store.apply(registry(tmp_path, readers), None, [])
    keys = {}

    def create(name):
        def edit(principals):
            principals, keys[name] = principals.create(name, START, "user", ["readers"])
            return principals, f"principal {name} created"

        return edit

    store.change_access(create("analyst"))
    assert status(keys["analyst"]) == 200
    first = json.loads((tmp_path / "registry" / "access-000001.json").read_text())
    added, _ = create("intruder")(Principals.from_json(first))
    forged = {**first, **added.to_json(), "meta": {**first["meta"], "number": 2}}
    path = tmp_path / "registry" / "access-000002.json"
    path.write_text(registry_text(forged))  # with the first document's signature
    assert status(keys["intruder"]) == 401, "the forged principal is not taken up"
    assert status(keys["analyst"]) == 200, "the principals in force still hold"
    refusal = f"refused {path}: signature does not match; serving version 1"
    assert refusal in [record.getMessage() for record in caplog.records]
    with pytest.raises(RegistryUntrusted, match="access-000002.json: signature does not match"):
        store.change_access(create("another"))  # nor is a change made on top of it


def test_a_tampered_registry_file_stops_serve_and_the_handler_at_start(
    cli, data_dir, fresh_handler, monkeypatch
):
    monkeypatch.setattr("uvicorn.run", lambda *_, **__: pytest.fail("an untrusted registry served"))
    path = write_registry(registry(data_dir), data_dir / "registry.json")
    tamper(path, *CHANGED_CODE)
    assert cli("serve", "--registry", str(path)) == (
        1,
        "",
        f"error: RegistryUntrusted: {path}: signature does not match\n",
    )
    monkeypatch.setenv("FEATUREPLANE_REGISTRY", str(path))
    assert health()[0] == 503

    store = RegistryStore(str(data_dir / "registry"))
    store.apply(registry(data_dir), None, [])
    tamper(Path(store.path(1)), *CHANGED_CODE)
    code, out, err = cli("serve", "--registry", store.location)
    assert (code, out) == (1, "")
    assert err == f"error: RegistryUntrusted: {store.path(1)}: signature does not match\n"


def test_the_allow_switch_loads_an_unsigned_registry_and_warns(
    tmp_path, fresh_handler, monkeypatch, caplog
):
    path = tmp_path / "registry.json"
    path.write_text(registry_text(registry(tmp_path)))  # unsigned, as before signing
    monkeypatch.setenv("FEATUREPLANE_REGISTRY", str(path))
    with pytest.raises(RegistryUntrusted, match="registry.json: not signed$"):
        load_registry(path)
    assert health()[0] == 503

    monkeypatch.setenv("FEATUREPLANE_ALLOW_UNSIGNED_REGISTRY", "1")
    assert set(load_registry(path).services) == {"checkout", "users", "context"}
    code, body = health()
    assert code == 200 and body["registry_signatures"] == "optional"
    warning = (
        f"loading {path} although it is untrusted (not signed): "
        "FEATUREPLANE_ALLOW_UNSIGNED_REGISTRY=1"
    )
    assert warning in [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


RACER = """
import sys, time
from pathlib import Path
Path(sys.argv[1], "ready", sys.argv[2]).touch()
while not Path(sys.argv[1], "go").exists():
    time.sleep(0.001)
from featureplane.signing import signer
print(signer().public_key_text)
"""


def test_racing_processes_make_one_local_key_pair_readable_by_its_owner_only(tmp_path):
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("FEATUREPLANE_SIGNING_KEY", "FEATUREPLANE_VERIFY_KEYS")
    }
    env["FEATUREPLANE_DATA_DIR"] = str(tmp_path / "data")
    (tmp_path / "ready").mkdir()
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(tmp_path), str(n)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(8)
    ]
    deadline = time.monotonic() + 60
    while len(list((tmp_path / "ready").iterdir())) < len(racers):
        assert time.monotonic() < deadline, "the racers did not start"
        time.sleep(0.01)
    (tmp_path / "go").touch()
    printed = {racer.communicate(timeout=60)[0] for racer in racers}
    keys = tmp_path / "data" / "keys"
    assert len(printed) == 1, "every racer signs with the one key made"
    assert [p.name for p in keys.iterdir()] == [KEY_FILE]
    assert stat.S_IMODE((keys / KEY_FILE).stat().st_mode) == 0o600

    result = subprocess.run(
        [sys.executable, "-m", "featureplane.cli", "keys"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout == printed.pop(), "`featureplane keys` prints that public key"
    assert str(keys / KEY_FILE) in result.stderr


def test_keys_prints_the_public_key_to_give_servers_or_a_new_private_key(capsys):
    assert main(["keys"]) == 0
    out, err = capsys.readouterr()
    assert out == f"{os.environ['FEATUREPLANE_VERIFY_KEYS']}\n"
    assert f"key {signer().key_id} (FEATUREPLANE_SIGNING_KEY)" in err
    assert main(["keys", "--generate"]) == 0
    out, err = capsys.readouterr()
    made = Ed25519Signer(decode_key(out, "the printed key"))
    assert made.key_id != signer().key_id
    assert err.endswith(f"its public key: {made.public_key_text}\n")


def test_a_key_that_is_not_one_is_a_one_line_error(capsys, monkeypatch):
    monkeypatch.setenv("FEATUREPLANE_SIGNING_KEY", "not-a-key")
    assert main(["keys"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: SigningKeyError: FEATUREPLANE_SIGNING_KEY: not the base64 of a raw 32-byte "
        "Ed25519 key"
    )
