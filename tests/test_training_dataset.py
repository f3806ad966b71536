"""Training datasets: one row per spine row, versioned, and rebuilt exactly by time travel."""

from datetime import timedelta

import pandas as pd
import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

from conftest import WINDOW, canonical, demo_feature_store
from featureplane import FeatureStore, Repository, RetrievalError
from featureplane.compute.transform import run_transformation
from featureplane.compute.window import TimeWindow


@pytest.fixture
def store(spark, demo_data, tmp_path):
    return demo_feature_store(spark, tmp_path / "offline")


def test_every_spine_row_once_with_its_label(store, spark):
    built = store.build_training_dataset("ctr_training")
    labels_view = store.repository.feature_views["impression_labels"]
    uri = store.offline.view_table_uri(labels_view.name, labels_view.version)
    labels = store.offline.read(spark, uri)
    assert built.rows == labels.count()
    dataset = store.get_training_dataset("ctr_training")
    assert dataset.select("impression_id").distinct().count() == built.rows
    joined = dataset.join(
        labels.select("impression_id", F.col("clicked").alias("label")), "impression_id"
    )
    assert joined.where(F.col("clicked") != F.col("label")).count() == 0
    assert "ad_daily_performance__ctr_1d" in dataset.columns
    on_demand = store.repository.on_demand_views["ctr_features"].feature_names
    assert dataset.columns[-len(on_demand) :] == [f"ctr_features__{f}" for f in on_demand]


def test_ctr_features_agree_with_the_counts_they_are_computed_from(store):
    """The on-demand rates of each training row are the ratios of its joined window counts."""
    store.build_training_dataset("ctr_training")
    rows = store.get_training_dataset("ctr_training").toPandas()
    for entity, view, windows in (
        ("user", "user_ad_activity", ("1h", "6h", "1d", "3d", "7d")),
        ("ad", "ad_delivery", ("1d", "3d", "7d")),
    ):
        for window in windows:
            impressions = rows[f"{view}__impressions_{window}"]
            rate = rows[f"{view}__clicks_{window}"] / impressions.where(impressions > 0)
            pd.testing.assert_series_equal(
                rows[f"ctr_features__{entity}_ctr_{window}"], rate, check_names=False
            )
    assert rows["user_ad_activity__impressions_1d"].gt(0).mean() > 0.5  # not vacuous
    since = rows["ctr_features__hours_since_last_click"].dropna()
    assert len(since) > 1000 and since.between(0, 7 * 24 + 1).all()
    hours = rows["request_ts"].dt.hour
    assert (rows["ctr_features__request_hour"] == hours).all()
    weekend = rows["request_ts"].dt.dayofweek >= 5
    assert (rows["ctr_features__request_is_weekend"] == weekend).all()


def test_manifest_names_every_input_version(store):
    built = store.build_training_dataset("ctr_training")
    manifest = store.manifest("ctr_training", built.version)
    assert manifest == built.manifest
    assert manifest["spine"]["name"] == "impression_labels"
    reads = {read["view"]: read for read in manifest["features"]}
    computed = {read["view"]: read for read in manifest["on_demand_features"]}
    repository = store.repository
    service = repository.feature_services["ctr"]
    assert set(reads) | set(computed) == {s.view_name for s in service.features}
    for name, read in reads.items():
        assert read["view_version"] == repository.feature_views[name].version
        assert read["delta_version"] == DeltaTable(read["uri"]).version()
    for name, read in computed.items():
        assert read["view_version"] == repository.on_demand_views[name].version


def test_rebuild_reproduces_a_version_after_features_were_rewritten(store, spark):
    first = store.build_training_dataset("ctr_training")
    view = store.repository.feature_views["ad_daily_performance"]
    uri = store.offline.view_table_uri(view.name, view.version)
    day = TimeWindow(WINDOW.start + timedelta(days=1), WINDOW.start + timedelta(days=2))
    doubled = run_transformation(spark, view, day).withColumn("clicks_1d", F.col("clicks_1d") * 2)
    store.offline.write_window(doubled, uri, day, view.timestamp_field)
    second = store.build_training_dataset("ctr_training")
    assert second.version == first.version + 1

    original = canonical(store.get_training_dataset("ctr_training", first.version))
    latest = canonical(store.get_training_dataset("ctr_training"))
    assert not original.equals(latest)
    pd.testing.assert_frame_equal(canonical(store.rebuild("ctr_training", first.version)), original)
    pd.testing.assert_frame_equal(canonical(store.rebuild("ctr_training", second.version)), latest)


