"""The demo repository as Dagster assets: specs, single-run range backfills, idempotent reruns."""

import os
import subprocess
import sys
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from dagster import (
    AssetKey,
    BackfillPolicy,
    DagsterInstance,
    Definitions,
    TimeWindowPartitionsDefinition,
)
from deltalake import DeltaTable

from conftest import TINY, read_delta, view_table
from featureplane import Repository
from featureplane.dagster import build_definitions
from featureplane.dagster.definitions import resources_for
from featureplane.dagster.materialize import materialize_range, materialize_training
from featureplane.dagster.partitions import partitions_for
from featureplane.feature_view import schedule_cron
from featureplane.on_demand import stored_views
from resources import OfflineStoreResource, SparkResource

VIEWS = {
    "user_daily_page_views": ("pyspark", ["page_views"]),
    "ad_daily_performance": ("sql", ["ad_impressions", "ad_clicks"]),
    "user_profile": ("pandas", ["users"]),
    "user_click_sessions": ("pandas", ["ad_clicks"]),
    "impression_labels": ("pyspark", ["ad_impressions", "ad_clicks"]),
    "user_ad_activity": ("pyspark", ["ad_impressions", "ad_clicks"]),
    "ad_delivery": ("pyspark", ["ad_impressions", "ad_clicks"]),
    "user_recent_categories": ("pyspark", ["page_views"]),
}
SERVICES = {
    "ctr": {
        "user_daily_page_views",
        "user_profile",
        "user_click_sessions",
        "ad_daily_performance",
        "user_ad_activity",
        "ad_delivery",
    },
    "recommendations": {"user_recent_categories", "user_daily_page_views", "user_profile"},
}
"""Each feature service and the stored views it reads (ctr_features reads user_ad_activity)."""
END = TINY.start + timedelta(days=TINY.days)


@pytest.fixture(scope="module")
def repo(demo_data) -> Repository:
    return Repository.load("feature_assets")


def definitions(repo: Repository, root) -> Definitions:
    return build_definitions(
        repo, resources_for(SparkResource(), OfflineStoreResource(root=str(root)))
    )


def table(root, name: str) -> pd.DataFrame:
    df = read_delta(view_table(root, name)).drop(columns=["event_date"], errors="ignore")
    nested = [
        c for c in df.columns if df[c].map(lambda v: isinstance(v, dict | list | np.ndarray)).any()
    ]
    return df.sort_values([c for c in df.columns if c not in nested]).reset_index(drop=True)


def test_asset_graph_matches_the_repository(repo, tmp_path):
    defs = definitions(repo, tmp_path)
    specs = {spec.key: spec for spec in defs.resolve_all_asset_specs()}
    sources = {"page_views", "ad_impressions", "ad_clicks", "users"}
    assert set(specs) == {AssetKey(["features", v]) for v in VIEWS} | {
        AssetKey(["sources", s]) for s in sources
    } | {AssetKey(["training", "ctr_training"])} | {
        AssetKey(["online", v]) for v in VIEWS if repo.feature_view(v).online
    } | {AssetKey(["services", s]) for s in SERVICES}
    for name, (kind, upstream) in VIEWS.items():
        view = repo.feature_view(name)
        spec = specs[AssetKey(["features", name])]
        assert spec.code_version == view.version
        assert spec.kinds == {"spark", "delta", kind}
        assert {dep.asset_key for dep in spec.deps} == {AssetKey(["sources", s]) for s in upstream}
        assert spec.owners == [view.owner]
        assert spec.description == view.description
        partitions = spec.partitions_def
        assert isinstance(partitions, TimeWindowPartitionsDefinition)
        assert partitions.start == view.feature_start_time
        assert partitions.cron_schedule == schedule_cron(view.batch_schedule)
        assert partitions.get_first_partition_key() == view.feature_start_time.strftime("%Y-%m-%d")
        assert spec.freshness_policy.fail_window.to_timedelta() == 2 * view.batch_schedule
        columns = [c.name for c in spec.metadata["dagster/column_schema"].columns]
        assert columns == [*view.join_keys, view.timestamp_field, *view.feature_names]
        assert spec.metadata["version"] == view.version
        serving = [s for s, views in SERVICES.items() if name in views]
        assert spec.metadata["feature_services"] == (", ".join(serving) or "none")
        assets_def = defs.resolve_assets_def(spec.key)
        assert assets_def.backfill_policy == BackfillPolicy.single_run()
        [quality] = assets_def.check_specs
        assert (quality.name, quality.blocking) == ("quality", True)


