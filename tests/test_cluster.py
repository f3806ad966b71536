"""The demo repository end to end on the local JVM Spark cluster through Spark Connect, held to
the Sail run's results: every offline table, the training dataset and its rebuild by time
travel, and the online store's records (what serving reads), equal exactly, or within 1e-12
relative for doubles, whose sums Spark and Sail may add up in another order."""

import json
import math
import sqlite3
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dagster import DagsterInstance
from deltalake import DeltaTable

from conftest import TINY
from featureplane import FeatureStore, Repository, cluster
from featureplane.cli import main
from featureplane.dagster import build_definitions
from featureplane.dagster.definitions import resources_for
from featureplane.dagster.materialize import materialize_range, materialize_training
from featureplane.errors import ClusterError
from resources import OfflineStoreResource, OnlineStoreResource, SparkResource

pytestmark = pytest.mark.cluster
END = TINY.start + timedelta(days=TINY.days)
RELATIVE = 1e-12


@pytest.fixture(scope="module")
def runs(demo_data, spark_cluster, tmp_path_factory) -> dict:
    """The demo materialized, pushed online (consistency checks included) and its training
    dataset built, once on Sail and once on the cluster: {engine: (offline root, online file)}."""
    repository = Repository.load("feature_assets")
    engines = {
        "sail": SparkResource(),
        "cluster": SparkResource(mode="connect", url=spark_cluster.connect_url),
    }
    done = {}
    for engine, spark in engines.items():
        root = tmp_path_factory.mktemp(engine)
        online = root / "online.sqlite"
        resources = resources_for(
            spark,
            OfflineStoreResource(root=str(root / "offline")),
            OnlineStoreResource(path=str(online)),
        )
        defs = build_definitions(repository, resources)
        began = time.perf_counter()
        with DagsterInstance.ephemeral() as instance:
            materialize_range(defs, instance, TINY.start, END, online=True)
            materialize_training(defs, instance)
        print(f"{engine}: the demo end to end in {time.perf_counter() - began:.1f}s")
        done[engine] = (root / "offline", online)
    return done


def close(a, b) -> bool:
    """Equal values, doubles within RELATIVE, nested lists and maps element by element."""
    if isinstance(a, float | np.floating) and isinstance(b, float | np.floating):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=RELATIVE)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple | np.ndarray) and isinstance(b, list | tuple | np.ndarray):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    if a is None or b is None or a is pd.NaT or b is pd.NaT:
        return a is b or (pd.isna(a) and pd.isna(b))
    return bool(a == b)


def ordered(frame: pd.DataFrame) -> pd.DataFrame:
    nested = (dict, list, np.ndarray)
    flat = [c for c in frame.columns if not frame[c].map(lambda v: isinstance(v, nested)).any()]
    return frame.sort_values(flat).reset_index(drop=True)


SAIL_EMPTY_METADATA = ", metadata={'SPARK::metadata::json': {}}"
"""Sail 0.7.2 records a column without Spark metadata as Delta field metadata
`{"SPARK::metadata::json": {}}`; Spark records none. Both read back as no metadata."""


def fields(uri: str) -> list[tuple[str, str, dict]]:
    """A table's columns: name, type and metadata, Sail's empty marker aside, and nullability
    aside: Delta Spark declares every column of a table it creates nullable, where Sail keeps
    what the plan proves (a count is never null); the rows compared hold the same nulls."""
    return [
        (
            f.name,
            str(f.type).replace(SAIL_EMPTY_METADATA, "").replace("nullable=False", "nullable=True"),
            {k: v for k, v in f.metadata.items() if v != {}},
        )
        for f in DeltaTable(uri).schema().fields
    ]


def rows(uri: str) -> pd.DataFrame:
    """A table's rows through its Delta log (partition values from the log, as Spark writes
    none into its data files)."""
    return DeltaTable(uri).to_pyarrow_dataset().to_table().to_pandas()


def assert_same_table(reference: str, other: str) -> None:
    """The same columns (names, types, metadata) and rows of two Delta tables."""
    assert fields(other) == fields(reference), other
    expected, actual = ordered(rows(reference)), ordered(rows(other))
    assert len(actual) == len(expected) > 0, other
    for column in expected.columns:
        mismatched = [
            (x, y) for x, y in zip(expected[column], actual[column], strict=True) if not close(x, y)
        ]
        assert not mismatched, f"{other}: {column} differs, e.g. {mismatched[:3]}"


