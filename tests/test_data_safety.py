"""Bad inputs lose nothing: each case of a real pipeline's faults, run through Dagster on the demo
repository, leaves the offline tables and the online store as they were, and says why.

Cases: an empty source day (the volume guard), a window the sources have not landed, a deleted
`_delta_log`, null join keys (dropped, counted, and blocking the push above the view's share),
and two writers racing for the same window.
"""

import asyncio
import os
import re
import shutil
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from dagster import AssetCheckKey, AssetKey, DagsterInstance
from dagster._core.loader import LoadingContextForTest
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionResolvedStatus
from deltalake import DeltaTable, write_deltalake

from conftest import TINY, read_delta, view_table
from featureplane import Repository
from featureplane.compute.materialization import sweep
from featureplane.compute.transform import run_transformation
from featureplane.compute.window import TimeWindow
from featureplane.dagster import build_definitions
from featureplane.dagster.definitions import resources_for
from featureplane.dagster.materialize import materialize_range
from featureplane.errors import MaterializationFailed
from featureplane.offline_store import ConcurrentWriteError, OfflineStore
from featureplane.quality.volume import FORCE_TAG
from featureplane.synthetic import generate
from resources import OfflineStoreResource, OnlineStoreResource, SparkResource

DAY = timedelta(days=1)
END = TINY.start + TINY.days * DAY
PAGE_VIEWS, ACTIVITY = "user_daily_page_views", "user_ad_activity"


