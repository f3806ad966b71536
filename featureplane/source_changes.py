"""Which windows of a source changed since a Delta version, read from the table's log.

Every commit after a version lists the files it added and removed. The event times of those
files' rows say which time buckets received new, changed or deleted rows: late events
included, wherever they fall. Commits that only rewrite files (compaction: `dataChange:
false`) change no row. When the log no longer holds a commit, or a removed file is gone, the
changed buckets cannot be known: `Changes.unknown` says so, and callers recompute everything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import DeltaTable

from featureplane.aggregation import EPOCH, MICROSECOND
from featureplane.compute.window import utc_from_micros


@dataclass(frozen=True)
class Changes:
    """The table's version now, the bucket starts that changed after the given version, how
    many rows the changed files hold, and why the buckets are unknown (None when known)."""

    version: int
    buckets: frozenset[datetime] = field(default_factory=frozenset)
    rows: int = 0
    unknown: str | None = None


def changes_since(
    uri: str,
    after: int,
    timestamp_field: str,
    origin: datetime,
    grain: timedelta,
    until: int | None = None,
) -> Changes:
    """The buckets `[origin + k * grain, +grain)` holding rows added or removed by the commits
    after version `after` up to `until` (default: the table's version now)."""
    version = DeltaTable(uri).version() if until is None else until
    filesystem, root = pafs.FileSystem.from_uri(uri)
    files: set[str] = set()
    for commit in range(after + 1, version + 1):
        log = f"{root}/_delta_log/{commit:020d}.json"
        try:
            with filesystem.open_input_stream(log) as stream:
                lines = stream.read().decode().splitlines()
        except FileNotFoundError:
            return Changes(version, unknown=f"the log no longer holds commit {commit}")
        for line in lines:
            action = json.loads(line)
            change = action.get("add") or action.get("remove")
            if change is not None and change.get("dataChange", True):
                files.add(f"{root}/{unquote(change['path'])}")
    buckets: set[int] = set()
    rows = 0
    step = grain // MICROSECOND
    offset = (origin - EPOCH) // MICROSECOND
    for path in sorted(files):
        try:
            column = pq.read_table(path, columns=[timestamp_field], filesystem=filesystem)[0]
        except FileNotFoundError:
            return Changes(version, unknown=f"changed file {path} is gone")
        rows += len(column)
        micros = pc.cast(pc.cast(column, pa.timestamp("us", "UTC")), pa.int64()).drop_null()
        since = pc.subtract(micros.filter(pc.greater_equal(micros, offset)), offset)
        buckets.update(pc.unique(pc.divide(since, step)).to_pylist())  # whole buckets: >= 0
    return Changes(
        version,
        frozenset(utc_from_micros(offset + bucket * step) for bucket in buckets),
        rows,
    )
