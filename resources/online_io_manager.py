"""The online IO manager: an online asset's rows pushed into the online store.

The asset says what to push (`OnlineRows`: the view and its rows as Arrow batches, fetched
lazily); this manager owns the store write and reports it. Online assets feed serving, not
other assets, so there is nothing to load.

A push of a partition window is journaled in the store, so a push that failed half way (the
store throttled or did not answer) and runs again resumes it (`featureplane.online_push`);
`PUSH_RETRY_POLICY` runs it again within the run. Errors no retry can mend (a record too large,
a key that cannot be stored) fail at once.
"""

from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa
from dagster import (
    Backoff,
    ConfigurableIOManager,
    Failure,
    InputContext,
    Jitter,
    MetadataValue,
    OutputContext,
    ResourceDependency,
    RetryPolicy,
)

from featureplane.feature_view import FeatureView
from featureplane.online_push import push
from featureplane.online_store import EntityKeyError, ItemTooLarge
from resources.online_store import OnlineStoreResource

PUSH_RETRY_POLICY = RetryPolicy(
    max_retries=3, delay=30, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS
)
"""Retries of an online asset about 30 s, 1 min and 2 min after failures: a throttled table
scales up, an unreachable one comes back, in minutes; each retry resumes the push."""


@dataclass(frozen=True)
class OnlineRows:
    """The output of an `online/<view>` asset: the records to push, as Arrow batches."""

    view: FeatureView
    batches: Iterable[pa.RecordBatch]


class OnlineIOManager(ConfigurableIOManager):
    """Writes `OnlineRows` with conditional writes: stale rows are skipped, and counted."""

    online_store: ResourceDependency[OnlineStoreResource]

    def handle_output(self, context: OutputContext, obj: OnlineRows) -> None:
        window = None
        if context.has_asset_partitions:
            partitions = context.asset_partitions_time_window
            window = (partitions.start, partitions.end)
        try:
            stats = push(self.online_store.store(), obj.view, obj.batches, window)
        except (ItemTooLarge, EntityKeyError) as error:
            raise Failure(f"cannot push {obj.view.name}: {error}", allow_retries=False) from error
        optional = {"resumed_from": stats.resumed_from} if stats.resumed_from else {}
        if stats.newest_event is not None:  # what the served-freshness alerts judge
            optional["newest_event"] = MetadataValue.timestamp(stats.newest_event)
        context.add_output_metadata(
            {
                "dagster/row_count": stats.rows,
                "rows_written": stats.written,
                "rows_skipped_stale": stats.skipped_stale,
                "rows_already_stored": stats.already_stored,
                "throttled_retries": stats.throttled_retries,
                "attempt": stats.attempt,
                **optional,
                "rows_per_second": round(stats.rows_per_second),
                "fetch_seconds": round(stats.fetch_seconds, 3),
                "write_seconds": round(stats.write_seconds, 3),
                "store": self.online_store.type,
            }
        )

    def load_input(self, context: InputContext) -> None:
        raise NotImplementedError(
            f"{context.asset_key.to_user_string()} lives in the online store: read it with "
            "featureplane.online_store, not as an asset input"
        )