def test_the_catalog_types_every_column_and_shows_services_in_the_lineage(repo, tmp_path):
    specs = {spec.key: spec for spec in definitions(repo, tmp_path).resolve_all_asset_specs()}
    columns = (
        specs[AssetKey(["features", "user_daily_page_views"])]
        .metadata["dagster/column_schema"]
        .columns
    )
    assert [(c.name, c.type, c.tags) for c in columns[:2]] == [
        ("user_id", "Int64", {"entity": "user"}),
        ("ts", "timestamp", {}),
    ]
    assert columns[2].description == "Page views in the user's day so far."
    for name, views in SERVICES.items():
        service = repo.feature_services[name]
        spec = specs[AssetKey(["services", name])]
        assert {dep.asset_key for dep in spec.deps} == {AssetKey(["online", v]) for v in views}
        assert spec.kinds == {"sqlite"}
        assert spec.owners == [service.owner]
        served = [c.name for c in spec.metadata["dagster/column_schema"].columns]
        assert served == [f"{s.view_name}__{f}" for s in service.features for f in s.features]
    ctr = {
        c.name: c
        for c in specs[AssetKey(["services", "ctr"])].metadata["dagster/column_schema"].columns
    }
    assert (ctr["ctr_features__user_ctr_1d"].type, ctr["ctr_features__user_ctr_1d"].tags) == (
        "Float64",
        {"view": "ctr_features"},
    )


def test_range_is_one_run_and_one_commit_and_reruns_are_idempotent(repo, tmp_path):
    root = tmp_path / "offline"
    defs = definitions(repo, root)
    with DagsterInstance.ephemeral() as instance:
        results = materialize_range(defs, instance, TINY.start, END)
        partitionings = {partitions_for(repo.feature_view(name)) for name in VIEWS}
        assert len(partitionings) == 2  # the profile view starts a year earlier
        assert len({r.run_id for r in results}) == len(partitionings)
        weeks = 1  # the weekly profile partition of 2026-09-28 overlaps the three days
        assert {r.asset_key.path[-1]: r.partitions for r in results} == {
            **dict.fromkeys(VIEWS, 3),
            "user_profile": weeks,
        }
        for name in VIEWS:  # the table's creation, then the range's one commit
            assert DeltaTable(str(view_table(root, name))).version() == 1
        first = {name: table(root, name) for name in VIEWS}
        tiles = first["user_ad_activity"]
        assert list(tiles.columns) == [
            "user_id",
            "tile_start",
            "count__clicked_impression_id",
            "count__impression_id",
            "max__click_unix_s",
            "total__position",
        ]
        assert (tiles["tile_start"].dt.minute == 0).all()  # hourly tiles
        for r in results:
            assert r.rows == len(first[r.asset_key.path[-1]]) > 0

        materialize_range(defs, instance, TINY.start + timedelta(days=1), END - timedelta(days=1))
        materialize_range(defs, instance, TINY.start, END)
        for name in VIEWS:
            assert DeltaTable(str(view_table(root, name))).version() == 3
            pd.testing.assert_frame_equal(table(root, name), first[name])


def test_partition_by_partition_equals_one_range_run(repo, tmp_path):
    by_range, by_day = tmp_path / "range", tmp_path / "days"
    with DagsterInstance.ephemeral() as instance:
        materialize_range(definitions(repo, by_range), instance, TINY.start, END)
        for n in range(TINY.days):
            start = TINY.start + timedelta(days=n)
            materialize_range(definitions(repo, by_day), instance, start, start + timedelta(days=1))
    for name in VIEWS:
        pd.testing.assert_frame_equal(table(by_day, name), table(by_range, name))


