"""The FeatureStore: point-in-time correct training data from the offline store, in one call.

Usable from a notebook without Dagster: `FeatureStore.from_repo()` loads `feature_assets` and
starts Sail in-process. Every read pins the Delta version of each table it touches, so a training
dataset's manifest names exactly what was read, and `rebuild` reproduces it by time travel.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
from deltalake import DeltaTable
from pyarrow import fs as pafs
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from featureplane.compute.materialization import STAGING, staged_pandas, sweep
from featureplane.compute.on_demand import apply_on_demand
from featureplane.compute.point_in_time import Lookup, point_in_time_join
from featureplane.compute.tiles import AggregateLookup, aggregate_join
from featureplane.compute.transform import PARTITION_COLUMN, read_source
from featureplane.compute.window import utc_from_micros
from featureplane.errors import RetrievalError
from featureplane.feature_service import FeatureSelection, FeatureService, served_name
from featureplane.feature_view import FeatureView
from featureplane.manifest import manifest_uri, read_manifest, recorded_view, retrieval_definition
from featureplane.offline_store import TIME_TRAVEL_PROPERTIES, OfflineStore, plain_strings
from featureplane.on_demand import OnDemandFeatureView, stored_views
from featureplane.registry import build_registry, load_registry
from featureplane.repository import Repository
from featureplane.serving import FeatureServer
from featureplane.settings import offline_root, online_store_settings
from featureplane.source import BatchSource
from featureplane.spark_session import spark_session

HIDDEN = "__on_demand__"
"""Prefix of the working columns of on-demand views, dropped before results are returned."""
SPINES = "spines"
"""The staging folder of pandas spines (`FeatureStore._spine`)."""

FeatureReference = FeatureService | FeatureView | OnDemandFeatureView | FeatureSelection | str
SpineInput = DataFrame | pd.DataFrame | str


@dataclass(frozen=True)
class TrainingDatasetVersion:
    """One build of a training dataset: its Delta version, rows and manifest."""

    name: str
    version: int
    rows: int
    uri: str
    manifest: dict[str, Any]


class FeatureStore:
    """Feature retrieval over a repository's offline store with one Spark session."""

    def __init__(
        self, repository: Repository, spark: SparkSession, offline_root_uri: str | None = None
    ):
        self.repository = repository
        self.spark = spark
        self.offline = OfflineStore(offline_root_uri or offline_root())
        self._resources = ExitStack()
        self._online: FeatureServer | None = None
        self._swept = False

    @classmethod
    def from_repo(
        cls,
        package: str = "feature_assets",
        spark: SparkSession | None = None,
        offline_root_uri: str | None = None,
    ) -> FeatureStore:
        """Load a repository; without a session, start Sail in-process (closed by `close()`)."""
        resources = ExitStack()
        if spark is None:
            spark = resources.enter_context(spark_session())
        store = cls(Repository.load(package), spark, offline_root_uri)
        store._resources = resources
        return store

    def close(self) -> None:
        self._resources.close()

    def get_online_features(
        self,
        service: str,
        entities: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        request_data: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        features: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Online features of one entity row (a mapping) or many (a list), as the handler
        serves them (see `featureplane.serving`), from the online store of the settings;
        `request_data` is one mapping for every row or, for many, a list of one per row."""
        if self._online is None:
            registry = load_registry(build_registry(self.repository, online_store_settings()))
            self._online = FeatureServer(registry)
            self._resources.callback(self._online.close)
        return self._online.get_features(service, entities, request_data, features)

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- point-in-time retrieval -------------------------------------------------------------

    def get_historical_features(
        self,
        spine: SpineInput,
        features: FeatureReference | Sequence[FeatureReference],
        timestamp_column: str = "ts",
        full_feature_names: bool = True,
    ) -> DataFrame:
        """The spine with, for each row, the feature values as of its timestamp.

        `spine`: a Spark or pandas DataFrame, or a Delta table path, holding every join key the
        features need and `timestamp_column`; other columns (labels) pass through. `features`: a
        FeatureService, (on-demand) feature views, selections (`view[["f"]]`) or `"view:feature"`
        strings. Output features are named `<view>__<feature>`, or plainly when
        `full_feature_names` is False and the names are unique; on-demand features come last.
        On-demand views read their request fields from spine columns of the same name and are
        computed from the point-in-time values of the features they depend on, which are joined
        even when not requested (and then not returned). String columns are plain strings on
        every engine (`offline_store.plain_strings`), so the frame written to Delta reads with
        delta-rs too.
        """
        selections = self.resolve(features)
        joined, _ = self._historical(
            self._spine(spine), selections, timestamp_column, full_feature_names
        )
        return joined

    def resolve(
        self, features: FeatureReference | Sequence[FeatureReference]
    ) -> list[FeatureSelection]:
        """Feature references as selections of the repository's views, one per view."""
        if isinstance(
            features, FeatureService | FeatureView | OnDemandFeatureView | FeatureSelection | str
        ):
            features = [features]
        merged: dict[str, list[str]] = {}
        for reference in features:
            for selection in self._selections(reference):
                names = merged.setdefault(selection.view_name, [])
                names += [name for name in selection.features if name not in names]
        if not merged:
            raise RetrievalError("no features requested")
        return [FeatureSelection(self._view(view), tuple(names)) for view, names in merged.items()]

    def _selections(self, reference: FeatureReference) -> list[FeatureSelection]:
        if isinstance(reference, FeatureService):
            service = self.repository.feature_services.get(reference.name, reference)
            return list(service.features)
        if isinstance(reference, FeatureView | OnDemandFeatureView):
            view = self._view(reference.name)
            return [FeatureSelection(view, view.feature_names)]
        if isinstance(reference, FeatureSelection):
            selection = FeatureSelection(self._view(reference.view_name), reference.features)
            if selection.problem():
                raise RetrievalError(f"the request {selection.problem()}")
            return [selection]
        if isinstance(reference, str):
            view_name, _, feature = reference.partition(":")
            view = self._view(view_name)
            if not feature:
                return [FeatureSelection(view, view.feature_names)]
            if feature not in view.feature_names:
                raise RetrievalError(
                    f"feature view {view_name!r} has no feature {feature!r} "
                    f"(features: {', '.join(view.feature_names)})"
                )
            return [FeatureSelection(view, (feature,))]
        raise RetrievalError(f"{reference!r} is not a feature service, view, selection or name")

    def _view(self, name: str) -> FeatureView | OnDemandFeatureView:
        views = {**self.repository.feature_views, **self.repository.on_demand_views}
        view = views.get(name)
        if view is None:
            known = ", ".join(sorted(views)) or "none"
            raise RetrievalError(f"unknown feature view {name!r} (known: {known})")
        return view

    def _spine(self, spine: SpineInput) -> DataFrame:
        """The spine as a Spark DataFrame. A pandas spine is written by this process to Parquet
        under the offline store's staging area and read from there: as a local relation it
        would travel inside each of the retrieval's requests (schema look-ups, the bounds, the
        final query), about ten times its size in all. Its file stays until the store is closed
        (or is swept a day later, after a crash)."""
        if isinstance(spine, pd.DataFrame):
            staging = self.offline.table_uri(STAGING, SPINES)
            if not self._swept:
                sweep(staging)
                self._swept = True
            location = f"{staging}/{uuid.uuid4().hex}"
            return self._resources.enter_context(staged_pandas(self.spark, spine, location))
        if isinstance(spine, str):
            return self.spark.read.format("delta").load(spine)
        if isinstance(spine, DataFrame):
            return spine
        raise RetrievalError(
            f"spine must be a Spark or pandas DataFrame or a Delta path: {spine!r}"
        )

    def _historical(
        self,
        spine: DataFrame,
        selections: list[FeatureSelection],
        timestamp_column: str,
        full_feature_names: bool,
        pins: Mapping[str, tuple[str, int]] | None = None,
    ) -> tuple[DataFrame, list[dict[str, Any]]]:
        """The joined DataFrame and, per view, what was read or computed (for manifests).

        Reads of stored views name their table, Delta version and retrieval definition
        (`featureplane.manifest`); those of on-demand views say so. `pins` reads views from
        the given (table, Delta version) instead of their version's latest.
        """
        if timestamp_column not in spine.columns:
            raise RetrievalError(
                f"spine has no timestamp column {timestamp_column!r} "
                f"(columns: {', '.join(spine.columns)})"
            )
        if dict(spine.dtypes)[timestamp_column] not in ("timestamp", "timestamp_ntz", "date"):
            raise RetrievalError(
                f"spine column {timestamp_column!r} is {dict(spine.dtypes)[timestamp_column]}, "
                "not a timestamp"
            )
        on_demand = [s for s in selections if isinstance(s.view, OnDemandFeatureView)]
        stored = [s for s in selections if not isinstance(s.view, OnDemandFeatureView)]
        names = _output_names([*stored, *on_demand], full_feature_names, spine.columns)
        columns = _input_columns(on_demand, names)
        requested = {s.view_name: s.features for s in stored}
        for selection in on_demand:
            request = selection.view.request_source
            missing = [f for f in request.field_names if f not in spine.columns] if request else []
            if missing:
                raise RetrievalError(
                    f"spine lacks request field {missing[0]!r} needed by on-demand feature view "
                    f"{selection.view_name!r}"
                )
        spine = spine.withColumn(timestamp_column, F.col(timestamp_column).cast("timestamp"))
        micros = F.unix_micros(F.col(timestamp_column))
        bounds = [utc_from_micros(m) for m in spine.agg(F.min(micros), F.max(micros)).first()]
        lookups, aggregates, reads = [], [], []
        for view in stored_views([*stored, *on_demand]):
            missing = [key for key in view.join_keys if key not in spine.columns]
            if missing:
                raise RetrievalError(
                    f"spine lacks join key {missing[0]!r} needed by feature view {view.name!r}"
                )
            uri, version = (pins or {}).get(
                view.name, (self.offline.view_table_uri(view.name, view.version), None)
            )
            table, version = self._pinned_table(view, uri, version)
            reads.append(
                {
                    "view": view.name,
                    "view_version": view.version,
                    "uri": uri,
                    "delta_version": version,
                    "features": list(requested.get(view.name, ())),
                    "definition": retrieval_definition(view),
                }
            )
            outputs = {f: column for (v, f), column in columns.items() if v == view.name}
            if view.aggregations:
                by_name = {a.name: a for a in view.aggregations}
                aggregates.append(
                    AggregateLookup(
                        tiles=_restrict(table, view, *bounds),
                        join_keys=view.join_keys,
                        interval=view.interval,
                        aggregations={by_name[f]: output for f, output in outputs.items()},
                        column_types={c.name: c.dtype.spark for c in view.schema},
                    )
                )
                continue
            lookups.append(
                Lookup(
                    table=_restrict(table, view, *bounds),
                    join_keys=view.join_keys,
                    timestamp_field=view.timestamp_field,
                    features=outputs,
                    ttl=view.ttl,
                    tie_breakers=view.feature_names,
                    unique_times=True,  # materialization resolved ties
                )
            )
        joined = point_in_time_join(spine, timestamp_column, lookups) if lookups else spine
        for aggregate in aggregates:
            joined = aggregate_join(joined, timestamp_column, aggregate, anchors_from=spine)
        for selection in on_demand:
            joined = self._apply_on_demand(joined, selection.view, columns)
            reads.append(
                {
                    "view": selection.view_name,
                    "view_version": selection.view.version,
                    "on_demand": True,
                    "features": list(selection.features),
                }
            )
        return plain_strings(joined.select(*spine.columns, *names.values())), reads

    @staticmethod
    def _apply_on_demand(
        joined: DataFrame, view: OnDemandFeatureView, columns: dict[tuple[str, str], str]
    ) -> DataFrame:
        """Compute an on-demand view's features from the spine's request fields (cast to their
        declared types) and the joined feature columns."""
        inputs = []
        for source in view.sources:
            if isinstance(source, FeatureSelection):
                inputs.append({f: columns[(source.view_name, f)] for f in source.features})
                continue
            request = {}
            for field in source.schema:
                request[field.name] = f"{HIDDEN}request__{view.name}__{field.name}"
                joined = joined.withColumn(
                    request[field.name], F.col(field.name).cast(field.dtype.spark)
                )
            inputs.append(request)
        outputs = {f: columns[(view.name, f)] for f in view.feature_names}
        return apply_on_demand(joined, view, inputs, outputs)

    def _pinned_table(
        self, view: FeatureView, uri: str, version: int | None
    ) -> tuple[DataFrame, int]:
        if not self.offline.exists(uri):
            raise RetrievalError(
                f"feature view {view.name!r} has no offline data yet: "
                f"materialize the asset features/{view.name}"
            )
        if version is None:
            version = DeltaTable(uri).version()
        return self._read_version(uri, version), version

    # ---- training datasets -------------------------------------------------------------------

    def training_uri(self, name: str) -> str:
        return self.offline.table_uri("training", name)

    def build_training_dataset(self, name: str) -> TrainingDatasetVersion:
        """Join the dataset's spine with its service and write a new version plus manifest."""
        dataset = self.repository.training_datasets[name]
        spine_df, spine_read = self._dataset_spine(dataset.spine)
        selections = list(dataset.features.features)
        joined, reads = self._historical(
            spine_df, selections, dataset.spine_timestamp, dataset.full_feature_names
        )
        uri = self.training_uri(name)
        writer = joined.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
        writer.options(**TIME_TRAVEL_PROPERTIES).save(uri)
        version = DeltaTable(uri).version()
        manifest = {
            "training_dataset": name,
            "version": version,
            "created_at": datetime.now(UTC).isoformat(),
            "feature_service": dataset.features.name,
            "spine": {**spine_read, "timestamp_column": dataset.spine_timestamp},
            "full_feature_names": dataset.full_feature_names,
            "features": [read for read in reads if not read.get("on_demand")],
            "on_demand_features": [read for read in reads if read.get("on_demand")],
        }
        _write_json(manifest_uri(uri, version), manifest)
        rows = self.get_training_dataset(name, version).count()
        return TrainingDatasetVersion(name, version, rows, uri, manifest)

    def get_training_dataset(self, name: str, version: int | None = None) -> DataFrame:
        """A built training dataset: the latest version, or the given one (Delta time travel)."""
        uri = self.training_uri(name)
        if not self.offline.exists(uri):
            raise RetrievalError(f"training dataset {name!r} has not been built")
        reader = self.spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return reader.load(uri)

    def manifest(self, name: str, version: int | None = None) -> dict[str, Any]:
        if version is None:
            version = DeltaTable(self.training_uri(name)).version()
        return read_manifest(manifest_uri(self.training_uri(name), version))

    def rebuild(self, name: str, version: int) -> DataFrame:
        """Recompute a dataset version from its manifest: the same inputs, read by time travel."""
        manifest = self.manifest(name, version)
        spine = manifest["spine"]
        if "delta_version" not in spine:
            raise RetrievalError(f"{name} v{version}: its spine table is not versioned")
        spine_df = self._read_version(spine["uri"], spine["delta_version"])
        if spine["kind"] == "feature_view":
            spine_df = spine_df.drop(PARTITION_COLUMN)
        selections = [
            FeatureSelection(self._recorded(name, version, read), tuple(read["features"]))
            for read in [*manifest["features"], *manifest.get("on_demand_features", [])]
            if read["features"]
        ]
        pins = {read["view"]: (read["uri"], read["delta_version"]) for read in manifest["features"]}
        joined, _ = self._historical(
            spine_df,
            selections,
            spine["timestamp_column"],
            manifest["full_feature_names"],
            pins,
        )
        return joined

    def _recorded(
        self, name: str, version: int, read: Mapping[str, Any]
    ) -> FeatureView | OnDemandFeatureView:
        """The view a manifest read: the repository's while its version is the recorded one,
        else the recorded definition (an on-demand view must still be at its version: its
        function is the repository's)."""
        views = {**self.repository.feature_views, **self.repository.on_demand_views}
        view = views.get(read["view"])
        if view is not None and view.version == read["view_version"]:
            return view
        if "definition" in read:
            return recorded_view(read["view"], read["definition"])
        raise RetrievalError(
            f"{name} v{version}: {read['view']} was at version {read['view_version']} when the "
            f"dataset was built and is at {view.version if view else 'none'} now; rebuild it "
            "with the repository of that version"
        )

    def _dataset_spine(self, spine: BatchSource | FeatureView) -> tuple[DataFrame, dict[str, Any]]:
        """The spine, pinned to its current Delta version, and how to find it again."""
        if isinstance(spine, FeatureView):
            uri = self.offline.view_table_uri(spine.name, spine.version)
            table, version = self._pinned_table(spine, uri, None)
            read = {
                "kind": "feature_view",
                "name": spine.name,
                "uri": uri,
                "delta_version": version,
            }
            return table.drop(PARTITION_COLUMN), read
        if spine.uri is None:
            return read_source(self.spark, spine), {"kind": "table", "name": spine.name}
        version = DeltaTable(spine.uri).version()
        read = {"kind": "source", "name": spine.name, "uri": spine.uri, "delta_version": version}
        return self._read_version(spine.uri, version), read

    def _read_version(self, uri: str, version: int) -> DataFrame:
        return self.spark.read.format("delta").option("versionAsOf", version).load(uri)


def _restrict(table: DataFrame, view: FeatureView, earliest, latest) -> DataFrame:
    """Only the rows that can serve a spine row in [earliest, latest]: prunes event dates.

    A row-level view needs rows up to `latest` and back to `earliest - ttl`; an aggregate view
    needs the tiles of its longest window before `earliest`.
    """
    ts = view.table_timestamp_field
    if latest is None:
        return table.limit(0)
    table = table.where((F.col(ts) <= F.lit(latest)) & (F.col(PARTITION_COLUMN) <= latest.date()))
    reach = max((a.time_window for a in view.aggregations), default=view.ttl)
    if reach is not None:
        floor = earliest - reach - (view.interval if view.aggregations else timedelta(0))
        table = table.where((F.col(ts) >= F.lit(floor)) & (F.col(PARTITION_COLUMN) >= floor.date()))
    return table


def _input_columns(
    on_demand: list[FeatureSelection], names: dict[tuple[str, str], str]
) -> dict[tuple[str, str], str]:
    """The column of every (view, feature) the retrieval computes: the output names, plus
    hidden columns for the inputs and unselected outputs of on-demand views."""
    columns = dict(names)
    for selection in on_demand:
        view = selection.view
        needed = [(s.view_name, f) for s in view.feature_sources for f in s.features]
        needed += [(view.name, f) for f in view.feature_names]
        for key in needed:
            columns.setdefault(key, f"{HIDDEN}{key[0]}__{key[1]}")
    return columns


def _output_names(
    selections: list[FeatureSelection], full: bool, spine_columns: list[str]
) -> dict[tuple[str, str], str]:
    names = {
        (s.view_name, f): served_name(s.view_name, f) if full else f
        for s in selections
        for f in s.features
    }
    seen: dict[str, tuple[str, str]] = {}
    for key, name in names.items():
        if name in seen:
            raise RetrievalError(
                f"feature name {name!r} is in views {seen[name][0]!r} and {key[0]!r}: "
                "use full_feature_names=True"
            )
        if name in spine_columns:
            raise RetrievalError(f"spine already has a column named {name!r}")
        seen[name] = key
    return names


def _write_json(uri: str, payload: dict[str, Any]) -> None:
    filesystem, path = pafs.FileSystem.from_uri(uri)
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with filesystem.open_output_stream(path) as out:
        out.write(json.dumps(payload, indent=2, default=str).encode())
