"""Apply through the control plane: the rollout sensor launches a version's backfill only from a
code location holding its code, over the windows the sources have landed; the version serves
once the backfill succeeded, a failed one keeps the previous version serving, and `status`
shows progress and outcome. Each action a plan line announces is what the rollout does."""

import copy
from contextlib import closing
from datetime import UTC, datetime

import pyarrow as pa
import pytest
from dagster import AssetKey, DagsterInstance, build_sensor_context
from dagster._core.execution.backfill import BulkActionStatus
from deltalake import write_deltalake

from conftest import EVENTS
from featureplane import Repository
from featureplane.dagster import build_definitions
from featureplane.dagster.automation import landed_keys, view_landed
from featureplane.dagster.lifecycle import APPLY_TAG, launch_backfill
from featureplane.dagster.partitions import partitions_for
from featureplane.online_store import Record, open_store
from featureplane.plan import diff
from featureplane.registry import build_registry
from featureplane.registry_store import AppliedRegistry, RegistryStore
from featureplane.rollout import replaced, work

DAY = datetime(2026, 1, 2, tzinfo=UTC)


@pytest.fixture
def project(cli, data_dir):
    """The `cli` fixture's project, its events running to 2026-01-05 12:00 (four days landed)."""
    times = pa.array(
        [datetime(2026, 1, 5, 12, tzinfo=UTC)] * len(EVENTS), pa.timestamp("us", "UTC")
    )
    later = EVENTS.set_column(EVENTS.schema.get_field_index("ts"), "ts", times)
    write_deltalake(str(data_dir / "raw" / "events"), later, mode="append")
    return cli


class Rollout:
    """The rollout sensor of one repository package's code location, ticked by hand."""

    def __init__(self, data_dir, package: str):
        self.defs = build_definitions(Repository.load(package))
        self.sensor = self.defs.get_sensor_def("registry_rollout")
        self.home = str(data_dir / "dagster_home")
        self.cursor = None

    def tick(self) -> str:
        with DagsterInstance.from_config(self.home) as instance:
            context = build_sensor_context(
                instance=instance, cursor=self.cursor, definitions=self.defs
            )
            result = self.sensor(context)
        self.cursor = result.cursor
        return result.skip_reason.skip_message if result.skip_reason else ""


def backfills(data_dir) -> list:
    with DagsterInstance.from_config(str(data_dir / "dagster_home")) as instance:
        return instance.get_backfills()


def finish(data_dir, backfill, status: BulkActionStatus) -> None:
    with DagsterInstance.from_config(str(data_dir / "dagster_home")) as instance:
        instance.update_backfill(backfill.with_status(status))


def test_a_version_serves_once_its_backfill_succeeded(project, data_dir):
    cli = project
    code, out, _ = cli("apply", "--repository", "plan_repo_v1", "--yes")
    assert code == 0
    assert "Registry version 1 serves once the backfill of user_stats succeeds" in out
    assert backfills(data_dir) == [], "apply itself launches nothing"
    store = RegistryStore(str(data_dir / "offline" / "registry"))
    assert store.cut_over_in_force() is None, "a first version is never cut over to unbackfilled"

    stale = Rollout(data_dir, "plan_repo_v2")
    assert "waits for this code location to load its code (views user_stats differ)" in (
        stale.tick()
    )
    assert backfills(data_dir) == []

    rollout = Rollout(data_dir, "plan_repo_v1")
    assert rollout.tick().startswith("launched ")
    (backfill,) = backfills(data_dir)
    assert backfill.tags[APPLY_TAG] == "1"
    target = backfill.asset_backfill_data.target_subset
    for key in (AssetKey(["features", "user_stats"]), AssetKey(["online", "user_stats"])):
        # the windows the events landed: 2026-01-01 .. 01-04, not up to today
        partitions = target.get_partitions_subset(key).get_partition_keys()
        assert sorted(partitions) == ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04"]
    assert rollout.tick() == f"backfill {backfill.backfill_id} runs"
    code, out, _ = cli("status")
    assert code == 0 and "[------------------------]   0%  0/4" in out

    finish(data_dir, backfill, BulkActionStatus.COMPLETED_SUCCESS)
    assert rollout.tick() == "version 1 serves now"
    assert store.serving().version == 1
    assert (data_dir / "registry.json").exists(), "the serving registry file is written then"
    assert cli("status")[1].strip() == "registry version 1 serves"

    code, out, _ = cli("apply", "--repository", "plan_repo_v2", "--yes", "--allow-breaking")
    assert code == 0
    rollout = Rollout(data_dir, "plan_repo_v2")
    assert rollout.tick().startswith("launched ")
    latest = max(backfills(data_dir), key=lambda b: b.backfill_timestamp)
    assert latest.tags[APPLY_TAG] == "2"
    finish(data_dir, latest, BulkActionStatus.COMPLETED_FAILED)
    assert "failed: version 1 keeps serving" in rollout.tick()
    assert store.serving().version == 1
    code, out, _ = cli("status")
    assert code == 1 and f"backfill {latest.backfill_id} of version 2: failed" in out


