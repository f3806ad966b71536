"""Dagster on PostgreSQL: the instance of deploy/dagster/dagster.yaml on the project's cluster
(`make postgres`; the Makefile's DAGSTER_PG_* variables name it), each test in a database of its
own. Two materializations of one view at once both land; a view's runs queue behind each other
while another view's run goes ahead; the automation daemon runs on it; and every run and event is
a row of Postgres, none of SQLite. Without a reachable cluster these tests skip, and in CI fail."""

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg2
import pyarrow as pa
import pytest
from dagster import AssetKey, DagsterEventType, DagsterInstance
from dagster._core.storage.dagster_run import FINISHED_STATUSES
from dagster_graphql import DagsterGraphQLClient
from deltalake import DeltaTable, write_deltalake
from psycopg2 import sql
from test_daemon import (
    NOW,
    START,
    YESTERDAY,
    Project,
    clicks,
    receiver,
    running_dagster_dev,
    until,
)

from featureplane.dagster.instance import project_instance
from featureplane.errors import InstanceError

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD")
CLICKS, TOTALS = "user_clicks", "user_click_totals"
__all__ = ["receiver"]  # the webhook fixture of test_daemon, for the daemon's alert sensors


def _connect(settings: dict[str, str], database: str):
    connection = psycopg2.connect(
        host=settings["DAGSTER_PG_HOST"],
        port=settings["DAGSTER_PG_PORT"],
        user=settings["DAGSTER_PG_USER"],
        password=settings["DAGSTER_PG_PASSWORD"],
        dbname=database,
        connect_timeout=30,
    )
    connection.autocommit = True
    return connection


@pytest.fixture
def database(monkeypatch) -> Iterator[dict[str, str]]:
    """A new database of the cluster, dropped after the test: the DAGSTER_PG_* variables that
    name it, set in this process too."""
    settings = {name: os.environ.get(name, "") for name in (*SETTINGS, "DAGSTER_PG_DB")}
    try:
        admin = _connect(settings, settings["DAGSTER_PG_DB"])
    except psycopg2.Error as error:
        reason = str(error).splitlines()[0]
        message = f"no PostgreSQL for Dagster ({reason}): `make postgres`, then `make test`"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    name = f"featureplane_test_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cursor:
        cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            settings["DAGSTER_PG_DB"] = name
            for variable, value in settings.items():
                monkeypatch.setenv(variable, value)
            yield settings
        finally:
            drop = sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name))
            cursor.execute(drop)
    admin.close()


def postgres_project(root, webhook: str, database: dict[str, str]) -> Project:
    """test_daemon's project, its instance the deployment's dagster.yaml on the database."""
    project = Project(root, webhook)
    shutil.copy(ROOT / "deploy" / "dagster" / "dagster.yaml", root / "home")
    project.env.update(database)
    return project


def rows(database: dict[str, str], query: str, *params) -> list[tuple]:
    connection = _connect(database, database["DAGSTER_PG_DB"])
    try:
        with connection.cursor() as cursor:
            cursor.execute(query, params)
            return cursor.fetchall()
    finally:
        connection.close()


def sensor_cursor(instance: DagsterInstance, name: str) -> str | None:
    """The cursor a sensor's last tick left, None before its first."""
    states = [state for state in instance.all_instigator_state() if state.name == name]
    return states[0].instigator_data.cursor if states and states[0].instigator_data else None


def day(moment) -> str:
    return moment.strftime("%Y-%m-%d")


def offline_table(project: Project, view: str) -> pa.Table:
    """The offline table of a view (its one version)."""
    [table] = (project.data / "offline" / "features" / view).iterdir()
    return DeltaTable(str(table)).to_pyarrow_table()


def stored_days(project: Project, view: str) -> dict[str, int]:
    """Rows per event day of a view's offline table."""
    times = offline_table(project, view).column("ts").to_pylist()
    counts: dict[str, int] = {}
    for moment in times:
        counts[day(moment)] = counts.get(day(moment), 0) + 1
    return counts


