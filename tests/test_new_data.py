"""New and late source rows: the source's sensor reports exactly the windows they reached,
automation recomputes exactly the feature windows and pushes that read them, and the result
equals a full recompute, offline and online."""

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
from dagster import AssetKey, DagsterInstance, build_sensor_context, evaluate_automation_conditions
from deltalake import DeltaTable, write_deltalake
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import read_delta
from featureplane import (
    Aggregation,
    BatchSource,
    Entity,
    Field,
    Int64,
    Repository,
    batch_feature_view,
)
from featureplane.dagster import build_definitions
from featureplane.dagster.definitions import resources_for
from featureplane.dagster.materialize import RANGE_END_TAG, RANGE_START_TAG, materialize_range
from featureplane.online_store import open_store
from featureplane.source_changes import changes_since
from resources import OfflineStoreResource, OnlineStoreResource, SparkResource

DAY = datetime(2026, 1, 1, tzinfo=UTC)
DAYS = ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04"]


def events(rows: list[tuple[int, datetime, int]]) -> pa.Table:
    users, times, clicks = zip(*rows, strict=True)
    return pa.table(
        {
            "user_id": pa.array(users, pa.int64()),
            "ts": pa.array(times, pa.timestamp("us", "UTC")),
            "clicks": pa.array(clicks, pa.int64()),
        }
    )


FIRST = events(
    [
        (user, DAY + timedelta(days=day, hours=hour), user + day)
        for user in (1, 2, 3)
        for day in range(4)
        for hour in (1, 12, 23)
    ]
)
LATE = events(
    [(1, DAY + timedelta(days=1, hours=5), 100), (2, DAY + timedelta(days=1, hours=6), 7)]
)


def repository(path: str) -> Repository:
    """A row-level view and a two-day aggregate over the same click events."""
    clicks = BatchSource("clicks", path=path, timestamp_field="ts")
    user = Entity("user", join_keys=["user_id"])

    def clicked(clicks):
        return clicks.select("user_id", "ts", "clicks")

    common = {
        "sources": [clicks],
        "entities": [user],
        "schema": [Field("clicks", Int64)],
        "timestamp_field": "ts",
        "feature_start_time": DAY,
    }
    last = batch_feature_view(name="user_last_clicks", **common)(clicked)
    totals = batch_feature_view(
        name="user_click_totals",
        aggregations=[Aggregation("clicks", "sum", timedelta(days=2), name="clicks_2d")],
        **common,
    )(clicked)
    return Repository.from_objects([clicks, user, last, totals])


def definitions(repo: Repository, root, store_path):
    resources = resources_for(
        SparkResource(),
        OfflineStoreResource(root=str(root)),
        OnlineStoreResource(path=str(store_path)),
    )
    return build_definitions(repo, resources)


def requested(result, keys) -> dict[str, list[str]]:
    """The partitions requested of each asset, by asset."""
    asked = {key.to_user_string(): sorted(result.get_requested_partitions(key)) for key in keys}
    return {key: partitions for key, partitions in asked.items() if partitions}


def run(defs, instance, asked: dict[str, list[str]]) -> None:
    """Execute what automation asked for: each asset's partition range in one run, the
    features before their pushes."""
    job = defs.resolve_implicit_global_asset_job_def()
    for key, partitions in sorted(asked.items(), key=lambda item: item[0].startswith("online")):
        tags = {RANGE_START_TAG: partitions[0], RANGE_END_TAG: partitions[-1]}
        result = job.execute_in_process(
            instance=instance, asset_selection=[AssetKey.from_user_string(key)], tags=tags
        )
        assert result.success


class Automation:
    """The new-data sensor and the automation conditions of one repository, ticked by hand."""

    def __init__(self, defs, instance):
        self.defs, self.instance = defs, instance
        self.sensor = defs.get_sensor_def("clicks_new_data")
        self.sensor_cursor = None
        self.cursor = evaluate_automation_conditions(defs=defs, instance=instance).cursor

    def report(self) -> dict[str, list[str]]:
        context = build_sensor_context(
            instance=self.instance, cursor=self.sensor_cursor, definitions=self.defs
        )
        result = self.sensor(context)
        self.sensor_cursor = result.cursor
        reported: dict[str, list[str]] = {}
        for event in result.asset_events:
            self.instance.report_runless_asset_event(event)
            reported.setdefault(event.metadata["trigger"].value, []).append(event.partition)
        return reported

    def evaluate(self) -> dict[str, list[str]]:
        result = evaluate_automation_conditions(
            defs=self.defs, instance=self.instance, cursor=self.cursor
        )
        self.cursor = result.cursor
        return requested(result, [spec.key for spec in self.defs.resolve_all_asset_specs()])


@pytest.fixture
def setup(data_dir, spark):
    path = str(data_dir / "raw" / "clicks")
    write_deltalake(path, FIRST)
    return repository(path), path


def table(root, view) -> list[tuple]:
    frame = read_delta(root / "features" / view.name / view.version)
    columns = sorted(c for c in frame.columns if c != "event_date")
    return sorted(map(tuple, frame[columns].astype(str).to_numpy()))


