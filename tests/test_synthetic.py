"""Behaviour of the synthetic demo data: shape, flaws and determinism of the four Delta tables."""

from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from featureplane.synthetic import (
    LOGGED_UNTIL,
    TABLES,
    DemoScale,
    append,
    generate,
    logged_until,
    main,
)

SCALE = DemoScale(days=3, users=300, ads=50, advertisers=10, impressions_per_day=3000)
START_US = int(SCALE.start.timestamp()) * 1_000_000
END_US = START_US + SCALE.days * 86_400 * 1_000_000
EVENT_TABLES = TABLES[1:]


def read(root: Path, name: str) -> pa.Table:
    """Reads a Delta table from its data files (DeltaTable.to_pyarrow_table can abort at exit)."""
    path = str(root / name)
    partitioning = ds.partitioning(pa.schema([("event_date", pa.date32())]), flavor="hive")
    dataset = ds.dataset(
        DeltaTable(path).file_uris(),
        format="parquet",
        partitioning=None if name == "users" else partitioning,
        partition_base_dir=path,
    )
    return dataset.to_table()


def micros(table: pa.Table, column: str) -> np.ndarray:
    return table[column].cast(pa.int64()).to_numpy()


def distinct_rows(table: pa.Table) -> int:
    return table.group_by(table.column_names).aggregate([]).num_rows


def null_share(table: pa.Table, column: str) -> float:
    return table[column].null_count / table.num_rows


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    root = tmp_path_factory.mktemp("raw")
    return root, generate(root, SCALE)


@pytest.fixture(scope="module")
def tables(generated: tuple[Path, dict[str, int]]) -> dict[str, pa.Table]:
    return {name: read(generated[0], name) for name in TABLES}


def test_counts_match_tables_and_generation_is_deterministic(generated, tables, tmp_path):
    root, counts = generated
    assert counts == {name: tables[name].num_rows for name in TABLES}
    assert generate(tmp_path, SCALE) == counts
    for name in TABLES:
        again = read(tmp_path, name)
        keys = [(column, "ascending") for column in again.column_names]
        assert again.sort_by(keys).equals(tables[name].sort_by(keys)), name


def test_generate_overwrites_previous_tables(tmp_path):
    small = DemoScale(days=2, users=50, ads=10, advertisers=3, impressions_per_day=200)
    generate(tmp_path, SCALE)
    counts = generate(tmp_path, small)
    assert counts == {name: read(tmp_path, name).num_rows for name in TABLES}
    assert counts["page_views"] < 2 * 300 * 1.05


def test_events_lie_in_range_sorted_by_ts_and_partitioned_by_their_date(generated, tables):
    for name in EVENT_TABLES:
        table = tables[name]
        ts = micros(table, "ts")
        assert ts.min() >= START_US and ts.max() < END_US, name
        assert pc.all(pc.equal(table["event_date"], table["ts"].cast(pa.date32()))).as_py(), name
        assert (micros(table, "ingested_at") > ts).all(), name
        assert table["event_date"].type == pa.date32()
        assert table["ts"].type == pa.timestamp("us", tz="UTC")
        for file in DeltaTable(str(generated[0] / name)).file_uris():
            assert (np.diff(micros(pq.read_table(file), "ts")) >= 0).all(), file
    assert len(pc.unique(tables["page_views"]["event_date"])) == SCALE.days


def test_traffic_follows_a_daily_cycle(tables):
    hours = pc.hour(tables["page_views"]["ts"]).to_numpy()
    evening, night = np.isin(hours, [18, 19, 20, 21]).sum(), np.isin(hours, [2, 3, 4, 5]).sum()
    assert evening > 5 * night > 0


def test_users_have_a_signup_row_and_some_profile_updates(tables):
    users = tables["users"]
    ids = users["user_id"].to_numpy()
    updated, signup = micros(users, "updated_at"), micros(users, "signup_ts")
    assert sorted(ids[updated == signup]) == list(range(1, SCALE.users + 1))
    updates = ids[updated != signup]
    assert len(set(updates)) == len(updates)
    assert 0.05 < len(updates) / SCALE.users < 0.15
    assert (updated[updated != signup] >= START_US).all()
    assert (updated >= signup).all() and (updated < END_US).all()
    assert signup.min() < START_US - 300 * 86_400 * 1_000_000
    countries = Counter(pc.drop_null(users["country"]).to_pylist())
    assert 8 <= len(countries) <= 12 and all(len(code) == 2 for code in countries)
    assert countries.most_common(1)[0][1] > 0.2 * countries.total()
    ages = pc.drop_null(users["age"]).to_numpy()
    assert ages.min() >= 16 and ages.max() <= 80
    for name in EVENT_TABLES:
        assert set(tables[name]["user_id"].to_numpy()) <= set(ids), name


