"""Alert sensors: failed runs, failed backfills, failed checks, freshness, stale served data.

Each sensor reads only what happened since its last tick (the event log after the storage id
its cursor holds, the backfills it has not seen finish), opens and resolves incidents
(`featureplane.alerts`) and hands their messages to the `notifier` resource. Its cursor is
the `Alerts` document, so a message the notifier could not deliver goes out on a later tick.
A sensor's first tick looks back `LOOKBACK`, not over the whole history.

Freshness states are Dagster's: its freshness daemon (part of `dagster-daemon`, every 30 s)
evaluates each asset's `FreshnessPolicy` and records a change of state in the event log. What
the online store serves is judged by the newest event time each push records
(`newest_event`), against the view's freshness window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import NamedTuple

from dagster import (
    AssetKey,
    DagsterEvent,
    DagsterEventType,
    DagsterInstance,
    DefaultSensorStatus,
    Definitions,
    EventLogRecord,
    EventRecordsFilter,
    RunsFilter,
    RunStatusChangeRecordsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)
from dagster._core.definitions.freshness import FreshnessState
from dagster._core.events import EVENT_TYPE_TO_PIPELINE_RUN_STATUS
from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus
from dagster._time import get_current_datetime  # Dagster's clock, as its daemons read it

from featureplane.alerts import Alerts, Incident, backfill_link, run_link
from featureplane.dagster.failures import error_text, innermost
from featureplane.dagster.policies import freshness_window
from featureplane.durations import in_words
from featureplane.repository import Repository
from featureplane.settings import sensor_interval_seconds
from resources.notifier import NotifierResource

LOOKBACK = timedelta(days=1)
BATCH = 500
"""Event records read per event type and tick; more wait for the next tick."""
NEWEST_EVENT = "newest_event"
"""The push's metadata entry: the newest event time it wrote (`OnlineIOManager`)."""
RUN_STATUS_EVENTS = set(EVENT_TYPE_TO_PIPELINE_RUN_STATUS)
Windows = dict[AssetKey, timedelta]


class Tick(NamedTuple):
    """What a watch works with on one tick: the instance, the bookkeeping it updates, the
    Dagster UI's URL for links, and the time."""

    instance: DagsterInstance
    alerts: Alerts
    url: str
    now: datetime


Watch = Callable[[Tick], None]


def alert_definitions(repository: Repository) -> Definitions:
    """The alert sensors of a repository, and the notifier they post through (from settings)."""
    offline = [view for view in repository.feature_views.values() if view.offline]
    computed = {AssetKey(["features", view.name]): freshness_window(view) for view in offline}
    served = {
        AssetKey(["online", view.name]): freshness_window(view) for view in offline if view.online
    }
    return Definitions(
        sensors=[
            alert_sensor("failed_run_alerts", "Runs that failed to materialize assets.", runs),
            alert_sensor("failed_backfill_alerts", "Backfills that failed.", backfills),
            alert_sensor("failed_check_alerts", "Asset checks that failed.", checks),
            alert_sensor(
                "freshness_alerts",
                "Freshness policy warnings and failures.",
                partial(freshness, windows=computed),
            ),
            alert_sensor(
                "served_freshness_alerts",
                "Online views serving data older than their freshness.",
                partial(served_freshness, windows=served),
            ),
        ],
        resources={"notifier": NotifierResource.from_settings()},
    )


def alert_sensor(name: str, description: str, watch: Watch) -> SensorDefinition:
    """A sensor that runs `watch` over its cursor's `Alerts` and delivers what it queued."""

    @sensor(
        name=name,
        description=description,
        minimum_interval_seconds=sensor_interval_seconds(),
        default_status=DefaultSensorStatus.RUNNING,
    )
    def evaluate(context: SensorEvaluationContext, notifier: NotifierResource) -> SensorResult:
        alerts = Alerts.from_json(context.cursor)
        watch(Tick(context.instance, alerts, notifier.dagster_url, get_current_datetime()))
        delivery = notifier.deliver(alerts.outbox, context.log)
        alerts.outbox = delivery.kept
        for error in delivery.errors:
            context.log.warning(error)
        summary = (
            f"{delivery.sent} alerts delivered, {len(delivery.kept)} kept for retry, "
            f"{len(alerts.incidents)} incidents open"
        )
        return SensorResult(skip_reason=SkipReason(summary), cursor=alerts.to_json())

    return evaluate


