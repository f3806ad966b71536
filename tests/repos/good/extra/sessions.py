"""A view whose entity and source exist only inside its decorator."""

from datetime import UTC, datetime

from featureplane import BatchSource, Entity, Field, Float64, batch_feature_view


@batch_feature_view(
    sources=[BatchSource("app_events", table="raw.app_events", timestamp_field="ts")],
    entities=[Entity("session", join_keys=["session_id"])],
    mode="pandas",
    schema=[Field("session_minutes", Float64)],
    timestamp_field="ts",
    feature_start_time=datetime(2026, 1, 1, tzinfo=UTC),
)
def session_length(app_events):
    return app_events
