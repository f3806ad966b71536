"""Online push through Dagster: records equal the offline tables' latest state, conditional
writes make reruns and backfills safe, and the consistency check catches a corrupt record.

The expected records are computed here from the stored feature and tile tables with plain
Python (latest row per entity; tiles in [end - longest window, end)), not with the push's
Spark code; the consistency check compares them with `FeatureStore` point-in-time values.
"""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from dagster import AssetCheckEvaluation, AssetKey, DagsterEventType, DagsterInstance
from deltalake import DeltaTable
from moto import mock_aws

from conftest import TINY
from featureplane import Repository
from featureplane.aggregation import TILE_START, TILES, pack_tiles
from featureplane.consistency import compare, moment, online_values
from featureplane.dagster import build_definitions
from featureplane.dagster.definitions import resources_for
from featureplane.dagster.materialize import Materialized, materialize_range
from featureplane.feature_view import FeatureView
from featureplane.online_store import Record, expiry, open_store
from featureplane.online_store.encoding import from_epoch_seconds, to_epoch_seconds
from resources import OfflineStoreResource, OnlineStoreResource, SparkResource

END = TINY.start + timedelta(days=TINY.days)
ONLINE_VIEWS = [
    "user_daily_page_views",
    "ad_daily_performance",
    "user_profile",
    "user_click_sessions",
    "user_ad_activity",
    "ad_delivery",
    "user_recent_categories",
]
ROW_LEVEL, AGGREGATE = "ad_daily_performance", "ad_delivery"


@pytest.fixture(scope="module")
def repo(demo_data) -> Repository:
    return Repository.load("feature_assets")


def push(
    repo: Repository,
    root: Path,
    online: OnlineStoreResource,
    instance: DagsterInstance,
    start: datetime = TINY.start,
    end: datetime = END,
    views: list[str] | None = None,
) -> dict[str, Materialized]:
    defs = build_definitions(
        repo, resources_for(SparkResource(), OfflineStoreResource(root=str(root)), online)
    )
    results = materialize_range(defs, instance, start, end, views, online=True)
    return {r.asset_key.to_user_string(): r for r in results}


def checks(instance: DagsterInstance, run_id: str) -> dict[str, AssetCheckEvaluation]:
    """The run's consistency check evaluations, by view."""
    entries = instance.all_logs(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)
    evaluations = [e.dagster_event.event_specific_data for e in entries]
    return {e.asset_key.path[-1]: e for e in evaluations if e.check_name == "consistency"}


def rows(path: Path) -> list[dict]:
    """A Delta table's rows as Python values (nulls stay None), read from its data files."""
    return pq.ParquetDataset(DeltaTable(str(path)).file_uris()).read().to_pylist()


def expected_records(root: Path, view: FeatureView, end: datetime) -> dict[tuple, Record]:
    """What a push of everything before `end` must leave online, from the stored table."""
    table = rows(root / "features" / view.name / view.version)
    records: dict[tuple, Record] = {}
    if not view.aggregations:
        ts = view.timestamp_field
        for row in sorted(table, key=lambda row: row[ts]):
            when = row[ts].replace(tzinfo=UTC)
            if when < end:
                values = {name: row[name] for name in view.feature_names}
                key = tuple(row[k] for k in view.join_keys)
                expires = expiry(when, view.ttl)  # stored to the second, rounded up
                expires = expires and from_epoch_seconds(to_epoch_seconds(expires))
                records[key] = Record(key, when, values, expires)
        return records
    begin = end - max(a.time_window for a in view.aggregations)
    tiles: dict[tuple, list[dict]] = {}
    for row in sorted(table, key=lambda row: row[TILE_START]):
        start = row.pop(TILE_START).replace(tzinfo=UTC)
        if begin <= start < end:
            key = tuple(row.pop(k) for k in view.join_keys)
            del row["event_date"]
            tiles.setdefault(key, []).append({TILE_START: start, **row})
    return {
        key: Record(key, tiles[-1][TILE_START] + view.interval, {TILES: pack_tiles(tiles)})
        for key, tiles in tiles.items()
    }


