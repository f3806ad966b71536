"""Registries that fail safe. A truncated, garbled, empty or foreign registry file, a serving
registry or an applied version, is refused with one line naming the file and the part that is
wrong. Plan and apply refuse to build on a corrupt latest version, say how to repair it and
write nothing; a version set aside retires its number; history lists a corrupt version in
place. A server following a registry store serves the newest readable version up to the one
cut over to, and logs what it skipped; a server given one corrupt file fails at start with
that one line."""

import copy
import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import online.handler
from conftest import write_repository
from featureplane import Repository
from featureplane.catalog import edges, list_lines
from featureplane.errors import RegistryCorrupt, RegistryUntrusted
from featureplane.plan import diff
from featureplane.registry import build_registry, load_registry, registry_text, write_registry
from featureplane.registry_store import RegistryConflict, RegistryStore
from featureplane.serving import FeatureServer
from online.handler import handler
from tests import serving_repo

STORE = {"type": "sqlite", "path": "/tmp/online.sqlite"}
FULL = build_registry(serving_repo.repository(), STORE)
KINDS = ("truncated", "garbage", "empty object", "another format")


def corrupted(kind: str, text: str) -> tuple[bytes, str]:
    """A registry file's text spoiled one way, and the problem RegistryCorrupt names."""
    if kind == "truncated":  # cut after a line, as a write that stopped short leaves it
        lines = text.splitlines(keepends=True)
        cut = next(n for n, line in enumerate(lines) if line.strip() == '"feature_views": [') + 1
        problem = (
            f"not valid JSON (Expecting value: line {cut + 1} column 1); "
            "the file ends mid-document: truncated?"
        )
        return "".join(lines[:cut]).encode(), problem
    if kind == "garbage":
        return b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not UTF-8 text (byte 0x89 at offset 0)"
    if kind == "empty object":
        return b"{}", "missing 'format': not a featureplane registry"
    document = {**json.loads(text), "format": 2}
    problem = "format 2 is not supported (this build of featureplane reads 1)"
    return registry_text(document).encode(), problem


def repair(version: int) -> str:
    return (
        f"it is registry version {version}, the latest: restore it from a backup, or set it "
        f"aside as v{version:06d}.json.corrupt (the next apply then writes version "
        f"{version + 1}), then plan again"
    )


def spoil(path: Path, kind: str) -> str:
    """Corrupt the file at `path` in place; the problem its RegistryCorrupt names."""
    data, problem = corrupted(kind, path.read_text())
    path.write_bytes(data)
    return problem


# ---- reading one file ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_corrupt_serving_registry_names_the_file_and_the_problem(tmp_path, kind):
    path = write_registry(FULL, tmp_path / "registry.json")
    problem = spoil(path, kind)
    with pytest.raises(RegistryCorrupt) as raised:
        load_registry(path)
    assert str(raised.value) == f"{path}: {problem}"


@pytest.mark.parametrize("kind", KINDS)
def test_a_corrupt_applied_version_names_its_file_and_the_latest_says_how_to_repair(tmp_path, kind):
    store = RegistryStore(str(tmp_path))
    store.apply(FULL, None, [], applied_by="ana")
    store.apply(FULL, 1, [], applied_by="bo")
    problem = spoil(tmp_path / "v000002.json", kind)
    with pytest.raises(RegistryCorrupt) as raised:
        store.get(2)
    assert str(raised.value) == f"{tmp_path / 'v000002.json'}: {problem}"
    with pytest.raises(RegistryCorrupt) as raised:
        store.latest()
    assert str(raised.value) == f"{tmp_path / 'v000002.json'}: {problem}; {repair(2)}"
    assert store.get(1).meta["applied_by"] == "ana", "the other versions still read"


def view(document: dict, name: str = "user_stats") -> dict:
    return next(v for v in document["feature_views"] if v["name"] == name)


def aggregation(document: dict) -> dict:
    return view(document, "user_ad_purchases")["aggregations"][0]


