"""Run hygiene: a run whose process was killed is failed and frees its queue slot; concurrent
first uses of a fresh instance leave one consistent schema."""

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    RunsFilter,
    build_sensor_context,
)
from dagster._core.events import EngineEventData
from dagster._core.storage.dagster_run import ACTIVE_RUN_STATUSES
from dagster._core.test_utils import create_run_for_test

from conftest import PROJECT_INSTANCE, TINY
from featureplane.dagster.dead_runs import HOST_TAG, PID_TAG
from featureplane.synthetic import generate
from sensors.dead_runs import dead_runs_sensor

ROOT = Path(__file__).resolve().parents[1]


def instance_home(tmp_path: Path) -> Path:
    """A fresh DAGSTER_HOME configured as the project's (queue cap, run monitoring)."""
    home = tmp_path / "dagster_home"
    home.mkdir(parents=True)
    shutil.copy(PROJECT_INSTANCE, home / "dagster.yaml")
    return home


def environment(tmp_path: Path, home: Path) -> dict[str, str]:
    env = {**os.environ, "FEATUREPLANE_DATA_DIR": str(tmp_path), "DAGSTER_HOME": str(home)}
    env.pop("FEATUREPLANE_OFFLINE_ROOT", None)
    return {**env, "PYTHONPATH": str(ROOT)}


def active_runs(instance: DagsterInstance) -> int:
    """The runs that hold a queue slot, as the queued run coordinator counts them."""
    return len(instance.get_run_records(RunsFilter(statuses=ACTIVE_RUN_STATUSES)))


def test_a_run_killed_mid_step_is_failed_and_frees_its_queue_slot(tmp_path):
    generate(tmp_path / "raw", TINY)
    home = instance_home(tmp_path)
    command = [sys.executable, "-m", "featureplane.cli", "materialize", "user_daily_page_views"]
    command += ["--start", "2026-10-01", "--end", "2026-10-04"]
    worker = subprocess.Popen(
        command, cwd=ROOT, env=environment(tmp_path, home), stdout=subprocess.DEVNULL
    )
    with DagsterInstance.from_config(str(home)) as instance:
        deadline = time.monotonic() + 180
        while True:
            assert worker.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the run never started a step"
            runs = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED]))
            if runs and instance.all_logs(runs[0].run_id, of_type=DagsterEventType.STEP_START):
                break
            time.sleep(0.05)
        [run] = runs
        assert run.tags[PID_TAG] == str(worker.pid)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)

        assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.STARTED
        assert active_runs(instance) == 1  # the dead run holds one of the two slots

        result = dead_runs_sensor(build_sensor_context(instance=instance))
        assert result.skip_message == "failed 1 dead runs"
        assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE
        [failure] = instance.all_logs(run.run_id, of_type=DagsterEventType.RUN_FAILURE)
        assert f"pid {worker.pid} on {socket.gethostname()}" in failure.message
        assert "died before the run finished" in failure.message
        assert active_runs(instance) == 0

        again = dead_runs_sensor(build_sensor_context(instance=instance))
        assert again.skip_message == "no dead runs"
        assert len(instance.all_logs(run.run_id, of_type=DagsterEventType.RUN_FAILURE)) == 1


def test_opening_the_project_instance_fails_only_the_runs_whose_process_died(tmp_path, monkeypatch):
    home = instance_home(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = socket.gethostname()
    tags = {
        "dead": {HOST_TAG: host, PID_TAG: str(gone.pid)},
        "alive": {HOST_TAG: host, PID_TAG: str(os.getpid())},
        "elsewhere": {HOST_TAG: f"not-{host}", PID_TAG: str(gone.pid)},
        "launched, dead": {},
        "launched, alive": {},
        "not started": {},
    }
    workers = {"launched, dead": gone.pid, "launched, alive": os.getpid()}
    with DagsterInstance.from_config(str(home)) as instance:
        runs = {
            name: create_run_for_test(instance, "job", status=DagsterRunStatus.STARTED, tags=t)
            for name, t in tags.items()
        }
        for name, pid in workers.items():  # what a launched run's worker reports first
            message = f"Started process for run (pid: {pid})."
            instance.report_engine_event(message, runs[name], EngineEventData.in_process(pid))
    from featureplane.dagster.instance import project_instance

    with project_instance() as instance:
        status = {name: instance.get_run_by_id(r.run_id).status for name, r in runs.items()}
    assert status == {
        "dead": DagsterRunStatus.FAILURE,
        "alive": DagsterRunStatus.STARTED,
        "elsewhere": DagsterRunStatus.STARTED,
        "launched, dead": DagsterRunStatus.FAILURE,
        "launched, alive": DagsterRunStatus.STARTED,
        "not started": DagsterRunStatus.STARTED,
    }


FIRST_USE = """
from featureplane.dagster.instance import project_instance
with project_instance() as instance:
    print(len(instance.get_runs()))
"""
DAGSTER_FIRST_USE = """
from dagster import DagsterInstance
with DagsterInstance.get() as instance:
    print(len(instance.get_runs()))
"""
"""A first use as the webserver and the daemon make it: Dagster's own opening, on the project's
`dagster.yaml`."""


def schema_versions(home: Path) -> dict[str, list[str]]:
    """The alembic revisions stamped in each SQLite database of an instance."""
    versions = {}
    for db in sorted(home.rglob("*.db")):
        with sqlite3.connect(db) as connection:
            rows = connection.execute("SELECT version_num FROM alembic_version").fetchall()
        versions[str(db.relative_to(home))] = [row[0] for row in rows]
    return versions


def test_concurrent_first_uses_of_a_fresh_instance_leave_one_schema(tmp_path):
    """Without the lock, 6 processes on a fresh instance stamped two revisions in every round
    tried; with it, every process succeeds and every database has one revision, half of them
    featureplane commands and half opening the instance as Dagster's own processes do."""
    for attempt in range(2):
        home = instance_home(tmp_path / str(attempt))
        env = environment(tmp_path, home)
        first = [
            subprocess.Popen(
                [sys.executable, "-c", code], cwd=tmp_path, env=env, stderr=subprocess.PIPE
            )
            for code in [FIRST_USE, DAGSTER_FIRST_USE] * 3
        ]
        errors = [p.communicate()[1].decode()[-800:] for p in first if p.wait(timeout=300)]
        assert errors == []
        versions = schema_versions(home)
        assert set(versions) == {
            "history/runs.db",
            "history/runs/index.db",
            "schedules/schedules.db",
        }
        assert all(len(revisions) == 1 for revisions in versions.values()), versions
        later = subprocess.run(
            [sys.executable, "-c", FIRST_USE], cwd=tmp_path, env=env, capture_output=True
        )
        assert later.returncode == 0, later.stderr.decode()[-800:]
        assert later.stdout.decode().strip() == "0"