@pytest.fixture(scope="module")
def pushed(repo, tmp_path_factory) -> Iterator[tuple[Path, OnlineStoreResource, dict]]:
    """Every view materialized and pushed over the demo days, in one run per partitioning."""
    root = tmp_path_factory.mktemp("online_push")
    online = OnlineStoreResource(path=str(root / "online.sqlite"))
    with DagsterInstance.ephemeral() as instance:
        results = push(repo, root / "offline", online, instance)
        evaluations = {}
        for run_id in {r.run_id for r in results.values()}:
            evaluations |= checks(instance, run_id)
        yield root / "offline", online, results, evaluations


def test_online_assets_follow_their_features(repo, tmp_path):
    defs = build_definitions(
        repo, resources_for(SparkResource(), OfflineStoreResource(root=str(tmp_path)))
    )
    specs = {s.key: s for s in defs.resolve_all_asset_specs() if s.key.path[0] == "online"}
    assert set(specs) == {AssetKey(["online", name]) for name in ONLINE_VIEWS}
    for key, spec in specs.items():
        view = repo.feature_view(key.path[-1])
        assert spec.code_version == view.version
        assert spec.kinds == {"sqlite"}
        assert spec.owners == [view.owner]
        assert {dep.asset_key for dep in spec.deps} == {AssetKey(["features", view.name])}
        assert (
            spec.partitions_def
            == defs.resolve_assets_def(AssetKey(["features", view.name])).partitions_def
        )
    graph = defs.resolve_asset_graph()
    consistency = {k.asset_key for k in graph.asset_check_keys if k.name == "consistency"}
    assert consistency == set(specs)


def test_pushed_records_are_the_latest_state_and_consistent(repo, pushed):
    root, online, results, evaluations = pushed
    store = open_store(online.settings())
    for name in ONLINE_VIEWS:
        view = repo.feature_view(name)
        expected = expected_records(root, view, END)
        result = results[f"online/{name}"]
        assert result.rows == len(expected) > 0
        stored = store.read(name, view.version, list(expected))
        assert dict(zip(expected, stored, strict=True)) == expected, name
        check = evaluations[name]
        assert check.passed, check.metadata["mismatches"]
        assert check.metadata["match_rate"].value == 1.0
        assert check.metadata["sampled"].value == min(len(expected), 1000)


def test_push_metadata(pushed):
    _, _, results, _ = pushed
    result = results[f"online/{ROW_LEVEL}"]
    assert result.partitions == TINY.days
    assert result.rows_per_second > 0


def push_metadata(instance: DagsterInstance, name: str) -> dict:
    event = instance.get_latest_materialization_event(AssetKey(["online", name]))
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def test_reruns_keep_and_backfills_never_clobber_newer_values(repo, pushed, tmp_path):
    root = pushed[0]
    online = OnlineStoreResource(path=str(tmp_path / "online.sqlite"))
    store = open_store(online.settings())
    views = [repo.feature_view(name) for name in (ROW_LEVEL, AGGREGATE)]
    latest = {view.name: expected_records(root, view, END) for view in views}
    last_day, first_day_end = END - timedelta(days=1), TINY.start + timedelta(days=1)
    with DagsterInstance.ephemeral() as instance:
        push(repo, root, online, instance, views=[ROW_LEVEL, AGGREGATE])
        for start, end in ((last_day, END), (TINY.start, first_day_end)):
            push(repo, root, online, instance, start, end, [ROW_LEVEL, AGGREGATE])
            for view in views:
                metadata = push_metadata(instance, view.name)
                sent = expected_records(root, view, end)  # aggregates: every tile is in reach
                if not view.aggregations:
                    sent = {k: r for k, r in sent.items() if r.event_timestamp >= start}
                newer = sum(
                    r.event_timestamp < latest[view.name][k].event_timestamp
                    for k, r in sent.items()
                )
                assert metadata["rows_skipped_stale"] == newer, (view.name, start)
                assert newer > 0 or start == last_day  # the backfill met newer values
                assert metadata["rows_written"] == metadata["dagster/row_count"] - newer
                stored = store.read(view.name, view.version, list(latest[view.name]))
                assert stored == list(latest[view.name].values()), (view.name, start)


