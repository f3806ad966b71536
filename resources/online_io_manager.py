"""The online IO manager: an online asset's rows pushed into the online store.

The asset says what to push (`OnlineRows`: the view and its rows as Arrow batches, fetched
lazily); this manager owns the store write and reports it. Online assets feed serving, not
other assets, so there is nothing to load.
"""

from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa
from dagster import ConfigurableIOManager, InputContext, OutputContext, ResourceDependency

from featureplane.feature_view import FeatureView
from featureplane.online_push import push
from resources.online_store import OnlineStoreResource


@dataclass(frozen=True)
class OnlineRows:
    """The output of an `online/<view>` asset: the records to push, as Arrow batches."""

    view: FeatureView
    batches: Iterable[pa.RecordBatch]


class OnlineIOManager(ConfigurableIOManager):
    """Writes `OnlineRows` with conditional writes: stale rows are skipped, and counted."""

    online_store: ResourceDependency[OnlineStoreResource]

    def handle_output(self, context: OutputContext, obj: OnlineRows) -> None:
        stats = push(self.online_store.store(), obj.view, obj.batches)
        context.add_output_metadata(
            {
                "dagster/row_count": stats.rows,
                "rows_written": stats.written,
                "rows_skipped_stale": stats.skipped_stale,
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
