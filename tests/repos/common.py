"""Definitions shared by the fixture repositories (not a repository itself)."""

from datetime import UTC, datetime

from featureplane import Entity, Field, Int64

START = datetime(2026, 1, 1, tzinfo=UTC)
USER = Entity("user", join_keys=["user_id"])
VIEW = {
    "entities": [USER],
    "schema": [Field("clicks_1d", Int64)],
    "timestamp_field": "ts",
    "feature_start_time": START,
}