def test_unbuilt_dataset_is_a_clear_error(store):
    with pytest.raises(RetrievalError, match="training dataset 'ctr_training' has not been built"):
        store.get_training_dataset("ctr_training")


def definitions(version: int):
    """A small repository whose `user_stats` has features a and b (version 1) or only a (2)."""
    from datetime import UTC, datetime

    from featureplane import (
        BatchSource,
        Entity,
        FeatureService,
        Field,
        Int64,
        String,
        TrainingDataset,
        batch_feature_view,
    )

    events = BatchSource("events", path="raw/events", timestamp_field="ts")
    labels = BatchSource("labels", path="raw/labels", timestamp_field="ts")
    user = Entity("user", join_keys=["user_id"])
    schema = [Field("a", Int64), Field("b", String)][: version == 1 and 2 or 1]

    @batch_feature_view(
        sources=[events],
        entities=[user],
        schema=schema,
        timestamp_field="ts",
        feature_start_time=datetime(2026, 10, 1, tzinfo=UTC),
        ttl=timedelta(days=1),
    )
    def user_stats(events):
        return events.select("user_id", "ts", *(f.name for f in schema))

    service = FeatureService("stats", features=[user_stats])
    dataset = TrainingDataset("stats_training", spine=labels, features=service)
    return Repository.from_objects([user_stats, service, dataset])


def test_a_dataset_built_before_a_feature_was_removed_rebuilds_exactly(spark, data_dir):
    from datetime import UTC, datetime

    from deltalake import write_deltalake

    start = datetime(2026, 10, 1, tzinfo=UTC)
    hours = [start + timedelta(hours=h) for h in range(0, 48, 5)]
    events = pd.DataFrame(
        {
            "user_id": [h % 3 for h in range(len(hours))],
            "ts": hours,
            "a": list(range(len(hours))),
            "b": [f"b{h}" for h in range(len(hours))],
        }
    )
    labels = pd.DataFrame(
        {"user_id": [0, 1, 2, 0], "ts": [start + timedelta(hours=h) for h in (7, 20, 30, 47)]}
    ).assign(label=[1, 0, 1, 0])
    write_deltalake(data_dir / "raw" / "events", events)
    write_deltalake(data_dir / "raw" / "labels", labels)
    window = TimeWindow(start, start + timedelta(days=2))
    stores = {}
    for version in (1, 2):
        repository = definitions(version)
        store = FeatureStore(repository, spark, str(data_dir / "offline"))
        view = repository.feature_views["user_stats"]
        uri = store.offline.view_table_uri(view.name, view.version)
        store.offline.write_window(
            run_transformation(spark, view, window), uri, window, view.timestamp_field
        )
        stores[version] = store
    first = stores[1].build_training_dataset("stats_training")
    built = canonical(stores[1].get_training_dataset("stats_training", first.version))
    assert list(built.columns) == ["user_id", "ts", "label", "user_stats__a", "user_stats__b"]
    for row in built.itertuples():  # brute force: the latest event at or before, within a day
        ts = pd.Timestamp(row.ts).tz_localize("UTC")  # Spark hands timestamps over naive
        mine = events[(events.user_id == row.user_id) & (events.ts <= ts)]
        mine = mine[mine.ts >= ts - timedelta(days=1)]
        latest = mine.iloc[-1] if len(mine) else None
        assert row.user_stats__b == (None if latest is None else latest.b)

    second = stores[2].build_training_dataset("stats_training")
    assert "user_stats__b" not in canonical(stores[2].get_training_dataset("stats_training"))
    old, new = (stores[v].repository.feature_views["user_stats"].version for v in (1, 2))
    assert old != new and DeltaTable(stores[1].offline.view_table_uri("user_stats", old))
    pd.testing.assert_frame_equal(
        canonical(stores[2].rebuild("stats_training", first.version)), built
    )
    assert second.version == first.version + 1