def test_duplicates_are_exact_copies_of_about_one_percent_of_rows(tables):
    copies = {name: tables[name].num_rows - distinct_rows(tables[name]) for name in EVENT_TABLES}
    assert copies["page_views"] > 0 and copies["ad_impressions"] > 0
    rows = sum(tables[name].num_rows for name in EVENT_TABLES)
    assert 0.005 < sum(copies.values()) / rows < 0.015
    for name, id_column in [("page_views", "event_id"), ("ad_impressions", "impression_id")]:
        # Ids identify real events: only the exact copies repeat an id.
        assert len(pc.unique(tables[name][id_column])) == distinct_rows(tables[name]), name


def test_some_events_arrive_hours_late(tables):
    late = rows = 0
    for name in EVENT_TABLES:
        lag = micros(tables[name], "ingested_at") - micros(tables[name], "ts")
        late += (lag > 3600 * 1_000_000).sum()
        rows += len(lag)
        assert np.median(lag) < 10 * 1_000_000, name
    assert 0.01 < late / rows < 0.03


def test_nulls_only_in_the_stated_columns(tables):
    expected = {
        ("users", "country"): (0.01, 0.06),
        ("users", "age"): (0.02, 0.09),
        ("page_views", "category"): (0.01, 0.03),
        ("ad_impressions", "position"): (0.005, 0.02),
    }
    for name in TABLES:
        for column in tables[name].column_names:
            low, high = expected.get((name, column), (0, 0))
            assert low <= null_share(tables[name], column) <= high, (name, column)


def test_clicks_follow_existing_impressions(tables):
    impressions, clicks = tables["ad_impressions"], tables["ad_clicks"]
    ids, first = np.unique(impressions["impression_id"].to_numpy(), return_index=True)
    at = np.searchsorted(ids, clicks["impression_id"].to_numpy())
    assert (ids[np.minimum(at, len(ids) - 1)] == clicks["impression_id"].to_numpy()).all()
    source = impressions.take(first[at])
    for column in ("user_id", "ad_id"):
        assert source[column].equals(clicks[column]), column
    delay = micros(clicks, "ts") - micros(source, "ts")
    assert delay.min() >= 2 * 1_000_000 and np.median(delay) < 300 * 1_000_000
    ctr = distinct_rows(clicks) / distinct_rows(impressions)
    assert 0.02 < ctr < 0.05


def test_clicks_favour_top_positions(tables):
    impressions = tables["ad_impressions"]
    clicked = pc.is_in(impressions["impression_id"], tables["ad_clicks"]["impression_id"])
    position = impressions["position"].to_numpy(zero_copy_only=False)
    clicked = clicked.to_numpy()
    assert clicked[position <= 3].mean() > clicked[position >= 6].mean()