@pytest.mark.parametrize(
    ("spoil_document", "problem"),
    [
        (lambda d: d.pop("feature_services"), "missing 'feature_services'"),
        (lambda d: view(d).pop("version"), "feature_views[user_stats]: missing 'version'"),
        (
            lambda d: view(d).update(ttl_seconds="2d"),
            "feature_views[user_stats].ttl_seconds: expected a positive number of seconds or null, "
            'got a string "2d"',
        ),
        (
            lambda d: view(d)["features"][0].update(type="Int65"),
            "feature_views[user_stats].features[clicks].type: expected a type name such as "
            'Int64 or Array(String), got a string "Int65"',
        ),
        (
            lambda d: view(d).update(online="yes"),
            'feature_views[user_stats].online: expected true or false, got a string "yes"',
        ),
        (
            lambda d: d.update(feature_views={}),
            "feature_views: expected a list, got an object",
        ),
        (
            lambda d: view(d)["tags"].update(team=7),
            "feature_views[user_stats].tags.team: expected a string, got a number 7",
        ),
        (
            lambda d: aggregation(d).update(function="cnt"),
            "feature_views[user_ad_purchases].aggregations[purchases_1d].function: expected an "
            "aggregation function (count, sum, mean, min, max, stddev, var, first, last, "
            'approx_count_distinct, last_n), got a string "cnt"',
        ),
        (
            lambda d: d["feature_services"][0]["features"][0]["features"].append("nope"),
            "feature_services[checkout].features: selects ['nope'] of view 'user_stats', "
            "which serves ['clicks', 'country', 'last_seen']",
        ),
        (
            lambda d: view(d)["entities"].append("account"),
            "feature_views[user_stats].entities: 'account' is not defined in entities",
        ),
        (
            lambda d: d["on_demand_views"][0]["sources"].__setitem__(0, {"views": "x"}),
            "on_demand_views[purchase_context].sources[0]: expected an object with 'request' "
            "or an object with 'view', 'features', got an object",
        ),
        (
            lambda d: d["on_demand_views"][0].update(function_source="def purchase_context(:"),
            "on_demand_views[purchase_context]: function_source: SyntaxError: invalid syntax "
            "(<on-demand purchase_context>, line 1)",
        ),
        (
            lambda d: aggregation(d).update(function="last_n", n=0),
            "feature_views[user_ad_purchases]: last_n needs a positive whole number, got 0",
        ),
        (
            lambda d: d["entities"].append(copy.deepcopy(d["entities"][0])),
            "entities[ad]: name already used in entities",
        ),
    ],
)
def test_json_that_is_not_a_registry_names_the_missing_or_invalid_part(spoil_document, problem):
    document = copy.deepcopy(FULL)
    spoil_document(document)
    with pytest.raises(RegistryCorrupt) as raised:
        load_registry(document, "registry.json")
    assert str(raised.value) == f"registry.json: {problem}"


@pytest.mark.parametrize(
    ("spoil_meta", "problem"),
    [
        (lambda d: d.pop("meta"), "missing 'meta': a registry, but not an applied version"),
        (lambda d: d["meta"].update(version=7), "meta.version is 7, but the file is version 1"),
        (
            lambda d: d["meta"].update(changes="all"),
            'meta.changes: expected a list, got a string "all"',
        ),
    ],
)
def test_an_applied_version_is_checked_against_its_meta(tmp_path, spoil_meta, problem):
    store = RegistryStore(str(tmp_path))
    store.apply(FULL, None, [])
    document = json.loads((tmp_path / "v000001.json").read_text())
    spoil_meta(document)
    (tmp_path / "v000001.json").write_text(registry_text(document))
    with pytest.raises(RegistryCorrupt) as raised:
        store.get(1)
    assert str(raised.value) == f"{tmp_path / 'v000001.json'}: {problem}"


@pytest.fixture(scope="module")
def applied_file(tmp_path_factory) -> tuple[RegistryStore, Path, bytes]:
    """A store of one applied version: the store, its file and the file's bytes."""
    root = tmp_path_factory.mktemp("registry")
    store = RegistryStore(str(root))
    store.apply(FULL, None, [])
    return store, root / "v000001.json", (root / "v000001.json").read_bytes()


@given(data=st.data())
def test_every_truncation_of_a_version_is_registry_corrupt(applied_file, data):
    store, path, whole = applied_file
    cut = data.draw(st.integers(0, len(whole.rstrip()) - 1), label="cut")
    path.write_bytes(whole[:cut])
    try:
        with pytest.raises(RegistryCorrupt) as raised:
            store.get(1)
        assert str(raised.value).startswith(f"{path}: ")
    finally:
        path.write_bytes(whole)


@given(data=st.data())
def test_any_byte_changed_is_served_or_registry_corrupt_or_untrusted(applied_file, data):
    store, path, whole = applied_file
    at = data.draw(st.integers(0, len(whole) - 1), label="at")
    byte = data.draw(st.integers(0, 255), label="byte")
    path.write_bytes(whole[:at] + bytes([byte]) + whole[at + 1 :])
    try:
        load_registry(store.get(1).registry, str(path))
    except (RegistryCorrupt, RegistryUntrusted):
        pass
    finally:
        path.write_bytes(whole)


