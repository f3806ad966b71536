"""Alerts end to end: real runs on a persistent Dagster instance, the alert sensors evaluated as
the daemon evaluates them, and a local HTTP receiver standing in for Slack (up, down, slow,
answering 5xx)."""

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pytest
from dagster import AssetKey, DagsterInstance, build_sensor_context, job, op
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.test_utils import InProcessTestWorkspaceLoadTarget, freeze_time
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._daemon.freshness import FreshnessDaemon
from dagster._utils.error import SerializableErrorInfo
from deltalake import DeltaTable, write_deltalake

from conftest import TINY, read_delta
from featureplane import Repository
from featureplane.alerts import Alerts, Incident
from featureplane.dagster import build_definitions
from featureplane.dagster.definitions import resources_for
from featureplane.dagster.materialize import materialize_range
from featureplane.errors import MaterializationFailed
from featureplane.quality.volume import FORCE_TAG
from featureplane.settings import sensor_interval_seconds
from featureplane.synthetic import DemoScale, generate
from resources import NotifierResource, OfflineStoreResource, OnlineStoreResource, SparkResource

DAY = timedelta(days=1)
PAGE_VIEWS, ACTIVITY = "user_daily_page_views", "user_ad_activity"
URL = "http://dagster.test:3000"


class Receiver:
    """A webhook receiver on a fixed local port: records each posted JSON body; `fail` answers
    the next N posts with 503, `delay` holds each answer; `stop()` takes it down."""

    def __init__(self):
        self.posts: list[dict] = []
        self.fail, self.delay = 0, 0.0
        self.server = self._serve(0)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"

    def _serve(self, port: int) -> ThreadingHTTPServer:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                time.sleep(receiver.delay)
                if receiver.fail:
                    receiver.fail -= 1
                    self.send_response(503)
                else:
                    receiver.posts.append(body)
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def start(self):
        self.server = self._serve(self.port)


@pytest.fixture
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.stop()


def message(incident: Incident | None = None) -> Alerts:
    alerts = Alerts()
    alerts.fire(incident or Incident("check", "features/x check quality", "bad rows"), NOW)
    return alerts


NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)


# ---- the alert model and the notifier, without Dagster runs ----------------------------------


def test_one_message_per_incident_one_when_it_resolves_and_the_cursor_round_trips():
    alerts = Alerts()
    warned = Incident("freshness", "features/x", "old", severity="warning")
    assert alerts.fire(warned, NOW)
    assert not alerts.fire(warned, NOW)  # seen again: the same incident
    assert alerts.fire(Incident("freshness", "features/x", "older"), NOW)  # escalated
    assert not alerts.fire(warned, NOW)  # a warning does not undo the failure
    assert not alerts.resolve("freshness:features/y", NOW, "fresh")
    assert alerts.resolve("freshness:features/x", NOW, "fresh")
    assert not alerts.resolve("freshness:features/x", NOW, "fresh")
    states = [(o.message.state, o.message.incident.severity) for o in alerts.outbox]
    assert states == [("firing", "warning"), ("firing", "error"), ("resolved", "error")]
    again = Alerts.from_json(alerts.to_json())
    assert again == alerts
    with pytest.raises(ValueError, match="alert cursor is not an alerts document"):
        Alerts.from_json('{"incidents": 3}')
    with pytest.raises(ValueError, match="incident features/x: unknown kind 'oops'"):
        Incident("oops", "features/x", "why")


def test_the_notifier_posts_slack_json_and_appends_the_log(receiver, tmp_path):
    log = tmp_path / "alerts.jsonl"
    notifier = NotifierResource(webhook=receiver.url, log_path=str(log))
    alerts = message(Incident("check", "features/x check quality", "2 rules\nrule b", "2026-10-01"))
    delivery = notifier.deliver(alerts.outbox, _log())
    assert (delivery.sent, delivery.kept, delivery.errors) == (1, [], [])
    [posted] = receiver.posts
    assert posted["text"] == "Check failed: features/x check quality partition 2026-10-01: 2 rules"
    assert posted["blocks"][0]["text"]["text"].endswith(">2 rules\n>rule b")
    [line] = [json.loads(text) for text in log.read_text().splitlines()]
    assert (line["state"], line["id"]) == ("firing", "check:features/x check quality[2026-10-01]")


