"""Time partitions of feature views: one definition per (start, schedule), shared by every view."""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import cache

from dagster import TimeWindowPartitionsDefinition

from featureplane.feature_view import FeatureView, schedule_cron


@cache
def _partitions(start: datetime, schedule: timedelta) -> TimeWindowPartitionsDefinition:
    fmt = "%Y-%m-%d" if schedule >= timedelta(days=1) else "%Y-%m-%d-%H:%M"
    return TimeWindowPartitionsDefinition(
        start=start, cron_schedule=schedule_cron(schedule), fmt=fmt, timezone="UTC"
    )


def partitions_for(view: FeatureView) -> TimeWindowPartitionsDefinition:
    """Partitions from the view's feature_start_time, one per batch schedule interval."""
    return _partitions(view.feature_start_time, view.batch_schedule)
