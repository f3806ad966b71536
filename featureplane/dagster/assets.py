"""Sources, feature views and training datasets as Dagster assets.

Each batch feature view becomes `features/<name>`: partitioned in time from its schedule, versioned
by its definition, downstream of its sources. A run covers one partition or a whole range in one
Spark job (single-run backfills); the offline IO manager writes exactly that window. Each online
view also becomes `online/<name>`, with the same partitions: it reads what serving needs from
`features/<name>` and the online IO manager pushes it to the online store. Each feature service
is `services/<name>`, downstream of the online assets it serves (not materialized: the catalog's
view of what a model reads), and each training dataset becomes `training/<name>`, downstream of
its spine and of the views its service reads.
"""

import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    AssetIn,
    AssetsDefinition,
    AssetSpec,
    AutomationCondition,
    BackfillPolicy,
    BetaWarning,
    MaterializeResult,
    MetadataValue,
    Output,
    TableColumn,
    TableSchema,
    TimeWindowPartitionMapping,
    TimeWindowPartitionsDefinition,
    asset,
)
from pyspark.sql import DataFrame

from featureplane.compute.materialization import prepared_window
from featureplane.compute.push import arrow_batches, longest_window, push_frame
from featureplane.compute.window import TimeWindow
from featureplane.dagster.automation import feature_condition, push_condition, training_condition
from featureplane.dagster.keys import feature_key, online_key, service_key, source_key, training_key
from featureplane.dagster.partitions import partitions_for
from featureplane.dagster.policies import concurrency_pool, freshness_policy
from featureplane.dagster.quality import quality_check_spec, quality_result
from featureplane.durations import in_words
from featureplane.feature_service import FeatureService, served_name
from featureplane.feature_store import FeatureStore
from featureplane.feature_view import FeatureView
from featureplane.on_demand import OnDemandFeatureView, stored_views
from featureplane.quality.volume import FORCE_TAG
from featureplane.repository import Repository
from featureplane.source import BatchSource
from featureplane.training_dataset import TrainingDataset
from resources.offline_io_manager import JOIN_KEYS, TILE_COLUMNS, TIMESTAMP_FIELD, VERSION
from resources.offline_store import OfflineStoreResource
from resources.online_io_manager import PUSH_RETRY_POLICY, OnlineRows
from resources.spark import SparkResource

MODE_KINDS = {"pyspark": "pyspark", "spark_sql": "sql", "pandas": "pandas"}


def source_spec(
    source: BatchSource, partitions: TimeWindowPartitionsDefinition | None = None
) -> AssetSpec:
    """A raw source: landed by other systems, read by feature views, in the windows of the
    views reading it (reported as they land, `featureplane.dagster.automation`)."""
    location = {"path": MetadataValue.path(source.uri)} if source.uri else {"table": source.table}
    return AssetSpec(
        key=source_key(source),
        description=source.description or None,
        owners=[source.owner] if source.owner else None,
        kinds={"delta"} if source.uri else {"spark"},
        group_name="sources",
        metadata={
            **location,
            "timestamp_field": source.timestamp_field,
            "quiet_period": in_words(source.quiet_period) if source.quiet_period else "none",
        },
        partitions_def=partitions,
    )


def _descriptions(view: FeatureView | OnDemandFeatureView) -> dict[str, str]:
    """Each feature's description; an aggregate's says what it aggregates, over what."""
    aggregations = view.aggregations if isinstance(view, FeatureView) else ()
    return {f.name: f.description for f in view.schema} | {
        a.name: f"{a.fn} of {a.column} over {in_words(a.time_window)}" for a in aggregations
    }


