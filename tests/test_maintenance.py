"""Maintenance compacts and vacuums the offline store's tables without losing what a recorded
training dataset version needs, and names the versions past the maximum retention it gives up."""

import json
import os
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from dagster import DagsterEventType, DagsterInstance
from deltalake import DeltaTable
from pyspark.sql import functions as F

from conftest import WINDOW, canonical, demo_feature_store, read_delta
from featureplane.compute.transform import run_transformation
from featureplane.compute.window import TimeWindow
from featureplane.dagster.definitions import build_definitions
from featureplane.dagster.maintenance import maintenance
from featureplane.errors import ManifestCorrupt
from featureplane.maintenance import maintain, offline_tables
from featureplane.manifest import manifest_uri
from featureplane.offline_store import ConcurrentWriteError
from resources.offline_store import OfflineStoreResource

DATASET = "ctr_training"
VIEW = "ad_daily_performance"


def stored_rows(uri: str) -> pd.DataFrame:
    rows = read_delta(uri)
    rows["event_date"] = rows["event_date"].astype(str)  # a partition: categorical as read
    return rows.sort_values(list(rows.columns)).reset_index(drop=True)


def assert_inputs_kept(store, version: int) -> None:
    """Every file of every feature table version a dataset version recorded is stored."""
    for read in store.manifest(DATASET, version)["features"]:
        files = DeltaTable(read["uri"], version=read["delta_version"]).file_uris()
        assert files and all(os.path.exists(file) for file in files)


@pytest.fixture
def rewritten(spark, demo_data, tmp_path):
    """A store whose dataset was built (v0), then whose view was rewritten day by day, twice
    (many small files, superseded files), then built again (v1)."""
    store = demo_feature_store(spark, tmp_path / "offline")
    first = store.build_training_dataset(DATASET)
    original = canonical(store.get_training_dataset(DATASET, first.version))
    view = store.repository.feature_views[VIEW]
    uri = store.offline.view_table_uri(view.name, view.version)
    for factor in (2, 3):
        for day in range(3):
            start = WINDOW.start + timedelta(days=day)
            window = TimeWindow(start, start + timedelta(days=1))
            rows = run_transformation(spark, view, window)
            rows = rows.withColumn("clicks_1d", F.col("clicks_1d") * factor)
            store.offline.write_window(rows, uri, window, view.timestamp_field)
    second = store.build_training_dataset(DATASET)
    latest = canonical(store.get_training_dataset(DATASET))
    assert not original.equals(latest)
    return store, uri, (first.version, original), (second.version, latest)


def test_maintenance_compacts_and_every_recorded_version_still_rebuilds(rewritten):
    store, uri, (v0, original), (v1, latest) = rewritten
    before = stored_rows(uri)
    tables = offline_tables(store.offline)
    assert uri in tables and store.training_uri(DATASET) in tables

    report = maintain(store.offline, min_retention=timedelta(0))

    assert report.not_rebuildable == []
    [table] = [t for t in report.tables if t.uri == uri]
    assert table.skipped is None
    assert table.active_files_after < table.active_files_before
    assert table.compacted_files > 0
    assert table.removed_files  # the files of the first rewrite: no recorded version uses them
    pd.testing.assert_frame_equal(stored_rows(uri), before)
    pd.testing.assert_frame_equal(canonical(store.rebuild(DATASET, v0)), original)
    pd.testing.assert_frame_equal(canonical(store.rebuild(DATASET, v1)), latest)
    pd.testing.assert_frame_equal(canonical(store.get_training_dataset(DATASET, v0)), original)
    assert store.manifest(DATASET, v0)["version"] == v0

    again = maintain(store.offline, min_retention=timedelta(0))
    [table] = [t for t in again.tables if t.uri == uri]
    assert (table.compacted_files, table.removed_files) == (0, ())


def test_a_version_past_the_maximum_retention_is_reported_not_rebuildable(rewritten):
    store, uri, (v0, _), (v1, latest) = rewritten
    path = manifest_uri(store.training_uri(DATASET), v0)
    with open(path) as file:
        manifest = json.load(file)
    manifest["created_at"] = (datetime.now(UTC) - timedelta(days=100)).isoformat()
    with open(path, "w") as file:
        json.dump(manifest, file)

    report = maintain(store.offline, timedelta(0), max_retention=timedelta(days=90))

    lost = [line for line in report.not_rebuildable if line.startswith(f"{DATASET} v{v0} ")]
    assert lost and all("not rebuildable any more" in line for line in lost)
    assert any(f" files of {uri} v" in line for line in lost)  # the view's pinned version
    assert not any(line.startswith(f"{DATASET} v{v1} ") for line in report.not_rebuildable)
    pd.testing.assert_frame_equal(canonical(store.rebuild(DATASET, v1)), latest)


