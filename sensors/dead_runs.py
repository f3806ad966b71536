"""The `dead_runs` sensor: every minute, fail the runs whose process died on this host."""

from __future__ import annotations

from dagster import (
    DefaultSensorStatus,
    Definitions,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)

from featureplane.dagster.dead_runs import fail_dead_runs
from featureplane.repository import Repository


@sensor(
    name="dead_runs",
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description="Fails runs executed in-process whose process died, freeing their queue slots.",
)
def dead_runs_sensor(context: SensorEvaluationContext) -> SkipReason:
    failed = fail_dead_runs(context.instance)
    for run_id in failed:
        context.log.warning(f"run {run_id}: its process died; marked failed")
    return SkipReason(f"failed {len(failed)} dead runs" if failed else "no dead runs")


def definitions(repository: Repository) -> Definitions:
    return Definitions(sensors=[dead_runs_sensor])
