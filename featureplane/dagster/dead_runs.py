"""Runs whose process died: failed, so that they stop holding a run queue slot.

Dagster fails a run launched by its daemon or the UI (DefaultRunLauncher) when its worker dies:
the code server that spawned the worker sees it exit, and run monitoring (`dagster.yaml`) fails
one that never started or ran past its maximum runtime. Nothing watches a run executed
in-process (`featureplane materialize`, `demo`): killed, it stays STARTED forever, and counts
against `run_queue.max_concurrent_runs` like any active run. So featureplane tags each such run
with its host and process id, and `fail_dead_runs` fails the ones whose process is gone; every
CLI command calls it on opening the instance, and the `dead_runs` sensor every minute.
"""

from __future__ import annotations

import os
import socket

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.storage.dagster_run import FINISHED_STATUSES

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


def fail_dead_runs(instance: DagsterInstance) -> list[str]:
    """Fail every unfinished run executed by a process of this host that no longer exists,
    saying so in the run's failure; the ids of the runs failed. (A process id taken again by
    a new process keeps its dead run unfinished: never fail a live run.)"""
    host = socket.gethostname()
    records = instance.get_run_records(RunsFilter(statuses=UNFINISHED, tags={HOST_TAG: host}))
    failed = []
    for record in records:
        run = record.dagster_run
        pid = int(run.tags[PID_TAG])
        if _alive(pid):
            continue
        instance.report_run_failed(
            run,
            f"The process that executed this run (pid {pid} on {host}) died before the run "
            "finished (killed, or out of memory); marked failed so that it frees its queue "
            "slot. Whatever it committed stays; rerun it.",
        )
        failed.append(run.run_id)
    return failed
