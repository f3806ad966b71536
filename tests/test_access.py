"""Identities and access policies: API keys made, rotated and revoked with `featureplane
access`, stored only as digests, 401 without a valid key, 403 without a policy, callers from
API Gateway authorizers and IAM, who may apply, and the audit line of every request."""

import json
import re
import threading
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import online.handler
from featureplane.access import AccessDenied, AccessPolicy, Gate, PolicySpec, Principals
from featureplane.access.keys import digest
from featureplane.errors import AccessError, AccessPolicyError, DefinitionError
from featureplane.registry import build_registry, load_registry, write_registry
from featureplane.registry_store import RegistryStore
from featureplane.serving import FeatureServer
from featureplane.serving.audit import AuditLog
from online.client import FeatureClient, FeatureServerError
from online.handler import handler
from online.server import serving_process
from tests import serving_repo
from tests.conftest import write_repository
from tests.serving_repo import START, Clock, checkout, context, users

ROUTE = "/v1/feature-services/{}/get-features"
USER = '{"entities": {"user_id": 1}}'
NOW = datetime(2026, 3, 1, tzinfo=UTC)


def repository(*policies):
    return serving_repo.Repository.from_objects([checkout, users, context, *policies])


def people() -> tuple[Principals, dict[str, str]]:
    """Principals `ranker` (group ranking), `analyst` (a user) and `auditor`, and their keys."""
    principals, keys = Principals.none(), {}
    principals, keys["ranker"] = principals.create("ranker", START, groups=["ranking"])
    principals, keys["analyst"] = principals.create("analyst", START, "user")
    principals, keys["auditor"] = principals.create(
        "auditor", START, identities=["arn:aws:iam::123456789012:role/auditor", "auditor-sub"]
    )
    return principals, keys


POLICIES = (
    AccessPolicy("ranking_reads_checkout", members=["group:ranking"], read=[checkout]),
    AccessPolicy("analysts_read_users", members=["analyst", "auditor"], read=["users"]),
)


@pytest.fixture
def door(tmp_path):
    """A server of the serving repository with POLICIES; (server, keys, audit file)."""
    principals, keys = people()
    store_path = tmp_path / "online.sqlite"
    registry = build_registry(repository(*POLICIES), {"type": "sqlite", "path": str(store_path)})
    audit = tmp_path / "audit.jsonl"
    server = FeatureServer(
        load_registry({**registry, "access": principals.to_json()}),
        clock=Clock(),
        audit=AuditLog(str(audit)),
    )
    yield server, keys, audit
    server.close()


def call(server, service, key=None, header="x-api-key", body=USER, caller=None):
    headers = {} if key is None else {header: key if header == "x-api-key" else f"Bearer {key}"}
    response = server.respond("POST", ROUTE.format(service), body, headers, caller)
    return response.status, json.loads(response.body), dict(response.headers)


def test_no_key_or_a_bad_one_is_401_with_a_challenge(door):
    server, keys, _ = door
    ranker = keys["ranker"]
    forged = f"{ranker[:-4]}AAAA"  # the right id, the wrong secret
    for key in (None, "", "not-a-key", forged, "fpk_000000000000_" + "A" * 43):
        status, body, headers = call(server, "checkout", key)
        assert status == 401, key
        assert headers["www-authenticate"] == 'Bearer realm="featureplane"'
        assert ranker not in json.dumps(body)
    assert "no credentials" in call(server, "checkout")[1]["error"]
    assert "not valid" in call(server, "checkout", forged)[1]["error"]


def test_a_valid_key_by_either_header_reads_what_its_policies_grant(door):
    server, keys, _ = door
    for header in ("x-api-key", "authorization"):
        assert (
            call(
                server,
                "checkout",
                keys["ranker"],
                header,
                '{"entities": {"user_id": 1, "ad_id": "a1"}}',
            )[0]
            == 200
        )
        assert call(server, "users", keys["analyst"], header)[0] == 200
    status, body, _ = call(server, "users", keys["ranker"])
    assert (status, body["error"]) == (
        403,
        "principal 'ranker' may not read feature service 'users'",
    )
    assert call(server, "context", keys["analyst"])[0] == 403, "no policy names context"
    assert call(server, "nowhere", keys["analyst"])[0] == 403, "an unknown service reveals nothing"


