"""Shared fixtures: one Sail Spark session and one small demo data set per test session, and
the `featureplane` command line run in-process on small repositories. Every registry file the
tests write is signed, and verified when read, with one session key pair set as production sets
it (`featureplane.signing`). Hypothesis neither times examples nor their generation: the
machines are shared and stall, and speed is the benchmarks' business."""

import os
import shutil
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake
from hypothesis import HealthCheck, settings
from pyspark.sql import SparkSession

from bench.harness import moto_server
from featureplane import FeatureStore, Repository, cluster
from featureplane.cli import main
from featureplane.cluster import Cluster
from featureplane.compute.transform import run_transformation
from featureplane.compute.window import TimeWindow
from featureplane.signing import Ed25519Signer, decode_key, generate_key
from featureplane.spark_session import spark_session
from featureplane.synthetic import DemoScale, generate

ROOT = Path(__file__).resolve().parents[1]
PROJECT_INSTANCE = ROOT / ".dagster_home" / "dagster.yaml"
"""The project's Dagster instance set-up (the range event log), copied into test instances."""

settings.register_profile("shared", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("shared")


@pytest.fixture(scope="session", autouse=True)
def signing_key() -> Iterator[str]:
    """The session's private registry signing key, set with its public key in the environment
    (servers started as processes inherit both)."""
    key = generate_key()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FEATUREPLANE_SIGNING_KEY", key)
        public = Ed25519Signer(decode_key(key, "the session key")).public_key_text
        patch.setenv("FEATUREPLANE_VERIFY_KEYS", public)
        patch.delenv("FEATUREPLANE_ALLOW_UNSIGNED_REGISTRY", raising=False)
        yield key


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    """Sail's Spark Connect server in-process, as the `local` mode starts it."""
    with spark_session("local") as session:
        yield session


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory) -> Iterator[Cluster]:
    """A Spark standalone cluster (a master, two workers of one core) with a Connect server and
    Delta, started once per test session as `featureplane cluster start` starts it; its jars come
    from the project's jar cache (`.jars/`, fetched when missing). Stopping it leaves no process."""
    home = tmp_path_factory.mktemp("spark_cluster")
    with cluster.running(home, ROOT / ".jars", connect_port=0, worker_memory="768m") as started:
        yield started
    assert cluster.processes(home) == [], "the cluster left processes behind"


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """An empty data directory that relative source paths and the offline store resolve to."""
    monkeypatch.setenv("FEATUREPLANE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("FEATUREPLANE_OFFLINE_ROOT", raising=False)
    return tmp_path


# ---- the command line on small feature repositories ---------------------------------------

REPOSITORY = """
from datetime import UTC, datetime, timedelta
from featureplane import (BatchSource, Entity, FeatureService, Field, Int64, String,
                          batch_feature_view)

events = BatchSource("events", path="raw/events", timestamp_field="ts")
user = Entity("user", join_keys=["user_id"])


@batch_feature_view(sources=[events], entities=[user], schema={schema}, timestamp_field="ts",
                    feature_start_time=datetime(2026, 1, 1, tzinfo=UTC))
def user_stats(events):
    return {output}


checkout = FeatureService("checkout", features=[user_stats])
"""


EVENTS = pa.table(
    {
        "user_id": pa.array([1, 2], pa.int64()),
        "ts": pa.array([datetime(2026, 1, 1, 9, tzinfo=UTC)] * 2, pa.timestamp("us", "UTC")),
        "clicks": pa.array([3, 4], pa.int64()),
        "country": ["FR", "DE"],
    }
)
"""The `events` source of the `cli` fixture's repositories."""


def write_repository(package: Path, **parts: str) -> Path:
    """A package whose `__init__.py` is REPOSITORY with `parts` ({schema}, {output}) filled."""
    package.mkdir()
    source = textwrap.dedent(REPOSITORY)
    for part, text in parts.items():
        source = source.replace(f"{{{part}}}", text)
    (package / "__init__.py").write_text(source)
    return package


@pytest.fixture
def cli(data_dir, monkeypatch, capsys):
    """Run `featureplane …` in-process on packages written to the data directory: `v1`, `v2`
    (clicks retyped) and `broken`, over a Delta table `raw/events` that plan and apply
    validate them against, with a Dagster instance in `<data dir>/dagster_home`; returns
    (exit code, stdout, stderr)."""
    repositories = {
        "v1": ('[Field("clicks", Int64), Field("country", String)]', "events"),
        "v2": (
            '[Field("clicks", String), Field("country", String)]',
            'events.withColumn("clicks", events["clicks"].cast("string"))',
        ),
        "broken": ('[Field("user_id", Int64)]', "events"),
    }
    for name, (schema, output) in repositories.items():
        write_repository(data_dir / f"plan_repo_{name}", schema=schema, output=output)
    write_deltalake(str(data_dir / "raw" / "events"), EVENTS)
    monkeypatch.syspath_prepend(str(data_dir))
    for name in ("FEATUREPLANE_REGISTRY", "FEATUREPLANE_ONLINE_STORE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FEATUREPLANE_DAGSTER_URL", "http://127.0.0.1:9")  # no webserver there
    (data_dir / "dagster_home").mkdir()
    shutil.copy(PROJECT_INSTANCE, data_dir / "dagster_home")  # set up as the project's
    monkeypatch.setenv("DAGSTER_HOME", str(data_dir / "dagster_home"))

    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


TINY = DemoScale(days=3, users=200, ads=40, advertisers=8, impressions_per_day=6_000)
"""A few thousand events over three days: enough for every code path, fast on two cores."""


WINDOW = TimeWindow(TINY.start, TINY.start + timedelta(days=TINY.days))
"""The TINY data's time range."""


def demo_feature_store(spark: SparkSession, root: Path) -> FeatureStore:
    """The demo repository with every view computed for the TINY range into a fresh offline
    store at `root` (the `demo_data` fixture's sources)."""
    repository = Repository.load("feature_assets")
    store = FeatureStore(repository, spark, str(root))
    for view in repository.feature_views.values():
        window = TimeWindow(view.feature_start_time, WINDOW.end)
        rows = run_transformation(spark, view, window)
        store.offline.write_window(
            rows,
            store.offline.view_table_uri(view.name, view.version),
            window,
            view.timestamp_field,
        )
    return store


def canonical(df) -> pd.DataFrame:
    """A Spark DataFrame's rows as pandas, in a fixed order."""
    frame = df.toPandas()
    return frame.sort_values(list(frame.columns)).reset_index(drop=True)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Iterator[Path]:
    """The demo sources, generated once at TINY scale; FEATUREPLANE_DATA_DIR points at them."""
    root = tmp_path_factory.mktemp("demo_data")
    generate(root / "raw", TINY)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FEATUREPLANE_DATA_DIR", str(root))
        patch.delenv("FEATUREPLANE_OFFLINE_ROOT", raising=False)
        yield root


@pytest.fixture(scope="session")
def aws_credentials() -> Iterator[None]:
    """Fake credentials for boto3 against moto, so that nothing can reach a real AWS account."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            patch.setenv(name, "testing")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        yield


def view_table(root: Path | str, name: str) -> Path:
    """Where the offline store under `root` keeps the current version of a demo view's table."""
    from featureplane import Repository

    view = Repository.load("feature_assets").feature_view(name)
    return Path(root) / "features" / name / view.version


def read_delta(path: Path | str) -> pd.DataFrame:
    """A Delta table's current rows as pandas, from its data files (no Spark, no partitions).

    `DeltaTable.to_pyarrow_table()` can abort the process at exit, so read the files it lists.
    """
    files = DeltaTable(str(path)).file_uris()
    return pq.ParquetDataset(files).read().to_pandas() if files else pd.DataFrame()


@dataclass(frozen=True)
class S3:
    """moto's S3 server of a test module (`tests.atomic_s3_server`): its URL, and the file of
    the conditional PUTs it refused."""

    url: str
    refused: Path

    def bucket(self, name: str) -> str:
        boto3.client("s3").create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Iterator[S3]:
    """moto's S3 server over HTTP on 127.0.0.1, holding Delta commits 0.2 s so writers race,
    and only the standard AWS variables pointing at it (featureplane derives the rest); the
    environment is restored afterwards."""
    saved = dict(os.environ)
    refused = tmp_path_factory.mktemp("s3") / "refused"
    os.environ.update(S3_COMMIT_DELAY_SECONDS="0.2", S3_REFUSALS_LOG=str(refused))
    try:
        with moto_server(module="tests.atomic_s3_server") as url:
            for name in (
                "AWS_REGION",
                "AWS_ALLOW_HTTP",
                "AWS_CONDITIONAL_PUT",
                "AWS_SESSION_TOKEN",
            ):
                os.environ.pop(name, None)
            os.environ.update(
                AWS_ENDPOINT_URL=url,
                AWS_ACCESS_KEY_ID="testing",
                AWS_SECRET_ACCESS_KEY="testing",
                AWS_DEFAULT_REGION="us-east-1",
            )
            yield S3(url, refused)
    finally:
        os.environ.clear()
        os.environ.update(saved)