def paths(value, prefix=()) -> list[tuple]:
    """Every place in a JSON document: the keys and indices leading to it."""
    if isinstance(value, dict):
        children = value.items()
    elif isinstance(value, list):
        children = enumerate(value)
    else:
        return []
    return [p for key, child in children for p in [(*prefix, key), *paths(child, (*prefix, key))]]


PATHS = paths(FULL)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats() | st.text(max_size=6),
    lambda children: st.lists(children, max_size=2) | st.dictionaries(st.text(), children),
    max_leaves=4,
)
DELETE = object()


@given(place=st.sampled_from(PATHS), value=st.just(DELETE) | JSON)
def test_any_part_deleted_or_replaced_serves_plans_or_is_registry_corrupt(place, value):
    """What the format check passes, every reader can index into: serving, plan, catalog."""
    document = copy.deepcopy(FULL)
    parent = document
    for key in place[:-1]:
        parent = parent[key]
    if value is DELETE:
        del parent[place[-1]]
    else:
        parent[place[-1]] = value
    try:
        registry = load_registry(document)
    except RegistryCorrupt:
        return
    FeatureServer(registry, store=object())
    diff(document, FULL, 1)
    diff(FULL, document, 1)
    edges(document)
    list_lines(document)


# ---- applied versions: numbers and set-aside versions ----------------------------------


def test_a_version_set_aside_retires_its_number(tmp_path):
    store = RegistryStore(str(tmp_path))
    store.apply(FULL, None, [])
    store.apply(FULL, 1, [])
    spoil(tmp_path / "v000002.json", "truncated")
    (tmp_path / "v000002.json").rename(tmp_path / "v000002.json.corrupt")
    assert store.versions() == [1] and store.latest().version == 1
    assert store.apply(FULL, 1, []).version == 3
    with pytest.raises(RegistryConflict, match="registry version 3 was applied concurrently"):
        store.apply(FULL, 1, [])
    assert store.versions() == [1, 3]


# ---- the command line -------------------------------------------------------------------


DEVICE = 'events.withColumn("device", events["country"])'
"""A third version's output: one more feature."""


def registry_dir(data_dir: Path) -> Path:
    return data_dir / "offline" / "registry"


def snapshot(data_dir: Path) -> dict[str, bytes]:
    """The applied versions and the serving registry, byte for byte."""
    files = {
        name: (registry_dir(data_dir) / name).read_bytes()
        for name in os.listdir(registry_dir(data_dir))
    }
    return {**files, "registry.json": (data_dir / "registry.json").read_bytes()}


@pytest.mark.parametrize("kind", KINDS)
def test_plan_and_apply_refuse_a_corrupt_latest_version_and_change_nothing(cli, data_dir, kind):
    assert cli("apply", "--repository", "plan_repo_v1", "--yes", "--no-backfill")[0] == 0
    path = registry_dir(data_dir) / "v000001.json"
    problem = spoil(path, kind)
    before = snapshot(data_dir)
    line = f"error: RegistryCorrupt: {path}: {problem}; {repair(1)}\n"
    assert cli("plan", "--repository", "plan_repo_v2", "--detailed-exitcode") == (1, "", line)
    assert cli("apply", "--repository", "plan_repo_v2", "--yes", "--allow-breaking") == (
        1,
        "",
        line,
    )
    assert cli("list") == (1, "", line)
    assert snapshot(data_dir) == before, "a refused apply writes nothing"


def test_a_version_set_aside_is_planned_past_and_its_number_never_reused(cli, data_dir):
    for package in ("plan_repo_v1", "plan_repo_v2"):  # version 2 waits for its backfill
        cli("apply", "--repository", package, "--yes", "--allow-breaking")
    path = registry_dir(data_dir) / "v000002.json"
    spoil(path, "garbage")
    path.rename(path.with_name("v000002.json.corrupt"))
    code, out, _ = cli("plan", "--repository", "plan_repo_v2", "--detailed-exitcode")
    assert (code, out.splitlines()[0]) == (
        2,
        "Changes to the registry (applied registry version 1):",
    )
    code, out, _ = cli(
        "apply", "--repository", "plan_repo_v2", "--yes", "--allow-breaking", "--no-backfill"
    )
    assert code == 0 and "Applied registry version 3 to" in out
    assert RegistryStore(str(registry_dir(data_dir))).versions() == [1, 3]