def test_the_maintenance_job_reports_each_table_in_its_metadata(rewritten):
    store, uri, _, (v1, latest) = rewritten
    defs = build_definitions(store.repository)
    assert defs.resolve_schedule_def("maintenance_daily").job_name == "maintenance"
    result = maintenance.execute_in_process(
        run_config={"ops": {"maintain_offline_store": {"config": {"min_retention_hours": 0}}}},
        resources={"offline_store": OfflineStoreResource(root=store.offline.root)},
        instance=DagsterInstance.ephemeral(),
    )
    assert result.success
    [output] = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_OUTPUT]
    metadata = output.step_output_data.metadata
    rows = {record.data["table"]: record.data for record in metadata["tables"].value.records}
    assert set(rows) == set(offline_tables(store.offline))
    assert rows[uri]["compacted_files"] > 0 and rows[uri]["removed_files"] > 0
    assert rows[uri]["active_files_after"] < rows[uri]["active_files_before"]
    assert metadata["not_rebuildable"].value == "none"
    pd.testing.assert_frame_equal(canonical(store.rebuild(DATASET, v1)), latest)


def test_maintenance_while_a_window_is_rewritten_leaves_the_table_consistent(spark, rewritten):
    store, uri, _, (v1, _) = rewritten
    view = store.repository.feature_views[VIEW]
    day = TimeWindow(WINDOW.start, WINDOW.start + timedelta(days=1))
    errors, done = [], threading.Event()

    def rewrite() -> None:
        try:
            for factor in range(4, 10):
                rows = run_transformation(spark, view, day)
                rows = rows.withColumn("clicks_1d", F.col("clicks_1d") * factor)
                store.offline.write_window(rows, uri, day, view.timestamp_field)
        except ConcurrentWriteError as error:  # the writer's own contract: rerun it
            errors.append(error)
        finally:
            done.set()

    writer = threading.Thread(target=rewrite)
    writer.start()
    reports = []
    while not done.is_set():
        reports += [t for t in maintain(store.offline).tables if t.uri == uri]
    writer.join()
    assert reports and errors == []
    assert any(t.compacted_files or t.skipped for t in reports)

    last = run_transformation(spark, view, day).withColumn("clicks_1d", F.col("clicks_1d") * 9)
    expected = last.toPandas()
    stored = stored_rows(uri)
    on_day = stored[stored["event_date"] == str(day.start.date())].drop(columns="event_date")
    on_day = on_day.sort_values(list(on_day.columns)).reset_index(drop=True)
    expected = expected[list(on_day.columns)].sort_values(list(on_day.columns))
    pd.testing.assert_frame_equal(on_day, expected.reset_index(drop=True), check_dtype=False)
    # v1's inputs are whole, read by delta-rs: Sail 0.7 cannot time travel to a version older
    # than the table's latest checkpoint, which the rewrites may have made it write
    assert_inputs_kept(store, v1)


def test_recorded_versions_rebuild_after_many_more_commits(spark, rewritten):
    """Tables are created without checkpoints (Sail 0.7 cannot time travel past one): twelve
    more window writes later, maintenance reports nothing lost and both versions rebuild."""
    store, uri, (v0, original), (v1, latest) = rewritten
    view = store.repository.feature_views[VIEW]
    day = TimeWindow(WINDOW.start, WINDOW.start + timedelta(days=1))
    for _ in range(12):
        store.offline.write_window(
            run_transformation(spark, view, day), uri, day, view.timestamp_field
        )
    assert not os.path.exists(f"{uri}/_delta_log/_last_checkpoint")

    report = maintain(store.offline, timedelta(0))

    assert report.not_rebuildable == []
    pd.testing.assert_frame_equal(canonical(store.rebuild(DATASET, v0)), original)
    pd.testing.assert_frame_equal(canonical(store.rebuild(DATASET, v1)), latest)


def test_an_unreadable_manifest_stops_maintenance_before_it_deletes_anything(rewritten):
    store, uri, (v0, _), _ = rewritten
    path = manifest_uri(store.training_uri(DATASET), v0)
    with open(path, "w") as file:
        file.write('{"training_dataset": ')
    files = sorted(p for p in Path(store.offline.root).rglob("*") if p.is_file())

    with pytest.raises(ManifestCorrupt, match=f"{path}: not valid JSON"):
        maintain(store.offline, timedelta(0))
    with pytest.raises(ValueError, match="retention must be 0 <= min_retention"):
        maintain(store.offline, timedelta(days=8), timedelta(days=7))

    assert sorted(p for p in Path(store.offline.root).rglob("*") if p.is_file()) == files
