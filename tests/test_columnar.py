"""The push's column-at-a-time encoding against the per-value `encoding` it must agree with.

Oracle: `encoding.encode_values`/`prefixed_key` applied to each row's Python values, and
`aggregation.pack_tiles` for tiles. Keys must be the same text (reads look them up); values
must decode to identical values (types, float bits and signs, NaN, tags), whatever the text.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_online_store import identical

from featureplane import Repository
from featureplane.aggregation import TILE_START, Aggregation, aggregate_before, pack_tiles
from featureplane.online_push import EVENT_TIME, packed_tiles, push, stored_items
from featureplane.online_store.columnar import epoch_seconds_up, item_keys, json_texts
from featureplane.online_store.encoding import (
    EntityKeyError,
    decode_values,
    encode_values,
    key_prefix,
    prefixed_key,
    to_epoch_seconds,
    to_micros,
)
from featureplane.online_store.sqlite import SQLiteOnlineStore

PREFIX = key_prefix("view", "v1")
moments = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)
HOUR = timedelta(hours=1)
"""The tiles' interval in these tests."""
hours = st.integers(-613_000, 2_000_000).map(lambda h: datetime(1970, 1, 1, tzinfo=UTC) + h * HOUR)
"""Tile starts: whole hours from 1900 to 2198."""
texts = st.text() | st.sampled_from(['"', "\\", "\x00", "\n", "é", "\u2028", "$ts", "{}"])
COLUMNS = {
    pa.int64(): st.integers(-(2**63), 2**63 - 1),
    pa.int32(): st.integers(-(2**31), 2**31 - 1),
    pa.float64(): st.floats(),
    pa.float32(): st.floats(width=32),
    pa.bool_(): st.booleans(),
    pa.string(): texts,
    pa.large_string(): texts,
    pa.timestamp("us", "UTC"): moments,
    pa.timestamp("us"): moments.map(lambda m: m.replace(tzinfo=None)),
    pa.date32(): st.dates(),
    pa.binary(): st.binary(max_size=8),
    pa.list_(pa.int64()): st.lists(st.integers(-5, 5), max_size=3),
    pa.struct([("a", pa.float64()), ("$b", pa.string())]): st.fixed_dictionaries(
        {"a": st.floats(), "$b": texts}
    ),
}


@st.composite
def columns(draw) -> pa.Array:
    kind = draw(st.sampled_from(list(COLUMNS)))
    values = draw(st.lists(st.none() | COLUMNS[kind], max_size=8))
    return pa.array(values, kind)


@settings(max_examples=300)
@given(columns())
def test_json_texts_decode_like_the_per_value_encoding(column):
    texts = json_texts(column).to_pylist()
    for value, text in zip(column.to_pylist(), texts, strict=True):
        assert identical(decode_values(text), decode_values(encode_values(value)))


def test_floats_keep_their_type_sign_and_specials():
    values = [1.0, -0.0, 1e16, 5e-324, float("nan"), float("inf"), -float("inf"), 0.1]
    decoded = [decode_values(t) for t in json_texts(pa.array(values)).to_pylist()]
    assert all(type(v) is float for v in decoded)
    assert identical(decoded, values)


key_columns = st.sampled_from([pa.int64(), pa.int32(), pa.string()]).flatmap(
    lambda kind: st.lists(
        st.integers(-(2**31), 2**31 - 1) if pa.types.is_integer(kind) else texts,
        min_size=1,
        max_size=6,
    ).map(lambda values: pa.array(values, kind))
)


@given(st.lists(key_columns, min_size=1, max_size=3))
def test_item_keys_are_the_per_row_keys(columns):
    rows = min(len(c) for c in columns)
    columns = [c.slice(0, rows) for c in columns]
    expected = [
        prefixed_key(PREFIX, key) for key in zip(*(c.to_pylist() for c in columns), strict=True)
    ]
    assert item_keys(PREFIX, columns).to_pylist() == expected


@pytest.mark.parametrize(
    "column",
    [pa.array([1, None]), pa.array([True]), pa.array([1.5]), pa.array(["x" * 3000])],
)
def test_keys_that_cannot_address_a_record_are_refused(column):
    with pytest.raises(EntityKeyError):
        item_keys(PREFIX, [column])


@given(st.lists(st.integers(-(2**50), 2**50), max_size=20))
def test_epoch_seconds_round_up_as_per_value(micros):
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    expected = [to_epoch_seconds(epoch + timedelta(microseconds=m)) for m in micros]
    assert epoch_seconds_up(pa.array(micros, pa.int64())).to_pylist() == expected


