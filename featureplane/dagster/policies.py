"""Platform-wide policies, applied once to every feature asset."""

from __future__ import annotations

from dagster import FreshnessPolicy

from featureplane.feature_view import FeatureView


def freshness_policy(view: FeatureView) -> FreshnessPolicy:
    """Fail when no new data for `freshness` (default two schedules); warn at half of it."""
    fail = view.freshness or 2 * view.batch_schedule
    return FreshnessPolicy.time_window(fail_window=fail, warn_window=fail / 2)