def test_two_materializations_of_one_view_at_once_both_land(tmp_path, database):
    project = postgres_project(tmp_path, "http://127.0.0.1:9/hook", database)
    days = [START, START + timedelta(days=1)]
    materialize = [sys.executable, "-m", "featureplane.cli", "materialize", CLICKS]
    processes = [
        subprocess.Popen(
            [*materialize, "--repository", project.package, "--start", day(first)]
            + ["--end", day(first + timedelta(days=1))],
            cwd=project.root,
            env=project.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for first in days
    ]
    for process in processes:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output

    assert stored_days(project, CLICKS) == {day(first): 2 * 24 for first in days}
    runs = rows(database, "SELECT run_id, status, start_time, end_time FROM runs")
    assert [status for _, status, *_ in runs] == ["SUCCESS", "SUCCESS"]
    (_, _, start_a, end_a), (_, _, start_b, end_b) = runs
    print(f"\nthe two runs overlapped {min(end_a, end_b) - max(start_a, start_b):.1f}s")
    materialized = rows(
        database,
        "SELECT partition FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'"
        " AND asset_key = %s AND run_id = ANY(%s)",
        AssetKey(["features", CLICKS]).to_string(),
        [run_id for run_id, *_ in runs],
    )
    assert sorted(partition for (partition,) in materialized) == [day(first) for first in days]
    assert not {"history", "schedules"} & {e.name for e in (project.root / "home").iterdir()}


def test_automation_runs_and_a_views_runs_queue_while_another_view_runs(
    tmp_path, receiver, database
):
    project = postgres_project(tmp_path, receiver, database)
    landed = [day(START + timedelta(days=n)) for n in range((YESTERDAY - START).days + 1)]
    materialized = project.featureplane(
        "materialize", "--repository", project.package, "--start", landed[0], "--end", day(NOW)
    )
    assert materialized.returncode == 0, materialized.stdout + materialized.stderr
    with running_dagster_dev(project), DagsterInstance.from_config(str(tmp_path / "home")) as dg:
        # late rows after the new-data sensor's first tick (its cursor): the sensor reports the
        # window changed, automation recomputes it
        until(lambda: sensor_cursor(dg, "clicks_new_data"), 120, "the sensor never ticked")
        late = clicks([(1, YESTERDAY + timedelta(hours=3), 1000)])
        write_deltalake(project.source, late, mode="append")
        until(
            lambda: 1000 in offline_table(project, CLICKS).column("clicks").to_pylist(),
            240,
            "automation did not recompute the window of the late rows",
        )
        # three runs at once: two of one view, one of another
        port = int(project.env["FEATUREPLANE_DAGSTER_URL"].rsplit(":", 1)[1])
        client = DagsterGraphQLClient("127.0.0.1", port_number=port)
        launched = {
            (view, partition): client.submit_job_execution(
                "__ASSET_JOB",
                asset_selection=[AssetKey(["features", view])],
                tags={"dagster/partition": partition},
            )
            for view, partition in [(CLICKS, landed[0]), (CLICKS, landed[1]), (TOTALS, landed[0])]
        }
        until(
            lambda: all(
                dg.get_run_by_id(run_id).status in FINISHED_STATUSES for run_id in launched.values()
            ),
            300,
            "the runs did not finish",
        )

    # every run of the view is a row of Postgres, one at a time; the second waited queued
    runs = {
        run_id: (status, created.timestamp(), started, ended)
        for run_id, status, created, started, ended in rows(
            database,
            "SELECT run_id, status, create_timestamp AT TIME ZONE 'UTC', start_time, end_time"
            " FROM runs WHERE run_id = ANY(%s)",
            list(launched.values()),
        )
    }
    assert [status for status, *_ in runs.values()] == ["SUCCESS"] * 3
    first, second = sorted(
        (runs[launched[(CLICKS, partition)]] for partition in landed[:2]), key=lambda r: r[2]
    )
    assert second[1] < first[3] <= second[2], "the second run of the view did not wait queued"
    totals = runs[launched[(TOTALS, landed[0])]]
    assert totals[2] < first[3] and first[2] < totals[3], "the other view's run did not go ahead"
    view_runs = rows(
        database,
        "SELECT start_time, end_time FROM runs WHERE start_time IS NOT NULL AND run_body LIKE %s"
        " ORDER BY start_time",
        f"%{CLICKS}%",
    )
    assert len(view_runs) >= 4  # featureplane materialize's, automation's and the two above
    assert all(a[1] <= b[0] for a, b in zip(view_runs, view_runs[1:], strict=False))
    [(limit, default)] = rows(
        database,
        'SELECT "limit", using_default_limit FROM concurrency_limits WHERE concurrency_key = %s',
        f"featureplane/view/{CLICKS}",
    )
    assert (limit, default) == (1, True)
    enqueued = rows(
        database,
        "SELECT count(*) FROM event_logs WHERE dagster_event_type = %s AND run_id = ANY(%s)",
        DagsterEventType.RUN_ENQUEUED.value,
        list(launched.values()),
    )
    assert enqueued == [(3,)]  # the three went through the queue
    assert not {"history", "schedules"} & {e.name for e in (tmp_path / "home").iterdir()}


def test_an_unreachable_postgres_is_one_clear_error(tmp_path, database, monkeypatch):
    (tmp_path / "home").mkdir()
    shutil.copy(ROOT / "deploy" / "dagster" / "dagster.yaml", tmp_path / "home")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "not the password")
    with pytest.raises(InstanceError, match="password authentication failed") as raised:
        project_instance()
    assert "\n" not in str(raised.value)