TILE = pa.struct(
    [
        (TILE_START, pa.timestamp("us", "UTC")),
        ("count__x", pa.int64()),
        ("total__x", pa.struct([("n", pa.int64()), ("s", pa.float64())])),
        ("first__y", pa.struct([("ts", pa.timestamp("us", "UTC")), ("v", pa.string())])),
        ("max__z", pa.timestamp("us", "UTC")),
        ("last3__y", pa.string()),
        ("total__i", pa.struct([("n", pa.int64()), ("s", pa.int64())])),
        ("hll4__u", pa.string()),
        ("min__k", pa.int64()),
        ("max__k", pa.int32()),
        ("max__g", pa.float64()),
    ]
)
sketches = st.lists(
    st.integers(0, 15).flatmap(lambda i: st.integers(1, 61).map(lambda r: i << 6 | r))
)
tiles = st.fixed_dictionaries(
    {
        TILE_START: hours,
        "count__x": st.integers(0, 10**6),
        "total__x": st.none() | st.fixed_dictionaries({"n": st.integers(0, 9), "s": st.floats()}),
        "first__y": st.none() | st.fixed_dictionaries({"ts": moments, "v": texts}),
        "max__z": st.none() | moments,
        "last3__y": st.none() | st.sampled_from(['[{"ts":1,"v":"a"}]', "[]", '[{"ts":2,"v":3}]']),
        "total__i": st.none()
        | st.fixed_dictionaries({"n": st.integers(0, 9), "s": st.integers(-(2**58), 2**58)}),
        "hll4__u": st.none() | sketches.map(json.dumps),
        "min__k": st.none() | st.integers(-(2**63), 2**63 - 1),
        "max__k": st.none() | st.integers(-3, 3),
        "max__g": st.none() | st.floats(allow_nan=False),
    }
)
entities = st.lists(
    st.lists(tiles, min_size=1, max_size=5).map(lambda t: sorted(t, key=lambda x: x[TILE_START])),
    min_size=1,
    max_size=5,
)


@settings(max_examples=150)
@given(entities, st.integers(0, 2))
def test_packed_tiles_decode_to_pack_tiles(entities, skip):
    column = pa.array(entities, pa.list_(TILE)).slice(min(skip, len(entities) - 1))
    pushed = packed_tiles(column, HOUR).to_pylist()
    for tiles, text in zip(column.to_pylist(), pushed, strict=True):
        assert identical(decode_values(text), decode_values(encode_values(pack_tiles(tiles, HOUR))))


def sketch_tiles(precision: int):
    """Lists of tiles of one sketch column of `precision`: codes of every register and rank."""
    code = st.tuples(st.integers(0, 2**precision - 1), st.integers(1, 65 - precision))
    sketch = st.lists(code.map(lambda c: c[0] << 6 | c[1]), max_size=40).map(json.dumps)
    tile = st.fixed_dictionaries({TILE_START: hours, f"hll{precision}__u": st.none() | sketch})
    ordered = st.lists(tile, min_size=1, max_size=6).map(
        lambda t: sorted(t, key=lambda x: x[TILE_START])
    )
    return st.lists(ordered, min_size=1, max_size=5)


LINEAR_EDGE = json.dumps([i << 6 | (2 if i < 12 else 3) for i in range(15)])
"""16 registers, one unset, whose raw estimate (39.4) lies just under 2.5 * 16, where linear
counting takes over."""


@settings(max_examples=100)
@given(st.sampled_from([4, 12, 16]).flatmap(lambda p: st.tuples(st.just(p), sketch_tiles(p))))
@example((4, [[{TILE_START: datetime(2024, 1, 1, tzinfo=UTC), "hll4__u": LINEAR_EDGE}]]))
def test_suffix_estimates_of_a_batch_equal_those_of_each_entity(drawn):
    """The push estimates every suffix of every entity at once, ranks above SPLIT included."""
    precision, entities = drawn
    kind = pa.struct([(TILE_START, pa.timestamp("us", "UTC")), (f"hll{precision}__u", pa.string())])
    column = pa.array(entities, pa.list_(kind))
    for tiles, text in zip(entities, packed_tiles(column, HOUR).to_pylist(), strict=True):
        assert decode_values(text) == decode_values(encode_values(pack_tiles(tiles, HOUR)))


INT64 = st.integers(-(2**63), 2**63 - 1)


