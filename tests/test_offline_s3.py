"""The offline store on S3, moto's server over HTTP: a small pipeline through Dagster writes the
tables and training datasets of the local run, concurrent writers of one table lose no commit,
and a missing bucket is one clear line."""

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pytest
from dagster import DagsterInstance
from deltalake import DeltaTable

from bench.harness import moto_server
from conftest import TINY, canonical
from featureplane import FeatureService, FeatureStore, Repository
from featureplane.compute.materialization import sweep
from featureplane.compute.window import TimeWindow
from featureplane.dagster.definitions import build_definitions, resources_for
from featureplane.dagster.materialize import materialize_range, materialize_training
from featureplane.errors import SettingError
from featureplane.maintenance import maintain
from featureplane.offline_store import OfflineStore, StoreUnreachable, files_at
from featureplane.training_dataset import TrainingDataset
from resources import OfflineStoreResource, SparkResource

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "offline-lake"
DAY = timedelta(days=1)
END = TINY.start + TINY.days * DAY


def rows(df) -> pd.DataFrame:
    """A table's rows in a fixed order (by its flat columns: tiles hold maps and lists)."""
    frame = df.toPandas()
    nested = (dict, list, np.ndarray)
    flat = [c for c in frame.columns if not frame[c].map(lambda v: isinstance(v, nested)).any()]
    return frame.sort_values(flat).reset_index(drop=True)


def pipeline_repository() -> Repository:
    """Three demo views, row-level and aggregate (tiles), and a training dataset over them."""
    demo = Repository.load("feature_assets")
    views = [demo.feature_view(name) for name in ("user_daily_page_views", "ad_delivery")]
    labels = demo.feature_view("impression_labels")
    service = FeatureService("s3_check", features=views)
    dataset = TrainingDataset("s3_training", spine=labels, features=service)
    return Repository.from_objects([*views, labels, service, dataset])


def run_pipeline(repository: Repository, root: str) -> None:
    """Materialize three days, then one day again (its window replaced), and build the
    training dataset, all through Dagster."""
    resources = resources_for(SparkResource(), OfflineStoreResource(root=root))
    defs = build_definitions(repository, resources)
    with DagsterInstance.ephemeral() as instance:
        materialize_range(defs, instance, TINY.start, END)
        materialize_range(defs, instance, TINY.start + DAY, TINY.start + 2 * DAY)
        materialize_training(defs, instance)


def test_a_pipeline_on_s3_writes_what_it_writes_locally(s3, demo_data, spark, tmp_path):
    s3.bucket(BUCKET)
    repository = pipeline_repository()
    roots = {"local": str(tmp_path / "offline"), "s3": f"s3://{BUCKET}/pipeline"}
    stores = {}
    for kind, root in roots.items():
        run_pipeline(repository, root)
        store = FeatureStore(repository, spark, root)
        view = repository.feature_view("user_daily_page_views")
        uri = store.offline.view_table_uri(view.name, view.version)
        day = TimeWindow(TINY.start + DAY, TINY.start + 2 * DAY)
        empty = store.offline.read(spark, uri).where(day.contains(view.timestamp_field)).limit(0)
        store.offline.write_window(empty, uri, day, view.timestamp_field)
        store.build_training_dataset("s3_training")
        stores[kind] = store
    local, remote = stores["local"], stores["s3"]
    for view in repository.feature_views.values():
        uris = [s.offline.view_table_uri(view.name, view.version) for s in (local, remote)]
        assert uris[1].startswith("s3://") and DeltaTable(uris[1]).version() > 0
        assert DeltaTable(uris[0]).version() == DeltaTable(uris[1]).version()  # delta-rs
        tables = [
            rows(s.offline.read(spark, uri)) for s, uri in zip(stores.values(), uris, strict=True)
        ]
        assert len(tables[0]) > 0 and tables[0].equals(tables[1])  # Sail
    first, second = (canonical(remote.get_training_dataset("s3_training", v)) for v in (0, 1))
    assert len(first) == len(second) > 0 and not first.equals(second)
    assert first.equals(canonical(local.get_training_dataset("s3_training", 0)))
    assert second.equals(canonical(local.get_training_dataset("s3_training", 1)))
    assert canonical(remote.rebuild("s3_training", 0)).equals(first)  # time travel on S3
    reports = [maintain(s.offline, min_retention=timedelta(0)) for s in (local, remote)]
    done = [
        [(t.compacted_files, len(t.removed_files), t.skipped) for t in r.tables] for r in reports
    ]
    assert done[0] == done[1] and any(removed for _, removed, _ in done[1])  # delta-rs on S3
    assert canonical(remote.rebuild("s3_training", 0)).equals(first), "recorded files kept"
    assert remote.manifest("s3_training", 1)["features"][0]["uri"].startswith("s3://")
    spine = first[["user_id", "ad_id", "ts"]].head(500)  # a pandas spine, staged on S3
    views = list(repository.feature_views.values())[:2]
    joined = [canonical(s.get_historical_features(spine, views)) for s in (local, remote)]
    assert len(joined[0]) == 500 and joined[0].equals(joined[1])
    remote.close()
    assert files_at(remote.offline.table_uri("_staging")) == 0, "the staged spine removed"


