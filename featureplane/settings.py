"""Where the embedded defaults keep their data, from the environment.

One variable, `FEATUREPLANE_DATA_DIR` (default `./data`), roots raw demo sources, relative source
paths, the Delta offline store, the SQLite online store and the serving registry, so a notebook,
the CLI, `dagster dev` and `featureplane serve` started in the same project see the same data.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from featureplane.errors import SettingError


def data_dir() -> Path:
    """The data directory: `$FEATUREPLANE_DATA_DIR`, or `data/` under the working directory."""
    return Path(os.environ.get("FEATUREPLANE_DATA_DIR", "data")).resolve()


def offline_root() -> str:
    """Root of the Delta offline store: `$FEATUREPLANE_OFFLINE_ROOT` (a path or `s3://…` URI)."""
    return os.environ.get("FEATUREPLANE_OFFLINE_ROOT") or str(data_dir() / "offline")


def online_store_path() -> Path:
    """The embedded SQLite online store: `online_store.sqlite` in the data directory."""
    return data_dir() / "online_store.sqlite"


def spark_remote() -> str | None:
    """The Spark Connect server that the CLI, the demo and Dagster compute on:
    `$FEATUREPLANE_SPARK_REMOTE` (`sc://host:port`, e.g. what `featureplane cluster start`
    prints); unset, Sail in-process."""
    url = os.environ.get("FEATUREPLANE_SPARK_REMOTE") or None
    if url is not None and not url.startswith("sc://"):
        raise SettingError(f"FEATUREPLANE_SPARK_REMOTE must be an sc:// URL, got {url!r}")
    return url


def cluster_dir() -> Path:
    """Where `featureplane cluster` keeps its state, logs and work files: `<data dir>/cluster`."""
    return data_dir() / "cluster"


def online_store_settings() -> dict[str, Any]:
    """`open_store` settings: `$FEATUREPLANE_ONLINE_STORE` as JSON (e.g.
    `{"type": "dynamodb", "table": "features"}`), else SQLite in the data directory."""
    configured = os.environ.get("FEATUREPLANE_ONLINE_STORE")
    if configured:
        return json.loads(configured)
    return {"type": "sqlite", "path": str(online_store_path())}


def registry_location() -> str:
    """What serving loads: `$FEATUREPLANE_REGISTRY`, a registry file or a registry store (a
    directory or an `s3://` URI, see `featureplane.registry_store`); by default the file
    `registry.json` in the data directory."""
    return os.environ.get("FEATUREPLANE_REGISTRY") or str(data_dir() / "registry.json")


def registry_path() -> Path:
    """The serving registry as a local path (a file, or a registry store directory)."""
    return Path(registry_location())


def registry_store_location() -> str:
    """Where `featureplane apply` writes registry versions: `<offline root>/registry`."""
    return f"{offline_root().rstrip('/')}/registry"


def registry_refresh_seconds() -> float:
    """How often a server following a registry store looks for a newer applied version:
    `$FEATUREPLANE_REGISTRY_REFRESH_SECONDS`, default 60."""
    return float(os.environ.get("FEATUREPLANE_REGISTRY_REFRESH_SECONDS", "60"))


def sensor_interval_seconds() -> int:
    """How often the platform's sensors (new data, rollout, alerts) and automation look for
    work: `$FEATUREPLANE_SENSOR_INTERVAL_SECONDS`, default 30."""
    value = os.environ.get("FEATUREPLANE_SENSOR_INTERVAL_SECONDS", "30")
    if not value.strip().isdigit() or int(value) < 1:
        raise SettingError(
            "FEATUREPLANE_SENSOR_INTERVAL_SECONDS must be a whole number of seconds (1 or more), "
            f"got {value!r}"
        )
    return int(value)


def cutover_grace() -> timedelta:
    """How long the online rows of a replaced view version stay after the cut-over, so that
    servers reload and a rollback needs no backfill: `$FEATUREPLANE_CUTOVER_GRACE_SECONDS`,
    default one hour."""
    return timedelta(seconds=float(os.environ.get("FEATUREPLANE_CUTOVER_GRACE_SECONDS", "3600")))


def dagster_url() -> str:
    """The Dagster webserver of this project, which apply asks to reload its code locations and
    alerts link to: `$FEATUREPLANE_DAGSTER_URL`, default `http://127.0.0.1:3000` (`make ui`)."""
    return os.environ.get("FEATUREPLANE_DAGSTER_URL", "http://127.0.0.1:3000").rstrip("/")


def alert_webhook() -> str | None:
    """Where alerts are posted as Slack-compatible JSON: `$FEATUREPLANE_ALERT_WEBHOOK` (a Slack
    incoming webhook or any receiver of that JSON); unset, no webhook."""
    return os.environ.get("FEATUREPLANE_ALERT_WEBHOOK") or None


def alert_log() -> str | None:
    """A JSON lines file every alert is appended to: `$FEATUREPLANE_ALERT_LOG`; unset, alerts
    reach only the sensors' logs."""
    return os.environ.get("FEATUREPLANE_ALERT_LOG") or None


def audit_sink() -> str:
    """Where serving's audit lines go: `$FEATUREPLANE_AUDIT_LOG`, `stdout` (the default), a
    file path, or `off`."""
    return os.environ.get("FEATUREPLANE_AUDIT_LOG") or "stdout"


def audit_sample() -> float:
    """The share of answered requests the audit log keeps: `$FEATUREPLANE_AUDIT_SAMPLE`, 0 to
    1, default 1 (refusals and errors are always kept)."""
    value = os.environ.get("FEATUREPLANE_AUDIT_SAMPLE", "1")
    try:
        share = float(value)
    except ValueError:
        share = -1.0
    if not 0.0 <= share <= 1.0:
        raise SettingError(f"FEATUREPLANE_AUDIT_SAMPLE must be a number from 0 to 1, got {value!r}")
    return share