def test_the_listing_shows_only_the_services_a_principal_may_read(door):
    server, keys, _ = door
    listed = {}
    for name, key in keys.items():
        response = server.respond("GET", "/v1/feature-services", None, {"x-api-key": key})
        listed[name] = [s["name"] for s in json.loads(response.body)["feature_services"]]
    assert listed == {"ranker": ["checkout"], "analyst": ["users"], "auditor": ["users"]}
    assert server.respond("GET", "/v1/feature-services", None).status == 401
    assert server.respond("GET", "/health", None).status == 200, "health needs no key"


def test_lambda_callers_established_by_api_gateway_or_iam_stand_for_principals(door, monkeypatch):
    server, _, _ = door
    monkeypatch.setattr(online.handler, "_server", server)
    path = ROUTE.format("users")
    iam_v1 = {
        "httpMethod": "POST",
        "path": path,
        "body": USER,
        "requestContext": {"identity": {"userArn": "arn:aws:iam::123456789012:role/auditor"}},
    }
    jwt_v2 = {
        "rawPath": path,
        "body": USER,
        "requestContext": {
            "http": {"method": "POST", "path": path},
            "authorizer": {"jwt": {"claims": {"sub": "auditor-sub"}}},
        },
    }
    stranger = {**iam_v1, "requestContext": {"authorizer": {"principalId": "someone-else"}}}
    assert handler(iam_v1)["statusCode"] == 200
    assert handler(jwt_v2)["statusCode"] == 200
    refused = handler(stranger)
    assert refused["statusCode"] == 401 and "someone-else" in json.loads(refused["body"])["error"]
    denied = handler({**iam_v1, "path": ROUTE.format("checkout")})
    assert denied["statusCode"] == 403


def test_an_http_client_cannot_claim_a_caller(tmp_path):
    """Only API Gateway writes requestContext: over HTTP a header naming a caller is nothing."""
    principals, _ = people()
    path = tmp_path / "registry.json"
    registry = build_registry(
        repository(*POLICIES), {"type": "sqlite", "path": str(tmp_path / "db")}
    )
    write_registry({**registry, "access": principals.to_json()}, path)
    with serving_process(path) as url, FeatureClient(url) as client:
        with pytest.raises(FeatureServerError) as raised:
            client.get_features("users", {"user_id": 1})
        assert raised.value.status == 401
        assert client.health()["auth"] == "on"


def test_rotation_keeps_the_old_key_for_its_grace_then_ends_it():
    principals, keys = people()
    rotated, new = principals.rotate("ranker", NOW, timedelta(hours=1))
    policies = [PolicySpec.from_json(p.to_json()) for p in POLICIES]
    for moment, old_valid in (
        (NOW + timedelta(minutes=59), True),
        (NOW + timedelta(hours=1), False),
    ):
        gate = Gate(rotated, policies, clock=lambda moment=moment: moment)
        assert gate.authenticate({"x-api-key": new}).name == "ranker"
        if old_valid:
            assert gate.authenticate({"x-api-key": keys["ranker"]}).name == "ranker"
        else:
            with pytest.raises(AccessDenied):
                gate.authenticate({"x-api-key": keys["ranker"]})
    revoked = rotated.revoke("ranker", NOW)
    gate = Gate(revoked, policies, clock=lambda: NOW)
    for key in (new, keys["ranker"]):
        with pytest.raises(AccessDenied):
            gate.authenticate({"x-api-key": key})
    assert gate.authenticate({"x-api-key": keys["analyst"]}).name == "analyst"


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=120), st.from_regex(r"fpk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}")))
def test_no_made_up_key_authenticates(text):
    principals, _ = people()
    gate = Gate(principals, [], clock=lambda: NOW)
    for headers in ({"x-api-key": text}, {"authorization": f"Bearer {text}"}):
        with pytest.raises(AccessDenied) as raised:
            gate.authenticate(headers)
        assert raised.value.status == 401