def new_events(tick: Tick, types: Iterable[DagsterEventType]) -> list[EventLogRecord]:
    """The events of the types stored after the cursor's position, in storage order, and the
    position moved past them. Each type is read up to BATCH records; when one is cut short,
    nothing after its last record is taken yet, so no event is ever skipped.

    Asset events and run status changes are the two kinds every event log storage indexes
    across runs (SQLite's run-sharded one included), under one sequence of storage ids."""
    instance, alerts, _, now = tick
    after = alerts.position.get("after")
    since = None if after is not None else (now - LOOKBACK).timestamp()
    records, bound = [], None
    for event_type in types:
        if event_type in RUN_STATUS_EVENTS:
            changes = RunStatusChangeRecordsFilter(
                event_type, after_storage_id=after, after_timestamp=since
            )
            found = instance.fetch_run_status_changes(changes, BATCH, ascending=True).records
        else:
            found = instance.event_log_storage.get_event_records(
                EventRecordsFilter(event_type, after_cursor=after, after_timestamp=since),
                limit=BATCH,
                ascending=True,
            )
        if len(found) == BATCH:
            last = found[-1].storage_id
            bound = last if bound is None else min(bound, last)
        records += found
    records = sorted(
        (r for r in records if bound is None or r.storage_id <= bound), key=lambda r: r.storage_id
    )
    if records:
        alerts.position["after"] = records[-1].storage_id
    return records


# ---- failed runs ----------------------------------------------------------------------------


def runs(tick: Tick) -> None:
    """A failed run opens an incident per asset it failed to materialize, over the partitions
    it failed (assets skipped because an upstream step failed are that step's incident); a
    materialization of an asset partition removes it, and the last one resolves it. A failed
    run of a job without assets opens an incident of its job, which its next success resolves."""
    instance, alerts, url, now = tick
    types = (
        DagsterEventType.RUN_FAILURE,
        DagsterEventType.RUN_SUCCESS,
        DagsterEventType.ASSET_MATERIALIZATION,
    )
    for record in new_events(tick, types):
        event_type = record.event_log_entry.dagster_event.event_type
        if event_type == DagsterEventType.RUN_FAILURE:
            failed_run(tick, record)
        elif event_type == DagsterEventType.RUN_SUCCESS:
            job = f"job {record.event_log_entry.job_name}"
            resolution = f"run {record.run_id} succeeded"
            alerts.resolve(f"run:{job}", now, resolution, run_link(url, record.run_id))
        else:
            materialized(tick, record)


def failed_run(tick: Tick, record: EventLogRecord) -> None:
    """Open the incidents of a failed run, unless open ones cover the same partitions."""
    instance, alerts, url, now = tick
    incidents = failed_assets(instance, record, url)
    if incidents is None:
        job = f"job {record.event_log_entry.job_name}"
        link = run_link(url, record.run_id)
        cause = cause_of(record.event_log_entry.dagster_event)
        alerts.fire(Incident("run", job, cause, link=link), now)
        return
    for incident, partitions in incidents:
        covered = {
            p
            for i in alerts.open_incidents("materialization")
            if i.subject == incident.subject
            for p in alerts.details[i.id]
        }
        if not set(partitions) <= covered:  # else the same partitions failed again
            alerts.fire(incident, now, partitions)


def materialized(tick: Tick, record: EventLogRecord) -> None:
    """A materialization removes its partition from the open incidents of its asset; the last
    partition resolves the incident."""
    _, alerts, url, now = tick
    event = record.event_log_entry.dagster_event
    subject, partition = event.asset_key.to_user_string(), event.partition or ""
    for incident in alerts.open_incidents("materialization"):
        left = alerts.details[incident.id]  # the partitions still to succeed
        if incident.subject == subject and partition in left:
            left.remove(partition)
            if not left:
                resolution = f"materialized by run {record.run_id}"
                alerts.resolve(incident.id, now, resolution, run_link(url, record.run_id))


def failed_assets(
    instance: DagsterInstance, failure: EventLogRecord, url: str
) -> list[tuple[Incident, list[str]]] | None:
    """The incidents of one failed run, with their partition keys ("" unpartitioned): per
    failed step, the assets it planned and did not materialize, caused by the step's error;
    without a failed step (the run failed around its steps), every asset it did not
    materialize, caused by the run's error. None if the run planned no asset."""
    run_id = failure.run_id
    of_type = {
        DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
        DagsterEventType.ASSET_MATERIALIZATION,
        DagsterEventType.STEP_FAILURE,
    }
    events = [
        r.event_log_entry.dagster_event
        for r in instance.get_records_for_run(run_id, of_type=of_type).records
    ]
    done = {
        (e.asset_key, e.partition or "")
        for e in events
        if e.event_type == DagsterEventType.ASSET_MATERIALIZATION
    }
    causes = {
        e.step_key: cause_of(e) for e in events if e.event_type == DagsterEventType.STEP_FAILURE
    }
    if not any(e.event_type == DagsterEventType.ASSET_MATERIALIZATION_PLANNED for e in events):
        return None
    failed: dict[tuple[AssetKey, str], list[str]] = {}
    for e in events:
        if e.event_type != DagsterEventType.ASSET_MATERIALIZATION_PLANNED:
            continue
        if causes and e.step_key not in causes:
            continue  # skipped after an upstream step failed, or done before it
        partitions = _planned_partitions(e)
        missing = [p for p in partitions if (e.asset_key, p) not in done]
        if missing:
            cause = causes.get(e.step_key) or cause_of(failure.event_log_entry.dagster_event)
            failed.setdefault((e.asset_key, cause), []).extend(missing)
    return [
        (
            Incident(
                "materialization",
                key.to_user_string(),
                cause,
                partition=_span(partitions),
                link=run_link(url, run_id),
            ),
            sorted(set(partitions)),
        )
        for (key, cause), partitions in failed.items()
    ]