def test_users_and_ads_popularity_is_skewed(tables):
    impressions = tables["ad_impressions"]
    for column, population in [("user_id", SCALE.users), ("ad_id", SCALE.ads)]:
        counts = np.sort(np.unique(impressions[column].to_numpy(), return_counts=True)[1])[::-1]
        assert counts[: population // 10].sum() > 0.35 * impressions.num_rows, column


def test_each_ad_belongs_to_one_advertiser(tables):
    pairs = tables["ad_impressions"].group_by(["ad_id", "advertiser_id"]).aggregate([])
    assert len(pc.unique(pairs["ad_id"])) == pairs.num_rows
    assert pc.max(pairs["advertiser_id"]).as_py() <= SCALE.advertisers


def test_start_must_be_a_utc_midnight():
    with pytest.raises(ValueError, match="UTC midnight"):
        DemoScale(start=datetime(2026, 10, 1, 6, tzinfo=UTC))
    with pytest.raises(ValueError, match="UTC midnight"):
        DemoScale(start=datetime(2026, 10, 1, tzinfo=UTC) + timedelta(microseconds=1))


def test_main_prints_row_counts(tmp_path, capsys):
    root = tmp_path / "raw"
    main(["--root", str(root), "--days", "1", "--users", "40", "--impressions-per-day", "100"])
    out = capsys.readouterr().out
    assert "page_views" in out and "events written" in out
    assert read(root, "ad_impressions").num_rows >= 100
    assert pc.all(pc.equal(read(root, "page_views")["event_date"], SCALE.start.date())).as_py()


def test_a_live_data_set_is_what_was_logged_and_appends_resume_it(tmp_path):
    """Generating what was logged before T1 and appending what was logged in [T1, T2) gives
    exactly the rows logged before T2, late events of earlier hours included."""
    t1 = SCALE.start + timedelta(days=1, hours=13, minutes=20)
    t2 = t1 + timedelta(hours=3)
    live, whole = tmp_path / "live", tmp_path / "whole"
    generate(live, SCALE, until=t1)
    assert logged_until(live) == t1
    for name in EVENT_TABLES:
        assert pc.max(read(live, name)["ingested_at"]).as_py() < t1
    appended = append(live, SCALE, t1, t2)
    assert logged_until(live) == t2
    generate(whole, SCALE, until=t2)
    for name in TABLES[1:]:
        got, want = read(live, name), read(whole, name)
        order = [
            ("ingested_at", "ascending"),
            ("ts", "ascending"),
            (want.column_names[0], "ascending"),
        ]
        assert got.select(want.column_names).sort_by(order).equals(want.sort_by(order)), name
        added = appended[name]
        assert added.num_rows and pc.min(added["ingested_at"]).as_py() >= t1
    late = appended["page_views"].filter(pc.less(appended["page_views"]["ts"], pa.scalar(t1)))
    assert late.num_rows > 0  # events of earlier hours logged late
    assert generate(tmp_path / "fixed", SCALE) and logged_until(tmp_path / "fixed") is None
    for name in EVENT_TABLES:  # commits without a mark
        DeltaTable(str(live / name)).optimize.compact()
        assert LOGGED_UNTIL not in DeltaTable(str(live / name)).history(1)[0]
    assert logged_until(live) == t2


def test_a_scale_through_a_moment_covers_its_day():
    moment = SCALE.start + timedelta(days=4, hours=5)
    assert SCALE.through(moment).days == 5
    assert SCALE.through(SCALE.start + timedelta(days=2)).days == 2
    with pytest.raises(ValueError, match="is not after the scale's start"):
        SCALE.through(SCALE.start)
    with pytest.raises(ValueError, match="nothing to append"):
        append(Path("unused"), SCALE, moment, moment)


def test_the_live_demo_appends_what_was_logged_since_its_last_write(tmp_path, monkeypatch, capsys):
    """`featureplane demo --append-only` resumes at the tables' mark, prints one line per
    append, and stops on Ctrl-C; without live data it says what to run first."""
    from featureplane import cli

    monkeypatch.setenv("FEATUREPLANE_DATA_DIR", str(tmp_path))
    raw = tmp_path / "raw"
    with pytest.raises(SystemExit, match="holds no live demo data: run `featureplane demo`"):
        cli.main(["demo", "--append-only"])
    with pytest.raises(SystemExit, match="--days generates fixed past data"):
        cli.main(["demo", "--days", "3", "--live"])
    with pytest.raises(SystemExit, match="--interval must be a positive number of seconds"):
        cli.main(["demo", "--append-only", "--interval", "0"])
    now = datetime.now(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    mark = now - timedelta(hours=2)
    generate(raw, replace(SCALE, start=midnight).through(now), until=mark)
    sleeps = iter([None, KeyboardInterrupt])

    def sleep(seconds):
        assert seconds == 0.5
        if (step := next(sleeps)) is not None:
            raise step

    monkeypatch.setattr(cli.time, "sleep", sleep)
    before = {name: read(raw, name).num_rows for name in EVENT_TABLES}
    assert cli.main(["demo", "--append-only", "--interval", "0.5"]) == 0
    _, line, *rest = capsys.readouterr().out.splitlines()
    assert not rest
    assert f"logged since {mark:%H:%M:%S} (" in line and " late" in line
    assert logged_until(raw) > mark
    for name in EVENT_TABLES:
        added = read(raw, name).num_rows - before[name]
        assert f" {added:,} {name}" in line