def test_a_followed_store_takes_up_new_rotated_and_revoked_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATUREPLANE_REGISTRY", str(tmp_path / "registry"))
    monkeypatch.setenv("FEATUREPLANE_REGISTRY_REFRESH_SECONDS", "0")
    for name in ("_server", "_store", "_version", "_access"):
        monkeypatch.setattr(online.handler, name, None)
    store = RegistryStore(str(tmp_path / "registry"))
    settings_ = {"type": "sqlite", "path": str(tmp_path / "db")}
    store.apply(build_registry(repository(*POLICIES), settings_), None, ["first"])

    def status(key):
        event = {"httpMethod": "POST", "path": ROUTE.format("users"), "body": USER}
        return handler({**event, "headers": {"x-api-key": key}})["statusCode"]

    def change(edit):
        holder = {}

        def apply(principals):
            changed, holder["key"] = edit(principals)
            return changed, "test change"

        store.change_access(apply)
        return holder.get("key")

    first = change(lambda p: p.create("analyst", NOW, "user"))
    assert status(first) == 200
    second = change(lambda p: p.rotate("analyst", datetime.now(UTC), timedelta(hours=1)))
    assert (status(first), status(second)) == (200, 200)
    third = change(lambda p: p.rotate("analyst", datetime.now(UTC), timedelta(0)))
    assert (status(first), status(second), status(third)) == (401, 401, 200)
    change(lambda p: (p.revoke("analyst", datetime.now(UTC)), None))
    assert status(third) == 401
    online.handler._server.close()
    text = "".join(path.read_text() for path in (tmp_path / "registry").glob("access-*.json"))
    for key in (first, second, third):
        assert key not in text and digest(key) in text, "keys are stored as digests only"