def test_history_lists_a_corrupt_version_in_place_and_exits_1_naming_it(cli, data_dir):
    schema = '[Field("clicks", Int64), Field("country", String), Field("device", String)]'
    write_repository(data_dir / "plan_repo_v3", schema=schema, output=DEVICE)
    for package in ("plan_repo_v1", "plan_repo_v2", "plan_repo_v3"):
        cli("apply", "--repository", package, "--yes", "--allow-breaking", "--no-backfill")
    path = registry_dir(data_dir) / "v000002.json"
    problem = spoil(path, "empty object")
    line = f"error: RegistryCorrupt: {path}: {problem}\n"

    code, out, err = cli("history")
    assert (code, err) == (1, line)
    heads = [row.split("  ")[0] for row in out.splitlines() if not row.startswith("  ")]
    assert heads[:-1] == ["version 1", "version 2", "version 3"]
    assert heads[-1].startswith("serving: version 3 since ")
    assert f"version 2  unreadable: {path}" in out.splitlines()

    code, out, err = cli("history", "user_stats")
    assert (code, err) == (1, line)
    assert "  (compared with version 1, the last readable one)" in out.splitlines()


# ---- serving ----------------------------------------------------------------------------


@pytest.fixture
def fresh_handler(tmp_path, monkeypatch):
    """The handler as a new process has it, following `$FEATUREPLANE_REGISTRY` (set here, so
    that what `serve` sets is undone) and refreshing on every request."""
    monkeypatch.setenv("FEATUREPLANE_REGISTRY", str(tmp_path / "registry.json"))
    monkeypatch.setenv("FEATUREPLANE_REGISTRY_REFRESH_SECONDS", "0")
    for name in ("_server", "_store", "_version", "_access"):
        monkeypatch.setattr(online.handler, name, None)
    monkeypatch.setattr(online.handler, "_skipped", {})


def health() -> dict:
    event = {"requestContext": {"http": {"method": "GET", "path": "/health"}}, "rawPath": "/health"}
    return json.loads(handler(event)["body"])


@pytest.mark.parametrize("kind", KINDS)
def test_a_cold_start_serves_the_newest_readable_version_and_logs_what_it_skipped(
    fresh_handler, tmp_path, monkeypatch, caplog, kind
):
    monkeypatch.setenv("FEATUREPLANE_REGISTRY", str(tmp_path / "registry"))
    store = RegistryStore(str(tmp_path / "registry"))
    served = {**STORE, "path": str(tmp_path / "online.sqlite")}
    store.apply(build_registry(serving_repo.repository(), served), None, [])
    narrower = build_registry(Repository.from_objects([serving_repo.users]), served)
    store.apply(narrower, 1, [])
    store.cut_over(2)
    problem = spoil(tmp_path / "registry" / "v000002.json", kind)

    assert health()["feature_services"] == 3, "version 1's three services"
    skipped = f"skipped registry version 2: {tmp_path / 'registry' / 'v000002.json'}: {problem}"
    assert [r.getMessage() for r in caplog.records] == [
        skipped,
        "serving registry version 1, the newest readable one up to 2",
    ]
    assert health()["feature_services"] == 3
    assert [r.getMessage() for r in caplog.records].count(skipped) == 1, "logged once"

    store.apply(narrower, 2, [])
    assert health()["feature_services"] == 3, "applied, not yet cut over to"
    store.cut_over(3)
    assert health()["feature_services"] == 1, "a readable version cut over to is picked up"
    online.handler.server().close()


@pytest.mark.parametrize("kind", KINDS)
def test_serve_fails_at_start_with_one_line_for_a_corrupt_registry_file(
    cli, data_dir, fresh_handler, kind
):
    path = write_registry(FULL, data_dir / "served.json")
    problem = spoil(path, kind)
    assert cli("serve", "--registry", str(path)) == (
        1,
        "",
        f"error: RegistryCorrupt: {path}: {problem}\n",
    )


def test_serve_fails_at_start_when_no_version_of_the_store_is_readable(
    cli, data_dir, fresh_handler
):
    cli("apply", "--repository", "plan_repo_v1", "--yes", "--no-backfill")
    path = registry_dir(data_dir) / "v000001.json"
    problem = spoil(path, "truncated")
    code, out, err = cli("serve", "--registry", str(registry_dir(data_dir)))
    assert (code, out) == (1, "")
    assert err.splitlines()[-1] == (
        f"error: RegistryCorrupt: {registry_dir(data_dir)}: no readable registry version; "
        f"the newest, {path}: {problem}"
    )