def signing_key() -> str | None:
    """The private key `apply` signs registry files with: `$FEATUREPLANE_SIGNING_KEY`
    (`featureplane.signing`); unset, the local key pair in `<data dir>/keys/`."""
    return os.environ.get("FEATUREPLANE_SIGNING_KEY") or None


def verify_keys() -> list[str]:
    """The public keys servers trust registry files signed by: `$FEATUREPLANE_VERIFY_KEYS`,
    comma-separated (several while keys rotate)."""
    return [
        key.strip()
        for key in os.environ.get("FEATUREPLANE_VERIFY_KEYS", "").split(",")
        if key.strip()
    ]


def keys_dir() -> Path:
    """The local signing key pair, used while neither signing variable is set."""
    return data_dir() / "keys"


def unsigned_registry_allowed() -> bool:
    """Whether an unsigned or untrusted registry file is loaded anyway, with a warning:
    `$FEATUREPLANE_ALLOW_UNSIGNED_REGISTRY=1`, for a store written before signing."""
    return os.environ.get("FEATUREPLANE_ALLOW_UNSIGNED_REGISTRY") == "1"


def auth_disabled() -> bool:
    """Whether serving lets every request in unauthenticated: `$FEATUREPLANE_NO_AUTH=1`, which
    only `featureplane serve --no-auth` sets, for local work."""
    return os.environ.get("FEATUREPLANE_NO_AUTH") == "1"


def header_timeout_seconds() -> float:
    """How long the HTTP server waits for a request's line and headers, from the connection or
    the previous response: `$FEATUREPLANE_HEADER_TIMEOUT_SECONDS`, default 10."""
    return _positive("FEATUREPLANE_HEADER_TIMEOUT_SECONDS", 10.0)


def body_timeout_seconds() -> float:
    """How long the HTTP server waits for a request's whole body once its headers are in:
    `$FEATUREPLANE_BODY_TIMEOUT_SECONDS`, default 30 (a 1 MiB body at 35 KB/s)."""
    return _positive("FEATUREPLANE_BODY_TIMEOUT_SECONDS", 30.0)


def max_connections() -> int:
    """Open connections an HTTP server process holds at most (more are answered 503 and
    closed), which bounds its memory and file descriptors: `$FEATUREPLANE_MAX_CONNECTIONS`,
    default 512."""
    return int(_positive("FEATUREPLANE_MAX_CONNECTIONS", 512, whole=True))


def max_head_bytes() -> int:
    """Bytes a request's line and headers may take (more are answered 431):
    `$FEATUREPLANE_MAX_HEAD_BYTES`, default 65536."""
    return int(_positive("FEATUREPLANE_MAX_HEAD_BYTES", 65536, whole=True))


def default_requests_per_second() -> float | None:
    """Requests per second a principal without its own budget may send (`featureplane access
    create --requests-per-second` sets one): `$FEATUREPLANE_REQUESTS_PER_SECOND`; unset, no
    limit."""
    return _budget("FEATUREPLANE_REQUESTS_PER_SECOND")


def default_rows_per_second() -> float | None:
    """Entity rows per second a principal without its own budget may ask for:
    `$FEATUREPLANE_ROWS_PER_SECOND`; unset, no limit."""
    return _budget("FEATUREPLANE_ROWS_PER_SECOND")


def rate_burst_seconds() -> float:
    """How many seconds of its budget a principal may spend at once after a pause:
    `$FEATUREPLANE_RATE_BURST_SECONDS`, default 1."""
    return _positive("FEATUREPLANE_RATE_BURST_SECONDS", 1.0)


def rate_state() -> str | None:
    """The file of rate-limit buckets that the processes of one `featureplane serve` share
    (`$FEATUREPLANE_RATE_STATE`, which `serve` sets); unset, the buckets are the process's."""
    return os.environ.get("FEATUREPLANE_RATE_STATE") or None


def inline_rows() -> int:
    """Requests of at most this many entity rows are computed by the HTTP server process that
    received them; larger ones by its compute workers, in fair order by principal:
    `$FEATUREPLANE_INLINE_ROWS`, default 100. A 100-row request of the demo's 52-feature
    service computes in about 4 ms, less than the hand-over to a worker adds to its tail: its
    p99 over HTTP was 6.9 ms inline and 10.6 ms through a worker, while a 1-row request's p99
    beside 20 clients of 1,000-row batches stayed 2.3–2.4 ms."""
    return int(_positive("FEATUREPLANE_INLINE_ROWS", 100, whole=True))


def compute_workers() -> int:
    """Compute worker processes per HTTP server process, which finish requests above
    `inline_rows` (0: every request is computed on the event loop):
    `$FEATUREPLANE_COMPUTE_WORKERS`, default 1 (`featureplane serve` sets it from the cores)."""
    value = os.environ.get("FEATUREPLANE_COMPUTE_WORKERS", "1")
    if not value.strip().isdigit():
        raise SettingError(
            f"FEATUREPLANE_COMPUTE_WORKERS must be a whole number (0 or more), got {value!r}"
        )
    return int(value)


def _budget(name: str) -> float | None:
    return _positive(name, 0.0, kind="a number") if os.environ.get(name) else None


def _positive(
    name: str, default: float, whole: bool = False, kind: str = "a number of seconds"
) -> float:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        number = int(value) if whole else float(value)
    except ValueError:
        number = 0
    if not number > 0 or number == float("inf"):
        kind = "a whole number" if whole else kind
        raise SettingError(f"{name} must be {kind} above 0, got {value!r}")
    return number