def test_racing_access_changes_are_all_kept(tmp_path):
    store = RegistryStore(str(tmp_path / "registry"))
    names = [f"service{i}" for i in range(8)]
    barrier = threading.Barrier(len(names))

    def create(name):
        def edit(principals):
            return principals.create(name, NOW)[0], f"{name} created"

        barrier.wait()
        store.change_access(edit)

    threads = [threading.Thread(target=create, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(store.access().principals.by_name) == names
    assert len(store.access_history()) == len(names)


def test_principal_and_policy_mistakes_are_one_line_errors():
    principals, _ = people()
    with pytest.raises(AccessError, match="principal 'ranker' exists"):
        principals.create("ranker", NOW)
    with pytest.raises(AccessError, match="name 'Bad Name' must be"):
        principals.create("Bad Name", NOW)
    with pytest.raises(AccessError, match="identity 'auditor-sub' already stands for"):
        principals.create("copy", NOW, identities=["auditor-sub"])
    with pytest.raises(AccessError, match="has no key 'nope'"):
        principals.revoke("ranker", NOW, "nope")
    with pytest.raises(AccessError, match="a positive number"):
        principals.create("slow", NOW, requests_per_second=0)
    with pytest.raises(AccessPolicyError, match=r"^bad \(tests/test_access.py:\d+\): member 'A B'"):
        AccessPolicy("bad", members=["A B"], read=["users"])
    with pytest.raises(AccessPolicyError, match="grants nothing"):
        AccessPolicy("empty", members=["ranker"])
    unknown = AccessPolicy("reads_nothing_real", members=["ranker"], read=["nowhere"])
    with pytest.raises(DefinitionError, match=r"reads \['nowhere'\], which are no feature"):
        repository(unknown)


def test_every_request_is_audited_and_refusals_survive_sampling(door):
    server, keys, audit = door
    call(server, "users", keys["analyst"])
    call(server, "users", keys["ranker"])
    call(server, "users")
    server.respond("GET", "/health", None)
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(line["principal"], line["status"]) for line in lines] == [
        ("analyst", 200),
        ("ranker", 403),
        (None, 401),
    ], "health checks are not audited"
    first = lines[0]
    assert first["service"] == "users" and first["rows"] == 1 and first["features"] == 3
    assert re.fullmatch(r"[0-9a-f]{16}", first["request_id"])
    assert first["latency_ms"] > 0 and first["at"].endswith("Z")
    sampled = FeatureServer(server.registry, server.store, audit=AuditLog(str(audit), 0.0))
    call(sampled, "users", keys["analyst"])
    call(sampled, "users", keys["ranker"])
    tail = [json.loads(line)["status"] for line in audit.read_text().splitlines()[3:]]
    assert tail == [403], "a sample of 0 keeps refusals only"


def test_a_request_id_sent_is_echoed_and_logged_if_it_is_safe(door):
    server, keys, audit = door
    for sent, kept in (("trace-42", True), ("evil\nline", False), ("x" * 65, False)):
        headers = {"x-api-key": keys["analyst"], "x-request-id": sent}
        response = server.respond("POST", ROUTE.format("users"), USER, headers)
        echoed = dict(response.headers)["x-request-id"]
        assert (echoed == sent) is kept
        assert json.loads(audit.read_text().splitlines()[-1])["request_id"] == echoed


def applying_repository(data_dir, name: str, members: str) -> str:
    package = write_repository(data_dir / name, schema='[Field("clicks", Int64)]', output="events")
    with open(package / "__init__.py", "a") as file:
        file.write(
            "from featureplane import AccessPolicy\n"
            f"platform = AccessPolicy('platform', members={members}, apply=True)\n"
            "readers = AccessPolicy('readers', members=['group:ranking'], read=[checkout])\n"
        )
    return name


def test_the_command_line_makes_keys_and_guards_applying(cli, data_dir, monkeypatch):
    code, out, _ = cli("access", "create", "ci", "--group", "platform")
    assert code == 0 and "principal ci created with key" in out
    ci_key = out.strip().splitlines()[-1]
    code, out, _ = cli(
        "access", "create", "ranker", "--group", "ranking", "--rows-per-second", "500"
    )
    ranker_key = out.strip().splitlines()[-1]
    guarded = applying_repository(data_dir, "guarded", "['group:platform']")
    code, out, _ = cli("plan", "--repository", guarded, "--no-validate")
    assert "+ access_policy platform" in out and "+ access_policy readers" in out
    assert cli("apply", "--repository", guarded, "--yes", "--no-validate")[0] == 0

    monkeypatch.delenv("FEATUREPLANE_API_KEY", raising=False)
    code, _, err = cli("access", "create", "intruder")
    assert code == 1 and "limited by the policies platform" in err
    monkeypatch.setenv("FEATUREPLANE_API_KEY", ranker_key)
    code, _, err = cli("access", "rotate", "ranker")
    assert code == 1 and "principal 'ranker' may not apply" in err
    widened = applying_repository(data_dir, "widened", "['group:platform', 'group:ranking']")
    code, _, err = cli("apply", "--repository", widened, "--yes", "--no-validate")
    assert code == 1 and "may not apply" in err, "nobody grants themselves applying"

    monkeypatch.setenv("FEATUREPLANE_API_KEY", ci_key)
    code, out, _ = cli("apply", "--repository", widened, "--yes", "--no-validate")
    assert code == 0
    code, out, _ = cli("access", "rotate", "ranker", "--grace", "0")
    assert code == 0 and "its other keys end in now" in out
    code, out, _ = cli("access", "list")
    assert "ranker  (service account)" in out and "reads: checkout" in out
    assert "limits: 500 rows/s" in out and "ci  (service account)" in out
    assert ranker_key not in out and ci_key not in out
    code, out, _ = cli("history")
    assert "by ci" in out and "access 3" in out and "key" in out
    assert re.search(r"version 2 .* by ci", out)
    code, out, _ = cli("describe", "readers", "--repository", widened)
    assert code == 0 and "feature_service checkout" in out, out
    code, out, _ = cli("history", "ranker")
    assert "ranker created" in out and "ci created" not in out
