"""Where the embedded defaults keep their data, from the environment.

One variable, `FEATUREPLANE_DATA_DIR` (default `./data`), roots raw demo sources, relative source
paths, the Delta offline store and the SQLite online store, so a notebook, the CLI and
`dagster dev` started in the same project see the same tables.
"""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """The data directory: `$FEATUREPLANE_DATA_DIR`, or `data/` under the working directory."""
    return Path(os.environ.get("FEATUREPLANE_DATA_DIR", "data")).resolve()


def offline_root() -> str:
    """Root of the Delta offline store: `$FEATUREPLANE_OFFLINE_ROOT` (a path or `s3://…` URI)."""
    return os.environ.get("FEATUREPLANE_OFFLINE_ROOT") or str(data_dir() / "offline")


def online_store_path() -> Path:
    """The embedded SQLite online store: `online_store.sqlite` in the data directory."""
    return data_dir() / "online_store.sqlite"
