"""The project instance's event log (`featureplane.dagster.event_log`) against Dagster's own.

A range run plans once per asset, yet every partition's status is what Dagster's stock storage
records: materialized after a run, in progress while one is pending, failed after a failed one,
and materialized again after a rerun; on SQLite (.dagster_home/) and on Postgres (deploy/dagster/,
the project's cluster; skipped without it, failed in CI). The stock SQLite instance is the oracle
for what a run records.
"""

import shutil
import sys
import textwrap
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from dagster import AssetCheckKey, AssetKey, DagsterEventType, DagsterInstance, EventRecordsFilter
from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value
from deltalake import write_deltalake
from test_postgres import database

from conftest import PROJECT_INSTANCE
from featureplane.dagster.definitions import build_definitions
from featureplane.dagster.event_log import BatchingInstance, PostgresEventLog, SqliteEventLog
from featureplane.dagster.materialize import RANGE_END_TAG, RANGE_START_TAG, materialize_repository
from featureplane.dagster.quality import CHECK_NAME
from featureplane.errors import MaterializationFailed
from featureplane.repository import Repository

ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENT = ROOT / "deploy" / "dagster" / "dagster.yaml"
START = datetime(2026, 1, 1, tzinfo=UTC)
DAYS = [f"2026-01-0{day}" for day in (1, 2, 3)]
FEATURES = AssetKey(["features", "user_clicks"])
ONLINE = AssetKey(["online", "user_clicks"])
__all__ = ["database"]  # test_postgres's fixture: a database of its own per Postgres test

REPOSITORY = """
import os
from datetime import UTC, datetime

from featureplane import BatchSource, Entity, Field, Int64, batch_feature_view

events = BatchSource("events", path="raw/events", timestamp_field="ts", quiet_period=None)
user = Entity("user", join_keys=["user_id"], join_key_types={"user_id": Int64})


@batch_feature_view(sources=[events], entities=[user], schema=[Field("clicks", Int64)],
                    timestamp_field="ts", feature_start_time=datetime(2026, 1, 1, tzinfo=UTC))
def user_clicks(events):
    if os.environ.get("USER_CLICKS_FAIL"):
        raise RuntimeError("user_clicks failed on purpose")
    return events
"""


def write_project(root: Path, instance_yaml: Path | None) -> Path:
    """Three days of hourly events, the repository package, and a DAGSTER_HOME configured
    as the project's (or, with None, as Dagster's defaults)."""
    hours = [START + timedelta(hours=h) for h in range(72)]
    events = pa.table(
        {
            "user_id": pa.array([h % 5 for h in range(72)], pa.int64()),
            "ts": pa.array(hours, pa.timestamp("us", "UTC")),
            "clicks": pa.array(range(72), pa.int64()),
        }
    )
    write_deltalake(str(root / "raw" / "events"), events)
    package = root / "range_repo"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent(REPOSITORY))
    home = root / "dagster_home"
    home.mkdir()
    if instance_yaml is None:
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    else:
        shutil.copy(instance_yaml, home / "dagster.yaml")
    return home


SETUPS = {"sqlite": (PROJECT_INSTANCE, SqliteEventLog), "postgres": (DEPLOYMENT, PostgresEventLog)}
"""The project instance (.dagster_home/) and the deployment's on Postgres (deploy/dagster/)."""