def test_late_rows_recompute_exactly_their_windows_and_equal_a_full_recompute(setup, tmp_path):
    repo, path = setup
    defs = definitions(repo, tmp_path / "offline", tmp_path / "online.sqlite")
    instance = DagsterInstance.ephemeral()
    automation = Automation(defs, instance)

    assert automation.report() == {"landed": DAYS}
    asked = automation.evaluate()
    assert asked == {"features/user_last_clicks": DAYS, "features/user_click_totals": DAYS}
    run(defs, instance, asked)
    asked = automation.evaluate()
    assert asked == {"online/user_last_clicks": DAYS, "online/user_click_totals": DAYS}
    run(defs, instance, asked)
    assert automation.evaluate() == {}
    assert automation.report() == {}  # nothing new: nothing reported, cursor kept

    write_deltalake(path, LATE, mode="append")
    assert automation.report() == {"late or changed rows": ["2026-01-02"]}
    asked = automation.evaluate()
    # the pushes in the same request; a two-day aggregate served on 01-03 merges 01-02's tiles
    assert asked == {
        "features/user_last_clicks": ["2026-01-02"],
        "features/user_click_totals": ["2026-01-02"],
        "online/user_last_clicks": ["2026-01-02"],
        "online/user_click_totals": ["2026-01-02", "2026-01-03"],
    }
    run(defs, instance, asked)
    assert automation.evaluate() == {}

    DeltaTable(path).optimize.compact()  # rewrites files, changes no row
    assert automation.report() == {}

    full = definitions(repo, tmp_path / "full", tmp_path / "full.sqlite")
    materialize_range(full, DagsterInstance.ephemeral(), DAY, DAY + timedelta(days=4), online=True)
    for view in repo.feature_views.values():
        assert table(tmp_path / "offline", view) == table(tmp_path / "full", view)
        keys = [(1,), (2,), (3,)]
        ours = open_store({"type": "sqlite", "path": str(tmp_path / "online.sqlite")})
        theirs = open_store({"type": "sqlite", "path": str(tmp_path / "full.sqlite")})
        assert ours.read(view.name, view.version, keys) == theirs.read(
            view.name, view.version, keys
        )


@settings(max_examples=25)
@given(
    batches=st.lists(
        st.lists(st.integers(min_value=-48, max_value=24 * 10), min_size=1, max_size=20),
        min_size=1,
        max_size=4,
    )
)
def test_changed_buckets_are_those_of_the_appended_rows(tmp_path_factory, batches):
    """Oracle: the floor of every appended event time to its day, from the first day on."""
    path = str(tmp_path_factory.mktemp("changes") / "events")
    write_deltalake(path, events([(0, DAY, 0)]))
    for hours in batches:
        rows = [(1, DAY + timedelta(hours=h, minutes=7), 1) for h in hours]
        write_deltalake(path, events(rows), mode="append")
    changes = changes_since(path, 0, "ts", DAY, timedelta(days=1))
    appended = [DAY + timedelta(hours=h, minutes=7) for hours in batches for h in hours]
    assert changes.version == len(batches)
    assert changes.rows == len(appended)
    assert changes.buckets == {
        DAY + timedelta(days=(moment - DAY) // timedelta(days=1))
        for moment in appended
        if moment >= DAY
    }
    assert changes.unknown is None


def test_changes_are_unknown_when_the_log_lost_a_commit(tmp_path):
    path = tmp_path / "events"
    for day in range(3):
        write_deltalake(str(path), events([(1, DAY + timedelta(days=day), 1)]), mode="append")
    DeltaTable(str(path)).create_checkpoint()  # then log clean-up drops the older commits
    for version in (0, 1):
        (path / "_delta_log" / f"{version:020d}.json").unlink()
    changes = changes_since(str(path), 0, "ts", DAY, timedelta(days=1))
    assert changes.unknown == "the log no longer holds commit 1"
    assert changes.buckets == frozenset()


def test_deleted_rows_change_the_windows_of_the_rewritten_files(tmp_path):
    path = str(tmp_path / "events")
    write_deltalake(path, events([(1, DAY, 1), (2, DAY + timedelta(days=2), 1)]))
    DeltaTable(path).delete("user_id = 2")
    changes = changes_since(path, 0, "ts", DAY, timedelta(days=1))
    # the removed file held both days, the file written back only the first
    assert changes.buckets == {DAY, DAY + timedelta(days=2)}


def test_a_manual_view_has_no_automation_and_a_scheduled_dataset_runs_on_its_schedule(setup):
    from dataclasses import replace

    from featureplane import FeatureService, TrainingDataset

    repo, _ = setup
    last = repo.feature_views["user_last_clicks"]
    manual = replace(last, batch_trigger="manual")
    service = FeatureService("click_service", features=[manual])
    dataset = TrainingDataset(
        "clicks_training", spine=manual, features=service, schedule=timedelta(days=1)
    )
    objects = [*repo.sources.values(), *repo.entities.values(), manual, service, dataset]
    defs = build_definitions(Repository.from_objects(objects))
    conditions = {
        spec.key.to_user_string(): spec.automation_condition
        for spec in defs.resolve_all_asset_specs()
    }
    assert conditions["features/user_last_clicks"] is None
    assert conditions["online/user_last_clicks"] is None
    assert conditions["training/clicks_training"].get_label() == "on_cron(0 0 * * *, UTC)"
    with pytest.raises(
        Exception, match="batch_trigger 'sometimes' is not one of scheduled, manual"
    ):
        replace(last, batch_trigger="sometimes")
