"""Online push through Dagster: records equal the offline tables' latest state, conditional
writes make reruns and backfills safe, and the consistency check catches a corrupt record.

The expected records are computed here from the stored feature and tile tables with plain
Python (latest row per entity; tiles in [end - longest window, end)), not with the push's
Spark code; the consistency check compares them with `FeatureStore` point-in-time values.
"""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from dagster import AssetCheckEvaluation, AssetKey, DagsterEventType, DagsterInstance
from deltalake import DeltaTable
from moto import mock_aws

from conftest import TINY
from featureplane import Repository
from featureplane.aggregation import TILE_START, TILES, pack_tiles
from featureplane.consistency import Mismatch, compare, moment, moments, online_values
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
    records: dict[tuple, Record] = {}
    if not view.aggregations:
        table = rows(root / "features" / view.name / view.version)
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
    return {
        key: Record(
            key, tiles[-1][TILE_START] + view.interval, {TILES: pack_tiles(tiles, view.interval)}
        )
        for key, tiles in entity_tiles(root, view, end).items()
    }


def entity_tiles(root: Path, view: FeatureView, end: datetime) -> dict[tuple, list[dict]]:
    """Each entity's stored tiles that a push of everything before `end` sends, in order."""
    begin = end - max(a.time_window for a in view.aggregations)
    tiles: dict[tuple, list[dict]] = {}
    table = rows(root / "features" / view.name / view.version)
    for row in sorted(table, key=lambda row: row[TILE_START]):
        start = row.pop(TILE_START).replace(tzinfo=UTC)
        if begin <= start < end:
            key = tuple(row.pop(k) for k in view.join_keys)
            del row["event_date"]
            tiles.setdefault(key, []).append({TILE_START: start, **row})
    return tiles


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


def test_a_rerun_of_a_past_window_compares_the_newer_records(repo, pushed, tmp_path):
    """A rerun of the first day meets newer records of later days in the store: each is
    compared at the moment it speaks for, not at the first day's end, and all match."""
    root = pushed[0]
    online = OnlineStoreResource(path=str(tmp_path / "online.sqlite"))
    names = [ROW_LEVEL, AGGREGATE, "user_ad_activity"]
    first_day_end = TINY.start + timedelta(days=1)
    with DagsterInstance.ephemeral() as instance:
        push(repo, root, online, instance, views=names)
        results = push(repo, root, online, instance, TINY.start, first_day_end, names)
        evaluations = checks(instance, next(iter(results.values())).run_id)
    for name in names:
        check = evaluations[name]
        assert check.passed, (name, check.metadata["mismatches"])
        view = repo.feature_view(name)
        pushed_then = expected_records(root, view, first_day_end)
        now = expected_records(root, view, END)
        newer = [k for k, r in pushed_then.items() if now[k].event_timestamp > r.event_timestamp]
        assert check.metadata["sampled"].value == len(pushed_then) > 0
        assert newer and check.metadata["compared_to"].value > first_day_end.timestamp()


def test_aggregate_moments_see_the_tiles_a_brute_force_sum_sees(repo, pushed):
    """At `moments`, every count an aggregate record serves equals a plain sum over the
    stored tile table (the offline truth), for every entity and window."""
    root, online = pushed[0], pushed[1]
    store = open_store(online.settings())
    for name in (AGGREGATE, "user_ad_activity"):
        view = repo.feature_view(name)
        table = pd.DataFrame(rows(root / "features" / name / view.version))
        table[TILE_START] = pd.to_datetime(table[TILE_START], utc=True)
        keys = list(expected_records(root, view, END))
        counts = [a for a in view.aggregations if a.fn.name == "count"]
        assert counts
        for key, record in zip(keys, store.read(name, view.version, keys), strict=True):
            at = moments(view, record, END)
            mine = table[(table[list(view.join_keys)] == key).all(axis=1)]
            for a in counts:
                window = mine[(mine[TILE_START] >= at[a.name] - a.time_window)]
                expected = int(window[window[TILE_START] < at[a.name]][a.partial_column].sum())
                served = online_values(view, record, at[a.name])[a.name]
                assert served == expected, (name, key, a.name)


