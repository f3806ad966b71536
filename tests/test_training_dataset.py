"""Training datasets: one row per spine row, versioned, and rebuilt exactly by time travel."""

from datetime import timedelta

import pandas as pd
import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

from conftest import TINY
from featureplane import FeatureStore, Repository, RetrievalError
from featureplane.compute.transform import run_transformation
from featureplane.compute.window import TimeWindow

WINDOW = TimeWindow(TINY.start, TINY.start + timedelta(days=TINY.days))


def canonical(df) -> pd.DataFrame:
    frame = df.toPandas()
    return frame.sort_values(list(frame.columns)).reset_index(drop=True)


@pytest.fixture
def store(spark, demo_data, tmp_path):
    """The demo repository with every view computed for the TINY range into a fresh store."""
    repository = Repository.load("feature_assets")
    store = FeatureStore(repository, spark, str(tmp_path / "offline"))
    for view in repository.feature_views.values():
        window = TimeWindow(view.feature_start_time, WINDOW.end)
        rows = run_transformation(spark, view, window)
        store.offline.write_window(
            rows, store.offline.table_uri("features", view.name), window, view.timestamp_field
        )
    return store


def test_every_spine_row_once_with_its_label(store, spark):
    built = store.build_training_dataset("ctr_training")
    labels = store.offline.read(spark, store.offline.table_uri("features", "impression_labels"))
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
    uri = store.offline.table_uri("features", view.name)
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
