"""Time partitions of feature views and their sources: one definition per (start, schedule)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from functools import cache

from dagster import TimeWindowPartitionsDefinition

from featureplane.feature_view import FeatureView, schedule_cron
from featureplane.source import BatchSource


@cache
def _partitions(start: datetime, schedule: timedelta) -> TimeWindowPartitionsDefinition:
    fmt = "%Y-%m-%d" if schedule >= timedelta(days=1) else "%Y-%m-%d-%H:%M"
    return TimeWindowPartitionsDefinition(
        start=start, cron_schedule=schedule_cron(schedule), fmt=fmt, timezone="UTC"
    )


def partitions_for(view: FeatureView) -> TimeWindowPartitionsDefinition:
    """Partitions from the view's feature_start_time, one per batch schedule interval."""
    return _partitions(view.feature_start_time, view.batch_schedule)


def source_partitions(
    source: BatchSource, views: Iterable[FeatureView]
) -> TimeWindowPartitionsDefinition | None:
    """A source's windows: those of the finest schedule of the offline views reading it, from
    the earliest start, so each view window maps onto whole source windows (None: unread)."""
    readers = [
        view
        for view in views
        if view.offline and source.name in {read.name for read in view.sources}
    ]
    if not readers:
        return None
    start = min(view.feature_start_time for view in readers)
    return _partitions(start, min(view.batch_schedule for view in readers))
