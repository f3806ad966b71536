"""A project used as `make ui` and the CLI use it: the Dagster daemon running, materializations
through the CLI, one of them killed. Everything the instance writes stays in `.dagster_home/`
and the data in `data/`; the daemon's `dead_runs` sensor fails the killed run by itself."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

from conftest import TINY
from featureplane.synthetic import generate

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MATERIALIZE = [sys.executable, "-m", "featureplane.cli", "materialize", "user_daily_page_views"]
MATERIALIZE += ["--start", "2026-10-01", "--end", "2026-10-04"]


def test_the_daemon_and_the_cli_write_only_into_dagster_home_and_data(tmp_path):
    project = tmp_path / "project"
    (project / ".dagster_home").mkdir(parents=True)
    shutil.copy(ROOT / ".dagster_home" / "dagster.yaml", project / ".dagster_home")
    generate(project / "data" / "raw", TINY)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER", "FEATUREPLANE"))}
    env["PYTHONPATH"] = str(ROOT)  # the CLI sets DAGSTER_HOME and the data dir by itself
    home = project / ".dagster_home"
    daemon = subprocess.Popen(
        [str(BIN / "dagster-daemon"), "run", "-m", "feature_assets.definitions"],
        cwd=project,
        env={**env, "DAGSTER_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        subprocess.run(MATERIALIZE, cwd=project, env=env, check=True, capture_output=True)
        worker = subprocess.Popen(MATERIALIZE, cwd=project, env=env, stdout=subprocess.DEVNULL)
        with DagsterInstance.from_config(str(home)) as instance:
            deadline = time.monotonic() + 180
            while True:
                assert worker.poll() is None, "the run ended before it could be killed"
                assert time.monotonic() < deadline, "the run never started a step"
                [run, *_] = instance.get_runs(limit=1)
                if run.status == DagsterRunStatus.STARTED and instance.all_logs(
                    run.run_id, of_type=DagsterEventType.STEP_START
                ):
                    break
                time.sleep(0.05)
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=30)
            killed = time.monotonic()
            while instance.get_run_by_id(run.run_id).status == DagsterRunStatus.STARTED:
                assert daemon.poll() is None, "the daemon stopped"
                assert time.monotonic() - killed < 240, "the daemon never failed the dead run"
                time.sleep(1)
            [failure] = instance.all_logs(run.run_id, of_type=DagsterEventType.RUN_FAILURE)
            assert f"(pid {worker.pid} on " in failure.message
            assert not instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED]))
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)

    assert sorted(entry.name for entry in project.iterdir()) == [".dagster_home", "data"]
    assert {"history", "schedules", "logs"} <= {entry.name for entry in home.iterdir()}
