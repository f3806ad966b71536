"""A small repository for the serving tests, records in the online store's format, and raw
events turned into tiles by hand (what the online push writes for aggregate views)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

from featureplane import (
    Aggregation,
    Array,
    BatchSource,
    Entity,
    FeatureService,
    Field,
    Float64,
    Int64,
    Repository,
    RequestSource,
    String,
    Timestamp,
    batch_feature_view,
    last_n,
    on_demand_feature_view,
)
from featureplane.access import AccessPolicy, Principals
from featureplane.aggregation import TILES, floor_time, pack_tiles
from featureplane.online_store import Record, expiry, open_store
from featureplane.registry import build_registry, load_registry
from featureplane.serving import FeatureServer, Limits

START = datetime(2026, 1, 1, tzinfo=UTC)
NOW = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)
HOUR = timedelta(hours=1)

events = BatchSource("events", path="raw/events", timestamp_field="ts")
user = Entity("user", join_keys=["user_id"], join_key_types={"user_id": Int64})
ad = Entity("ad", join_keys=["ad_id"], join_key_types={"ad_id": String})


@batch_feature_view(
    sources=[events],
    entities=[user],
    schema=[Field("clicks", Int64), Field("country", String), Field("last_seen", Timestamp)],
    timestamp_field="ts",
    feature_start_time=START,
    ttl=timedelta(days=2),
)
def user_stats(events):
    return events


@batch_feature_view(
    sources=[events],
    entities=[ad],
    schema=[Field("ctr", Float64), Field("title", String)],
    timestamp_field="ts",
    feature_start_time=START,
)
def ad_stats(events):
    return events


AGGREGATIONS = (
    Aggregation("amount", "count", timedelta(days=1), "purchases_1d"),
    Aggregation("amount", "sum", timedelta(days=7), "spend_7d"),
    Aggregation("amount", "mean", timedelta(days=7), "mean_spend_7d"),
    Aggregation("amount", "min", timedelta(days=7), "min_spend_7d"),
    Aggregation("amount", "max", HOUR * 6, "max_spend_6h"),
    Aggregation("amount", "stddev", timedelta(days=7), "spend_stddev_7d"),
    Aggregation("category", "last", timedelta(days=1), "last_category_1d"),
    Aggregation("category", last_n(3), timedelta(days=7), "last_3_categories_7d"),
)


@batch_feature_view(
    sources=[events],
    entities=[user, ad],
    schema=[Field("amount", Float64), Field("category", String)],
    timestamp_field="ts",
    aggregations=AGGREGATIONS,
    aggregation_interval=HOUR,
    feature_start_time=START,
)
def user_ad_purchases(events):
    return events


purchase_request = RequestSource(
    [Field("amount", Float64), Field("requested_at", Timestamp)], name="purchase_request"
)


@on_demand_feature_view(
    sources=[purchase_request, user_stats[["clicks"]], user_ad_purchases[["spend_7d"]]],
    schema=[
        Field("spend_share", Float64),
        Field("log_amount", Float64),
        Field("clicks_at_hour", String),
    ],
)
def purchase_context(request, user, purchases):
    """The amount against the week's spend; its log fails for amounts <= 0 (a 422 online)."""
    amount, spend = request["amount"], purchases["spend_7d"]
    hour = request["requested_at"].hour if request["requested_at"] else None
    return {
        "spend_share": amount / spend if amount is not None and spend else None,
        "log_amount": math.log(amount) if amount is not None else None,
        "clicks_at_hour": f"{user['clicks']}@{hour}",
    }


@on_demand_feature_view(
    sources=[RequestSource([Field("channel", String)], name="channel"), user_stats[["clicks"]]],
    schema=[Field("fields_seen", String)],
)
def channel_context(request, user):
    """Which request fields the function is given: its own source's only."""
    return {"fields_seen": ",".join(sorted(request))}


@on_demand_feature_view(
    sources=[
        RequestSource([Field("tags", Array(String))], name="tagged"),
        user_ad_purchases[["last_3_categories_7d"]],
    ],
    schema=[Field("tags_seen", Int64), Field("categories_seen", Int64)],
)
def appending(request, purchases):
    """Appends to its array inputs, which must change neither the response nor other rows."""
    tags, categories = request["tags"], purchases["last_3_categories_7d"] or []
    tags.append("seen")
    categories.append("seen")
    return {"tags_seen": len(tags), "categories_seen": len(categories)}


checkout = FeatureService("checkout", features=[user_stats, ad_stats[["ctr"]], user_ad_purchases])
users = FeatureService("users", features=[user_stats], description="Per user.", owner="team:x")
context = FeatureService("context", features=[ad_stats[["ctr"]], purchase_context])


readers = AccessPolicy("tests_read_every_service", members=["tester"], read=["*"])
PRINCIPALS, KEY = Principals.none().create("tester", START)
HEADERS = {"x-api-key": KEY, "content-type": "application/json"}
"""What a request of the tests' one principal, who may read every service, sends."""


def repository() -> Repository:
    return Repository.from_objects([checkout, users, context, readers])


def registry(store_path: Path) -> dict:
    return build_registry(repository(), {"type": "sqlite", "path": str(store_path)}, PRINCIPALS)


class Clock:
    """A settable request time."""

    def __init__(self, now: datetime = NOW):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def feature_server(store_path: Path, clock: Clock, **limits) -> FeatureServer:
    return FeatureServer(load_registry(registry(store_path)), clock=clock, limits=Limits(**limits))


def write_row(store_path: Path, view, key: tuple, event_ts: datetime, values: dict) -> None:
    """A row-level record exactly as the online push writes it."""
    with open_store({"type": "sqlite", "path": str(store_path)}) as store:
        store.ensure_table()
        store.write(
            view.name, view.version, [Record(key, event_ts, values, expiry(event_ts, view.ttl))]
        )


def micros(ts: datetime) -> int:
    return (ts - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def tiles(rows: list[tuple[datetime, float, str]], interval: timedelta = HOUR) -> list[dict]:
    """(ts, amount, category) events as tiles: one dict per interval with every partial."""
    by_start: dict[datetime, list[tuple[datetime, float, str]]] = {}
    for row in rows:
        by_start.setdefault(floor_time(row[0], interval), []).append(row)
    result = []
    for start, group in sorted(by_start.items()):
        amounts = [amount for _, amount, _ in group]
        n, mean = len(amounts), sum(amounts) / len(amounts)
        recent = sorted(group, key=lambda r: (r[0], r[2]), reverse=True)
        result.append(
            {
                "tile_start": start,
                "count__amount": n,
                "total__amount": {"n": n, "s": sum(amounts)},
                "min__amount": min(amounts),
                "max__amount": max(amounts),
                "moments__amount": {
                    "n": n,
                    "mean": mean,
                    "m2": sum((a - mean) ** 2 for a in amounts),
                },
                "last__category": {"ts": recent[0][0], "v": recent[0][2]},
                "last3__category": json.dumps(
                    [{"ts": micros(ts), "v": category} for ts, _, category in recent[:3]]
                ),
            }
        )
    return result


def write_tiles(store_path: Path, key: tuple, rows: list, interval: timedelta = HOUR) -> None:
    """An aggregate record as the online push writes it: tiles, stamped at the last tile's end."""
    view = user_ad_purchases
    stored = tiles(rows, interval)
    event_ts = stored[-1]["tile_start"] + interval
    with open_store({"type": "sqlite", "path": str(store_path)}) as store:
        store.ensure_table()
        record = Record(key, event_ts, {TILES: pack_tiles(stored, interval)})
        store.write(view.name, view.version, [record])