@pytest.fixture
def world(tmp_path, monkeypatch):
    """Fresh demo sources (these tests damage them), an offline root, a SQLite online store,
    an instance, and `run(start, end, views, **tags)` materializing and pushing through it."""
    generate(tmp_path / "raw", TINY)
    monkeypatch.setenv("FEATUREPLANE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("FEATUREPLANE_OFFLINE_ROOT", raising=False)
    repo = Repository.load("feature_assets")
    online = OnlineStoreResource(path=str(tmp_path / "online.sqlite"))
    root = tmp_path / "offline"
    defs = build_definitions(
        repo, resources_for(SparkResource(), OfflineStoreResource(root=str(root)), online)
    )
    with DagsterInstance.ephemeral() as instance:

        def run(start, end, views, **tags):
            return materialize_range(defs, instance, start, end, views, online=True, tags=tags)

        yield repo, root, online, instance, run


def snapshot(repo, root: Path, online: OnlineStoreResource, name: str):
    """A view's table (version and rows) and what the online store serves of its entities."""
    uri = view_table(root, name)
    view = repo.feature_view(name)
    rows = read_delta(uri).drop(columns="event_date")
    rows = rows.sort_values(list(rows.columns[:2])).reset_index(drop=True)
    keys = sorted({tuple(k) for k in rows[list(view.join_keys)].itertuples(index=False)})
    served = online.store().read(view.name, view.version, keys)
    return DeltaTable(str(uri)).version(), rows, served


def source_table(root: Path, name: str) -> Path:
    return root.parent / "raw" / name


def test_an_empty_source_day_replaces_nothing(world):
    repo, root, online, instance, run = world
    run(TINY.start, END, [PAGE_VIEWS])
    before = snapshot(repo, root, online, PAGE_VIEWS)
    stored = int((before[1]["ts"].dt.date == (TINY.start + DAY).date()).sum())
    DeltaTable(str(source_table(root, "page_views"))).delete("event_date = '2026-10-02'")

    with pytest.raises(MaterializationFailed) as failed:
        run(TINY.start + DAY, TINY.start + 2 * DAY, [PAGE_VIEWS])
    assert (
        f"features__{PAGE_VIEWS}: VolumeDropError: {PAGE_VIEWS}: "
        f"partition 2026-10-02 00:00 would hold 0 rows against {stored:,} stored rows, below the "
        "volume guard (50%): nothing written. If the drop is real, rerun with the run tag "
        "featureplane/allow_volume_drop=true (featureplane materialize --allow-volume-drop)"
    ) in str(failed.value)
    after = snapshot(repo, root, online, PAGE_VIEWS)
    assert after[0] == before[0]
    assert after[1].equals(before[1])
    assert after[2] == before[2]
    assert not any((root / "_staging" / PAGE_VIEWS).iterdir())  # the failed run cleaned up

    run(TINY.start + DAY, TINY.start + 2 * DAY, [PAGE_VIEWS], **{FORCE_TAG: "true"})
    forced = snapshot(repo, root, online, PAGE_VIEWS)[1]
    assert len(forced) == len(before[1]) - stored
    key = AssetCheckKey(AssetKey(["online", PAGE_VIEWS]), "consistency")
    [record] = instance.event_log_storage.get_latest_asset_check_execution_by_key([key]).values()
    status = asyncio.run(record.resolve_status(LoadingContextForTest(instance)))
    assert status == AssetCheckExecutionResolvedStatus.SKIPPED  # an empty window: no evidence
    logged = [entry.user_message for entry in instance.all_logs(record.run_id)]
    assert (
        f"{PAGE_VIEWS} 2026-10-02 00:00..2026-10-03 00:00: no entity pushed, nothing to "
        "compare: skipped"
    ) in logged


def test_a_window_the_sources_have_not_landed_is_not_written(world):
    repo, root, online, _, run = world
    run(TINY.start, END, [PAGE_VIEWS])
    before = snapshot(repo, root, online, PAGE_VIEWS)
    with pytest.raises(MaterializationFailed) as failed:
        run(END, END + DAY, [PAGE_VIEWS])
    message = str(failed.value)
    assert (
        f"SourceNotReady: {PAGE_VIEWS} 2026-10-04 00:00..2026-10-05 00:00: source page_views "
        "holds events up to 2026-10-03 23:5"
    ) in message
    assert message.endswith(
        "UTC, not within its quiet_period (1 hour) of the window's end: nothing written; "
        "rerun once the source has landed the window"
    )
    after = snapshot(repo, root, online, PAGE_VIEWS)
    assert after[0] == before[0] and after[1].equals(before[1]) and after[2] == before[2]


def test_a_table_without_its_delta_log_is_never_overwritten(world):
    _, root, _, _, run = world
    run(TINY.start, END, [PAGE_VIEWS])
    table = view_table(root, PAGE_VIEWS)
    shutil.rmtree(table / "_delta_log")
    files = sorted(p.relative_to(table) for p in table.rglob("*") if p.is_file())
    with pytest.raises(MaterializationFailed) as failed:
        run(TINY.start, TINY.start + DAY, [PAGE_VIEWS])
    assert (
        f"TableLogMissing: {table} holds {len(files)} files but no readable Delta log "
        "(_delta_log is missing or damaged); featureplane will not overwrite them: restore the "
        "_delta_log, or move the directory aside to rebuild the table with a backfill"
    ) in str(failed.value)
    assert sorted(p.relative_to(table) for p in table.rglob("*") if p.is_file()) == files


def append_impressions_without_user(root: Path, count: int, batch: int) -> int:
    """Impressions of the first day with a null user_id, as a broken logger would write them;
    returns how many distinct impressions (the view drops duplicate ids) were added. Each
    `batch` gets ids of its own."""
    path = source_table(root, "ad_impressions")
    day = read_delta(path)
    first = day[day["ts"] < TINY.start + DAY].head(count).copy()
    first["user_id"] = None
    first["impression_id"] = first["impression_id"] + batch * 10**8
    schema = pa.schema(DeltaTable(path).schema().to_arrow())
    table = pa.Table.from_pandas(first, preserve_index=False).cast(schema)
    write_deltalake(path, table, mode="append")
    return first["impression_id"].nunique()


def test_null_join_keys_never_reach_a_table_and_block_the_push_above_the_share(world):
    repo, root, online, instance, run = world
    run(TINY.start, TINY.start + DAY, [ACTIVITY])
    before = snapshot(repo, root, online, ACTIVITY)
    impressions = int(before[1]["count__impression_id"].sum())

    few = append_impressions_without_user(root, 3, batch=1)  # a few: dropped, counted, pushed
    [features, pushed] = sorted(
        run(TINY.start, TINY.start + DAY, [ACTIVITY]), key=lambda r: r.asset_key.path
    )
    event = instance.get_latest_materialization_event(AssetKey(["features", ACTIVITY]))
    metadata = event.asset_materialization.metadata
    assert metadata["rows_dropped"].value == few == 3
    assert metadata["rows_dropped_by_rule"].value == {
        "user_id not null": 3,
        "ts not null": 0,
        "ts inside the window": 0,
    }
    assert read_delta(view_table(root, ACTIVITY))["user_id"].notna().all()
    assert snapshot(repo, root, online, ACTIVITY)[1].equals(before[1])  # the same tiles

    many = append_impressions_without_user(root, impressions // 50, batch=2)  # about 2%: above 1%
    with pytest.raises(MaterializationFailed) as failed:
        run(TINY.start, TINY.start + DAY, [ACTIVITY])
    nulls = few + many
    line = re.search(
        rf"{ACTIVITY} 2026-10-01 00:00..2026-10-02 00:00: user_id not null: "
        rf"{nulls:,} of ([\d,]+) rows \((\d+\.\d\d)%\)$",
        str(failed.value),
    )
    total = int(line.group(1).replace(",", ""))
    assert line.group(2) == f"{100 * nulls / total:.2f}" and nulls / total > 0.01
    assert f"features/{ACTIVITY}: blocking quality check failed:\n" in str(failed.value)
    after = snapshot(repo, root, online, ACTIVITY)
    assert after[2] == before[2]  # the online store kept its values: the push did not run
    assert read_delta(view_table(root, ACTIVITY))["user_id"].notna().all()
    check_key = AssetCheckKey(AssetKey(["features", ACTIVITY]), "quality")
    [record] = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [check_key]
    ).values()
    evaluation = record.event.dagster_event.event_specific_data
    assert not evaluation.passed
    assert evaluation.metadata["failed_rules"].value == 1
    examples = evaluation.metadata["failing_examples"].value["user_id not null"]
    assert len(examples) == 5 and all(e["user_id"] is None for e in examples)
    rules = {r.data["rule"]: r.data for r in evaluation.metadata["rules"].value.records}
    assert rules["user_id not null"]["status"] == "failed"
    assert rules["user_id not null"]["failing"] == nulls
    assert pushed.asset_key.path[0] == "online" and features.rows > 0


def test_two_writers_of_one_window_leave_one_write(spark, world, tmp_path):
    repo = world[0]
    view = repo.feature_view(PAGE_VIEWS)
    window = TimeWindow(TINY.start, END)
    store = OfflineStore(str(tmp_path / "race"))
    uri = store.table_uri("features", view.name)
    rows = run_transformation(spark, view, window)
    store.write_window(rows, uri, window, view.timestamp_field)
    expected = read_delta(uri).sort_values(["user_id", "ts"]).reset_index(drop=True)
    errors: list[Exception] = []

    def write():
        try:
            store.write_window(rows, uri, window, view.timestamp_field)
        except ConcurrentWriteError as error:
            errors.append(error)

    for _ in range(3):
        writers = [threading.Thread(target=write) for _ in range(2)]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join()
    assert all(
        "another writer committed at the same time, 5 times in a row" in str(e) for e in errors
    )
    stored = read_delta(uri).sort_values(["user_id", "ts"]).reset_index(drop=True)
    assert stored.equals(expected)
    assert DeltaTable(uri).version() >= 1 + 6 - len(errors)


def test_a_source_column_that_changes_type_is_the_source_s_change(world):
    repo, root, online, _, run = world
    run(TINY.start, END, [PAGE_VIEWS])
    before = snapshot(repo, root, online, PAGE_VIEWS)
    path = source_table(root, "page_views")
    events = read_delta(path)
    events["user_id"] = events["user_id"].astype(str)  # a logger that began to send strings
    events["event_date"] = events["ts"].dt.date
    write_deltalake(
        path,
        pa.Table.from_pandas(events, preserve_index=False),
        mode="overwrite",
        schema_mode="overwrite",
        partition_by=["event_date"],
    )
    with pytest.raises(MaterializationFailed) as failed:
        run(TINY.start, TINY.start + DAY, [PAGE_VIEWS])
    view = repo.feature_view(PAGE_VIEWS)
    assert (
        f"SourceError: page_views ({repo.sources['page_views'].location}): column 'user_id' is "
        f"now string, but {PAGE_VIEWS} version {view.version} stored it as bigint "
        f"({view_table(root, PAGE_VIEWS)}): the source changed, not the definition; restore the "
        "column's type upstream, or cast it in the view (a new version, with a table of its own)"
    ) in str(failed.value)
    after = snapshot(repo, root, online, PAGE_VIEWS)
    assert after[0] == before[0] and after[1].equals(before[1])


def test_staged_output_a_killed_run_left_is_swept_a_day_later(tmp_path):
    staging = tmp_path / "_staging" / PAGE_VIEWS
    for name, age in (("killed", timedelta(days=2)), ("running", timedelta(minutes=5))):
        (staging / name).mkdir(parents=True)
        (staging / name / "part-0.parquet").write_bytes(b"rows")
        stamp = (datetime.now(UTC) - age).timestamp()
        os.utime(staging / name, (stamp, stamp))
    assert sweep(str(staging)) == 1
    assert [p.name for p in staging.iterdir()] == ["running"]
    assert sweep(str(tmp_path / "nothing")) == 0
