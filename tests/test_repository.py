"""Loading a feature repository package: collection, name checks and source resolution.

The fixture repositories live in `tests/repos/` and are imported as `tests.repos.<name>` (the
project root is on `sys.path` through pytest's `pythonpath = ["."]`).
"""

import importlib
import sys
from collections import Counter
from pathlib import Path

import pytest

from featureplane import (
    BatchSource,
    FeatureViewError,
    OnDemandFeatureView,
    Repository,
    RepositoryError,
)

REPOS = Path(__file__).parent / "repos"


def where(repo: str, module: str, text: str) -> str:
    """`repos/<repo>/<module>.py:<line>` of the first line of that file containing `text`."""
    path = REPOS / repo / f"{module}.py"
    lines = path.read_text().splitlines()
    line = next(number for number, content in enumerate(lines, 1) if text in content)
    return f"repos/{repo}/{module}.py:{line}"


def test_duplicate_names_across_files_name_both_locations():
    with pytest.raises(RepositoryError) as raised:
        Repository.load("tests.repos.duplicate_names")
    error = raised.value
    first = where("duplicate_names", "a", 'BatchSource("clicks"')
    second = where("duplicate_names", "b", 'BatchSource("clicks"')
    assert error.name == "clicks"
    assert error.location.endswith(second)
    assert error.problem.startswith("name already used by the BatchSource at ")
    assert error.problem.endswith(first)
    assert str(error).startswith(f"clicks ({error.location}): ")


def test_a_source_and_a_view_cannot_share_a_name():
    with pytest.raises(RepositoryError) as raised:
        Repository.load("tests.repos.same_name_kinds")
    error = raised.value
    assert error.name == "clicks"
    assert error.location.endswith(where("same_name_kinds", "views", "@batch_feature_view"))
    assert error.problem.startswith("name already used by the BatchSource at ")
    assert error.problem.endswith(where("same_name_kinds", "sources", 'BatchSource("clicks"'))


def test_an_inline_source_cannot_reuse_a_module_level_sources_name():
    with pytest.raises(RepositoryError) as raised:
        Repository.load("tests.repos.inline_duplicate")
    error = raised.value
    assert error.name == "clicks"
    assert error.location.endswith(where("inline_duplicate", "views", 'table="raw.clicks"'))
    assert error.problem.endswith(where("inline_duplicate", "views", 'path="raw/clicks"'))


def test_a_view_naming_an_unknown_source_fails_with_the_known_ones():
    with pytest.raises(FeatureViewError) as raised:
        Repository.load("tests.repos.unknown_source")
    error = raised.value
    assert error.name == "impressions_1d"
    assert error.location.endswith(where("unknown_source", "views", "@batch_feature_view"))
    assert error.problem == "source 'impressions' does not exist (known: clicks, page_views)"
    assert str(error) == f"impressions_1d ({error.location}): {error.problem}"


@pytest.fixture(scope="module")
def good() -> Repository:
    return Repository.load("tests.repos.good")


def test_sources_named_by_a_view_resolve_to_the_repository_sources(good):
    declared = importlib.import_module("tests.repos.good.views").clicks_1d
    assert declared.sources == ("clicks",)
    view = good.feature_view("clicks_1d")
    assert view.sources == (good.sources["clicks"],)
    assert view.sources[0] is importlib.import_module("tests.repos.good.sources").clicks
    assert view.location == declared.location


def test_definitions_referenced_by_views_but_not_module_level_are_collected(good):
    assert sorted(good.entities) == ["session", "user"]
    assert sorted(good.sources) == ["app_events", "clicks"]
    assert sorted(good.feature_views) == ["clicks_1d", "session_length"]
    view = good.feature_view("session_length")  # from the subpackage tests.repos.good.extra
    assert view.sources[0] is good.sources["app_events"]
    assert view.entities[0] is good.entities["session"]
    assert good.sources["app_events"].location.endswith(
        where("good/extra", "sessions", 'BatchSource("app_events"')
    )


def test_the_definitions_module_is_not_imported(good):
    assert "tests.repos.good.definitions" not in sys.modules


def test_load_accepts_a_module_and_lookups_name_known_views(good):
    again = Repository.load(importlib.import_module("tests.repos.good"))
    assert again.sources == good.sources
    assert again.feature_views.keys() == good.feature_views.keys()
    with pytest.raises(KeyError, match=r"no feature view named 'nope' \(known: clicks_1d, sess"):
        good.feature_view("nope")