def service_spec(service: FeatureService, store_kind: str) -> AssetSpec:
    """A feature service in the lineage graph: served from the online rows of its views (the
    stored views an on-demand view is computed from), its features as the column schema."""
    views = stored_views(service.features)
    columns = [
        TableColumn(
            served_name(selection.view_name, name),
            selection.view.feature_types[name].name,
            description=_descriptions(selection.view)[name],
            tags={"view": selection.view_name},
        )
        for selection in service.features
        for name in selection.features
    ]
    return AssetSpec(
        key=service_key(service),
        description=service.description or None,
        owners=[service.owner] if service.owner else None,
        tags=dict(service.tags),
        kinds={store_kind},
        deps=[
            online_key(view) if view.online else feature_key(view) for view in views if view.offline
        ],
        metadata={
            "dagster/column_schema": TableSchema(columns=columns),
            "views": ", ".join(selection.view_name for selection in service.features),
        },
        group_name="services",
    )


def _column_schema(view: FeatureView) -> TableSchema:
    """The view's table as the UI's column schema: typed join keys tagged with their entity,
    the event time, and each feature's type and description."""
    key_types = view.join_key_types
    keys = [
        TableColumn(
            key,
            key_types[key].name if key_types[key] else "key",
            description=f"join key of entity {entity.name}",
            tags={"entity": entity.name},
        )
        for entity in view.entities
        for key in entity.join_keys
    ]
    timestamp = TableColumn(view.timestamp_field, "timestamp", description="event time")
    descriptions = _descriptions(view)
    features = [
        TableColumn(name, dtype.name, description=descriptions[name])
        for name, dtype in view.feature_types.items()
    ]
    return TableSchema(columns=[*keys, timestamp, *features])


def _metadata(view: FeatureView, services: Sequence[str]) -> dict[str, object]:
    return {
        "dagster/column_schema": _column_schema(view),
        "entities": ", ".join(
            f"{entity.name} ({', '.join(entity.join_keys)})" for entity in view.entities
        ),
        "feature_services": ", ".join(services) or "none",
        VERSION: view.version,
        "mode": view.mode,
        "ttl": in_words(view.ttl) if view.ttl else "none",
        "batch_schedule": in_words(view.batch_schedule),
        "online": view.online,
        "definition": view.location,
        TIMESTAMP_FIELD: view.table_timestamp_field,
        JOIN_KEYS: ",".join(view.join_keys),
    } | (_tile_metadata(view) if view.aggregations else {})


def _tile_metadata(view: FeatureView) -> dict[str, object]:
    """An aggregate view stores tiles: their size, and the features each partial column feeds
    (the per-column statistics of a materialization name them)."""
    tile = in_words(view.interval)
    fed: dict[str, tuple[str, list[str]]] = {}
    for a in view.aggregations:
        what = f"{a.fn.partial} of {a.column} per {tile} tile"
        fed.setdefault(a.partial_column, (what, []))[1].append(a.name)
    columns = {column: f"{', '.join(names)} ({what})" for column, (what, names) in fed.items()}
    return {"aggregation_interval": tile, TILE_COLUMNS: MetadataValue.json(columns)}


def _view_asset_args(view: FeatureView, condition: AutomationCondition) -> dict[str, Any]:
    """What the assets of a view share: its partitions, one-run backfills, version, owners,
    concurrency pool, and, unless its batch trigger is manual, the automation condition of the
    asset."""
    scheduled = view.batch_trigger == "scheduled"
    return {
        "automation_condition": condition if scheduled else None,
        "partitions_def": partitions_for(view),
        "backfill_policy": BackfillPolicy.single_run(),
        "code_version": view.version,
        "owners": [view.owner] if view.owner else None,
        "tags": dict(view.tags),
        "pool": concurrency_pool(view),
    }