WRITER = """
import sys
from datetime import UTC, datetime, timedelta
from pyspark.sql import functions as F
from bench.harness import moto_server
from featureplane.compute.materialization import sweep
from featureplane.compute.window import TimeWindow
from featureplane.maintenance import maintain
from featureplane.offline_store import OfflineStore
from featureplane.spark_session import spark_session

root, uri, days = sys.argv[1:]
store, first = OfflineStore(root), datetime(2026, 10, 1, tzinfo=UTC)
with spark_session() as spark:
    frames = []
    for day in map(int, days.split(",")):
        window = TimeWindow(first + timedelta(days=day), first + timedelta(days=day + 1))
        rows = [(user, window.start + timedelta(hours=user), float(day)) for user in range(4)]
        frame = spark.createDataFrame(rows, "user_id bigint, ts timestamp, value double")
        frames.append((window, frame.withColumn("event_date", F.to_date("ts"))))
    print("ready", flush=True)
    sys.stdin.readline()  # both writers commit from the same moment
    for window, frame in frames:
        store.write_window(frame, uri, window, "ts")
"""


def test_concurrent_writers_of_one_table_on_s3_lose_no_commit(s3, spark):
    """Two processes, each with its own Sail (as two Dagster runs), replace interleaved days of
    one table at once, each commit held long enough for the other's to land first: S3's
    conditional write lets one commit of a version in and refuses the other, whose writer
    commits again after it, so every window and every version is there."""
    root = f"s3://{s3.bucket('race-lake')}/concurrent"
    store = OfflineStore(root)
    uri = store.table_uri("features", "t")
    schema = "user_id bigint, ts timestamp, value double, event_date date"
    store.create_table(spark.createDataFrame([], schema), uri)
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, root, uri, days],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for days in ("0,2,4,6", "1,3,5,7")
    ]
    assert [writer.stdout.readline() for writer in writers] == ["ready\n"] * 2
    for writer in writers:
        writer.stdin.write("go\n")
        writer.stdin.close()
    errors = [writer.stderr.read() for writer in writers]
    for writer in writers:
        writer.wait(timeout=240)
    assert [writer.returncode for writer in writers] == [0, 0], errors
    refused = s3.refused.read_text().splitlines() if s3.refused.exists() else []
    assert refused and all("/concurrent/features/t/_delta_log/" in key for key in refused)
    table = DeltaTable(uri)
    history = table.history()
    assert table.version() == 8 and len(history) == 9  # create + 8 windows, none lost
    log = boto3.client("s3").list_objects_v2(
        Bucket="race-lake", Prefix="concurrent/features/t/_delta_log/"
    )
    commits = sorted(
        o["Key"].rsplit("/", 1)[1] for o in log["Contents"] if o["Key"].endswith(".json")
    )
    assert commits == [f"{v:020d}.json" for v in range(9)]
    stored = rows(store.read(spark, uri))
    assert sorted(stored["value"].unique()) == [float(day) for day in range(8)]
    assert stored.groupby("value").size().eq(4).all()


def test_a_missing_bucket_is_one_clear_line(s3, spark):
    store = OfflineStore("s3://no-such-bucket/offline")
    uri = store.table_uri("features", "t")
    with pytest.raises(StoreUnreachable) as raised:
        store.write_window(spark.range(1), uri, TimeWindow(TINY.start, END), "ts")
    message = str(raised.value)
    assert "\n" not in message and "no-such-bucket" in message and "404" in message


@pytest.mark.parametrize(
    "name, value",
    [
        ("AWS_S3_LOCKING_PROVIDER", "dynamodb"),
        ("AWS_S3_ALLOW_UNSAFE_RENAME", "true"),
        ("AWS_CONDITIONAL_PUT", "disabled"),
    ],
)
def test_settings_that_would_make_s3_commits_unsafe_are_refused(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingError, match=name):
        OfflineStore("s3://lake/offline")


def test_a_killed_run_s_staged_output_on_s3_is_swept_by_its_age(s3, spark):
    """S3 has no directories, so a staged output's age is its newest file's."""
    staging = OfflineStore(f"s3://{s3.bucket('staging-lake')}/offline").table_uri("_staging", "v")
    spark.range(10).write.parquet(f"{staging}/killed-run")
    assert sweep(staging, older_than=timedelta(hours=1)) == 0
    assert files_at(f"{staging}/killed-run") > 0
    assert sweep(staging, older_than=timedelta(0)) == 1
    assert files_at(staging) == 0


def test_wrong_credentials_are_one_clear_line(monkeypatch):
    """moto's server checking signatures (after the calls that create a user, its key, its
    policy and the bucket): the right key reads the bucket, a wrong secret is refused."""
    monkeypatch.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "5")
    with moto_server() as url:
        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
        iam = boto3.client("iam", region_name="us-east-1")
        iam.create_user(UserName="writer")
        key = iam.create_access_key(UserName="writer")["AccessKey"]
        document = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        arn = iam.create_policy(PolicyName="lake", PolicyDocument=json.dumps(document))
        iam.attach_user_policy(UserName="writer", PolicyArn=arn["Policy"]["Arn"])
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="locked-lake")
        store = OfflineStore("s3://locked-lake/offline")
        uri = store.table_uri("features", "t")
        assert store.exists(uri) is False
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        with pytest.raises(StoreUnreachable) as raised:
            store.exists(uri)
    message = str(raised.value)
    assert "\n" not in message and "'locked-lake'" in message and "403" in message