def cause_of(failure: DagsterEvent) -> str:
    """Why a step or run failed: its error's line, or the failure event's message."""
    data = failure.event_specific_data
    if data is not None and data.error is not None:
        return error_text(innermost(data.error))
    return failure.message or "no error recorded"


def _planned_partitions(event) -> list[str]:
    data = event.asset_materialization_planned_data
    if data.partitions_subset is not None:
        return list(data.partitions_subset.get_partition_keys())
    return [data.partition or ""]


def _span(partitions: list[str]) -> str | None:
    keys = sorted(set(partitions) - {""})
    if not keys:
        return None
    return keys[0] if len(keys) == 1 else f"{keys[0]}...{keys[-1]}"


# ---- failed backfills -----------------------------------------------------------------------

TERMINAL = {
    BulkActionStatus.COMPLETED,
    BulkActionStatus.COMPLETED_SUCCESS,
    BulkActionStatus.COMPLETED_FAILED,
    BulkActionStatus.FAILED,
    BulkActionStatus.CANCELED,
}
FAILED = {BulkActionStatus.COMPLETED_FAILED, BulkActionStatus.FAILED}
SUCCEEDED = {BulkActionStatus.COMPLETED, BulkActionStatus.COMPLETED_SUCCESS}


def backfills(tick: Tick) -> None:
    """A backfill that ends failed opens an incident; one that succeeds over the same assets
    (or more) supersedes it. The cursor keeps the backfills still running and the creation
    time of the newest seen, so a tick reads only those and the ones created since."""
    instance, alerts, url, now = tick
    position = alerts.position
    since = position.get("since", (now - LOOKBACK).timestamp())
    running: list[str] = position.get("running", [])
    created = instance.get_backfills(
        filters=BulkActionsFilter(created_after=datetime.fromtimestamp(since, UTC))
    )
    watched = (
        instance.get_backfills(filters=BulkActionsFilter(backfill_ids=running)) if running else []
    )
    still = []
    for backfill in sorted(
        {b.backfill_id: b for b in [*watched, *created]}.values(),
        key=lambda b: b.backfill_timestamp,
    ):
        since = max(since, backfill.backfill_timestamp)
        if backfill.status not in TERMINAL:
            still.append(backfill.backfill_id)
            continue
        keys = sorted(key.to_user_string() for key in backfill.asset_selection or [])
        keys = keys or [f"job {backfill.job_name}"]
        if backfill.status in FAILED:
            incident = Incident(
                "backfill",
                f"backfill {backfill.backfill_id} ({', '.join(keys)})",
                _backfill_cause(instance, backfill),
                link=backfill_link(url, backfill.backfill_id),
            )
            alerts.fire(incident, now, keys)
        elif backfill.status in SUCCEEDED:
            resolution = f"superseded by backfill {backfill.backfill_id}, which succeeded"
            link = backfill_link(url, backfill.backfill_id)
            for incident in alerts.open_incidents("backfill"):
                if set(alerts.details[incident.id]) <= set(keys):  # its assets, or more
                    alerts.resolve(incident.id, now, resolution, link)
    position["since"], position["running"] = since, still


def _backfill_cause(instance: DagsterInstance, backfill) -> str:
    """The backfill's own error, or how many of its runs failed and the first one's error."""
    if backfill.error is not None:
        return error_text(innermost(backfill.error))
    failed = instance.get_run_records(
        RunsFilter(tags={"dagster/backfill": backfill.backfill_id}, statuses=["FAILURE"])
    )
    return f"{len(failed)} of its runs failed"


# ---- failed checks --------------------------------------------------------------------------


