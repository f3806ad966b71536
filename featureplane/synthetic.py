"""Deterministic synthetic data for the ad click-through / recommendations demo.

Writes four Delta tables (users, page_views, ad_impressions, ad_clicks) with the flaws that a
feature platform has to cope with: Zipf-skewed users and ads, a daily traffic cycle, late
arrivals, exact duplicate rows and nulls. Events are generated and appended one UTC day at a
time with numpy + pyarrow, so memory stays bounded by a single day and 10M+ events take seconds.
Each day and table draws from its own seeded stream, so a scale always gives the same contents.

A live data set ends now: `generate(..., until=...)` writes only the rows logged (ingested) before
then, and `append` later adds the rows logged since, late events of earlier hours included, as
logging pipelines land them. Each write records in its Delta commit until when the tables hold
what was logged (`logged_until`), so appending resumes where the last write ended.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, write_deltalake

TABLES = ("users", "page_views", "ad_impressions", "ad_clicks")
EVENTS = TABLES[1:]
LOGGED_UNTIL = "featureplane.logged_until"
"""Delta commit metadata: the tables hold every row logged before this time (ISO 8601)."""
_TRAITS = len(TABLES)  # random stream for hidden per-user / per-ad traits

SECOND_US = 1_000_000
HOUR_US = 3600 * SECOND_US
DAY_US = 24 * HOUR_US
TS = pa.timestamp("us", tz="UTC")

ZIPF_EXPONENT = 1.1
TARGET_CTR = 0.035
LATE_SHARE, DUPLICATE_SHARE = 0.02, 0.01
MAX_LAG_US = 8 * HOUR_US  # late events are logged up to 8 hours after they happen
COUNTRIES = pa.array(["US", "GB", "DE", "FR", "IN", "BR", "JP", "CA", "ES", "IT", "NL", "SE"])
COUNTRY_P = np.array([30, 12, 11, 9, 8, 7, 6, 5, 4, 3, 3, 2]) / 100
CATEGORIES = pa.array(
    ["news", "sports", "finance", "tech", "autos", "travel", "food", "fashion", "beauty", "health"]
    + ["home", "garden", "music", "movies", "gaming", "books", "kids", "pets", "jobs", "realty"]
)
PAGES_PER_CATEGORY = 1_000
# Relative traffic per UTC hour: quiet at night, peaking in the evening.
HOUR_P = np.array([2, 1, 1, 1, 1, 2, 4, 6, 7, 7, 7, 8, 8, 7, 7, 7, 8, 9, 11, 13, 14, 13, 9, 5])
HOUR_P = HOUR_P / HOUR_P.sum()
POSITION_P = 1 / np.arange(1, 11) ** 0.5  # lower slots are rendered less often
POSITION_P = POSITION_P / POSITION_P.sum()
POSITION_CTR = 1 / np.arange(1, 11) ** 0.8  # position bias: top slots get clicked more


@dataclass(frozen=True)
class DemoScale:
    """Size and seed of a generated data set; the same scale always yields the same data."""

    days: int = 14
    users: int = 2_000
    ads: int = 300
    advertisers: int = 40
    impressions_per_day: int = 20_000  # page views are ~1.5x this
    seed: int = 7
    start: datetime = datetime(2026, 10, 1, tzinfo=UTC)

    def __post_init__(self) -> None:
        # Day d must be exactly one UTC date so that it maps to one event_date partition.
        if self.start.utcoffset() != timedelta(0) or self.start.timestamp() % 86_400:
            raise ValueError(f"start must be a UTC midnight, got {self.start}")

    def through(self, moment: datetime) -> DemoScale:
        """This scale with the days from its start up to and including the day of `moment`."""
        if moment <= self.start:
            raise ValueError(f"{moment} is not after the scale's start {self.start}")
        return replace(self, days=-(-(moment - self.start) // timedelta(days=1)))


SCALES: dict[str, DemoScale] = {
    "demo": DemoScale(),
    # ~15M events (200k impressions + 300k page views + ~7k clicks per day, 30 days).
    "bench": DemoScale(
        days=30, users=1_000_000, ads=50_000, advertisers=2_000, impressions_per_day=200_000
    ),
}


def _rng(scale: DemoScale, day: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([scale.seed, day, stream])


def _zipf_cdf(n: int) -> np.ndarray:
    cdf = np.cumsum(np.arange(1, n + 1) ** -ZIPF_EXPONENT)
    return cdf / cdf[-1]


def _draw(rng: np.random.Generator, cdf: np.ndarray, size: int) -> np.ndarray:
    """Zipf-distributed ranks 0..len(cdf)-1 (rank 0 is the most popular)."""
    return np.searchsorted(cdf, rng.random(size), side="right")


_CATEGORY_CDF = _zipf_cdf(len(CATEGORIES))
_PAGE_CDF = _zipf_cdf(PAGES_PER_CATEGORY)


def _start_us(scale: DemoScale) -> int:
    return _micros(scale.start)


@dataclass(frozen=True)
class _World:
    """Hidden traits indexed by popularity rank; ids are a seeded permutation of the ranks."""

    user_cdf: np.ndarray
    user_id: np.ndarray
    user_propensity: np.ndarray
    user_favourite: np.ndarray
    ad_cdf: np.ndarray
    ad_id: np.ndarray
    ad_advertiser: np.ndarray
    ad_quality: np.ndarray
    click_base: float  # scales click probabilities so the expected CTR is TARGET_CTR

    @classmethod
    def build(cls, scale: DemoScale) -> _World:
        rng = _rng(scale, 0, _TRAITS)
        user_cdf, ad_cdf = _zipf_cdf(scale.users), _zipf_cdf(scale.ads)
        propensity = rng.lognormal(-0.08, 0.4, scale.users)  # mean ~1
        quality = rng.lognormal(-0.08, 0.4, scale.ads)
        user_mean = np.diff(user_cdf, prepend=0) @ propensity  # popularity-weighted
        ad_mean = np.diff(ad_cdf, prepend=0) @ quality
        advertisers = rng.permutation(scale.advertisers).astype(np.int64) + 1
        return cls(
            user_cdf=user_cdf,
            user_id=rng.permutation(scale.users).astype(np.int64) + 1,
            user_propensity=propensity,
            user_favourite=_draw(rng, _CATEGORY_CDF, scale.users),
            ad_cdf=ad_cdf,
            ad_id=rng.permutation(scale.ads).astype(np.int64) + 1,
            ad_advertiser=advertisers[_draw(rng, _zipf_cdf(scale.advertisers), scale.ads)],
            ad_quality=quality,
            click_base=TARGET_CTR / (user_mean * ad_mean * (POSITION_P @ POSITION_CTR)),
        )


def _users(scale: DemoScale) -> pa.Table:
    """One row per signup, plus a later profile-update row (changed country/age) for ~10%."""
    rng = _rng(scale, 0, TABLES.index("users"))
    n, start = scale.users, _start_us(scale)
    end = start + scale.days * DAY_US
    country = rng.choice(len(COUNTRIES), n, p=COUNTRY_P)
    age = np.clip(np.rint(rng.normal(34, 12, n)), 16, 80).astype(np.int32)
    signup = rng.integers(start - 365 * DAY_US, end, n)

    upd = np.flatnonzero(rng.random(n) < 0.10)
    upd_from = np.maximum(signup[upd], start)
    upd_at = upd_from + (rng.random(len(upd)) * (end - upd_from)).astype(np.int64)
    upd_country = np.where(
        rng.random(len(upd)) < 0.3, rng.choice(len(COUNTRIES), len(upd), p=COUNTRY_P), country[upd]
    )
    upd_age = np.minimum(age[upd] + (rng.random(len(upd)) < 0.5), 80).astype(np.int32)

    rows = np.concatenate([np.arange(n), upd])
    updated_at = np.concatenate([signup, upd_at])
    order = np.argsort(updated_at, kind="stable")
    m = len(rows)
    return pa.table(
        {
            "user_id": pa.array(rows[order] + 1, pa.int64()),
            "country": COUNTRIES.take(
                pa.array(np.concatenate([country, upd_country])[order], mask=rng.random(m) < 0.03)
            ),
            "age": pa.array(
                np.concatenate([age, upd_age])[order], pa.int32(), mask=rng.random(m) < 0.05
            ),
            "signup_ts": pa.array(signup[rows[order]], TS),
            "updated_at": pa.array(updated_at[order], TS),
        }
    )


def _timestamps(rng: np.random.Generator, day_start: int, n: int) -> np.ndarray:
    """Sorted event times within one UTC day, following the hour-of-day cycle."""
    hours = rng.choice(24, n, p=HOUR_P)
    return np.sort(day_start + hours * HOUR_US + rng.integers(0, HOUR_US, n))


def _event_table(
    rng: np.random.Generator, columns: dict[str, pa.Array | np.ndarray], ts: np.ndarray
) -> pa.Table:
    """Appends ts, ingested_at (2% hours late) and event_date, then duplicates ~1% of rows.

    Expects rows sorted by ts; duplicates land next to their original, so the order holds.
    """
    n = len(ts)
    lag = np.where(
        rng.random(n) < LATE_SHARE,
        rng.integers(HOUR_US, MAX_LAG_US, n),
        SECOND_US // 2 + (rng.exponential(3.0, n) * SECOND_US).astype(np.int64),
    )
    table = pa.table(
        {
            **columns,
            "ts": pa.array(ts, TS),
            "ingested_at": pa.array(ts + lag, TS),
            "event_date": pa.array((ts // DAY_US).astype(np.int32), pa.date32()),
        }
    )
    return table.take(np.repeat(np.arange(n), np.where(rng.random(n) < DUPLICATE_SHARE, 2, 1)))


def _event_ids(day: int, n: int) -> np.ndarray:
    """Ids unique across days: a block of 10^9 per day, increasing with ts."""
    return day * 1_000_000_000 + np.arange(1, n + 1, dtype=np.int64)


def _page_views(scale: DemoScale, world: _World, day: int) -> pa.Table:
    rng = _rng(scale, day, TABLES.index("page_views"))
    n = round(1.5 * scale.impressions_per_day)
    ts = _timestamps(rng, _start_us(scale) + day * DAY_US, n)
    users = _draw(rng, world.user_cdf, n)
    # Each user's Zipf-ish preference over categories starts at their favourite one.
    category = (world.user_favourite[users] + _draw(rng, _CATEGORY_CDF, n)) % len(CATEGORIES)
    page = category * PAGES_PER_CATEGORY + _draw(rng, _PAGE_CDF, n) + 1
    columns = {
        "event_id": _event_ids(day, n),
        "user_id": world.user_id[users],
        "category": CATEGORIES.take(pa.array(category, mask=rng.random(n) < 0.02)),
        "page_id": page.astype(np.int64),
    }
    return _event_table(rng, columns, ts)


def _ads(scale: DemoScale, world: _World, day: int) -> tuple[pa.Table, pa.Table]:
    """A day's impressions and the clicks they lead to (clicks crossing midnight are dropped)."""
    rng = _rng(scale, day, TABLES.index("ad_impressions"))
    n, day_start = scale.impressions_per_day, _start_us(scale) + day * DAY_US
    ts = _timestamps(rng, day_start, n)
    users, ads = _draw(rng, world.user_cdf, n), _draw(rng, world.ad_cdf, n)
    position = rng.choice(10, n, p=POSITION_P) + 1
    ids = _event_ids(day, n)
    impressions = {
        "impression_id": ids,
        "user_id": world.user_id[users],
        "ad_id": world.ad_id[ads],
        "advertiser_id": world.ad_advertiser[ads],
        "position": pa.array(position, pa.int32(), mask=rng.random(n) < 0.01),
    }
    impressions = _event_table(rng, impressions, ts)

    rng = _rng(scale, day, TABLES.index("ad_clicks"))
    p = world.click_base * POSITION_CTR[position - 1]
    p *= world.user_propensity[users] * world.ad_quality[ads]
    clicked = np.flatnonzero(rng.random(n) < p)
    delay = 2 * SECOND_US + (rng.exponential(45.0, len(clicked)) * SECOND_US).astype(np.int64)
    click_ts = ts[clicked] + delay
    order = np.argsort(click_ts, kind="stable")
    order = order[click_ts[order] < day_start + DAY_US]
    clicked, click_ts = clicked[order], click_ts[order]
    clicks = {
        "impression_id": ids[clicked],
        "user_id": world.user_id[users[clicked]],
        "ad_id": world.ad_id[ads[clicked]],
    }
    return impressions, _event_table(rng, clicks, click_ts)