@pytest.fixture(params=list(SETUPS))
def project(request, tmp_path, monkeypatch):
    """A project on the project instance's set-up, or on the deployment's (a database of
    the project's PostgreSQL of its own, `test_postgres.database`)."""
    if request.param == "postgres":
        request.getfixturevalue("database")
    home = write_project(tmp_path, SETUPS[request.param][0])
    for module in [m for m in sys.modules if m.startswith("range_repo")]:
        monkeypatch.delitem(sys.modules, module)  # this project's own package
    monkeypatch.setenv("FEATUREPLANE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    for name in ("FEATUREPLANE_OFFLINE_ROOT", "FEATUREPLANE_ONLINE_STORE", "FEATUREPLANE_REGISTRY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    return SETUPS[request.param][1]


def materialize(monkeypatch, fail: bool = False):
    if fail:
        monkeypatch.setenv("USER_CLICKS_FAIL", "1")
    else:
        monkeypatch.delenv("USER_CLICKS_FAIL", raising=False)
    return materialize_repository("range_repo", START, START + timedelta(days=3))


def status(instance: DagsterInstance, key: AssetKey) -> dict[str, list[str]]:
    """Materialized, failed and in-progress partitions as the UI reads them (the asset status
    cache)."""
    partitions = build_definitions(Repository.load("range_repo")).resolve_assets_def(key)
    partitions_def = partitions.partitions_def
    value = get_and_update_asset_status_cache_value(instance, key, partitions_def)
    subsets = {
        "materialized": value.deserialize_materialized_partition_subsets(partitions_def),
        "failed": value.deserialize_failed_partition_subsets(partitions_def),
        "in_progress": value.deserialize_in_progress_partition_subsets(partitions_def),
    }
    return {name: sorted(subset.get_partition_keys()) for name, subset in subsets.items()}


def planned(instance: DagsterInstance, key: AssetKey) -> list:
    records = instance.get_event_records(
        EventRecordsFilter(DagsterEventType.ASSET_MATERIALIZATION_PLANNED, asset_key=key)
    )
    return [r.event_log_entry.get_dagster_event().event_specific_data for r in records]


def test_the_instance_set_ups_use_the_range_event_log(project):
    with DagsterInstance.get() as instance:
        assert isinstance(instance, BatchingInstance)
        assert isinstance(instance.event_log_storage, project)


def test_a_range_run_plans_once_per_asset_and_records_every_partition(project, monkeypatch):
    results = materialize(monkeypatch)
    assert {r.asset_key: r.partitions for r in results} == {FEATURES: 3, ONLINE: 3}
    with DagsterInstance.get() as instance:
        for key in (FEATURES, ONLINE):
            [plan] = planned(instance, key)
            assert plan.partition is None
            assert sorted(plan.partitions_subset.get_partition_keys()) == DAYS
            assert status(instance, key) == {"materialized": DAYS, "failed": [], "in_progress": []}


def test_a_failed_range_shows_every_partition_failed_until_a_rerun_lands(project, monkeypatch):
    with pytest.raises(MaterializationFailed, match="user_clicks failed on purpose"):
        materialize(monkeypatch, fail=True)
    with DagsterInstance.get() as instance:
        assert status(instance, FEATURES) == {"materialized": [], "failed": DAYS, "in_progress": []}
    materialize(monkeypatch)
    with DagsterInstance.get() as instance:
        assert status(instance, FEATURES) == {"materialized": DAYS, "failed": [], "in_progress": []}
        with pytest.raises(MaterializationFailed):
            materialize(monkeypatch, fail=True)  # fails again: materialized, and failed since
        assert status(instance, FEATURES) == {
            "materialized": DAYS,
            "failed": DAYS,
            "in_progress": [],
        }


def test_a_pending_range_run_shows_its_partitions_in_progress(project):
    defs = build_definitions(Repository.load("range_repo"))
    job = defs.resolve_implicit_global_asset_job_def()
    with DagsterInstance.get() as instance:
        run = instance.create_run_for_job(
            job,
            asset_selection=frozenset({FEATURES}),
            tags={RANGE_START_TAG: DAYS[0], RANGE_END_TAG: DAYS[-1]},
        )
        assert len(planned(instance, FEATURES)) == 1
        assert status(instance, FEATURES) == {"materialized": [], "failed": [], "in_progress": DAYS}
        instance.report_run_canceled(run)
        assert status(instance, FEATURES)["in_progress"] == []


def recorded(home: Path) -> tuple[Counter, dict]:
    """What the instance at `home` recorded of its runs (planned events aside, which differ
    by design): (event type, asset, partition) counts, and each asset's latest
    materialization (partition, row count)."""
    with DagsterInstance.from_config(str(home)) as instance:
        events = Counter()
        for run in instance.get_runs():
            for entry in instance.all_logs(run.run_id):
                event = entry.dagster_event
                if (
                    event is None
                    or event.event_type == DagsterEventType.ASSET_MATERIALIZATION_PLANNED
                ):
                    continue
                asset = event.asset_key.to_user_string() if event.asset_key else None
                events[(event.event_type_value, asset, event.partition)] += 1
        for entry in instance.all_logs("", of_type=DagsterEventType.ASSET_MATERIALIZATION):
            key = entry.dagster_event.asset_key.to_user_string()
            events[("RUNLESS_ASSET_MATERIALIZATION", key, entry.dagster_event.partition)] += 1
        latest = {}
        for key in (FEATURES, ONLINE):
            event = instance.get_latest_materialization_event(key)
            metadata = event.asset_materialization.metadata
            latest[key] = (event.asset_materialization.partition, metadata["dagster/row_count"])
        check = AssetCheckKey(FEATURES, CHECK_NAME)
        history = instance.event_log_storage.get_asset_check_execution_history(check, limit=100)
        latest["check executions"] = Counter((r.partition, r.status.value) for r in history)
        return events, latest


def test_a_range_run_records_what_dagsters_own_storage_records(tmp_path, monkeypatch):
    homes = {}
    for name, configured in (("ours", PROJECT_INSTANCE), ("dagster", None)):
        root = tmp_path / name
        root.mkdir()
        homes[name] = write_project(root, configured)
        with monkeypatch.context() as env:
            env.setenv("FEATUREPLANE_DATA_DIR", str(root))
            env.setenv("DAGSTER_HOME", str(homes[name]))
            env.syspath_prepend(str(root))
            for module in [m for m in sys.modules if m.startswith("range_repo")]:
                del sys.modules[module]  # each project's own package
            materialize(env)
    ours, theirs = recorded(homes["ours"]), recorded(homes["dagster"])
    assert ours[1] == theirs[1]
    assert ours[0] == theirs[0]
    assert ours[0][("ASSET_MATERIALIZATION", "features/user_clicks", DAYS[1])] == 1
