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


def concurrency_pool(view: FeatureView) -> str:
    """The pool of a view's assets: an instance that limits pools (deploy/dagster/dagster.yaml)
    runs one run of a view at a time, so a view's runs queue instead of piling up on its table,
    while runs of other views go ahead."""
    return f"featureplane/view/{view.name}"
