"""The applied registry: append-only versions under `<offline root>/registry/`, local or S3.

`featureplane apply` writes version n+1 of the registry it planned against version n. Each
version is one file, `v000042.json`: the registry (`featureplane.registry`) plus a `meta` block
(version, parent, applied_at, applied_by, changes). A version is created exclusively — a hard
link of a finished temporary file locally, a conditional PUT (`If-None-Match: *`) on S3 — so
of two applies racing for the same version exactly one wins and the other gets
`RegistryConflict`, which names the winner; it must plan again against the new latest version.
Nothing is ever overwritten, so the files are the history, and the latest version is the
highest number listed.

Serving. The latest version is not necessarily the one servers load: a view's new version
serves only once it is pushed, so the store keeps a serving pointer, appended the same way.
Each cut-over is a new file `serving-000007.json` (its number, which version serves, which
served before, when and by whom), created exclusively with the number after the last one it
read: of two racing cut-overs one wins and the other reads again, and a cut-over to a version
older than the one serving is refused (`CutOverRefused`), so the newer is never lost. `apply`
pins the version that serves before it writes a new one (a store written before the pointer
existed serves its latest version), so an apply alone never changes what servers load.

Access. Who holds API keys changes apart from the definitions, at once and without a
rollout: each change of the principals is a new file `access-000003.json` (the principals
with their key digests, `featureplane.access.principals`, and who changed what, when),
created exclusively after the last one read; a change that loses a race is made again on the
winner's document. Servers following the store read the highest.

Integrity. Every file is signed as it is created, the signature inside it, and verified as it
is read (`featureplane.signing`): an unsigned or altered version, pointer or access document
raises RegistryUntrusted naming its file, so nobody who can only write the store's directory
or bucket decides what servers run or which keys they take.

Every read is checked (`featureplane.registry_format`, and the `meta` block against its file):
a corrupt version or serving pointer raises RegistryCorrupt naming its file. A corrupt latest
version stops plan and apply until it is restored from a backup or set aside: renamed with a
suffix after `.json` (`v000042.json.corrupt`), which retires its number, so the next apply
writes 43, not a second 42 that servers which loaded the first 42 would take for the one they
hold. A corrupt pointer stops cut-overs, and servers keep the version they loaded, until it is
restored or set aside the same way (the cut-over before it then holds).

Spark-, Dagster- and boto3-free at import: the Lambda handler reads it; S3 loads boto3 lazily.
"""

from __future__ import annotations

import getpass
import os
import random
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from featureplane.access.principals import Principals
from featureplane.errors import RegistryCorrupt
from featureplane.registry_format import (
    INTEGER,
    PRINCIPALS,
    TIME,
    parse_registry_json,
    registry_problem,
    registry_text,
    shape_problem,
)
from featureplane.signing import signed, verified

VERSION_FILE = re.compile(r"v(\d{6})\.json")
SET_ASIDE_FILE = re.compile(r"v(\d{6})\.json\..+")
"""A version moved out of the way (`v000042.json.corrupt`): no longer read, its number retired."""
SERVING_FILE = re.compile(r"serving-(\d{6})\.json")
"""One cut-over of the serving pointer; the highest number is the one in force."""
CUT_OVER = {
    "serving": INTEGER,
    "previous": (INTEGER, None),
    "cut_over_at": TIME,
    "cut_over_by": str,
}
ACCESS_FILE = re.compile(r"access-(\d{6})\.json")
"""One change of the principals and their keys; the highest number is the one in force."""
ACCESS_META = {"number": INTEGER, "changed_at": TIME, "changed_by": str, "change": str}
CUT_OVER_ATTEMPTS = 50
"""Cut-overs lost to racing ones before giving up; each loss is another's win."""
META = {
    "version": INTEGER,
    "parent": (INTEGER, None),
    "applied_at": str,
    "applied_by": str,
    "changes": [str],
}


class RegistryConflict(RuntimeError):
    """Another apply wrote the version this one was about to write: plan again, then apply."""

    def __init__(self, version: int, winner: Mapping[str, Any] | None):
        self.version, self.winner = version, winner
        by = f" by {winner['applied_by']} at {winner['applied_at']}" if winner else ""
        super().__init__(
            f"registry version {version} was applied concurrently{by}; "
            "run `featureplane plan` again against it, then apply"
        )


class CutOverRefused(ValueError):
    """A cut-over to a version that is not applied, or older than the one serving."""


