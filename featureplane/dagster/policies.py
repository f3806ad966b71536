"""Platform-wide policies, applied once to every feature asset."""

from __future__ import annotations

from datetime import timedelta

from dagster import FreshnessPolicy

from featureplane.feature_view import FeatureView


def freshness_window(view: FeatureView) -> timedelta:
    """How old a view's data may get: its `freshness`, by default two schedules."""
    return view.freshness or 2 * view.batch_schedule


def freshness_policy(view: FeatureView) -> FreshnessPolicy:
    """Fail when no new data for the freshness window; warn at half of it."""
    fail = freshness_window(view)
    return FreshnessPolicy.time_window(fail_window=fail, warn_window=fail / 2)