def feature_view_asset(view: FeatureView, services: Sequence[str] = ()) -> AssetsDefinition:
    """The asset `features/<name>` that computes the view's windows into the offline store,
    with its blocking `quality` check; `services` are the feature services that serve it,
    shown in its metadata."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BetaWarning)  # single-run backfills are what we rely on
        return asset(
            key=feature_key(view),
            description=view.description or None,
            freshness_policy=freshness_policy(view),
            **_view_asset_args(view, feature_condition()),
            kinds={"spark", "delta", MODE_KINDS[view.mode]},
            deps=[source_key(s) for s in view.sources],
            metadata=_metadata(view, services),
            group_name="features",
            io_manager_key="offline_io_manager",
            check_specs=[quality_check_spec(feature_key(view))],
        )(_compute(view))


def _compute(view: FeatureView):
    def compute(
        context: AssetExecutionContext, spark: SparkResource, offline_store: OfflineStoreResource
    ) -> Iterator[Output | AssetCheckResult]:
        span = context.partition_time_window
        window = TimeWindow(span.start, span.end)
        force = context.run.tags.get(FORCE_TAG, "").lower() == "true"
        store = offline_store.store()
        with prepared_window(spark.session, view, window, store, force) as prepared:
            yield Output(
                prepared.rows,
                metadata={
                    "rows_dropped": prepared.dropped,
                    "rows_dropped_by_rule": MetadataValue.json(prepared.report.dropped),
                },
            )
            yield quality_result(view.name, window, prepared)

    return compute


def online_asset(view: FeatureView, store_kind: str) -> AssetsDefinition:
    """The asset `online/<name>` that pushes a window's end state to the online store.

    An aggregate view reads the tiles of its longest window before the partition's end, so
    the partition depends on as many earlier `features/<name>` partitions as that spans.
    A failed push is retried with backoff, and resumes (`PUSH_RETRY_POLICY`).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BetaWarning)  # nonexistent upstream: the first days
        mapping = None
        if view.aggregations:
            earlier = math.ceil(longest_window(view) / view.batch_schedule) - 1
            mapping = TimeWindowPartitionMapping(
                start_offset=-earlier, allow_nonexistent_upstream_partitions=True
            )
        return asset(
            key=online_key(view),
            description=f"Latest values of features/{view.name} in the online store.",
            **_view_asset_args(view, push_condition()),
            kinds={store_kind},
            ins={"features": AssetIn(feature_key(view), partition_mapping=mapping)},
            metadata={"version": view.version, JOIN_KEYS: ",".join(view.join_keys)},
            group_name="online",
            io_manager_key="online_io_manager",
            retry_policy=PUSH_RETRY_POLICY,
        )(_push(view))


def _push(view: FeatureView):
    def push(context: AssetExecutionContext, features: DataFrame) -> OnlineRows:
        window = context.partition_time_window
        rows = push_frame(features, view, TimeWindow(window.start, window.end))
        return OnlineRows(view, arrow_batches(rows))

    return push


def training_dataset_asset(dataset: TrainingDataset, repository: Repository) -> AssetsDefinition:
    """The asset `training/<name>`: each materialization writes a new, rebuildable version."""
    spine = dataset.spine
    spine_key = feature_key(spine) if isinstance(spine, FeatureView) else source_key(spine)
    views = stored_views(dataset.features.features)

    @asset(
        key=training_key(dataset),
        description=dataset.description or None,
        code_version=dataset.version,
        owners=[dataset.owner] if dataset.owner else None,
        tags=dict(dataset.tags),
        kinds={"spark", "delta"},
        deps=[spine_key, *(feature_key(view) for view in views)],
        automation_condition=training_condition(dataset.schedule) if dataset.schedule else None,
        metadata={
            "feature_service": dataset.features.name,
            "features": ", ".join(
                f"{s.view_name}[{', '.join(s.features)}]" for s in dataset.features.features
            ),
            "spine": spine_key.to_user_string(),
            "timestamp_column": dataset.spine_timestamp,
        },
        group_name="training",
    )
    def build(spark: SparkResource, offline_store: OfflineStoreResource) -> MaterializeResult:
        store = FeatureStore(repository, spark.session, offline_store.root)
        built = store.build_training_dataset(dataset.name)
        preview = store.get_training_dataset(dataset.name, built.version).limit(5).toPandas()
        return MaterializeResult(
            metadata={
                "dagster/row_count": built.rows,
                "delta_version": built.version,
                "table_uri": MetadataValue.path(built.uri),
                "manifest": MetadataValue.json(built.manifest),
                "preview": MetadataValue.md(preview.to_markdown(index=False)),
            }
        )

    return build