@settings(max_examples=100)
@given(st.lists(st.lists(INT64, min_size=1, max_size=5), min_size=1, max_size=4))
@example([[2**62, 2**62, 2**62]])
def test_integer_sums_of_any_window_are_int64_sums_whichever_way_tiles_are_packed(sums):
    """The push's suffix totals wrap modulo 2**64 across the batch; a window still reads the
    int64 sum of its tiles (wrapped as int64 sums are), as from `pack_tiles`'s exact ones."""
    start, hour = datetime(2024, 1, 1, tzinfo=UTC), timedelta(hours=1)
    total = TILE.field("total__i").type
    kind = pa.struct([(TILE_START, pa.timestamp("us", "UTC")), ("total__i", total)])
    entities = [
        [{TILE_START: start + k * hour, "total__i": {"n": 1, "s": s}} for k, s in enumerate(e)]
        for e in sums
    ]
    pushed = packed_tiles(pa.array(entities, pa.list_(kind)), hour).to_pylist()
    for values, tiles, text in zip(sums, entities, pushed, strict=True):
        by_tile = pack_tiles(tiles, hour)
        for packed in (decode_values(text), decode_values(encode_values(by_tile))):
            for end in range(len(values) + 1):
                for hours in range(1, len(values) + 1):
                    window = Aggregation("i", "sum", hours * hour)
                    got = aggregate_before([window], packed, to_micros(start + end * hour))
                    covered = values[max(0, end - hours) : end]
                    exact = (sum(covered) + 2**63) % 2**64 - 2**63 if covered else None
                    assert got == [exact]


def test_tiles_out_of_order_are_refused():
    late, early = datetime(2024, 1, 2, tzinfo=UTC), datetime(2024, 1, 1, tzinfo=UTC)
    column = pa.array([[{TILE_START: late}, {TILE_START: early}]], pa.list_(TILE))
    with pytest.raises(ValueError, match="sorted by tile_start"):
        packed_tiles(column, HOUR)


def test_stored_items_are_the_records_of_the_batch_in_key_order_with_their_expiry():
    view = Repository.load("feature_assets").feature_view("ad_daily_performance")
    times = [datetime(2024, 1, d, 10, 0, 0, 500_001, tzinfo=UTC) for d in (3, 1, 2)]
    batch = pa.RecordBatch.from_pydict(
        {
            "ad_id": [30, 10, 200],
            EVENT_TIME: pa.array(times, pa.timestamp("us", "UTC")),
            "impressions_1d": [5, None, 7],
            "clicks_1d": [1, 0, None],
            "ctr_1d": [0.2, float("nan"), None],
        }
    )
    items = list(stored_items(view, batch))
    prefix = key_prefix(view.name, view.version)
    expected = {
        prefixed_key(prefix, (ad,)): (when, values)
        for ad, when, values in zip(
            [30, 10, 200], times, batch.select(view.feature_names).to_pylist(), strict=True
        )
    }
    assert [item[0] for item in items] == sorted(expected)
    for key, micros, payload, expires in items:
        when, values = expected[key]
        assert micros == to_micros(when)
        assert expires == to_epoch_seconds(when + view.ttl)
        assert identical(decode_values(payload), values)


def ad_batch(ads: list, when: datetime, impressions: int) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict(
        {
            "ad_id": pa.array(ads, pa.int64()),
            EVENT_TIME: pa.array([when] * len(ads), pa.timestamp("us", "UTC")),
            "impressions_1d": [impressions] * len(ads),
            "clicks_1d": [0] * len(ads),
            "ctr_1d": [0.0] * len(ads),
        }
    )


def test_push_writes_batch_after_batch_and_counts_what_the_store_did(tmp_path):
    """Batches are encoded ahead of the write in a thread; the result is as if one by one:
    the older rows of a later batch are skipped, and an error stops at its batch."""
    view = Repository.load("feature_assets").feature_view("ad_daily_performance")
    early, late = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC)
    with SQLiteOnlineStore(tmp_path / "online.sqlite") as store:
        store.ensure_table()
        batches = [ad_batch([1, 2, 3], late, 5), ad_batch([2, 3, 4], early, 9)]
        stats = push(store, view, batches)
        assert (stats.rows, stats.written, stats.skipped_stale) == (6, 4, 2)
        records = store.read(view.name, view.version, [(1,), (2,), (3,), (4,)])
        assert [r.values["impressions_1d"] for r in records] == [5, 5, 5, 9]
        broken = ad_batch([None], late, 1)
        with pytest.raises(EntityKeyError):
            push(store, view, [ad_batch([7], late, 1), broken, ad_batch([8], late, 1)])
        seven, eight = store.read(view.name, view.version, [(7,), (8,)])
        assert seven is not None and eight is None
