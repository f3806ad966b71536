"""The applied registry: append-only versions under `<offline root>/registry/`, local or S3.

`featureplane apply` writes version n+1 of the registry it planned against version n. Each
version is one file, `v000042.json`: the registry (`featureplane.registry`) plus a `meta` block
(version, parent, applied_at, applied_by, changes). A version is created exclusively — a hard
link of a finished temporary file locally, a conditional PUT (`If-None-Match: *`) on S3 — so
of two applies racing for the same version exactly one wins and the other gets
`RegistryConflict`, which names the winner; it must plan again against the new latest version.
Nothing is ever overwritten, so the files are the history, and the latest version is the
highest number listed (no pointer file that could disagree with them).

Spark-, Dagster- and boto3-free at import: the Lambda handler reads it; S3 loads boto3 lazily.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from featureplane.registry import registry_text

VERSION_FILE = re.compile(r"v(\d{6})\.json")


class RegistryConflict(RuntimeError):
    """Another apply wrote the version this one was about to write: plan again, then apply."""

    def __init__(self, version: int, winner: Mapping[str, Any] | None):
        self.version, self.winner = version, winner
        by = f" by {winner['applied_by']} at {winner['applied_at']}" if winner else ""
        super().__init__(
            f"registry version {version} was applied concurrently{by}; "
            "run `featureplane plan` again against it, then apply"
        )


@dataclass(frozen=True)
class AppliedRegistry:
    """One applied version: the registry as `build_registry` made it, and its `meta` block."""

    version: int
    registry: dict[str, Any]
    meta: dict[str, Any]


class _Files(Protocol):
    """The three operations the store needs from a directory, local or S3."""

    def names(self) -> list[str]: ...

    def read(self, name: str) -> bytes: ...

    def create(self, name: str, data: bytes) -> bool:
        """Write a new file; False (and nothing written) if it already exists."""
        ...


class _LocalFiles:
    def __init__(self, root: Path):
        self.root = root

    def names(self) -> list[str]:
        return os.listdir(self.root) if self.root.is_dir() else []

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def create(self, name: str, data: bytes) -> bool:
        """Link a complete temporary file into place: readers never see a partial version."""
        self.root.mkdir(parents=True, exist_ok=True)
        partial = self.root / f".{name}.{uuid.uuid4().hex}.tmp"
        partial.write_bytes(data)
        try:
            os.link(partial, self.root / name)
        except FileExistsError:
            return False
        finally:
            partial.unlink()
        return True


class _S3Files:
    def __init__(self, bucket: str, prefix: str):
        import boto3

        self.client = boto3.client("s3")
        self.bucket, self.prefix = bucket, prefix

    def names(self) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        return [
            item["Key"][len(self.prefix) :] for page in pages for item in page.get("Contents", [])
        ]

    def read(self, name: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)["Body"].read()

    def create(self, name: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self.prefix + name, Body=data, IfNoneMatch="*"
            )
        except ClientError as error:
            # 412 when the object exists; 409 when a concurrent conditional write is in flight.
            if error.response["Error"]["Code"] in (
                "PreconditionFailed",
                "ConditionalRequestConflict",
            ):
                return False
            raise
        return True


def _files(location: str) -> _Files:
    parsed = urlparse(location)
    if parsed.scheme == "s3":
        prefix = parsed.path.strip("/")
        return _S3Files(parsed.netloc, f"{prefix}/" if prefix else "")
    if parsed.scheme not in ("", "file"):
        raise ValueError(
            f"registry location {location!r}: only local paths and s3:// are supported"
        )
    return _LocalFiles(Path(parsed.path if parsed.scheme else location))


def is_store_location(location: str) -> bool:
    """Whether `location` names a registry store (an s3:// URI or a directory), not a file."""
    return location.startswith("s3://") or Path(location).is_dir()


class RegistryStore:
    """The applied registry versions at `location` (a directory or an `s3://bucket/prefix`)."""

    def __init__(self, location: str):
        self.location = location
        self._files = _files(location)

    def versions(self) -> list[int]:
        """Every applied version number, ascending."""
        found = (VERSION_FILE.fullmatch(name) for name in self._files.names())
        return sorted(int(match.group(1)) for match in found if match)

    def get(self, version: int) -> AppliedRegistry:
        document = json.loads(self._files.read(f"v{version:06d}.json"))
        meta = document.pop("meta")
        return AppliedRegistry(version, document, meta)

    def latest(self) -> AppliedRegistry | None:
        """The highest applied version, or None before the first apply."""
        versions = self.versions()
        return self.get(versions[-1]) if versions else None

    def history(self) -> list[dict[str, Any]]:
        """The `meta` block of every version, oldest first: who applied what, and when."""
        return [self.get(version).meta for version in self.versions()]

    def apply(
        self,
        registry: Mapping[str, Any],
        parent: int | None,
        changes: Sequence[str],
        applied_by: str | None = None,
    ) -> AppliedRegistry:
        """Write `registry` as the version after `parent` (the version it was planned against).

        Raises RegistryConflict if that version exists: another apply won the race, or this
        plan was made against a version that is no longer the latest.
        """
        version = (parent or 0) + 1
        meta = {
            "version": version,
            "parent": parent,
            "applied_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "applied_by": applied_by or getpass.getuser(),
            "changes": list(changes),
        }
        document = {**registry, "meta": meta}
        if not self._files.create(f"v{version:06d}.json", registry_text(document).encode()):
            raise RegistryConflict(version, self._meta_if_readable(version))
        return AppliedRegistry(version, dict(registry), meta)

    def _meta_if_readable(self, version: int) -> dict[str, Any] | None:
        """The winner's meta; None while its write is still in flight (an S3 409)."""
        try:
            return self.get(version).meta
        except Exception:  # noqa: BLE001 - only used to word the conflict error
            return None
