"""Principals — service accounts and people — with their API keys and rate budgets.

Managed with `featureplane access create|list|rotate|revoke`, never declared in code: a key
is a secret made at one moment, and who holds one is not a definition to review. Each change
is a new access document of the registry store (`RegistryStore.change_access`), appended
like registry versions, so `history` shows every change and servers following the store take
it up on their next look, without waiting for any rollout. A key is stored as its digest
(`featureplane.access.keys`); rotating one leaves the old key valid for a grace period, so
clients can move over; revoking one ends it at once.

    {"format": 1, "principals": [{"name", "kind": "service_account" | "user",
        "groups": [...], "identities": [...], "created_at",
        "requests_per_second": null | n, "rows_per_second": null | n,
        "keys": [{"id", "digest", "created_at", "expires_at": null | t,
                  "revoked_at": null | t}]}]}

`identities` are the callers API Gateway or IAM establish (an IAM ARN, a JWT subject, a
Lambda authorizer's principal id) that stand for the principal in a Lambda request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from featureplane.access.keys import new_key
from featureplane.access.policy import PRINCIPAL_NAME
from featureplane.errors import AccessError

FORMAT = 1
KINDS = ("service_account", "user")


@dataclass(frozen=True)
class KeyRecord:
    id: str
    digest: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None

    def valid_at(self, moment: datetime) -> bool:
        return (self.revoked_at is None or moment < self.revoked_at) and (
            self.expires_at is None or moment < self.expires_at
        )

    def state(self, moment: datetime) -> str:
        if self.revoked_at is not None and moment >= self.revoked_at:
            return f"revoked {self.revoked_at:%Y-%m-%d %H:%M} UTC"
        if self.expires_at is not None:
            verb = "expired" if moment >= self.expires_at else "expires"
            return f"{verb} {self.expires_at:%Y-%m-%d %H:%M} UTC"
        return "active"


@dataclass(frozen=True)
class Principal:
    name: str
    kind: str
    groups: tuple[str, ...]
    identities: tuple[str, ...]
    created_at: datetime
    requests_per_second: float | None = None
    rows_per_second: float | None = None
    keys: tuple[KeyRecord, ...] = ()


@dataclass(frozen=True)
class Principals:
    """Every principal by name: the content of one access document."""

    by_name: Mapping[str, Principal]

    @classmethod
    def none(cls) -> Principals:
        return cls({})

    def create(
        self,
        name: str,
        moment: datetime,
        kind: str = "service_account",
        groups: Sequence[str] = (),
        identities: Sequence[str] = (),
        requests_per_second: float | None = None,
        rows_per_second: float | None = None,
    ) -> tuple[Principals, str]:
        """With a new principal, and its first key (the only time the key is seen)."""
        if name in self.by_name:
            raise AccessError(f"principal {name!r} exists: rotate its key or revoke it")
        for text, what in [(name, "principal"), *((group, "group") for group in groups)]:
            if not isinstance(text, str) or not PRINCIPAL_NAME.fullmatch(text):
                raise AccessError(
                    f"{what} name {text!r} must be lower case letters, digits, '_', '.', '-', "
                    "starting with a letter"
                )
        if kind not in KINDS:
            raise AccessError(f"kind {kind!r} must be one of {', '.join(KINDS)}")
        for limit in (requests_per_second, rows_per_second):
            if limit is not None and not limit > 0:
                raise AccessError(f"a rate limit must be a positive number, got {limit}")
        taken = {i for p in self.by_name.values() for i in (p.name, *p.identities)}
        clash = next((i for i in (name, *identities) if i in taken), None)
        if clash is not None:
            raise AccessError(f"identity {clash!r} already stands for another principal")
        key, record = _key(moment)
        principal = Principal(
            name,
            kind,
            tuple(sorted(set(groups))),
            tuple(sorted(set(identities))),
            moment,
            requests_per_second,
            rows_per_second,
            (record,),
        )
        return Principals({**self.by_name, name: principal}), key

    def rotate(self, name: str, moment: datetime, grace: timedelta) -> tuple[Principals, str]:
        """With a new key for `name`; its keys valid now stay valid for `grace` more."""
        principal = self.principal(name)
        ends = moment + grace
        kept = tuple(
            replace(key, expires_at=min(ends, key.expires_at or ends))
            if key.valid_at(moment)
            else key
            for key in principal.keys
        )
        key, record = _key(moment)
        return self._with(replace(principal, keys=(*kept, record))), key

    def revoke(self, name: str, moment: datetime, key_id: str | None = None) -> Principals:
        """With `name`'s key `key_id` (or every key) revoked from `moment` on."""
        principal = self.principal(name)
        if key_id is not None and key_id not in {key.id for key in principal.keys}:
            known = ", ".join(key.id for key in principal.keys)
            raise AccessError(f"principal {name!r} has no key {key_id!r} (keys: {known})")
        keys = tuple(
            replace(key, revoked_at=moment)
            if (key_id in (None, key.id) and key.valid_at(moment))
            else key
            for key in principal.keys
        )
        return self._with(replace(principal, keys=keys))

    def principal(self, name: str) -> Principal:
        try:
            return self.by_name[name]
        except KeyError:
            known = ", ".join(sorted(self.by_name)) or "none"
            raise AccessError(f"no principal {name!r} (principals: {known})") from None

    def _with(self, principal: Principal) -> Principals:
        return Principals({**self.by_name, principal.name: principal})

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "principals": [_principal_json(p) for _, p in sorted(self.by_name.items())],
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Principals:
        """The principals of a document `featureplane.registry_format` has checked."""
        return cls({p["name"]: _principal(p) for p in document["principals"]})


def _key(moment: datetime) -> tuple[str, KeyRecord]:
    key, key_id, key_digest = new_key()
    return key, KeyRecord(key_id, key_digest, moment)


def _time(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _moment(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _principal_json(principal: Principal) -> dict[str, Any]:
    return {
        "name": principal.name,
        "kind": principal.kind,
        "groups": list(principal.groups),
        "identities": list(principal.identities),
        "created_at": principal.created_at.isoformat(),
        "requests_per_second": principal.requests_per_second,
        "rows_per_second": principal.rows_per_second,
        "keys": [
            {
                "id": key.id,
                "digest": key.digest,
                "created_at": key.created_at.isoformat(),
                "expires_at": _time(key.expires_at),
                "revoked_at": _time(key.revoked_at),
            }
            for key in principal.keys
        ],
    }


def _principal(spec: Mapping[str, Any]) -> Principal:
    return Principal(
        name=spec["name"],
        kind=spec["kind"],
        groups=tuple(spec["groups"]),
        identities=tuple(spec["identities"]),
        created_at=datetime.fromisoformat(spec["created_at"]),
        requests_per_second=spec["requests_per_second"],
        rows_per_second=spec["rows_per_second"],
        keys=tuple(
            KeyRecord(
                key["id"],
                key["digest"],
                datetime.fromisoformat(key["created_at"]),
                _moment(key["expires_at"]),
                _moment(key["revoked_at"]),
            )
            for key in spec["keys"]
        ),
    )