def test_a_receiver_down_keeps_the_message_until_it_is_back(receiver, tmp_path):
    receiver.stop()
    log = tmp_path / "alerts.jsonl"
    notifier = NotifierResource(webhook=receiver.url, log_path=str(log), backoff_seconds=0.01)
    alerts = message()
    alerts.fire(Incident("check", "features/y check quality", "bad"), NOW)
    delivery = notifier.deliver(alerts.outbox, _log())
    assert delivery.sent == 0 and len(delivery.kept) == 2
    [error] = delivery.errors  # the first failure stops the webhook for this delivery
    assert "not delivered to webhook" in error and "unreachable" in error
    assert "(attempt 3 of 3)" in error
    assert len(log.read_text().splitlines()) == 2  # the log took both, once
    receiver.start()
    again = notifier.deliver(delivery.kept, _log())
    assert (again.sent, again.kept) == (2, [])
    assert [p["text"].split(":")[1] for p in receiver.posts] == [
        " features/x check quality",
        " features/y check quality",
    ]
    assert len(log.read_text().splitlines()) == 2  # nothing logged twice


def test_5xx_is_retried_with_backoff_and_a_timeout_keeps_the_message(receiver):
    receiver.fail = 2
    notifier = NotifierResource(webhook=receiver.url, backoff_seconds=0.01, timeout_seconds=0.5)
    assert notifier.deliver(message().outbox, _log()).sent == 1
    assert len(receiver.posts) == 1
    receiver.fail = 3
    [error] = notifier.deliver(message().outbox, _log()).errors
    assert "answered HTTP 503 (attempt 3 of 3)" in error
    receiver.fail, receiver.delay = 0, 1.0
    kept = notifier.deliver(message().outbox, _log())
    assert len(kept.kept) == 1 and "unreachable" in kept.errors[0]


def test_bad_settings_name_the_setting_and_the_problem(monkeypatch):
    monkeypatch.setenv("FEATUREPLANE_ALERT_WEBHOOK", "hooks.slack.com/services/T0")
    with pytest.raises(ValueError, match="alert webhook 'hooks.slack.com/services/T0' is not an"):
        NotifierResource.from_settings()
    monkeypatch.setenv("FEATUREPLANE_SENSOR_INTERVAL_SECONDS", "soon")
    with pytest.raises(ValueError, match="INTERVAL_SECONDS must be a whole number .* got 'soon'"):
        sensor_interval_seconds()


def _log():
    import logging

    return logging.getLogger("test_alerts")


# ---- the sensors over real runs --------------------------------------------------------------


