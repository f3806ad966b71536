"""A materialization killed (SIGKILL) while its window is staged leaves the table as it was; the
rerun writes the new rows, and the staged files the killed run left are swept a day later."""

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from conftest import PROJECT_INSTANCE, TINY, read_delta, view_table
from featureplane.synthetic import generate

ROOT = Path(__file__).resolve().parents[1]
VIEW = "user_daily_page_views"


def materialize(data: Path) -> subprocess.Popen:
    home = data / "dagster_home"
    home.mkdir(exist_ok=True)
    shutil.copy(PROJECT_INSTANCE, home)
    env = {**os.environ, "FEATUREPLANE_DATA_DIR": str(data), "DAGSTER_HOME": str(home)}
    env.pop("FEATUREPLANE_OFFLINE_ROOT", None)
    command = [sys.executable, "-m", "featureplane.cli", "materialize", VIEW]
    command += ["--start", "2026-10-01", "--end", "2026-10-04"]
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def stored(data: Path) -> pd.DataFrame:
    rows = read_delta(view_table(data / "offline", VIEW)).drop(columns="event_date")
    return rows.sort_values(["user_id", "ts"]).reset_index(drop=True)


def test_a_run_killed_while_staging_loses_nothing_and_reruns(tmp_path):
    generate(tmp_path / "raw", TINY)
    assert materialize(tmp_path).wait(timeout=300) == 0
    before, version = stored(tmp_path), DeltaTable(str(view_table(tmp_path / "offline", VIEW)))
    version = version.version()

    # a late page view of user 1 on the first day: the rerun's window differs from the stored one
    late = pd.DataFrame(
        {
            "event_id": [10**12],
            "user_id": [1],
            "category": ["news"],
            "page_id": [1],
            "ts": [datetime(2026, 10, 1, 12, tzinfo=UTC)],
            "ingested_at": [datetime(2026, 10, 2, 12, tzinfo=UTC)],
        }
    ).assign(event_date=lambda df: df["ts"].dt.date)
    path = str(tmp_path / "raw" / "page_views")
    schema = pa.schema(DeltaTable(path).schema().to_arrow())
    write_deltalake(
        path, pa.Table.from_pandas(late, preserve_index=False).cast(schema), mode="append"
    )

    staging = tmp_path / "offline" / "_staging" / VIEW
    run = materialize(tmp_path)
    deadline = time.monotonic() + 120
    while not (staging.is_dir() and any(staging.iterdir())):
        assert run.poll() is None, run.stdout.read().decode()
        assert time.monotonic() < deadline, "the run never staged its window"
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=30)

    assert DeltaTable(str(view_table(tmp_path / "offline", VIEW))).version() == version
    pd.testing.assert_frame_equal(stored(tmp_path), before)
    [left] = list(staging.iterdir())  # the killed run could not clean up

    assert materialize(tmp_path).wait(timeout=300) == 0
    after = stored(tmp_path)
    day_one = (after["user_id"] == 1) & (after["ts"].dt.date == datetime(2026, 10, 1).date())
    was = (before["user_id"] == 1) & (before["ts"].dt.date == datetime(2026, 10, 1).date())
    assert after.loc[day_one, "page_views_1d"].item() == before.loc[was, "page_views_1d"].item() + 1
    assert len(after) == len(before)
    assert left.exists()  # a day old only later: a live run may still be staging there

    stamp = (datetime.now(UTC) - timedelta(days=2)).timestamp()
    os.utime(left, (stamp, stamp))
    assert materialize(tmp_path).wait(timeout=300) == 0
    assert not left.exists()
    assert list(staging.iterdir()) == []
