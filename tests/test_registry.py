"""The serving registry: built from a repository, written deterministically, loaded back equal."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from featureplane import Aggregation, FeatureService, Repository, approx_count_distinct
from featureplane.errors import RegistryCorrupt
from featureplane.registry import (
    FORMAT,
    build_registry,
    load_registry,
    registry_text,
    write_registry,
)
from tests import serving_repo

STORE = {"type": "sqlite", "path": "/tmp/online.sqlite"}


@pytest.fixture(scope="module")
def demo() -> Repository:
    return Repository.load("feature_assets")


def assert_matches(repository: Repository, registry) -> None:
    """Every view and service of the repository, as serving sees it."""
    assert set(registry.views) == set(repository.feature_views)
    for name, view in repository.feature_views.items():
        spec = registry.views[name]
        assert spec.version == view.version
        assert spec.online == view.online
        assert spec.join_keys == view.join_keys
        types = view.join_key_types.values()
        assert spec.join_key_types == tuple(None if t is None else t.name for t in types)
        assert spec.features == view.feature_names
        assert spec.feature_types == tuple(t.name for t in view.feature_types.values())
        assert spec.ttl == view.ttl
        assert spec.aggregations == view.aggregations
        assert spec.interval == (view.interval if view.aggregations else None)
        assert (spec.description, spec.owner, dict(spec.tags)) == (
            view.description,
            view.owner,
            view.tags,
        )
    assert set(registry.services) == set(repository.feature_services)
    for name, service in repository.feature_services.items():
        spec = registry.services[name]
        assert spec.selections == tuple((s.view_name, s.features) for s in service.features)
        assert (spec.description, spec.owner) == (service.description, service.owner)


def test_demo_repository_round_trips_through_a_file(demo, tmp_path):
    path = write_registry(build_registry(demo, STORE), tmp_path / "registry.json")
    registry = load_registry(path)
    assert registry.format == FORMAT
    assert dict(registry.online_store) == STORE
    assert_matches(demo, registry)
    assert registry.views["user_profile"].join_key_types == ("Int64",)
    assert set(registry.services) == {"ctr", "recommendations"}


def test_small_repositories_round_trip():
    assert_matches(serving_repo.repository(), load_registry(serving_repo.registry("/tmp/x")))
    untyped = Repository.load("tests.repos.good")
    registry = load_registry(build_registry(untyped, STORE))
    assert_matches(untyped, registry)
    assert registry.views["clicks_1d"].join_key_types == (None,)


def test_every_aggregation_function_is_rebuilt_equal():
    view = serving_repo.user_ad_purchases
    odd = (
        Aggregation("category", approx_count_distinct(10), timedelta(hours=3)),
        Aggregation("amount", "var", timedelta(hours=1), "spend_var"),
        Aggregation("amount", "first", timedelta(days=2)),
    )
    extended = type(view)(**{**vars(view), "aggregations": view.aggregations + odd})
    service = FeatureService("all", features=[extended])
    registry = load_registry(build_registry(Repository.from_objects([service]), STORE))
    assert registry.views[view.name].aggregations == extended.aggregations


def test_output_is_deterministic_and_sorted(demo):
    first = registry_text(build_registry(demo, STORE))
    objects = [
        *demo.feature_services.values(),
        *demo.feature_views.values(),
        *demo.training_datasets.values(),
        *demo.access_policies.values(),
    ]
    reordered = Repository.from_objects(list(reversed(objects)))
    assert registry_text(build_registry(reordered, STORE)) == first
    registry = json.loads(first)
    assert list(registry) == sorted(registry)
    kinds = ("entities", "sources", "feature_views", "feature_services", "on_demand_views")
    for kind in (*kinds, "training_datasets", "access_policies"):
        names = [item["name"] for item in registry[kind]]
        assert names == sorted(names)
    assert [view["name"] for view in registry["on_demand_views"]] == ["ctr_features"]


def test_on_demand_views_ship_their_function(demo):
    """The loaded spec has the view's schema, request fields and inputs in order, and a function
    rebuilt from source text that computes what the definition's function does."""
    view = demo.on_demand_views["ctr_features"]
    spec = load_registry(json.loads(registry_text(build_registry(demo, STORE)))).on_demand[
        view.name
    ]
    assert (spec.version, spec.schema) == (view.version, view.schema)
    assert spec.request_fields == view.request_source.schema
    assert spec.sources == tuple(
        (None, s.field_names) if s is view.request_source else (s.view_name, s.features)
        for s in view.sources
    )
    counts = {"request_ts": datetime(2026, 10, 3, 17, 5, tzinfo=UTC), "last_click_unix_s_7d": 0}
    for position, name in enumerate(f for s in view.feature_sources for f in s.features):
        counts.setdefault(name, 3 * position)
    inputs = [{f: counts[f] for f in fields} for _, fields in spec.sources]
    assert spec.function(*inputs) == view.function(*inputs)
    assert spec.function is not view.function


def test_another_format_is_refused(demo):
    registry = build_registry(demo, STORE)
    with pytest.raises(RegistryCorrupt) as raised:
        load_registry({**registry, "format": 2})
    assert str(raised.value) == (
        "<registry>: format 2 is not supported (this build of featureplane reads 1)"
    )
