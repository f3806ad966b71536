"""The online/offline consistency check of each `online/<name>` asset.

It runs with the push, over the same partitions: it samples the entities pushed in the window,
reads their stored records, and compares each with what `FeatureStore` gives that entity at the
moment the record speaks for (`featureplane.consistency`), failing below a 100% match and
listing mismatches. A window that pushed no entity gives no evidence either way: the check then
yields no result, which Dagster shows as "skipped" (a planned check without an evaluation in a
run that succeeded; an asset check cannot report a skip otherwise), and logs why.
"""

import warnings
from collections.abc import Iterator

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSpec,
    Config,
    MetadataValue,
    PreviewWarning,
    multi_asset_check,
)
from pyspark.sql import functions as F
from pyspark.sql import types as T

from featureplane.compute.push import push_frame
from featureplane.compute.window import TimeWindow
from featureplane.consistency import as_utc, compare, moments
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
    """`online/<name>` consistency: stored records equal the offline point-in-time values."""

    def consistency(
        context: AssetCheckExecutionContext,
        config: ConsistencyConfig,
        spark: SparkResource,
        offline_store: OfflineStoreResource,
        online_store: OnlineStoreResource,
    ) -> Iterator[AssetCheckResult]:
        span = context.partition_time_window
        window = TimeWindow(span.start, span.end)
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
        )
        entity_keys = [tuple(row.values()) for row in sample.toArrow().to_pylist()]
        if not entity_keys:
            context.log.info(
                f"{view.name} {window.start:%Y-%m-%d %H:%M}..{window.end:%Y-%m-%d %H:%M}: "
                "no entity pushed, nothing to compare: skipped"
            )
            return
        stored = online_store.store().read(view.name, view.version, entity_keys)
        records = dict(zip(entity_keys, stored, strict=True))
        points = sorted(
            {
                (key, at)
                for key, r in records.items()
                for at in moments(view, r, window.end).values()
            }
        )
        schema = T.StructType([*sample.schema.fields, T.StructField(AT, T.TimestampType())])
        spine = spark.session.createDataFrame([(*key, at) for key, at in points], schema)
        rows = features.get_historical_features(
            spine, view, timestamp_column=AT, full_feature_names=False
        )
        offline = {
            (tuple(row[k] for k in keys), as_utc(row[AT])): row
            for row in rows.toArrow().to_pylist()
        }
        report = compare(view, window.end, records, offline)
        examples = [
            {
                "entity_key": list(m.entity_key),
                "feature": m.feature,
                "at": m.at.isoformat(),
                "online": repr(m.online),
                "offline": repr(m.offline),
            }
            for m in report.examples
        ]
        yield AssetCheckResult(
            passed=report.match_rate == 1.0,
            metadata={
                "match_rate": report.match_rate,
                "sampled": report.sampled,
                "matched": report.matched,
                "compared_from": MetadataValue.timestamp(min(at for _, at in points)),
                "compared_to": MetadataValue.timestamp(max(at for _, at in points)),
                "mismatches": MetadataValue.json(examples),
            },
        )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PreviewWarning)  # partitioned checks: the push's windows
        spec = AssetCheckSpec(
            CHECK_NAME,
            asset=online_key(view),
            description=(
                "Sampled stored records equal the offline point-in-time values at the moment "
                "each record speaks for; skipped when the window pushed no entity."
            ),
            partitions_def=partitions_for(view),
        )
        return multi_asset_check(name=spec.get_python_identifier(), specs=[spec], can_subset=True)(
            consistency
        )
