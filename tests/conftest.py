"""Shared fixtures: one Sail Spark session and one small demo data set per test session."""

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from pyspark.sql import SparkSession

from featureplane.spark_session import spark_session
from featureplane.synthetic import DemoScale, generate


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    """Sail's Spark Connect server in-process, as the `local` mode starts it."""
    with spark_session("local") as session:
        yield session


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """An empty data directory that relative source paths and the offline store resolve to."""
    monkeypatch.setenv("FEATUREPLANE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("FEATUREPLANE_OFFLINE_ROOT", raising=False)
    return tmp_path


TINY = DemoScale(days=3, users=200, ads=40, advertisers=8, impressions_per_day=6_000)
"""A few thousand events over three days: enough for every code path, fast on two cores."""


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Iterator[Path]:
    """The demo sources, generated once at TINY scale; FEATUREPLANE_DATA_DIR points at them."""
    root = tmp_path_factory.mktemp("demo_data")
    generate(root / "raw", TINY)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FEATUREPLANE_DATA_DIR", str(root))
        patch.delenv("FEATUREPLANE_OFFLINE_ROOT", raising=False)
        yield root


def read_delta(path: Path | str) -> pd.DataFrame:
    """A Delta table's current rows as pandas, from its data files (no Spark, no partitions).

    `DeltaTable.to_pyarrow_table()` can abort the process at exit, so read the files it lists.
    """
    files = DeltaTable(str(path)).file_uris()
    return pq.ParquetDataset(files).read().to_pandas() if files else pd.DataFrame()