def test_consistency_check_fails_on_a_corrupt_record(repo, pushed, tmp_path):
    root = pushed[0]
    online = OnlineStoreResource(path=str(tmp_path / "online.sqlite"))
    view = repo.feature_view(ROW_LEVEL)
    with DagsterInstance.ephemeral() as instance:
        push(repo, root, online, instance, views=[ROW_LEVEL])
        key, record = next(iter(expected_records(root, view, END).items()))
        corrupt = {**record.values, "clicks_1d": record.values["clicks_1d"] + 1}
        later = record.event_timestamp + timedelta(microseconds=1)  # survives the next push
        open_store(online.settings()).write(
            view.name, view.version, [record._replace(event_timestamp=later, values=corrupt)]
        )
        results = push(repo, root, online, instance, views=[ROW_LEVEL])
        check = checks(instance, results[f"online/{ROW_LEVEL}"].run_id)[ROW_LEVEL]
        assert push_metadata(instance, ROW_LEVEL)["rows_skipped_stale"] == 1
    assert not check.passed
    sampled = check.metadata["sampled"].value
    assert check.metadata["match_rate"].value == (sampled - 1) / sampled
    [mismatch] = check.metadata["mismatches"].value
    assert mismatch["entity_key"] == list(key)
    assert mismatch["feature"] == "clicks_1d"
    assert mismatch["online"] == repr(corrupt["clicks_1d"])


def test_push_to_dynamodb(repo, pushed, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "testing")
    root = pushed[0]
    view = repo.feature_view(ROW_LEVEL)
    online = OnlineStoreResource(type="dynamodb", table="online-push-test", region="us-east-1")
    with mock_aws(), DagsterInstance.ephemeral() as instance:
        results = push(repo, root, online, instance, views=[ROW_LEVEL])
        assert push_metadata(instance, ROW_LEVEL)["store"] == "dynamodb"
        assert checks(instance, results[f"online/{ROW_LEVEL}"].run_id)[ROW_LEVEL].passed
        expected = expected_records(root, view, END)
        stored = open_store(online.settings()).read(view.name, view.version, list(expected))
    assert stored == list(expected.values())


def test_compare_merges_tiles_and_honours_expiry():
    """The Spark-free comparison: aggregate records are merged at the moment, expired
    row-level records serve nulls, NaN equals NaN, and mismatches name entity and feature."""
    repo = Repository.load("feature_assets")
    rows_view, tiles_view = repo.feature_view(ROW_LEVEL), repo.feature_view("user_ad_activity")
    at = moment(rows_view, END)
    values = {"impressions_1d": 3, "clicks_1d": 1, "ctr_1d": float("nan")}
    fresh = Record(("a1",), at - timedelta(hours=1), values, at + timedelta(days=1))
    expired = Record(("a2",), at - timedelta(days=5), values, at - timedelta(days=2))
    offline = [{"ad_id": "a1", **values}, {"ad_id": "a2", **dict.fromkeys(values)}]
    assert compare(rows_view, at, offline, [fresh, expired]).match_rate == 1.0
    report = compare(rows_view, at, offline, [expired, fresh])
    assert report.matched == 0
    assert report.examples[0].entity_key == ("a1",)
    hour = END - timedelta(hours=1)
    tile = {
        TILE_START: hour,
        "count__impression_id": 4,
        "count__clicked_impression_id": 1,
        "total__position": {"n": 4, "s": 10},
        "max__click_unix_s": 1_790_000_000,
    }
    record = Record((7,), END, {TILES: pack_tiles([tile])})
    served = online_values(tiles_view, record, moment(tiles_view, END))
    value = {
        "impression_id": 4,
        "clicked_impression_id": 1,
        "position": 2.5,
        "click_unix_s": 1_790_000_000,
    }
    assert served == {a.name: value[a.column] for a in tiles_view.aggregations}
