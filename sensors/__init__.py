"""Dagster sensors and schedules: the platform running itself.

Each module contributes the `Definitions` of one concern for a repository (new source data,
apply → backfill → cut-over, alerts, maintenance); `definitions` merges them into the code
location next to the assets.
"""

from __future__ import annotations

from collections.abc import Callable

from dagster import Definitions

from featureplane.dagster import maintenance
from featureplane.repository import Repository
from sensors import dead_runs, new_data, rollout
from sensors.alerts import alert_definitions

PARTS: list[Callable[[Repository], Definitions]] = [
    new_data.definitions,
    rollout.definitions,
    alert_definitions,
    dead_runs.definitions,
    maintenance.definitions,
]
"""The contributing modules' builders, one per concern."""


def definitions(repository: Repository) -> Definitions:
    """The sensors, schedules and jobs of every concern, for one repository."""
    return Definitions.merge(Definitions(), *(part(repository) for part in PARTS))
