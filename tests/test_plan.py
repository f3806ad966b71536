"""`featureplane plan`: diffs of small repositories (add, change, remove, rename, retype), what
they cost and whom they break, the text and JSON output, and the CLI's exit codes and apply:
confirmation and serving at once without a backfill (the rollout: `test_rollout.py`)."""

import io
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from featureplane import (
    BatchSource,
    Entity,
    FeatureService,
    Field,
    Int64,
    Repository,
    String,
    TrainingDataset,
    batch_feature_view,
)
from featureplane.plan import diff
from featureplane.registry import build_registry
from featureplane.registry_store import RegistryStore
from tests.serving_repo import ad_stats, purchase_context

STORE = {"type": "sqlite", "path": "/tmp/online.sqlite"}
START = datetime(2026, 1, 1, tzinfo=UTC)

events = BatchSource("events", path="raw/events", timestamp_field="ts")
user = Entity("user", join_keys=["user_id"], join_key_types={"user_id": Int64})


@batch_feature_view(
    sources=[events],
    entities=[user],
    schema=[Field("clicks", Int64), Field("country", String)],
    timestamp_field="ts",
    feature_start_time=START,
)
def user_stats(events):
    return events


def registry(view=user_stats, features=None, *extra) -> dict:
    """The view served by `checkout` (all its features, or `features`) and trained on."""
    service = FeatureService("checkout", features=[view if features is None else view[features]])
    dataset = TrainingDataset("checkout_training", spine=events, features=service)
    return build_registry(Repository.from_objects([service, dataset, *extra]), STORE)


def by_name(plan) -> dict:
    return {(c.kind, c.name): c for c in plan.changes}


def test_the_first_plan_adds_everything_and_says_what_to_compute():
    plan = diff(None, registry())
    assert [(c.action, c.kind, c.name) for c in plan.changes] == [
        ("add", "entity", "user"),
        ("add", "source", "events"),
        ("add", "feature_view", "user_stats"),
        ("add", "feature_service", "checkout"),
        ("add", "training_dataset", "checkout_training"),
    ]
    view = by_name(plan)["feature_view", "user_stats"]
    assert view.recompute == (
        f"every window from 2026-01-01 00:00 UTC to where its sources end, 1 day each "
        f"(version {user_stats.version})"
    )
    assert view.online == (f"push the latest values of version {user_stats.version} (new keys)",)
    assert plan.summary() == "Plan: 5 to add, 0 to change, 0 to remove."
    assert not plan.breaking


def test_the_same_repository_plans_no_changes():
    plan = diff(registry(), registry(), applied_version=4)
    assert plan.empty
    assert plan.text() == (
        "No changes. The repository matches the registry (applied registry version 4).\n"
    )


def test_a_value_change_recomputes_pushes_and_rebuilds():
    """A new schedule is a new version: all partitions again, new online keys, a new dataset."""
    six_hourly = replace(user_stats, batch_schedule=timedelta(hours=6))
    plan = diff(registry(), registry(six_hourly))
    changes = by_name(plan)
    view = changes["feature_view", "user_stats"]
    assert view.action == "change"
    assert view.details == (
        f"version: {user_stats.version} -> {six_hourly.version}",
        "batch_schedule: 1 day -> 6 hours",
    )
    assert view.recompute.startswith(
        "every window from 2026-01-01 00:00 UTC to where its sources end, 6 hours each"
    )
    assert view.online == (
        f"push the latest values of version {six_hourly.version} (new keys)",
        f"delete the rows of version {user_stats.version} once the change serves",
    )
    assert changes["training_dataset", "checkout_training"].recompute.startswith("rebuild")
    assert set(changes) == {
        ("feature_view", "user_stats"),
        ("training_dataset", "checkout_training"),
    }
    assert plan.summary() == "Plan: 0 to add, 2 to change, 0 to remove."
    assert not plan.breaking


def test_a_metadata_change_recomputes_nothing():
    """Same version: no partitions, no new keys; a ttl only changes when pushed rows expire."""
    described = replace(user_stats, description="Clicks and country.", ttl=timedelta(days=2))
    (change,) = diff(registry(), registry(described)).changes
    assert change.details == ("description:  -> Clicks and country.", "ttl: none -> 2 days")
    assert (change.recompute, change.breaking) == (None, ())
    assert change.online == (
        "rows pushed from now on expire after 2 days (was none); stored rows keep theirs until "
        "pushed",
    )