def tables(root) -> list[str]:
    return sorted(
        str(p.parent.parent.relative_to(root))
        for p in root.glob("**/_delta_log/00000000000000000000.json")
    )


def test_every_offline_table_equals_sail_s(runs):
    sail, jvm = runs["sail"][0], runs["cluster"][0]
    assert tables(jvm) == tables(sail)
    assert any(t.startswith("training/") for t in tables(sail))
    for table in tables(sail):
        assert_same_table(str(sail / table), str(jvm / table))


def test_the_online_records_equal_sail_s(runs):
    def records(path) -> dict:
        with sqlite3.connect(path) as db:
            rows = db.execute(
                "SELECT item_key, event_micros, payload, expires_at FROM online_records"
            )
            return {
                key: (micros, json.loads(payload), expires)
                for key, micros, payload, expires in rows
            }

    sail, jvm = records(runs["sail"][1]), records(runs["cluster"][1])
    assert len(sail) > 100 and jvm.keys() == sail.keys()
    for key in [key for key in sail if key.startswith("_push#")]:  # when each push began
        assert jvm.pop(key)[1]["finished"] and sail.pop(key)[1]["finished"], key
    differing = [key for key in sail if not close(list(jvm[key]), list(sail[key]))]
    assert not differing, f"{len(differing)} online records differ, e.g. {differing[:3]}"


def test_a_training_dataset_rebuilt_by_time_travel_on_the_cluster_equals_the_built_one(
    runs, spark_cluster
):
    root = runs["cluster"][0]
    with SparkResource(mode="connect", url=spark_cluster.connect_url).open() as spark:
        store = FeatureStore(Repository.load("feature_assets"), spark, str(root))
        built = store.get_training_dataset("ctr_training", 0).toPandas()
        rebuilt = store.rebuild("ctr_training", 0).toPandas()
    assert len(built) > 0
    pd.testing.assert_frame_equal(ordered(rebuilt[built.columns]), ordered(built))


def test_a_retrieval_on_the_cluster_written_to_delta_reads_with_delta_rs(
    runs, spark_cluster, tmp_path
):
    """The merges' output schemas reach JVM Spark with an explicit collation, which its Delta
    records as `string collate UTF8_BINARY`, a type delta-rs refuses: a retrieval's frame holds
    plain strings, the spine's passed-through columns too, wherever a notebook writes it."""
    spine = pd.DataFrame(
        {
            "user_id": [1, 2, 3],
            "ts": pd.to_datetime([END - timedelta(hours=h) for h in (1, 2, 3)], utc=True),
            "label": ["click", "none", "none"],
        }
    )
    with SparkResource(mode="connect", url=spark_cluster.connect_url).open() as spark:
        store = FeatureStore(Repository.load("feature_assets"), spark, str(runs["cluster"][0]))
        features = ["user_daily_page_views:page_views_1d", "user_daily_page_views:last_category"]
        joined = store.get_historical_features(spine, features)
        joined.write.format("delta").save(str(tmp_path / "retrieved"))
    table = DeltaTable(str(tmp_path / "retrieved"))
    types = {f.name: str(f.type) for f in table.schema().fields}
    string = 'PrimitiveType("string")'
    assert types["label"] == types["user_daily_page_views__last_category"] == string
    assert sorted(table.to_pandas()["label"]) == ["click", "none", "none"]


def test_a_second_cluster_from_the_same_folder_is_refused(spark_cluster):
    home = Path(spark_cluster.home)
    with pytest.raises(ClusterError, match="already runs"):
        cluster.start(home, connect_port=0)
    assert all(cluster.Cluster.load(home).alive().values())
    assert spark_cluster.workers() == 2


def test_delta_is_written_by_spark_s_delta_on_the_cluster(runs):
    root = runs["cluster"][0]
    history = DeltaTable(str(root / tables(root)[0])).history()
    assert all("Delta-Lake/" in (h.get("engineInfo") or "") for h in history), history


def test_the_command_line_says_when_no_cluster_was_started(data_dir, capsys):
    assert main(["cluster", "status"]) == 1
    assert main(["cluster", "stop"]) == 0
    out = capsys.readouterr().out
    assert out.count(f"no cluster was started from {data_dir / 'cluster'}") == 2
