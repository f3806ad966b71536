"""Rollout of applied registry versions: backfill, cut-over, clean-up. Blue/green serving.

Apply writes registry version N; servers keep loading the version that serves (the registry
store's serving pointer, or the serving registry file). Each tick of `registry_rollout`, in a
code location that holds N's code (every view at N's version: a stale location launches
nothing and says so):
1. launches N's backfill (`featureplane.dagster.lifecycle.launch_backfill`): the views whose
   version differs from the serving registry's, over every landed window, then the changed
   training datasets;
2. once that backfill succeeded (or had nothing to do), cuts over: N serves. A failed or
   canceled backfill cuts nothing over: the previous version keeps serving, and the next
   apply supersedes N;
3. a grace period after a cut-over (servers reload, a rollback stays cheap), deletes the
   online rows of the view versions N replaced, unless a later version serves them again.
"""

from __future__ import annotations

import json
from contextlib import closing
from datetime import UTC, datetime

from dagster import (
    DefaultSensorStatus,
    Definitions,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from featureplane.dagster.automation import report_landed
from featureplane.dagster.lifecycle import applied_backfill, launch_backfill, outcome
from featureplane.online_store import StoreThrottled, open_store
from featureplane.registry_store import CutOverRefused, RegistryStore
from featureplane.repository import Repository
from featureplane.rollout import cut_over, replaced, rolled_out, stale_views, work
from featureplane.settings import cutover_grace, registry_store_location, sensor_interval_seconds


def definitions(repository: Repository) -> Definitions:
    """The `registry_rollout` sensor of a repository's code location."""

    @sensor(
        name="registry_rollout",
        description=(
            "Launches the backfill of each applied registry version, serves the version once "
            "it succeeded, and deletes the online rows it replaced after a grace period."
        ),
        minimum_interval_seconds=sensor_interval_seconds(),
        default_status=DefaultSensorStatus.RUNNING,
    )
    def rollout(context: SensorEvaluationContext) -> SensorResult:
        state = json.loads(context.cursor) if context.cursor else {"deletions": []}
        store = RegistryStore(registry_store_location())
        now = datetime.now(UTC)
        if state["deletions"]:
            state["deletions"] = _delete_due(context, store, state["deletions"], now)
        cursor = json.dumps(state)
        latest = store.latest()
        serving = rolled_out(store, latest)
        if latest is None:
            return SensorResult(skip_reason="nothing applied yet", cursor=cursor)
        if serving is not None and serving.version == latest.version:
            return SensorResult(skip_reason=f"version {latest.version} serves", cursor=cursor)
        stale = stale_views(repository, latest.registry)
        if stale:
            return SensorResult(
                skip_reason=(
                    f"registry version {latest.version} waits for this code location to load "
                    f"its code (views {', '.join(stale)} differ): reload the code location"
                ),
                cursor=cursor,
            )
        backfill = applied_backfill(context.instance, latest.version)
        if backfill is None:
            graph = context.repository_def.asset_graph
            report_landed(context.instance, repository, now)  # automation: these are done
            needed = work(serving, latest)
            backfill = launch_backfill(
                graph, context.instance, repository, needed, latest.version, now
            )
            if backfill is not None:
                context.log.info(f"launched backfill {backfill.backfill_id}: {backfill.title}")
                return SensorResult(skip_reason=f"launched {backfill.backfill_id}", cursor=cursor)
        elif outcome(backfill) is None:
            return SensorResult(skip_reason=f"backfill {backfill.backfill_id} runs", cursor=cursor)
        elif outcome(backfill) != "succeeded":
            return SensorResult(
                skip_reason=(
                    f"backfill {backfill.backfill_id} of version {latest.version} "
                    f"{outcome(backfill)}: version {serving.version if serving else 'none'} "
                    "keeps serving; fix and apply again"
                ),
                cursor=cursor,
            )
        try:
            cut_over(store, latest.version)
        except CutOverRefused as refused:  # a newer version serves already
            return SensorResult(skip_reason=str(refused), cursor=cursor)
        due = (now + cutover_grace()).isoformat()
        state["deletions"] += [
            {
                "view": view,
                "version": version,
                "due": due,
                "store": serving.registry["online_store"],
            }
            for view, version in replaced(serving, latest)
        ]
        context.log.info(f"registry version {latest.version} serves")
        return SensorResult(
            skip_reason=f"version {latest.version} serves now", cursor=json.dumps(state)
        )

    return Definitions(sensors=[rollout])


def _delete_due(
    context: SensorEvaluationContext, store: RegistryStore, deletions: list[dict], now: datetime
) -> list[dict]:
    """Delete the online rows whose grace period ended, from the store that held them; the
    deletions still pending (not due, or the store did not answer: the next tick resumes)."""
    serving = store.serving()
    served = {(v["name"], v["version"]) for v in serving.registry["feature_views"]}
    pending = []
    for deletion in deletions:
        key = (deletion["view"], deletion["version"])
        if key in served and deletion["store"] == serving.registry["online_store"]:
            continue  # served again (a rollback): its rows stay
        if datetime.fromisoformat(deletion["due"]) > now:
            pending.append(deletion)
            continue
        try:
            with closing(open_store(deletion["store"])) as online:
                deleted = online.delete_version(*key)
        except StoreThrottled as error:  # throttled or unavailable
            context.log.warning(f"deleting {key[0]} version {key[1]}: {error}; retried next tick")
            pending.append(deletion)
            continue
        context.log.info(f"deleted {deleted} online rows of {key[0]} version {key[1]}")
    return pending