def test_expectations_and_guards_are_planned_without_recomputing():
    import pandera.pyspark as pa

    from featureplane.quality import VolumeGuard

    checked = replace(
        user_stats,
        expectations=pa.DataFrameSchema(
            {"clicks": pa.Column(checks=pa.Check.ge(0, raise_warning=True))}
        ),
        volume_guard=VolumeGuard(min_share=0.8),
    )
    (change,) = diff(registry(), registry(checked)).changes
    assert change.details == (
        "+ quality: clicks not null (error)",
        "+ quality: clicks greater_than_or_equal_to(0) (warn)",
        "+ quality: volume guard: at least 80% of the stored rows",
    )
    assert (change.recompute, change.online, change.breaking) == (None, (), ())
    unguarded = replace(checked, volume_guard=None, max_invalid_share=0.0)
    (change,) = diff(registry(checked), registry(unguarded)).changes
    assert change.details == (
        "+ quality: volume guard off",
        "+ quality: invalid rows dropped: at most 0.00%",
        "- quality: volume guard: at least 80% of the stored rows",
    )


def test_a_retyped_feature_still_served_is_breaking():
    retyped = replace(user_stats, schema=(Field("clicks", String), Field("country", String)))
    plan = diff(registry(), registry(retyped))
    view = by_name(plan)["feature_view", "user_stats"]
    assert "~ feature clicks: Int64 -> String" in view.details
    assert view.breaking == (
        "feature clicks retyped Int64 -> String, used by feature service checkout, "
        "training dataset checkout_training",
    )
    assert plan.breaking == (view,)
    text = plan.text()
    assert "! ~ feature_view user_stats" in text
    assert "    ! breaking: feature clicks retyped Int64 -> String" in text
    assert text.endswith(
        "Plan: 0 to add, 2 to change, 0 to remove.\n"
        "1 of them break consumers (marked !): apply refuses them without --allow-breaking.\n"
    )


def test_a_removed_feature_breaks_the_services_that_served_it():
    narrower = replace(user_stats, schema=(Field("clicks", Int64),))
    changes = by_name(diff(registry(), registry(narrower)))
    assert changes["feature_view", "user_stats"].breaking == (
        "feature country removed, used by feature service checkout, "
        "training dataset checkout_training",
    )
    service = changes["feature_service", "checkout"]
    assert service.details == ("- selects user_stats.country",)
    assert service.breaking == (
        "online clients of feature service checkout lose user_stats.country",
    )


def test_removing_a_feature_nobody_uses_is_not_breaking():
    narrower = replace(user_stats, schema=(Field("clicks", Int64),))
    plan = diff(registry(features=["clicks"]), registry(narrower, ["clicks"]))
    assert [(c.kind, c.action) for c in plan.changes] == [
        ("feature_view", "change"),
        ("training_dataset", "change"),
    ]
    assert "- feature country (String)" in plan.changes[0].details
    assert not plan.breaking


def test_removing_a_view_and_its_service_deletes_online_rows_and_breaks_clients():
    ad_stats = replace(user_stats, name="ad_stats", description="Another view.")
    ads = FeatureService("ads", features=[ad_stats])
    changes = by_name(diff(registry(user_stats, None, ads), registry()))
    assert {(k, c.action) for k, c in changes.items()} == {
        (("feature_view", "ad_stats"), "remove"),
        (("feature_service", "ads"), "remove"),
    }
    view = changes["feature_view", "ad_stats"]
    assert view.online == (f"delete the rows of version {ad_stats.version} once the change serves",)
    assert view.breaking == ()
    assert changes["feature_service", "ads"].breaking == (
        "online clients of feature service ads lose the service",
    )


def test_a_rename_is_a_remove_and_an_add_said_to_be_a_rename():
    renamed = replace(user_stats, name="user_activity")
    plan = diff(registry(), registry(renamed))
    changes = by_name(plan)
    assert changes["feature_view", "user_stats"].renamed == "renamed to user_activity?"
    assert changes["feature_view", "user_activity"].renamed == "renamed from user_stats?"
    assert changes["feature_view", "user_activity"].online[0].startswith("push the latest")
    assert "  + feature_view user_activity   (renamed from user_stats?)" in plan.text()
    assert changes["feature_service", "checkout"].breaking == (
        "online clients of feature service checkout lose user_stats.clicks, user_stats.country",
    )


def test_the_json_plan_has_every_change_and_the_counts():
    retyped = replace(user_stats, schema=(Field("clicks", String), Field("country", String)))
    document = json.loads(json.dumps(diff(registry(), registry(retyped), 7).as_json()))
    assert document["applied_version"] == 7
    assert document["summary"] == {"add": 0, "change": 2, "remove": 0, "breaking": 1}
    view = document["changes"][0]
    assert (view["kind"], view["name"], view["action"]) == ("feature_view", "user_stats", "change")
    assert set(view) == {
        "kind",
        "name",
        "action",
        "details",
        "recompute",
        "online",
        "breaking",
        "renamed",
    }