def test_the_demo_repository_loads_its_views_service_and_dataset(monkeypatch):
    monkeypatch.delitem(sys.modules, "feature_assets.definitions", raising=False)
    repo = Repository.load("feature_assets")
    assert "feature_assets.definitions" not in sys.modules
    assert {name: view.mode for name, view in repo.feature_views.items()} == {
        "ad_daily_performance": "spark_sql",
        "user_daily_page_views": "pyspark",
        "user_click_sessions": "pandas",
        "user_profile": "pandas",
        "impression_labels": "pyspark",
        "user_ad_activity": "pyspark",
        "ad_delivery": "pyspark",
        "user_recent_categories": "pyspark",
    }
    assert sorted(repo.feature_services) == ["ctr", "recommendations"]
    ctr = repo.feature_services["ctr"]
    views = {**repo.feature_views, **repo.on_demand_views}
    assert all(views[s.view_name] is s.view for s in ctr.features)
    [ctr_features] = repo.on_demand_views.values()
    assert ctr_features.name == "ctr_features"
    assert all(repo.feature_views[s.view_name] is s.view for s in ctr_features.feature_sources)
    dataset = repo.training_datasets["ctr_training"]
    assert dataset.spine is repo.feature_views["impression_labels"]
    assert dataset.features is ctr
    assert sorted(repo.entities) == ["ad", "user"]
    assert sorted(repo.sources) == ["ad_clicks", "ad_impressions", "page_views", "users"]
    for view in repo.feature_views.values():
        assert all(isinstance(s, BatchSource) and repo.sources[s.name] is s for s in view.sources)
        assert "feature_assets/" in view.location


def test_the_ctr_service_has_enough_views_and_features_of_every_kind():
    """ctr: at least 5 views and 50 features, from row-level, aggregate and on-demand views."""
    ctr = Repository.load("feature_assets").feature_services["ctr"]
    features = [(s.view, f) for s in ctr.features for f in s.features]
    assert len({s.view_name for s in ctr.features}) >= 5
    assert len(features) >= 50
    kinds = Counter(
        "on_demand"
        if isinstance(view, OnDemandFeatureView)
        else "aggregate"
        if view.aggregations
        else "row"
        for view, _ in features
    )
    assert kinds["aggregate"] >= 20 and kinds["on_demand"] >= 10 and kinds["row"] >= 5
    functions = {
        a.fn.name
        for s in ctr.features
        if not isinstance(s.view, OnDemandFeatureView)
        for a in s.view.aggregations
        if a.name in s.features
    }
    assert {"count", "mean", "min", "max", "approx_count_distinct"} <= functions


def test_a_service_cannot_type_a_join_key_or_a_request_field_two_ways():
    from featureplane import (
        Entity,
        FeatureService,
        Field,
        Float64,
        Int64,
        RequestSource,
        String,
        batch_feature_view,
        on_demand_feature_view,
    )
    from featureplane.errors import FeatureServiceError
    from tests.serving_repo import START, events, purchase_context, user_stats

    by_name = Entity("user_by_name", join_keys=["user_id"], join_key_types={"user_id": String})

    @batch_feature_view(
        sources=[events],
        entities=[by_name],
        schema=[Field("score", Float64)],
        timestamp_field="ts",
        feature_start_time=START,
    )
    def user_scores(events):
        return events

    mixed = FeatureService("mixed", features=[user_stats, user_scores])
    with pytest.raises(
        FeatureServiceError, match="join key 'user_id' is Int64 in 'user_stats' but"
    ):
        Repository.from_objects([mixed])

    @on_demand_feature_view(
        sources=[RequestSource([Field("amount", Int64)], name="order"), user_stats[["clicks"]]],
        schema=[Field("doubled", Int64)],
    )
    def doubled(request, user):
        return {"doubled": None if request["amount"] is None else 2 * request["amount"]}

    orders = FeatureService("orders", features=[purchase_context, doubled])
    with pytest.raises(FeatureServiceError) as raised:
        Repository.from_objects([orders])
    assert raised.value.name == "orders"
    assert raised.value.problem.startswith(
        "request field 'amount' is Float64 in 'purchase_context' but Int64 in 'doubled'"
    )
    Repository.from_objects([FeatureService("apart", features=[purchase_context]), doubled])
