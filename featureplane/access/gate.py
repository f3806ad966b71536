"""The door of every serving request: who asks, and whether they may read the service.

A request names its principal by an API key (`Authorization: Bearer <key>` or `x-api-key`),
or comes from a caller API Gateway or IAM has already established (a Lambda event's
`requestContext`), which stands for the principal that lists it among its identities. No key
and no caller, or a key that is unknown, revoked or expired, is 401 (the answer does not say
which: a guess learns nothing); a principal that no policy lets read the service is 403.
Everything is looked up in dicts built once per registry: a request costs a digest and a few
lookups.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from featureplane.access.keys import key_id, matches
from featureplane.access.policy import ALL_SERVICES, GROUP
from featureplane.access.principals import KeyRecord, Principal, Principals


class AccessDenied(Exception):
    """A request refused at the door; `status` is 401 (who?) or 403 (not allowed)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class PolicySpec:
    """An applied access policy (`featureplane.access.policy.AccessPolicy` as JSON)."""

    name: str
    members: tuple[str, ...]
    read: tuple[str, ...]
    apply: bool

    @classmethod
    def from_json(cls, spec: Mapping[str, Any]) -> PolicySpec:
        return cls(spec["name"], tuple(spec["members"]), tuple(spec["read"]), spec["apply"])


class Gate:
    """Authentication and authorization over one registry's principals and policies."""

    def __init__(
        self,
        principals: Principals,
        policies: Sequence[PolicySpec],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self.principals = principals
        self.policies = tuple(policies)
        self._clock = clock  # wall time: a key's expiry is not moved by a serving clock
        self._keys: dict[str, tuple[KeyRecord, Principal]] = {
            key.id: (key, principal)
            for principal in principals.by_name.values()
            for key in principal.keys
        }
        self._callers = {
            identity: principal
            for principal in principals.by_name.values()
            for identity in principal.identities
        }
        self._grants = {name: self._granted(p) for name, p in principals.by_name.items()}

    def _granted(self, principal: Principal) -> tuple[frozenset[str], bool]:
        """(services readable, whether it may apply) by the policies naming it or its groups."""
        names = {principal.name, *(f"{GROUP}{group}" for group in principal.groups)}
        mine = [policy for policy in self.policies if names & set(policy.members)]
        return (
            frozenset(service for policy in mine for service in policy.read),
            any(policy.apply for policy in mine),
        )

    def authenticate(self, headers: Mapping[str, str], caller: str | None = None) -> Principal:
        """The principal of a request's key (by lower-case header names), else of its caller."""
        key = _bearer(headers.get("authorization")) or headers.get("x-api-key")
        if key is not None:
            entry = self._keys.get(key_id(key) or "")
            if entry is None or not matches(key, entry[0].digest):
                raise AccessDenied(401, "the API key is not valid (unknown, revoked or expired)")
            record, principal = entry
            if not record.valid_at(self._clock()):
                raise AccessDenied(401, "the API key is not valid (unknown, revoked or expired)")
            return principal
        if caller is not None:
            principal = self._callers.get(caller)
            if principal is None:
                raise AccessDenied(
                    401,
                    f"caller {caller[:200]!r} stands for no principal: add it with "
                    "`featureplane access create NAME --identity CALLER`",
                )
            return principal
        raise AccessDenied(
            401, "no credentials: send 'Authorization: Bearer <API key>' or 'x-api-key'"
        )

    def may_read(self, principal: Principal, service: str) -> bool:
        services = self._grants[principal.name][0]
        return service in services or ALL_SERVICES in services

    def check_read(self, principal: Principal, service: str) -> None:
        if not self.may_read(principal, service):
            raise AccessDenied(
                403, f"principal {principal.name!r} may not read feature service {service!r}"
            )

    def readable(self, principal: Principal, services: Iterable[str]) -> list[str]:
        return [service for service in services if self.may_read(principal, service)]

    def may_apply(self, principal: Principal) -> bool:
        return self._grants[principal.name][1]

    @property
    def guards_apply(self) -> bool:
        """Whether any policy grants applying: then only those members may apply."""
        return any(policy.apply for policy in self.policies)


def _bearer(value: str | None) -> str | None:
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None