def test_each_plan_line_is_what_the_rollout_does(demo_data):
    """A changed view, dataset and online store: every action the plan announces is in the
    rollout's backfill or its clean-up, and nothing else is."""
    repo = Repository.load("feature_assets")
    serving = build_registry(repo, {"type": "sqlite", "path": "/tmp/a.sqlite"})
    latest = copy.deepcopy(serving)
    latest["online_store"]["path"] = "/tmp/b.sqlite"
    views = {view["name"]: view for view in latest["feature_views"]}
    views["user_profile"]["version"] = "0123456789ab"  # as if its transformation changed
    (dataset,) = latest["training_datasets"]
    dataset["version"] = "ba9876543210"
    plan = diff(serving, latest)
    needed = work(AppliedRegistry(1, serving, {}), AppliedRegistry(2, latest, {}))
    defs = build_definitions(repo)
    instance = DagsterInstance.ephemeral()
    now = datetime.now(UTC)
    backfill = launch_backfill(defs.resolve_asset_graph(), instance, repo, needed, 2, now)
    target = backfill.asset_backfill_data.target_subset
    landed = {
        name: landed_keys(partitions_for(view), view_landed(view, now))
        for name, view in repo.feature_views.items()
    }

    def partitions(key: AssetKey) -> list[str]:
        return sorted(target.get_partitions_subset(key).get_partition_keys())

    announced = {(c.kind, c.name): c for c in plan.changes}
    profile = announced["feature_view", "user_profile"]
    assert profile.recompute.startswith("every window from 2025-09-29 00:00 UTC to where")
    assert partitions(AssetKey(["features", "user_profile"])) == landed["user_profile"]
    assert profile.online[0] == "push the latest values of version 0123456789ab (new keys)"
    assert partitions(AssetKey(["online", "user_profile"])) == landed["user_profile"]
    old = repo.feature_views["user_profile"].version
    assert profile.online[1] == f"delete the rows of version {old} once the change serves"
    assert replaced(AppliedRegistry(1, serving, {}), AppliedRegistry(2, latest, {})) == [
        ("user_profile", old)
    ]
    rebuilt = announced["training_dataset", "ctr_training"]
    assert rebuilt.recompute == "rebuild the dataset (version ba9876543210)"
    assert AssetKey(["training", "ctr_training"]) in target.non_partitioned_asset_keys
    store = announced["online_store", "sqlite"]
    assert store.online == (
        "serving reads another store: push every online view's windows into it",
    )
    pushed = {v.name for v in repo.feature_views.values() if v.online and v.offline}
    for name in pushed:
        assert partitions(AssetKey(["online", name])) == landed[name]
    recomputed = {key.path[1] for key in target.asset_keys if key.path[0] == "features"}
    assert recomputed == {"user_profile"}, "only the changed view is recomputed"
    assert set(announced) == {
        ("feature_view", "user_profile"),
        ("training_dataset", "ctr_training"),
        ("online_store", "sqlite"),
    }


def test_the_rows_a_cut_over_replaced_are_deleted_after_the_grace_period(
    project, data_dir, monkeypatch
):
    cli = project
    monkeypatch.setenv("FEATUREPLANE_CUTOVER_GRACE_SECONDS", "0")
    versions = {}
    for package in ("plan_repo_v1", "plan_repo_v2"):
        assert cli("apply", "--repository", package, "--yes", "--allow-breaking")[0] == 0
        rollout = Rollout(data_dir, package)
        rollout.tick()
        latest = max(backfills(data_dir), key=lambda b: b.backfill_timestamp)
        finish(data_dir, latest, BulkActionStatus.COMPLETED_SUCCESS)
        versions[package] = Repository.load(package).feature_views["user_stats"].version
        with closing(
            open_store({"type": "sqlite", "path": str(data_dir / "online_store.sqlite")})
        ) as online:
            online.write("user_stats", versions[package], [Record((1,), DAY, {"clicks": 3})])
        assert rollout.tick() == f"version {len(versions)} serves now"

    rollout.tick()  # the grace period (0 s) over: version 1's rows go, version 2's stay
    with closing(
        open_store({"type": "sqlite", "path": str(data_dir / "online_store.sqlite")})
    ) as online:
        assert online.read("user_stats", versions["plan_repo_v1"], [(1,)]) == [None]
        assert online.read("user_stats", versions["plan_repo_v2"], [(1,)]) != [None]
