"""The online/offline consistency check of each `online/<name>` asset.

It runs with the push, over the same partitions: it samples pushed entities, reads what the
online store serves for them at the window's end and what `FeatureStore` gives them point in
time, and fails below a 100% match, listing mismatches (`featureplane.consistency`).
"""

import warnings

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    Config,
    MetadataValue,
    PreviewWarning,
    asset_check,
)
from pyspark.sql import functions as F

from featureplane.compute.push import push_frame
from featureplane.compute.window import TimeWindow
from featureplane.consistency import compare, moment
from featureplane.dagster.keys import online_key
from featureplane.dagster.partitions import partitions_for
from featureplane.feature_store import FeatureStore
from featureplane.feature_view import FeatureView
from featureplane.repository import Repository
from resources.offline_store import OfflineStoreResource
from resources.online_store import OnlineStoreResource
from resources.spark import SparkResource

AT = "__fp_consistency_at"
CHECK_NAME = "consistency"


class ConsistencyConfig(Config):
    """How many pushed entities to compare (a deterministic hash sample)."""

    sample_size: int = 1000


def consistency_check(view: FeatureView, repository: Repository) -> AssetChecksDefinition:
    """`online/<name>` consistency: online values equal offline point-in-time values."""

    def consistency(
        context: AssetCheckExecutionContext,
        config: ConsistencyConfig,
        spark: SparkResource,
        offline_store: OfflineStoreResource,
        online_store: OnlineStoreResource,
    ) -> AssetCheckResult:
        span = context.partition_time_window
        window = TimeWindow(span.start, span.end)
        at = moment(view, window.end)
        features = FeatureStore(repository, spark.session, offline_store.root)
        table = features.offline.read(
            spark.session, features.offline.view_table_uri(view.name, view.version)
        )
        keys = list(view.join_keys)
        sample = (
            push_frame(table, view, window)
            .select(*keys)
            .orderBy(F.xxhash64(*keys), *keys)
            .limit(config.sample_size)
            .withColumn(AT, F.lit(at))
        )
        offline = features.get_historical_features(
            sample, view, timestamp_column=AT, full_feature_names=False
        )
        rows = offline.toArrow().to_pylist()
        entity_keys = [tuple(row[k] for k in keys) for row in rows]
        online = online_store.store().read(view.name, view.version, entity_keys)
        report = compare(view, at, rows, online)
        examples = [
            {
                "entity_key": list(m.entity_key),
                "feature": m.feature,
                "online": repr(m.online),
                "offline": repr(m.offline),
            }
            for m in report.examples
        ]
        if not report.sampled:  # nothing to compare is no evidence of a match: say so
            return AssetCheckResult(
                passed=False,
                severity=AssetCheckSeverity.WARN,
                description=(
                    f"{view.name} {window.start:%Y-%m-%d %H:%M}..{window.end:%Y-%m-%d %H:%M}: "
                    "no entity pushed, nothing compared"
                ),
                metadata={"sampled": 0, "compared_at": MetadataValue.timestamp(at)},
            )
        return AssetCheckResult(
            passed=report.match_rate == 1.0,
            metadata={
                "match_rate": report.match_rate,
                "sampled": report.sampled,
                "matched": report.matched,
                "compared_at": MetadataValue.timestamp(at),
                "mismatches": MetadataValue.json(examples),
            },
        )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PreviewWarning)  # partitioned checks: the push's windows
        return asset_check(
            asset=online_key(view),
            name=CHECK_NAME,
            description="Sampled online values equal the offline point-in-time values.",
            partitions_def=partitions_for(view),
        )(consistency)