def test_an_aggregate_record_is_compared_where_it_holds_every_tile(repo, pushed):
    """A push ending at day 9 sends the tiles of the last week: of an entity's tiles of day 1
    and day 3, only day 3's. At the record's own time (day 4) the week would reach day 1,
    which the record lacks; at its moments every count equals the sum over both tiles."""
    view = repo.feature_view(AGGREGATE)
    day = timedelta(days=1)
    key, tiles = next((k, t) for k, t in entity_tiles(pushed[0], view, END).items() if len(t) > 1)
    tiles = [
        {**tile, TILE_START: TINY.start + n * day}
        for tile, n in zip(tiles[:2], (1, 3), strict=True)
    ]
    record = Record(key, TINY.start + 4 * day, {TILES: pack_tiles(tiles[1:], view.interval)})
    at = moments(view, record, TINY.start + 9 * day)

    def offline(a, when):
        return sum(
            t[a.partial_column] for t in tiles if when - a.time_window <= t[TILE_START] < when
        )

    counts = [a for a in view.aggregations if a.fn.name == "count"]
    for a in counts:
        assert online_values(view, record, at[a.name])[a.name] == offline(a, at[a.name]), a.name
    week = next(a for a in counts if a.time_window == 7 * day)
    own_time = record.event_timestamp
    assert online_values(view, record, own_time)[week.name] != offline(week, own_time)


def test_consistency_check_lists_a_corrupt_tile(repo, pushed, tmp_path):
    root = pushed[0]
    online = OnlineStoreResource(path=str(tmp_path / "online.sqlite"))
    view = repo.feature_view(AGGREGATE)
    with DagsterInstance.ephemeral() as instance:
        push(repo, root, online, instance, views=[AGGREGATE])
        key, tiles = next(iter(entity_tiles(root, view, END).items()))
        tiles[-1]["count__impression_id"] += 5
        record = Record(
            key, END + timedelta(microseconds=1), {TILES: pack_tiles(tiles, view.interval)}
        )
        open_store(online.settings()).write(view.name, view.version, [record])
        results = push(repo, root, online, instance, views=[AGGREGATE])
        check = checks(instance, results[f"online/{AGGREGATE}"].run_id)[AGGREGATE]
    assert not check.passed
    assert check.metadata["matched"].value == check.metadata["sampled"].value - 1
    mismatches = check.metadata["mismatches"].value
    assert {m["feature"] for m in mismatches} == {
        "impressions_1d",
        "impressions_3d",
        "impressions_7d",
    }
    for m in mismatches:
        assert m["entity_key"] == list(key)
        assert int(m["online"]) == int(m["offline"]) + 5


def test_compare_merges_tiles_at_each_records_moments():
    """The Spark-free comparison: a row-level record is compared at its event time, an
    aggregate one per aggregation; NaN equals NaN, a missing record serves nulls at the
    window's end, and mismatches name entity, feature and moment."""
    repo = Repository.load("feature_assets")
    rows_view, tiles_view = repo.feature_view(ROW_LEVEL), repo.feature_view("user_ad_activity")
    values = {"impressions_1d": 3, "clicks_1d": 1, "ctr_1d": float("nan")}
    written = END - timedelta(days=2)
    fresh = Record(("a1",), written, values, written + timedelta(days=1))
    offline = {(("a1",), written): {"ad_id": "a1", **values}}
    offline[("a2",), moment(rows_view, END)] = {"ad_id": "a2", **dict.fromkeys(values)}
    assert compare(rows_view, END, {("a1",): fresh, ("a2",): None}, offline).match_rate == 1.0
    offline[("a1",), written]["clicks_1d"] = 2
    report = compare(rows_view, END, {("a1",): fresh}, offline)
    assert report.matched == 0
    assert report.examples == [Mismatch(("a1",), "clicks_1d", written, 1, 2)]
    hour = END - timedelta(hours=1)
    tile = {
        TILE_START: hour,
        "count__impression_id": 4,
        "count__clicked_impression_id": 1,
        "total__position": {"n": 4, "s": 10},
        "max__click_unix_s": 1_790_000_000,
    }
    record = Record((7,), END, {TILES: pack_tiles([tile], tiles_view.interval)})
    at = moments(tiles_view, record, END)
    assert at == {a.name: max(END, hour + a.time_window) for a in tiles_view.aggregations}
    served = {
        a.name: online_values(tiles_view, record, at[a.name])[a.name]
        for a in tiles_view.aggregations
    }
    value = {
        "impression_id": 4,
        "clicked_impression_id": 1,
        "position": 2.5,
        "click_unix_s": 1_790_000_000,
    }
    assert served == {a.name: value[a.column] for a in tiles_view.aggregations}