@pytest.fixture
def platform(tmp_path, monkeypatch, receiver):
    """Demo sources whose last day ends today, a persistent instance, the repository's
    definitions with the notifier posting to the receiver, `run(...)` materializing and
    pushing, and `tick(sensor)` evaluating a sensor with the cursor of its last tick."""
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - 4 * DAY
    scale = DemoScale(**{**TINY.__dict__, "days": 4, "start": start})
    generate(tmp_path / "raw", scale)
    monkeypatch.setenv("FEATUREPLANE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("FEATUREPLANE_OFFLINE_ROOT", raising=False)
    monkeypatch.setenv("FEATUREPLANE_ALERT_WEBHOOK", receiver.url)
    monkeypatch.setenv("FEATUREPLANE_DAGSTER_URL", URL)
    repo = Repository.load("feature_assets")
    online = OnlineStoreResource(path=str(tmp_path / "online.sqlite"))
    offline = OfflineStoreResource(root=str(tmp_path / "offline"))
    defs = build_definitions(repo, resources_for(SparkResource(), offline, online))
    (tmp_path / "home").mkdir()
    cursors: dict[str, str | None] = {}
    with DagsterInstance.local_temp(str(tmp_path / "home")) as instance:

        def run(first, last, views, **tags):
            return materialize_range(defs, instance, first, last, views, online=True, tags=tags)

        def tick(name):
            context = build_sensor_context(
                instance=instance,
                cursor=cursors.get(name),
                definitions=defs,
                resources={"notifier": defs.resources["notifier"]},  # invoked, not by the daemon
            )
            result = defs.resolve_sensor_def(name)(context)
            cursors[name] = result.cursor
            return result

        yield start, tmp_path, instance, run, tick, defs


def test_a_failed_run_alerts_once_and_resolves_when_the_partition_succeeds(platform, receiver):
    start, root, _, run, tick, _ = platform
    run(start, start + 3 * DAY, [PAGE_VIEWS])
    second = (start + DAY).strftime("%Y-%m-%d")
    DeltaTable(str(root / "raw" / "page_views")).delete(f"event_date = '{second}'")
    with pytest.raises(MaterializationFailed) as failed:
        run(start + DAY, start + 2 * DAY, [PAGE_VIEWS])
    run_id = str(failed.value).split()[1]

    tick("failed_run_alerts")
    [alert] = receiver.posts
    assert alert["text"] == (
        f"Materialization failed: features/{PAGE_VIEWS} partition {second}: VolumeDropError: "
        f"{PAGE_VIEWS}: partition {second} 00:00 would hold 0 rows against 200 stored rows, "
        "below the volume guard (50%): nothing written. If the drop is real, rerun with the run "
        "tag featureplane/allow_volume_drop=true (featureplane materialize --allow-volume-drop) "
        f"({URL}/runs/{run_id})"
    )  # online/ was skipped for it: one incident, the step that failed
    assert f"<{URL}/runs/{run_id}|Open in Dagster>" in json.dumps(alert["blocks"])

    tick("failed_run_alerts")
    assert len(receiver.posts) == 1  # a second tick: nothing new
    with pytest.raises(MaterializationFailed):  # the same partition fails again: same incident
        run(start + DAY, start + 2 * DAY, [PAGE_VIEWS])
    tick("failed_run_alerts")
    assert len(receiver.posts) == 1

    receiver.stop()
    [forced] = [
        r
        for r in run(start + DAY, start + 2 * DAY, [PAGE_VIEWS], **{FORCE_TAG: "true"})
        if r.asset_key.path[0] == "features"
    ]
    result = tick("failed_run_alerts")  # the receiver is down: the resolve is kept
    assert "0 alerts delivered, 1 kept for retry" in result.skip_reason.skip_message
    receiver.start()
    tick("failed_run_alerts")
    [resolved] = receiver.posts[1:]
    assert resolved["text"] == (
        f"Resolved: Materialization failed: features/{PAGE_VIEWS} partition {second}: "
        f"materialized by run {forced.run_id} ({URL}/runs/{forced.run_id})"
    )
    tick("failed_run_alerts")
    assert len(receiver.posts) == 2


def test_a_failed_check_alerts_with_its_failing_rules_and_resolves_when_it_passes(
    platform, receiver
):
    start, root, _, run, tick, _ = platform
    run(start, start + DAY, [ACTIVITY])
    tick("failed_check_alerts")
    assert receiver.posts == []  # passing checks: nothing to say
    impressions = root / "raw" / "ad_impressions"
    day = read_delta(impressions)
    broken = day[day["ts"] < start + DAY].head(200).copy()  # about 3% of the day: above 1%
    broken["user_id"] = None
    broken["impression_id"] += 10**8
    schema = pa.schema(DeltaTable(str(impressions)).schema().to_arrow())
    write_deltalake(
        str(impressions),
        pa.Table.from_pandas(broken, preserve_index=False).cast(schema),
        mode="append",
    )
    with pytest.raises(MaterializationFailed):
        run(start, start + DAY, [ACTIVITY])
    tick("failed_check_alerts")
    tick("failed_run_alerts")  # the window was written, the push blocked: the check's incident
    [alert] = receiver.posts
    assert alert["text"].startswith(f"Check failed: features/{ACTIVITY} check quality")
    assert "user_id not null: " in alert["text"]
    DeltaTable(str(root / "raw" / "ad_impressions")).delete("user_id is null")
    run(start, start + DAY, [ACTIVITY])
    tick("failed_check_alerts")
    [resolved] = receiver.posts[1:]
    assert resolved["text"].startswith(f"Resolved: Check failed: features/{ACTIVITY} check quality")


def test_stale_served_data_alerts_and_a_fresh_push_resolves_it(platform, receiver):
    start, _, _, run, tick, _ = platform
    run(start, start + DAY, [PAGE_VIEWS])  # serves the first of four days: 3 days old
    tick("served_freshness_alerts")
    [alert] = receiver.posts
    assert alert["text"].startswith(
        f"Served data stale: online/{PAGE_VIEWS}: serves data up to "
        f"{start + DAY - timedelta(minutes=1):%Y-%m-%d %H}"
    )
    assert "past its freshness of 2 days" in alert["text"]
    tick("served_freshness_alerts")
    assert len(receiver.posts) == 1
    run(start + DAY, start + 4 * DAY, [PAGE_VIEWS])
    tick("served_freshness_alerts")
    [resolved] = receiver.posts[1:]
    assert resolved["text"].startswith(f"Resolved: Served data stale: online/{PAGE_VIEWS}: ")
    assert "within its freshness of 2 days" in resolved["text"]


def test_the_freshness_daemon_s_warn_and_fail_alert_and_a_materialization_resolves(
    platform, receiver
):
    start, _, instance, run, tick, _ = platform
    run(start, start + DAY, [PAGE_VIEWS])
    daemon = FreshnessDaemon(interval_seconds=1)
    origin = LoadableTargetOrigin(module_name="feature_assets.definitions")
    target = InProcessTestWorkspaceLoadTarget(InProcessCodeLocationOrigin(origin))
    now = datetime.now(UTC)
    with WorkspaceProcessContext(instance, target) as workspace:
        for hours in (0, 30, 50):  # fresh; past the warn window (1 day); past the fail one
            with freeze_time(now + timedelta(hours=hours)):
                list(daemon.run_iteration(workspace))
                tick("freshness_alerts")
        run(start + DAY, start + 2 * DAY, [PAGE_VIEWS])  # materialized now: fresh again
        list(daemon.run_iteration(workspace))
        tick("freshness_alerts")
    texts = [post["text"].split(" (http")[0] for post in receiver.posts]
    assert texts == [
        f"Asset not fresh (warning): features/{PAGE_VIEWS}: last materialized 1 day 6 hours "
        "ago: past its freshness policy's warn window (1 day)",
        f"Asset not fresh: features/{PAGE_VIEWS}: last materialized 2 days 2 hours ago: past "
        "its freshness policy's fail window (2 days)",
        f"Resolved: Asset not fresh: features/{PAGE_VIEWS}: materialized within its policy",
    ]


def test_a_failed_backfill_alerts_and_a_successful_one_over_its_assets_supersedes_it(
    platform, receiver
):
    start, _, instance, _, tick, defs = platform
    keys = [AssetKey(["features", PAGE_VIEWS]), AssetKey(["online", PAGE_VIEWS])]
    days = [(start + n * DAY).strftime("%Y-%m-%d") for n in range(3)]

    def backfill(backfill_id: str, selection: list[AssetKey]) -> PartitionBackfill:
        requested = PartitionBackfill.from_asset_partitions(
            backfill_id=backfill_id,
            asset_graph=defs.resolve_asset_graph(),
            partition_names=days,
            asset_selection=selection,
            backfill_timestamp=time.time(),
            tags={},
            dynamic_partitions_store=instance,
            all_partitions=False,
            title=None,
            description=None,
            run_config=None,
        )
        instance.add_backfill(requested)
        return requested

    running = backfill("first", keys)
    tick("failed_backfill_alerts")
    assert receiver.posts == []  # still running
    error = SerializableErrorInfo(
        "dagster._core.errors.DagsterAssetBackfillDataLoadError: Asset features/gone existed at "
        "storage-time, but no longer does\n",
        [],
        "DagsterAssetBackfillDataLoadError",
    )
    instance.update_backfill(running.with_status(BulkActionStatus.FAILED).with_error(error))
    tick("failed_backfill_alerts")
    [alert] = receiver.posts
    assert alert["text"] == (
        f"Backfill failed: backfill first (features/{PAGE_VIEWS}, online/{PAGE_VIEWS}): "
        "DagsterAssetBackfillDataLoadError: Asset features/gone existed at storage-time, but no "
        f"longer does ({URL}/runs/b/first)"
    )
    tick("failed_backfill_alerts")
    assert len(receiver.posts) == 1

    narrower = backfill("narrower", keys[:1])  # covers less than the failed one: no resolve
    instance.update_backfill(narrower.with_status(BulkActionStatus.COMPLETED_SUCCESS))
    tick("failed_backfill_alerts")
    assert len(receiver.posts) == 1
    wider = backfill("wider", keys)
    instance.update_backfill(wider.with_status(BulkActionStatus.COMPLETED_SUCCESS))
    tick("failed_backfill_alerts")
    [resolved] = receiver.posts[1:]
    assert resolved["text"] == (
        f"Resolved: Backfill failed: backfill first (features/{PAGE_VIEWS}, online/{PAGE_VIEWS})"
        f": superseded by backfill wider, which succeeded ({URL}/runs/b/wider)"
    )


def test_a_failed_job_without_assets_alerts_and_its_next_success_resolves(platform, receiver):
    _, _, instance, _, tick, _ = platform

    @op(config_schema={"fail": bool})
    def compact(context):
        if context.op_config["fail"]:
            raise OSError("disk full while compacting features/user_daily_page_views")

    @job
    def maintenance():
        compact()

    def run(fail: bool):
        config = {"ops": {"compact": {"config": {"fail": fail}}}}
        return maintenance.execute_in_process(config, instance=instance, raise_on_error=False)

    failed = run(fail=True)
    tick("failed_run_alerts")
    [alert] = receiver.posts
    assert alert["text"] == (
        "Run failed: job maintenance: OSError: disk full while compacting "
        f"features/user_daily_page_views ({URL}/runs/{failed.run_id})"
    )
    succeeded = run(fail=False)
    tick("failed_run_alerts")
    [resolved] = receiver.posts[1:]
    assert resolved["text"] == (
        f"Resolved: Run failed: job maintenance: run {succeeded.run_id} succeeded "
        f"({URL}/runs/{succeeded.run_id})"
    )


def test_a_failed_consistency_check_alerts_with_its_match_rate(platform, receiver):
    start, root, _, run, tick, _ = platform
    view = Repository.load("feature_assets").feature_view(PAGE_VIEWS)
    store = OnlineStoreResource(path=str(root / "online.sqlite")).store()
    run(start, start + DAY, [PAGE_VIEWS])
    users = read_delta(root / "raw" / "page_views")
    key = (int(users[users["ts"] < start + DAY]["user_id"].min()),)
    [record] = store.read(view.name, view.version, [key])

    def overwrite(clicks: int, later: int) -> None:
        values = {**record.values, "page_views_1d": clicks}
        moment = record.event_timestamp + timedelta(microseconds=later)
        store.write(
            view.name, view.version, [record._replace(event_timestamp=moment, values=values)]
        )

    overwrite(record.values["page_views_1d"] + 1, later=1)  # newer than the next push: kept
    run(start, start + DAY, [PAGE_VIEWS])
    tick("failed_check_alerts")
    [alert] = receiver.posts
    assert alert["text"].startswith(
        f"Check failed: online/{PAGE_VIEWS} check consistency: match rate 0.995 over 200 "
        "sampled entities ("
    )
    overwrite(record.values["page_views_1d"], later=2)
    run(start, start + DAY, [PAGE_VIEWS])
    tick("failed_check_alerts")
    [resolved] = receiver.posts[1:]
    assert resolved["text"].startswith(
        f"Resolved: Check failed: online/{PAGE_VIEWS} check consistency: passed in run "
    )