def checks(tick: Tick) -> None:
    """A failed check evaluation opens an incident per asset check and partition (a warning
    for WARN severity); a passing evaluation of the same resolves it. Checks run in runs: a
    tick reads the evaluations of the runs that ended since the last."""
    instance, alerts, url, now = tick
    ended = (DagsterEventType.RUN_SUCCESS, DagsterEventType.RUN_FAILURE)
    for run in new_events(tick, ended):
        link = run_link(url, run.run_id)
        of_type = DagsterEventType.ASSET_CHECK_EVALUATION
        for record in instance.get_records_for_run(run.run_id, of_type=of_type).records:
            evaluation = record.event_log_entry.dagster_event.asset_check_evaluation_data
            incident = Incident(
                "check",
                f"{evaluation.asset_key.to_user_string()} check {evaluation.check_name}",
                check_cause(evaluation),
                partition=evaluation.partition,
                link=link,
                severity="warning" if evaluation.severity.value == "WARN" else "error",
            )
            if not evaluation.passed:
                alerts.fire(incident, now)
            else:
                alerts.resolve(incident.id, now, f"passed in run {run.run_id}", link)


def check_cause(evaluation) -> str:
    """What failed: the check's description (the quality check's failing rules, one a line)
    and, for the consistency check, its match rate."""
    metadata = evaluation.metadata
    lines = (evaluation.description or "").splitlines()
    if "match_rate" in metadata:
        sampled = metadata["sampled"].value if "sampled" in metadata else "?"
        rate = metadata["match_rate"].value
        lines.insert(0, f"match rate {rate:.3f} over {sampled} sampled entities")
    return "\n".join(lines) or "failed"


# ---- freshness ------------------------------------------------------------------------------


def freshness(tick: Tick, windows: Windows) -> None:
    """Dagster's freshness state changes: WARN opens a warning, FAIL a failure (or escalates
    the warning), PASS resolves. Feature views' windows are named (`policies.freshness_policy`
    warns at half of it)."""
    instance, alerts, url, now = tick
    types = (DagsterEventType.FRESHNESS_STATE_CHANGE,)
    for record in new_events(tick, types):
        change = record.event_log_entry.dagster_event.event_specific_data
        subject = change.key.to_user_string()
        latest = instance.get_latest_materialization_event(change.key)
        link = run_link(url, latest.run_id) if latest is not None else None
        if change.new_state == FreshnessState.PASS:
            alerts.resolve(f"freshness:{subject}", now, "materialized within its policy", link)
            continue
        if change.new_state not in (FreshnessState.WARN, FreshnessState.FAIL):
            continue
        fail = change.new_state == FreshnessState.FAIL
        last = "never materialized"
        if latest is not None:
            age = now - datetime.fromtimestamp(latest.timestamp, UTC)
            last = f"last materialized {in_words(age, 2)} ago"
        window = windows.get(change.key)
        policy = f"its freshness policy's {'fail' if fail else 'warn'} window"
        if window is not None:
            policy += f" ({in_words(window if fail else window / 2)})"
        severity = "error" if fail else "warning"
        cause = f"{last}: past {policy}"
        alerts.fire(Incident("freshness", subject, cause, link=link, severity=severity), now)


def served_freshness(tick: Tick, windows: Windows) -> None:
    """Each online view's newest served event, from its pushes' `newest_event` (per code
    version: a new version starts over), against its freshness window."""
    instance, alerts, url, now = tick
    served: dict[str, dict] = alerts.position.setdefault("served", {})
    first = not alerts.position.get("seeded")
    alerts.position["seeded"] = True
    types = (DagsterEventType.ASSET_MATERIALIZATION,)
    pushes = [record.event_log_entry for record in new_events(tick, types)]
    if first:  # the latest push of each view, however old
        pushes = [instance.get_latest_materialization_event(key) for key in windows] + pushes
    for push in pushes:
        if push is None or push.dagster_event.asset_key not in windows:
            continue
        materialization = push.asset_materialization
        newest = materialization.metadata.get(NEWEST_EVENT)
        if newest is None:
            continue
        subject = push.dagster_event.asset_key.to_user_string()
        version = materialization.tags.get("dagster/code_version")
        known = served.get(subject)
        if known is None or known["version"] != version or known["newest"] < newest.value:
            served[subject] = {"version": version, "newest": newest.value, "run_id": push.run_id}
    for key, window in windows.items():
        subject = key.to_user_string()
        known = served.get(subject)
        if known is None:
            continue  # never pushed: nothing served to be stale
        link = run_link(url, known["run_id"])
        newest = datetime.fromtimestamp(known["newest"], UTC)
        age = now - newest
        if age > window:
            cause = (
                f"serves data up to {newest:%Y-%m-%d %H:%M} UTC, {in_words(age, 2)} old, "
                f"past its freshness of {in_words(window)}"
            )
            alerts.fire(Incident("served_freshness", subject, cause, link=link), now)
        else:
            alerts.resolve(
                f"served_freshness:{subject}",
                now,
                f"serves data {in_words(age, 2)} old, within its freshness of {in_words(window)}",
                link,
            )