def generate(
    root: str | Path, scale: DemoScale = SCALES["demo"], until: datetime | None = None
) -> dict[str, int]:
    """Writes users, page_views, ad_impressions, ad_clicks under root/<name> (overwriting);
    with `until`, only the rows logged before it (`ingested_at`, users' `updated_at`).

    Returns row counts per table (duplicates included), which callers use to verify a load.
    """
    root = Path(root)
    world = _World.build(scale)
    users = _logged(_users(scale), "updated_at", None, until)
    write_deltalake(
        root / "users", users, mode="overwrite", schema_mode="overwrite", **_marked(until)
    )
    counts = dict.fromkeys(TABLES, 0)
    counts["users"] = users.num_rows
    for day in range(scale.days):
        for name, table in _day_events(scale, world, day).items():
            table = _logged(table, "ingested_at", None, until)
            write_deltalake(
                root / name,
                table,
                partition_by=["event_date"],
                mode="append" if day else "overwrite",
                schema_mode=None if day else "overwrite",
                **_marked(until),
            )
            counts[name] += table.num_rows
    return counts


def append(
    root: str | Path, scale: DemoScale, since: datetime, until: datetime
) -> dict[str, pa.Table]:
    """Appends to the event tables the rows logged in [since, until), which include late events
    of earlier hours, and returns them by table (tables without rows are not written). Profiles
    are not appended: `generate` writes those logged before its `until`."""
    if until <= since:
        raise ValueError(f"nothing to append: {until} is not after {since}")
    root, world = Path(root), _World.build(scale)
    first = max(0, (_micros(since) - MAX_LAG_US - _start_us(scale)) // DAY_US)
    last = (_micros(until) - _start_us(scale)) // DAY_US
    appended: dict[str, list[pa.Table]] = {name: [] for name in EVENTS}
    for day in range(first, last + 1):
        for name, table in _day_events(scale, world, day).items():
            appended[name].append(_logged(table, "ingested_at", since, until))
    tables = {name: pa.concat_tables(parts) for name, parts in appended.items()}
    for name, table in tables.items():
        if table.num_rows:
            write_deltalake(
                root / name, table, partition_by=["event_date"], mode="append", **_marked(until)
            )
    return tables


def late_events(table: pa.Table) -> pa.Table:
    """The rows of an event table logged an hour or more after they happened, oldest first."""
    lag = pc.subtract(table["ingested_at"], table["ts"])
    return table.filter(pc.greater_equal(lag, pa.scalar(timedelta(hours=1)))).sort_by("ts")


def logged_until(root: str | Path) -> datetime | None:
    """Until when the event tables under `root` hold what was logged: the latest mark of their
    commits (other commits, such as compactions, carry none), or None: no table was written
    with one, as a fixed scale writes them."""
    marks = []
    for name in EVENTS:
        path = Path(root) / name
        if (path / "_delta_log").is_dir():
            history = DeltaTable(str(path)).history()  # newest first
            marks.append(next((c[LOGGED_UNTIL] for c in history if LOGGED_UNTIL in c), None))
    return max((datetime.fromisoformat(mark) for mark in marks if mark), default=None)


def _day_events(scale: DemoScale, world: _World, day: int) -> dict[str, pa.Table]:
    return dict(
        zip(EVENTS, (_page_views(scale, world, day), *_ads(scale, world, day)), strict=True)
    )


def _logged(
    table: pa.Table, column: str, since: datetime | None, until: datetime | None
) -> pa.Table:
    """The rows of `table` whose `column` is in [since, until) (None: unbounded)."""
    keep = []
    if since is not None:
        keep.append(pc.greater_equal(table[column], pa.scalar(since, TS)))
    if until is not None:
        keep.append(pc.less(table[column], pa.scalar(until, TS)))
    if not keep:
        return table
    return table.filter(keep[0] if len(keep) == 1 else pc.and_(*keep))


def _marked(until: datetime | None) -> dict[str, CommitProperties]:
    if until is None:
        return {}
    return {
        "commit_properties": CommitProperties(custom_metadata={LOGGED_UNTIL: until.isoformat()})
    }


def _micros(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def main(argv: list[str] | None = None) -> None:
    """CLI: `python -m featureplane.synthetic --root data/raw --scale bench`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data/raw", help="directory receiving the Delta tables")
    parser.add_argument("--scale", choices=sorted(SCALES), default="demo")
    parser.add_argument("--days", type=int)
    parser.add_argument("--users", type=int)
    parser.add_argument("--impressions-per-day", type=int)
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(argv)
    overrides = {
        key: getattr(args, key)
        for key in ("days", "users", "impressions_per_day", "seed")
        if getattr(args, key) is not None
    }
    scale = replace(SCALES[args.scale], **overrides)
    began = time.perf_counter()
    counts = generate(args.root, scale)
    elapsed = time.perf_counter() - began
    for name, rows in counts.items():
        print(f"{name:>15} {rows:>12,}")
    events = sum(rows for name, rows in counts.items() if name != "users")
    print(f"{events:,} events written to {args.root} in {elapsed:.1f}s")


if __name__ == "__main__":
    main()