def test_an_online_store_change_is_planned():
    moved = {**registry(), "online_store": {"type": "dynamodb", "table": "features"}}
    (change,) = diff(registry(), moved).changes
    assert (change.kind, change.name, change.action) == ("online_store", "dynamodb", "change")
    assert "push every online view's windows into it" in change.online[0]


# ---- the command line -------------------------------------------------------------------------


def test_plan_exit_codes_apply_and_idempotency(cli, data_dir):
    code, out, _ = cli("plan", "--repository", "plan_repo_v1", "--detailed-exitcode")
    assert code == 2
    assert out.startswith("Changes to the registry (nothing applied yet):")
    assert cli("plan", "--repository", "plan_repo_v1")[0] == 0

    code, out, _ = cli("apply", "--repository", "plan_repo_v1", "--yes", "--no-backfill")
    assert code == 0 and "Applied registry version 1" in out
    assert json.loads((data_dir / "registry.json").read_text())["feature_services"]

    for command in (("plan", "--detailed-exitcode"), ("apply", "--yes")):
        code, out, _ = cli(*command, "--repository", "plan_repo_v1")
        assert code == 0
        assert out.startswith("No changes. The repository matches the registry (applied")
    store = RegistryStore(str(data_dir / "offline" / "registry"))
    assert store.versions() == [1], "an empty plan applies nothing"


def test_apply_refuses_a_breaking_plan_unless_allowed(cli, data_dir):
    cli("apply", "--repository", "plan_repo_v1", "--yes")
    code, out, _ = cli("plan", "--repository", "plan_repo_v2", "--json", "--detailed-exitcode")
    assert code == 2
    assert json.loads(out)["summary"] == {"add": 0, "change": 1, "remove": 0, "breaking": 1}

    code, out, err = cli("apply", "--repository", "plan_repo_v2", "--yes")
    assert code == 1
    assert "! ~ feature_view user_stats" in out
    assert "apply it with --allow-breaking" in err
    store = RegistryStore(str(data_dir / "offline" / "registry"))
    assert store.versions() == [1]

    assert cli("apply", "--repository", "plan_repo_v2", "--allow-breaking")[0] == 1, "needs --yes"
    assert cli("apply", "--repository", "plan_repo_v2", "--yes", "--allow-breaking")[0] == 0
    assert [meta["changes"] for meta in store.history()][1] == ["~ feature_view user_stats"]


def test_a_repository_that_fails_to_load_is_exit_code_1_naming_file_object_problem(cli):
    code, out, err = cli("plan", "--repository", "plan_repo_broken", "--detailed-exitcode")
    assert (code, out) == (1, "")
    assert err.startswith("error: FeatureViewError: user_stats (")
    assert "plan_repo_broken/__init__.py:" in err
    assert "schema declares 'user_id', which is a join key" in err


def test_a_retyped_on_demand_feature_breaks_the_services_serving_it():
    schema = (Field("spend_share", String), *purchase_context.schema[1:])
    retyped = replace(purchase_context, schema=schema)
    before, after = (
        build_registry(
            Repository.from_objects([FeatureService("context", features=[ad_stats, view])]), STORE
        )
        for view in (purchase_context, retyped)
    )
    (change,) = diff(before, after).changes
    assert (change.kind, change.name) == ("on_demand_view", "purchase_context")
    assert change.breaking == (
        "feature spend_share retyped Float64 -> String, used by feature service context",
    )
    assert (change.recompute, change.online) == (None, ())


# ---- apply: confirmation, serving at once without a backfill -----------------------------------


def test_apply_without_backfill_serves_at_once(cli, data_dir):
    code, out, _ = cli("apply", "--repository", "plan_repo_v1", "--yes", "--no-backfill")
    assert code == 0 and "Not recomputing user_stats (--no-backfill)." in out
    store = RegistryStore(str(data_dir / "offline" / "registry"))
    assert store.versions() == [1] and store.serving().version == 1


class Terminal(io.StringIO):
    """Standard input typed at a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("stdin", "code", "message"),
    [
        (io.StringIO("yes\n"), 1, "stdin is not a terminal to confirm on"),
        (Terminal("y\n"), 1, "Apply cancelled: nothing applied."),
        (Terminal("yes\n"), 0, ""),
    ],
)
def test_apply_asks_for_a_typed_yes(cli, data_dir, monkeypatch, stdin, code, message):
    monkeypatch.setattr("sys.stdin", stdin)
    result, out, err = cli("apply", "--repository", "plan_repo_v1", "--no-backfill")
    assert (result, message in err) == (code, True)
    versions = RegistryStore(str(data_dir / "offline" / "registry")).versions()
    assert versions == ([1] if code == 0 else [])
