"""The offline IO manager: feature DataFrames in and out of the Delta offline store.

Ours rather than dagster-deltalake's, which mishandles partition ranges: a run over many
partitions replaces the whole range `context.asset_partitions_time_window` in one Delta commit.
"""

from dagster import (
    ConfigurableIOManager,
    InputContext,
    MetadataValue,
    OutputContext,
    ResourceDependency,
    TableColumn,
    TableRecord,
    TableSchema,
)
from deltalake import DeltaTable
from pyspark.sql import DataFrame

from featureplane.compute.transform import PARTITION_COLUMN
from featureplane.compute.window import TimeWindow
from featureplane.offline_store import WindowStats
from resources.offline_store import OfflineStoreResource
from resources.spark import SparkResource

TIMESTAMP_FIELD = "featureplane/timestamp_field"
JOIN_KEYS = "featureplane/join_keys"
TILE_COLUMNS = "tile_columns"
"""Asset metadata of an aggregate view: what each stored tile column holds, by column."""
VERSION = "version"
STATS_SCHEMA = TableSchema(
    columns=[
        TableColumn("feature", "string"),
        TableColumn("null_fraction", "float"),
        TableColumn("min", "string"),
        TableColumn("max", "string"),
    ]
)


def _plain(metadata: dict, key: str) -> str:
    value = metadata[key]
    return getattr(value, "value", value)


def _stats_metadata(stats: WindowStats, labels: dict[str, str]) -> dict[str, object]:
    """Row count, event-time range and per-column statistics; an aggregate view's table holds
    tiles, whose columns are partials: each is labelled with the features it feeds."""
    records = [
        TableRecord(
            {
                "feature": labels.get(name, name),
                "null_fraction": feature["null_fraction"],
                "min": None if feature["min"] is None else str(feature["min"]),
                "max": None if feature["max"] is None else str(feature["max"]),
            }
        )
        for name, feature in stats.features.items()
    ]
    metadata: dict[str, object] = {
        "dagster/row_count": stats.rows,
        "feature_stats": MetadataValue.table(records, schema=STATS_SCHEMA),
    }
    if stats.event_time_min is not None:
        metadata["event_time_min"] = MetadataValue.timestamp(stats.event_time_min)
        metadata["event_time_max"] = MetadataValue.timestamp(stats.event_time_max)
    return metadata


def table_uri(store, key_path: list[str], metadata: dict) -> str:
    """A feature view's asset `features/<name>` lives in the table of its version."""
    return store.view_table_uri(key_path[-1], _plain(metadata, VERSION))


class DeltaOfflineIOManager(ConfigurableIOManager):
    """Stores each feature view version as the Delta table `<root>/features/<name>/<version>`,
    one time window per run."""

    offline_store: ResourceDependency[OfflineStoreResource]
    spark: ResourceDependency[SparkResource]

    def handle_output(self, context: OutputContext, obj: DataFrame) -> None:
        store = self.offline_store.store()
        metadata = context.definition_metadata
        uri = table_uri(store, context.asset_key.path, metadata)
        timestamp_field = _plain(metadata, TIMESTAMP_FIELD)
        reserved = {*_plain(metadata, JOIN_KEYS).split(","), timestamp_field, PARTITION_COLUMN}
        span = context.asset_partitions_time_window
        window = TimeWindow(span.start, span.end)
        store.write_window(obj, uri, window, timestamp_field)
        features = [c for c in obj.columns if c not in reserved]
        stats = store.window_stats(obj.sparkSession, uri, window, timestamp_field, features)
        context.add_output_metadata(
            {
                **_stats_metadata(
                    stats, _plain(metadata, TILE_COLUMNS) if TILE_COLUMNS in metadata else {}
                ),
                "table_uri": MetadataValue.path(uri),
                "delta_version": DeltaTable(uri).version(),
            }
        )

    def load_input(self, context: InputContext) -> DataFrame:
        store = self.offline_store.store()
        metadata = context.upstream_output.definition_metadata
        df = store.read(self.spark.session, table_uri(store, context.asset_key.path, metadata))
        if not context.has_asset_partitions:
            return df
        timestamp_field = _plain(metadata, TIMESTAMP_FIELD)
        span = context.asset_partitions_time_window
        return df.where(TimeWindow(span.start, span.end).contains(timestamp_field))
