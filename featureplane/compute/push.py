"""What an online push sends for a time window, selected from the view's offline table in Spark.

A row-level view sends the latest row per entity with event time in the window: a push of a
range leaves the range's end state online. An aggregate view sends, per entity with any tile in
[end - longest window, end), all its tiles in that range: every window at any time from the
window's end until the next push is served from them (tiles only drop out as time passes; new
ones only come with a push). The rows come back as Arrow batches; `featureplane.online_push`
turns them into records.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from featureplane.aggregation import TILE_START, TILES
from featureplane.compute.tiles import partials
from featureplane.compute.window import TimeWindow
from featureplane.feature_view import FeatureView
from featureplane.online_push import EVENT_TIME

BATCH_ROWS = 8192
"""Rows encoded and written at a time: small batches keep the encoder's memory warm and let
it run ahead of the store's write sooner (a million row-level rows into SQLite: 484k rows/s,
against 347k with batches of 65,536)."""


def longest_window(view: FeatureView) -> timedelta:
    return max(a.time_window for a in view.aggregations)


def push_frame(table: DataFrame, view: FeatureView, window: TimeWindow) -> DataFrame:
    """One row per entity to push for `window`, read from the view's offline `table`.

    Row-level: join keys, `event_timestamp` and the features. The stored table holds one row
    per (keys, event time), so the greatest event time picks the row; a max over a struct led
    by the event time does so in one aggregation. Aggregate: join keys, `event_timestamp`
    (the end of the entity's last tile) and `tiles`, sorted by tile_start.
    """
    keys = list(view.join_keys)
    if not view.aggregations:
        ts = view.timestamp_field
        latest = F.max(F.struct(F.col(ts).alias(EVENT_TIME), *view.feature_names)).alias("row")
        rows = table.where(window.contains(ts)).groupBy(*keys).agg(latest)
        return rows.select(*keys, "row.*")
    reach = TimeWindow(window.end - longest_window(view), window.end)
    columns = [TILE_START, *sorted(partials(view.aggregations))]
    interval = view.interval // timedelta(microseconds=1)
    last_end = F.timestamp_micros(F.max(F.unix_micros(TILE_START)) + F.lit(interval))
    return (
        table.where(reach.contains(TILE_START))
        .groupBy(*keys)
        .agg(
            last_end.alias(EVENT_TIME),
            F.array_sort(F.collect_list(F.struct(*columns))).alias(TILES),
        )
    )


def arrow_batches(frame: DataFrame, rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """The frame's rows as Arrow batches, fetched when first iterated (no pandas, no Rows)."""
    yield from frame.toArrow().combine_chunks().to_batches(max_chunksize=rows)
