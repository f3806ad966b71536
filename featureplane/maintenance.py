"""Maintenance of the offline store's Delta tables: compact small files, vacuum unused ones.

Every window a materialization replaces leaves small files, and every replaced file stays on
disk for time travel. Compaction (delta-rs `optimize.compact`) rewrites each table's small files
into few large ones; vacuum deletes the files no version in retention still uses. But a training
dataset's manifest pins the Delta version of each table it read (and its own), and a rebuild
reads exactly those versions: vacuum keeps every file of the versions that a dataset built within
`max_retention` recorded (`keep_versions`), and beyond it says which dataset versions lose
files and stop being rebuildable. Maintenance never cleans the Delta log nor writes checkpoints
(its commits skip both hooks), checks that each kept version can still be loaded, and names the
kept versions older than the table's latest checkpoint, which Sail 0.7 cannot time travel to.

Compaction and vacuum commit like any writer: a commit that loses a race with a concurrent
writer is retried once on the new table state, then the table is skipped and reported; the
Delta protocol keeps the table consistent either way. Vacuum never deletes a file younger than
`min_retention` (default a week, Delta's default), which protects a concurrent writer's files
that are written but not yet committed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TypeVar

import pyarrow as pa
import pyarrow.fs as pafs
from deltalake import DeltaTable, PostCommitHookProperties
from deltalake.exceptions import CommitFailedError, DeltaError

from featureplane.manifest import recorded_manifests
from featureplane.offline_store import OfflineStore, filesystem

KEEP_LOG = PostCommitHookProperties(create_checkpoint=False, cleanup_expired_logs=False)
"""Maintenance commits neither delete log entries a rebuild may need nor write checkpoints
(Sail 0.7 cannot time travel to a version before a table's latest checkpoint)."""

T = TypeVar("T")


@dataclass(frozen=True)
class Recorded:
    """A Delta version of a table that one training dataset version needs to be rebuilt."""

    dataset: str
    dataset_version: int
    built_at: datetime
    uri: str
    delta_version: int

    @property
    def label(self) -> str:
        return f"{self.dataset} v{self.dataset_version} (built {self.built_at:%Y-%m-%d %H:%M})"


@dataclass(frozen=True)
class TableMaintenance:
    """What maintenance did to one table: the data files of its latest version and the data
    files stored (any version's, and strays) before and after, with their bytes; how many files
    compaction rewrote, which files vacuum deleted, the versions kept, or why it stopped."""

    uri: str
    active_files_before: int
    active_files_after: int
    stored_files_before: int
    stored_bytes_before: int
    stored_files_after: int
    stored_bytes_after: int
    compacted_files: int
    removed_files: tuple[str, ...]
    kept_versions: tuple[int, ...]
    skipped: str | None = None


@dataclass(frozen=True)
class MaintenanceReport:
    """Per table what was done, and one line per dataset version that stops being rebuildable."""

    tables: list[TableMaintenance]
    not_rebuildable: list[str] = field(default_factory=list)


def offline_tables(store: OfflineStore) -> list[str]:
    """The Delta tables of the store: each feature view version's (`features/<view>/<version>`,
    tiles included) and each training dataset's (`training/<name>`)."""
    files, root = filesystem(store.root)

    def folders(path: str) -> list[str]:
        selector = pafs.FileSelector(path, allow_not_found=True)
        found = files.get_file_info(selector)
        return sorted(i.base_name for i in found if i.type == pafs.FileType.Directory)

    tables = [
        store.table_uri("features", view, version)
        for view in folders(f"{root}/features")
        for version in folders(f"{root}/features/{view}")
    ]
    tables += [store.table_uri("training", name) for name in folders(f"{root}/training")]
    return [uri for uri in tables if DeltaTable.is_deltatable(uri)]


def recorded_versions(store: OfflineStore) -> list[Recorded]:
    """The (table, Delta version) pairs that the manifests of every training dataset version
    record: its feature reads, its spine, and the dataset's own table version."""
    recorded = []
    for uri in offline_tables(store):
        for manifest in recorded_manifests(uri):
            reads = [*manifest["features"], manifest["spine"]]
            built_at = datetime.fromisoformat(manifest["created_at"])
            own = (uri, manifest["version"])
            pinned = [(r["uri"], r["delta_version"]) for r in reads if "delta_version" in r]
            for table, version in [own, *pinned]:
                recorded.append(
                    Recorded(
                        manifest["training_dataset"],
                        manifest["version"],
                        built_at,
                        table.rstrip("/"),
                        version,
                    )
                )
    return recorded


def maintain(
    store: OfflineStore,
    min_retention: timedelta = timedelta(days=7),
    max_retention: timedelta | None = timedelta(days=90),
    now: datetime | None = None,
) -> MaintenanceReport:
    """Compact and vacuum every table of the store, keeping the versions that training datasets
    built within `max_retention` (None: all) recorded. An unreadable manifest raises
    `ManifestCorrupt` before anything is deleted."""
    if min_retention < timedelta(0) or (
        max_retention is not None and max_retention < min_retention
    ):
        raise ValueError(
            f"maintenance: retention must be 0 <= min_retention ({min_retention}) <= "
            f"max_retention ({max_retention})"
        )
    now = now or datetime.now(UTC)
    recorded = recorded_versions(store)
    tables, lost = [], []
    for uri in offline_tables(store):
        needed = [r for r in recorded if r.uri == uri]
        report, lines = maintain_table(uri, needed, min_retention, max_retention, now)
        tables.append(report)
        lost += lines
    return MaintenanceReport(tables, sorted(set(lost)))


def _active(table: DeltaTable) -> set[str]:
    """The data files of a table version, as paths relative to the table."""
    return set(pa.table(table.get_add_actions(flatten=True))["path"].to_pylist())


def _stored(uri: str) -> dict[str, int]:
    """The data files stored under a table (relative path: bytes), whichever version uses them;
    not the log nor anything else under a folder whose name starts with `_` or `.`."""
    files, root = filesystem(uri)
    found = files.get_file_info(pafs.FileSelector(root, recursive=True))
    stored = {}
    for info in found:
        relative = info.path[len(root) :].lstrip("/")
        if info.is_file and not any(part[0] in "_." for part in relative.split("/")):
            stored[relative] = info.size
    return stored


def _last_checkpoint(uri: str) -> int | None:
    """The version of the table's latest checkpoint, None before its first."""
    files, path = filesystem(f"{uri}/_delta_log/_last_checkpoint")
    try:
        with files.open_input_stream(path) as stream:
            return json.loads(stream.read())["version"]
    except FileNotFoundError:
        return None


def _committed(uri: str, operation: Callable[[DeltaTable], T]) -> T:
    """Run a committing operation on the latest table state, once more after a lost race."""
    try:
        return operation(DeltaTable(uri))
    except CommitFailedError:
        return operation(DeltaTable(uri))


def maintain_table(
    uri: str,
    needed: list[Recorded],
    min_retention: timedelta,
    max_retention: timedelta | None,
    now: datetime,
) -> tuple[TableMaintenance, list[str]]:
    """Compact then vacuum one table; the lines of the dataset versions that lose files."""
    active, stored = _active(DeltaTable(uri)), _stored(uri)
    lines, kept, expired = [], set(), {}
    for r in needed:
        try:
            version_files = _active(DeltaTable(uri, version=r.delta_version))
        except DeltaError as error:  # its log entries are gone: there is nothing left to keep
            lines.append(f"{r.label}: not rebuildable: {uri} v{r.delta_version}: {error}")
            continue
        if max_retention is None or now - r.built_at <= max_retention:
            kept.add(r.delta_version)
        else:
            expired[r] = version_files
    compacted, skipped, stage = 0, None, "compaction"
    vacuum = partial(
        DeltaTable.vacuum,
        retention_hours=math.ceil(min_retention.total_seconds() / 3600),
        enforce_retention_duration=False,
        keep_versions=sorted(kept),
        post_commithook_properties=KEEP_LOG,
    )
    try:
        compaction = _committed(
            uri, lambda t: t.optimize.compact(post_commithook_properties=KEEP_LOG)
        )
        compacted, stage = compaction["numFilesRemoved"], "vacuum"
        unused = {path.removeprefix(uri).lstrip("/") for path in vacuum(DeltaTable(uri))}
        if unused & set(_stored(uri)):  # vacuum commits even when it has nothing to delete
            _committed(uri, lambda t: vacuum(t, dry_run=False))
    except CommitFailedError as error:
        skipped = f"{stage} lost to concurrent writes twice: {error}"
    after = _stored(uri)
    removed = set(stored) - set(after)
    checkpoint = _last_checkpoint(uri)
    for r in needed:
        if r.delta_version in kept and checkpoint is not None and r.delta_version < checkpoint:
            lines.append(
                f"{r.label}: not rebuildable with Sail 0.7: {uri} v{r.delta_version} is older "
                f"than the table's checkpoint at v{checkpoint}, and Sail time travels only from "
                "its latest checkpoint on (the files are kept: JVM Spark and delta-rs read it)"
            )
    for r, version_files in expired.items():
        gone = version_files & removed
        if gone:
            lines.append(
                f"{r.label}: not rebuildable any more: {len(gone)} files of {uri} "
                f"v{r.delta_version} vacuumed (built longer ago than the maximum retention)"
            )
    report = TableMaintenance(
        uri,
        len(active),
        len(_active(DeltaTable(uri))),
        len(stored),
        sum(stored.values()),
        len(after),
        sum(after.values()),
        compacted,
        tuple(sorted(removed)),
        tuple(sorted(kept)),
        skipped,
    )
    return report, lines
