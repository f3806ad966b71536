"""The project's Dagster instance: $DAGSTER_HOME, by default `.dagster_home/` in the project.

Everything the instance writes (SQLite storage, compute logs, the daemon's log folders) goes under
DAGSTER_HOME, so it is a folder of its own rather than the project root, with the tracked
`dagster.yaml` in it, which names the event log made for range runs (`event_log`).

Dagster creates and stamps its SQLite databases on first use without a lock between processes:
two commands opening a fresh instance at once can each create the tables and stamp their own
schema revision, leaving a database that every later command refuses ("more than one head").
So the storages are opened under an exclusive lock on the DAGSTER_HOME folder, held by one
process at a time: by every process of the project's instance (its `dagster.yaml` names
`FirstUseLockedStorage`: webserver, daemon, runs, commands), and by `project_instance` around
the opening and the dead-run check. An instance whose Postgres storage cannot be reached
(deploy/dagster/dagster.yaml) is one line saying why, not Dagster's retries' traceback.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from dagster import DagsterInstance
from dagster._core.storage.legacy_storage import CompositeStorage
from dagster._serdes import ConfigurableClassData
from dagster_postgres.utils import DagsterPostgresException

from featureplane.dagster.dead_runs import fail_dead_runs
from featureplane.errors import InstanceError

HOME = ".dagster_home"
"""DAGSTER_HOME's default, relative to the project folder (the working directory)."""


def dagster_home() -> str:
    """$DAGSTER_HOME, set to `.dagster_home/` of the working directory (created) when unset."""
    os.environ.setdefault("DAGSTER_HOME", os.path.abspath(HOME))
    home = os.environ["DAGSTER_HOME"]
    os.makedirs(home, exist_ok=True)
    return home


_held = threading.local()


@contextmanager
def exclusive(folder: str) -> Iterator[None]:
    """An exclusive lock on a folder between processes: flock on the folder itself, so it
    leaves no file behind and the kernel releases it when its holder dies. Re-entrant within a
    thread (a second flock of the folder there would wait for itself); other threads wait."""
    key = os.path.realpath(folder)
    held = _held.__dict__.setdefault("folders", set())
    if key in held:
        yield
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        held.add(key)
        yield
    finally:
        held.discard(key)
        os.close(descriptor)


class FirstUseLockedStorage(CompositeStorage):
    """Dagster's run, event-log and schedule storages, opened (created and stamped, on first
    use) under the lock on the instance's folder `home`."""

    @classmethod
    def config_type(cls) -> dict:
        return {**CompositeStorage.config_type(), "home": str}

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping
    ) -> CompositeStorage:
        parts = {name: value for name, value in config_value.items() if name != "home"}
        with exclusive(config_value["home"]):
            return super().from_config_value(inst_data, parts)


def project_instance() -> DagsterInstance:
    """The instance of $DAGSTER_HOME, opened under the lock (opening creates, stamps and
    migrates the SQLite storage); runs that died in-process on this host are failed
    (`dead_runs`) before it is handed out; storage that cannot be reached raises
    `InstanceError`."""
    home = dagster_home()
    with exclusive(home):
        try:
            instance = DagsterInstance.get()
        except DagsterPostgresException as error:
            cause = getattr(error.__cause__, "orig", error.__cause__) or error
            reason = str(cause).splitlines()[0]
            raise InstanceError(f"{home}/dagster.yaml: its Postgres storage: {reason}") from error
    fail_dead_runs(instance)
    return instance