def test_materialization_metadata_describes_the_window(repo, tmp_path):
    root = tmp_path / "offline"
    with DagsterInstance.ephemeral() as instance:
        materialize_range(
            definitions(repo, root), instance, TINY.start, END, ["ad_daily_performance"]
        )
        event = instance.get_latest_materialization_event(
            AssetKey(["features", "ad_daily_performance"])
        )
    metadata = event.asset_materialization.metadata
    stored = table(root, "ad_daily_performance")
    assert metadata["dagster/row_count"].value == len(stored)
    assert metadata["event_time_min"].value == stored["ts"].min().timestamp()
    assert metadata["event_time_max"].value == stored["ts"].max().timestamp()
    stats = {r.data["feature"]: r.data for r in metadata["feature_stats"].value.records}
    assert set(stats) == {"impressions_1d", "clicks_1d", "ctr_1d"}
    assert stats["ctr_1d"]["null_fraction"] == pytest.approx(stored["ctr_1d"].isna().mean())
    assert float(stats["clicks_1d"]["max"]) == stored["clicks_1d"].max()


def test_an_aggregate_view_s_statistics_name_the_features_of_each_tile_column(repo, tmp_path):
    root = tmp_path / "offline"
    with DagsterInstance.ephemeral() as instance:
        materialize_range(definitions(repo, root), instance, TINY.start, END, ["ad_delivery"])
        event = instance.get_latest_materialization_event(AssetKey(["features", "ad_delivery"]))
    stats = {
        r.data["feature"]: r.data
        for r in event.asset_materialization.metadata["feature_stats"].value.records
    }
    impressions = (
        "impressions_1d, impressions_3d, impressions_7d (count of impression_id per 1 day tile)"
    )
    assert impressions in stats
    assert "mean_position_7d (total of position per 1 day tile)" in stats
    assert not [name for name in stats if name.startswith("count__")]
    stored = table(root, "ad_delivery")
    assert int(stats[impressions]["max"]) == stored["count__impression_id"].max()


@pytest.mark.parametrize(
    ("flag", "value", "partitions"),
    [("--partition", "2026-10-02", 1), ("--partition-range", "2026-10-01...2026-10-03", 3)],
)
def test_dagster_cli_materializes_a_partition_and_a_range(
    demo_data, tmp_path, flag, value, partitions
):
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "FEATUREPLANE_DATA_DIR": str(demo_data),
        "FEATUREPLANE_OFFLINE_ROOT": str(tmp_path / "offline"),
    }
    command = [
        os.path.join(os.path.dirname(sys.executable), "dagster"),
        "asset",
        "materialize",
        "-m",
        "feature_assets.definitions",
        "--select",
        "features/user_daily_page_views",
        flag,
        value,
    ]
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=300)
    with DagsterInstance.from_config(str(home)) as instance:
        key = AssetKey(["features", "user_daily_page_views"])
        records = instance.fetch_materializations(key, limit=10).records
        assert len(records) == partitions
        assert len({r.run_id for r in records}) == 1
    stored = read_delta(view_table(tmp_path / "offline", "user_daily_page_views"))
    assert stored["ts"].dt.date.nunique() == partitions


def test_training_dataset_asset_builds_after_its_features(repo, tmp_path):
    root = tmp_path / "offline"
    defs = definitions(repo, root)
    dataset = repo.training_datasets["ctr_training"]
    spec = next(s for s in defs.resolve_all_asset_specs() if s.key.path[0] == "training")
    assert spec.key == AssetKey(["training", "ctr_training"])
    assert spec.code_version == dataset.version
    assert {dep.asset_key for dep in spec.deps} == {
        AssetKey(["features", name])
        for name in [
            "impression_labels",
            *(v.name for v in stored_views(dataset.features.features)),
        ]
    }
    with DagsterInstance.ephemeral() as instance:
        materialize_range(defs, instance, TINY.start, END)
        [built] = materialize_training(defs, instance)
        event = instance.get_latest_materialization_event(spec.key)
    metadata = event.asset_materialization.metadata
    assert (
        built.rows == len(table(root, "impression_labels")) == metadata["dagster/row_count"].value
    )
    assert metadata["delta_version"].value == 0
    assert metadata["manifest"].value["spine"]["name"] == "impression_labels"