@dataclass(frozen=True)
class CutOver:
    """One move of the serving pointer (number `number`): `serving` serves since `at`, in
    place of `previous` (None: the store had no pointer, and served its latest version)."""

    number: int
    serving: int
    previous: int | None
    at: str
    by: str


@dataclass(frozen=True)
class AppliedRegistry:
    """One applied version: the registry as `build_registry` made it, and its `meta` block."""

    version: int
    registry: dict[str, Any]
    meta: dict[str, Any]


@dataclass(frozen=True)
class AccessVersion:
    """One access document: the principals from change `number` on, and its `meta` block."""

    number: int
    principals: Principals
    meta: dict[str, Any]


class _Files(Protocol):
    """The three operations the store needs from a directory, local or S3."""

    def names(self) -> list[str]: ...

    def where(self, name: str) -> str:
        """The file's path or URI, as messages name it."""
        ...

    def read(self, name: str) -> bytes: ...

    def create(self, name: str, data: bytes) -> bool:
        """Write a new file; False (and nothing written) if it already exists."""
        ...


class _LocalFiles:
    def __init__(self, root: Path):
        self.root = root

    def names(self) -> list[str]:
        return os.listdir(self.root) if self.root.is_dir() else []

    def where(self, name: str) -> str:
        return str(self.root / name)

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

    def where(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{name}"

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
        return self._numbers(VERSION_FILE)

    def _numbers(self, pattern: re.Pattern[str], names: list[str] | None = None) -> list[int]:
        names = self._files.names() if names is None else names
        found = (pattern.fullmatch(name) for name in names)
        return sorted(int(match.group(1)) for match in found if match)

    def path(self, version: int) -> str:
        """Where version `version` is kept (a path or an s3:// URI)."""
        return self._files.where(_file_name(version))

    def get(self, version: int) -> AppliedRegistry:
        """One version; RegistryCorrupt naming its file if it is not a readable version."""
        path = self.path(version)
        document = parse_registry_json(self._files.read(_file_name(version)), path)
        problem = _version_problem(document, version)
        if problem:
            raise RegistryCorrupt(path, problem)
        document = verified(document, path)
        meta = document.pop("meta")
        return AppliedRegistry(version, document, meta)

    def latest(self) -> AppliedRegistry | None:
        """The highest applied version, or None before the first apply; RegistryCorrupt, with
        the repair, when it is corrupt (nothing may be planned against a guess)."""
        versions = self.versions()
        if not versions:
            return None
        try:
            return self.get(versions[-1])
        except RegistryCorrupt as corrupt:
            raise RegistryCorrupt(corrupt.path, corrupt.problem, _repair(versions[-1])) from None

    def history(self) -> list[dict[str, Any]]:
        """The `meta` block of every version, oldest first: who applied what, and when."""
        return [self.get(version).meta for version in self.versions()]

    def cut_overs(self) -> list[CutOver]:
        """Every move of the serving pointer, oldest first; RegistryCorrupt if one is unreadable."""
        numbers = self._numbers(SERVING_FILE)
        return [self._cut_over(number, in_force=number == numbers[-1]) for number in numbers]

    def cut_over_in_force(self) -> CutOver | None:
        """The cut-over that made the serving version serve; None while no version was ever
        cut over to (the latest then serves)."""
        names = self._files.names()
        return self._current(names, self._numbers(VERSION_FILE, names))

    def serving_version(self) -> int | None:
        """The version servers load: the serving pointer's, or (a store written before the
        pointer existed) the latest; None before the first apply. RegistryCorrupt, with the
        repair, when the pointer is unreadable or names a version that is not applied."""
        names = self._files.names()
        versions = self._numbers(VERSION_FILE, names)
        current = self._current(names, versions)
        if current is not None:
            return current.serving
        return versions[-1] if versions else None

    def serving(self) -> AppliedRegistry | None:
        """The applied registry that serves (`serving_version`), or None before the first apply."""
        version = self.serving_version()
        return None if version is None else self.get(version)

    def serving_files(self) -> dict[str, bytes]:
        """The files a copy of this store needs to serve what serves here, verbatim (signed):
        the serving version, and the serving pointer and access document in force."""
        version = self.serving_version()
        if version is None:
            return {}
        names = [_file_name(version)]
        pointer, access = self.cut_over_in_force(), self.access()
        names += [] if pointer is None else [_pointer_file(pointer.number)]
        names += [] if access is None else [_access_file(access.number)]
        return {name: self._files.read(name) for name in names}

    def cut_over(self, version: int, by: str | None = None) -> CutOver:
        """Make `version` the one that serves, and return the cut-over in force (the one that
        already made it serve, if one did). CutOverRefused if it is not applied or older
        than the serving version; RegistryCorrupt if it, or the pointer, is unreadable."""
        for _ in range(CUT_OVER_ATTEMPTS):
            names = self._files.names()
            versions = self._numbers(VERSION_FILE, names)
            if version not in versions:
                applied = ", ".join(map(str, versions)) or "none"
                raise CutOverRefused(
                    f"registry version {version} is not applied at {self.location} "
                    f"(applied: {applied}); nothing changed"
                )
            current = self._current(names, versions)
            if current is not None and current.serving == version:
                return current
            serving = versions[-1] if current is None else current.serving
            if version < serving:
                since = "" if current is None else f" since {current.at} (by {current.by})"
                raise CutOverRefused(
                    f"registry version {serving} serves{since}, newer than version {version}; "
                    "nothing changed"
                )
            self.get(version)  # an unreadable version must never serve
            number, previous = (1, None) if current is None else (current.number + 1, serving)
            cut_over = CutOver(number, version, previous, _now(), _user(by))
            if self._files.create(_pointer_file(number), _pointer_text(cut_over)):
                return cut_over
            time.sleep(random.uniform(0, 0.05))  # S3 answers 409 while a racing write lands
        raise RuntimeError(
            f"{CUT_OVER_ATTEMPTS} racing cut-overs at {self.location} won over this one; try again"
        )

    def _current(self, names: list[str], versions: list[int]) -> CutOver | None:
        """The cut-over in force, checked against the versions applied."""
        numbers = self._numbers(SERVING_FILE, names)
        if not numbers:
            return None
        current = self._cut_over(numbers[-1], in_force=True)
        if current.serving not in versions:
            path = self._files.where(_pointer_file(current.number))
            problem = f"serving is version {current.serving}, which is not applied"
            raise RegistryCorrupt(path, problem, _pointer_repair(current.number, in_force=True))
        return current

    def _cut_over(self, number: int, in_force: bool) -> CutOver:
        """One cut-over file; RegistryCorrupt, with the repair, if it is not one."""
        path = self._files.where(_pointer_file(number))
        try:
            document = parse_registry_json(self._files.read(_pointer_file(number)), path)
        except RegistryCorrupt as corrupt:
            raise RegistryCorrupt(
                path, corrupt.problem, _pointer_repair(number, in_force)
            ) from None
        problem = shape_problem(document, CUT_OVER)
        if not problem and "number" in document:
            problem = shape_problem(document["number"], INTEGER, "number")
            if not problem and document["number"] != number:
                problem = f"number is {document['number']}, but the file is {number}"
        if problem:
            raise RegistryCorrupt(path, problem, _pointer_repair(number, in_force))
        document = verified(document, path)
        return CutOver(
            number,
            document["serving"],
            document["previous"],
            document["cut_over_at"],
            document["cut_over_by"],
        )

    def _pin(self, by: str) -> None:
        """Before the first version after the pointer's introduction: pin the latest, which
        serves, so the new one does not. A lost race is fine: the pointer is then set."""
        names = self._files.names()
        versions = self._numbers(VERSION_FILE, names)
        if versions and not self._numbers(SERVING_FILE, names):
            pinned = CutOver(1, versions[-1], None, _now(), by)
            self._files.create(_pointer_file(1), _pointer_text(pinned))

    def apply(
        self,
        registry: Mapping[str, Any],
        parent: int | None,
        changes: Sequence[str],
        applied_by: str | None = None,
    ) -> AppliedRegistry:
        """Write `registry` as the version after `parent` (the version it was planned against),
        past any number retired by a version set aside.

        Raises RegistryConflict if that version exists: another apply won the race, or this
        plan was made against a version that is no longer the latest. The new version does
        not serve until `cut_over` makes it (the first version serves at once: there is
        nothing else to serve).
        """
        version = (parent or 0) + 1
        retired = set(self._numbers(SET_ASIDE_FILE))
        while version in retired:
            version += 1
        meta = {
            "version": version,
            "parent": parent,
            "applied_at": _now(),
            "applied_by": _user(applied_by),
            "changes": list(changes),
        }
        self._pin(meta["applied_by"])
        document = {**registry, "meta": meta}
        if not self._files.create(_file_name(version), _signed_text(document)):
            raise RegistryConflict(version, self._meta_if_readable(version))
        return AppliedRegistry(version, dict(registry), meta)

    def access(self) -> AccessVersion | None:
        """The access document in force, or None before the first principal is created;
        RegistryCorrupt, with the repair, when it is unreadable (a server must not guess
        who holds keys)."""
        numbers = self._numbers(ACCESS_FILE)
        return self._access(numbers[-1], in_force=True) if numbers else None

    def access_history(self) -> list[dict[str, Any]]:
        """The `meta` block of every access change, oldest first."""
        numbers = self._numbers(ACCESS_FILE)
        return [self._access(n, in_force=n == numbers[-1]).meta for n in numbers]

    def change_access(
        self, edit: Callable[[Principals], tuple[Principals, str]], by: str | None = None
    ) -> AccessVersion:
        """Append the access document `edit` makes of the one in force (with the description
        of the change it returns). A change racing another is made again on the winner's
        document, so neither is lost; `edit` may raise AccessError to refuse."""
        for _ in range(CUT_OVER_ATTEMPTS):
            current = self.access()
            principals, change = edit(current.principals if current else Principals.none())
            number = 1 if current is None else current.number + 1
            meta = {
                "number": number,
                "changed_at": _now(),
                "changed_by": _user(by),
                "change": change,
            }
            document = {**principals.to_json(), "meta": meta}
            if self._files.create(_access_file(number), _signed_text(document)):
                return AccessVersion(number, principals, meta)
            time.sleep(random.uniform(0, 0.05))
        raise RuntimeError(
            f"{CUT_OVER_ATTEMPTS} racing access changes at {self.location} won over this one; "
            "try again"
        )

    def _access(self, number: int, in_force: bool) -> AccessVersion:
        name = _access_file(number)
        path = self._files.where(name)
        repair = (
            f"restore it from a backup, or set it aside as {name}.corrupt "
            f"({'the change before it then holds' if in_force else 'history only'})"
        )
        try:
            document = parse_registry_json(self._files.read(name), path)
        except RegistryCorrupt as corrupt:
            raise RegistryCorrupt(path, corrupt.problem, repair) from None
        problem = shape_problem(document, {**PRINCIPALS, "meta": ACCESS_META})
        if not problem and document["meta"]["number"] != number:
            problem = f"meta.number is {document['meta']['number']}, but the file is {number}"
        if problem:
            raise RegistryCorrupt(path, problem, repair)
        document = verified(document, path)
        return AccessVersion(number, Principals.from_json(document), document["meta"])

    def _meta_if_readable(self, version: int) -> dict[str, Any] | None:
        """The winner's meta; None while its write is still in flight (an S3 409)."""
        try:
            return self.get(version).meta
        except Exception:  # noqa: BLE001 - only used to word the conflict error
            return None


def _file_name(version: int) -> str:
    return f"v{version:06d}.json"


def _access_file(number: int) -> str:
    return f"access-{number:06d}.json"


def _pointer_file(number: int) -> str:
    return f"serving-{number:06d}.json"


def _pointer_text(cut_over: CutOver) -> bytes:
    """A cut-over's file; its number is signed with it, so a signed pointer copied to a later
    number (to serve an older version again) is refused (pointers before signing lack it)."""
    document = {
        "number": cut_over.number,
        "serving": cut_over.serving,
        "previous": cut_over.previous,
        "cut_over_at": cut_over.at,
        "cut_over_by": cut_over.by,
    }
    return _signed_text(document)


def _signed_text(document: Mapping[str, Any]) -> bytes:
    """What a file of the store holds: the document's canonical text, signed."""
    return registry_text(signed(document)).encode()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _user(name: str | None) -> str:
    return name or getpass.getuser()


def _pointer_repair(number: int, in_force: bool) -> str:
    repair = f"restore it from a backup, or set it aside as {_pointer_file(number)}.corrupt"
    if not in_force:
        return f"it is an earlier cut-over (history only): {repair}"
    return (
        f"it is the serving pointer in force: {repair} (the cut-over before it then holds), "
        "then cut over again"
    )


def _version_problem(document: Any, version: int) -> str | None:
    """What makes `document` not applied version `version`: not a registry, or its `meta`."""
    problem = registry_problem(document)
    if problem:
        return problem
    if "meta" not in document:
        return "missing 'meta': a registry, but not an applied version"
    problem = shape_problem(document["meta"], META, "meta")
    if problem:
        return problem
    if document["meta"]["version"] != version:
        return f"meta.version is {document['meta']['version']}, but the file is version {version}"
    return None


def _repair(version: int) -> str:
    return (
        f"it is registry version {version}, the latest: restore it from a backup, or set it "
        f"aside as {_file_name(version)}.corrupt (the next apply then writes version "
        f"{version + 1}), then plan again"
    )
