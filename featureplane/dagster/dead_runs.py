"""Runs whose process died: failed, so that they stop holding a run queue slot.

Dagster fails a run launched by its daemon or the UI (DefaultRunLauncher) when its worker dies
while the code server that spawned it lives: the server sees it exit. Run monitoring
(`dagster.yaml`) fails one that never started or ran past its maximum runtime; it cannot check a
DefaultRunLauncher worker's health. Nothing watches a run executed in-process (`featureplane
materialize`, `demo`) nor a launched run whose code server died too: killed, it stays STARTED
and counts against `run_queue.max_concurrent_runs` like any active run.

So featureplane tags each run it executes with its host and process id, and `fail_dead_runs`
fails the ones whose process is gone; on an instance with SQLite storage, which only processes
of one host use, it also takes the process id of any other run from the run's event log (the
first engine event naming one: the run worker or the in-process executor). Every CLI command
calls it on opening the instance, and the `dead_runs` sensor every minute.
"""

from __future__ import annotations

import os
import socket

from dagster import DagsterEventType, DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter
from dagster._core.storage.dagster_run import FINISHED_STATUSES
from dagster._core.storage.runs import SqliteRunStorage

HOST_TAG = "featureplane/host"
PID_TAG = "featureplane/pid"
UNFINISHED = [status for status in DagsterRunStatus if status not in FINISHED_STATUSES]


def process_tags() -> dict[str, str]:
    """The tags of a run executed by this process: which host and process run it."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process of that id: alive
        return True
    return True


def _process_of(instance: DagsterInstance, run: DagsterRun, single_host: bool) -> int | None:
    """The id of the process that executes a run on this host, None where it is unknown."""
    if run.tags.get(HOST_TAG) == socket.gethostname():
        return int(run.tags[PID_TAG])
    if HOST_TAG in run.tags or not single_host:
        return None
    for event in instance.all_logs(run.run_id, of_type=DagsterEventType.ENGINE_EVENT):
        metadata = event.dagster_event.engine_event_data.metadata
        if "pid" in metadata:
            return int(metadata["pid"].value)
    return None  # not started yet: run monitoring's start timeout covers it


def fail_dead_runs(instance: DagsterInstance) -> list[str]:
    """Fail every unfinished run of this host whose process no longer exists, saying so in the
    run's failure; the ids of the runs failed. (A process id taken again by a new process keeps
    its dead run unfinished: never fail a live run.)"""
    host = socket.gethostname()
    single_host = isinstance(instance.run_storage, SqliteRunStorage)
    failed = []
    for record in instance.get_run_records(RunsFilter(statuses=UNFINISHED)):
        run = record.dagster_run
        pid = _process_of(instance, run, single_host)
        if pid is None or _alive(pid):
            continue
        instance.report_run_failed(
            run,
            f"The process that executed this run (pid {pid} on {host}) died before the run "
            "finished (killed, or out of memory); marked failed so that it frees its queue "
            "slot. Whatever it committed stays; rerun it.",
        )
        failed.append(run.run_id)
    return failed
