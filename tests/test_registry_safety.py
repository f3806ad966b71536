"""Registries that fail safe: a truncated, garbled, empty or foreign registry file is refused
with one line naming the file and the part that is wrong, and whatever the format check passes
every reader can index into."""

import copy
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from featureplane.catalog import edges, list_lines
from featureplane.errors import RegistryCorrupt
from featureplane.plan import diff
from featureplane.registry import build_registry, load_registry, registry_text, write_registry
from featureplane.serving import FeatureServer
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
