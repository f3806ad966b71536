"""Access policies: which principals and groups may read which feature services, and who may
apply changes. Declared in the feature repository and applied like every other definition,
so a change of who may read what shows in `plan` and in `history` before it takes effect.

    AccessPolicy("ranking_reads_ctr", members=["ranker", "group:ranking"], read=[ctr])
    AccessPolicy("platform_applies", members=["group:platform"], apply=True)

Nothing is readable that no policy grants: a service no policy names answers 403 to every
principal.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from featureplane._location import caller_location
from featureplane.errors import AccessPolicyError
from featureplane.naming import name_problem, owner_problem

if TYPE_CHECKING:
    from featureplane.feature_service import FeatureService

ALL_SERVICES = "*"
"""`read=["*"]`: every feature service, those added later included."""
GROUP = "group:"
PRINCIPAL_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,62}")
"""A principal's or group's name: what audit lines and policies show."""


def member_problem(member: object) -> str | None:
    """Why `member` names neither a principal nor `group:<name>`, or None."""
    name = member[len(GROUP) :] if isinstance(member, str) and member.startswith(GROUP) else member
    if isinstance(name, str) and PRINCIPAL_NAME.fullmatch(name):
        return None
    return (
        f"member {member!r} must be a principal's name or 'group:<name>' (lower case letters, "
        "digits, '_', '.', '-'; starting with a letter)"
    )


@dataclass(frozen=True)
class AccessPolicy:
    """Grants its `members` (principal names and `group:<name>`) reading the `read` feature
    services (objects or names; `"*"` for all) and, with `apply=True`, applying changes and
    managing API keys."""

    name: str
    members: Sequence[str]
    read: Sequence[FeatureService | str] = ()
    apply: bool = False
    description: str = ""
    owner: str | None = None
    location: str = field(default_factory=caller_location, compare=False, repr=False)

    def __post_init__(self) -> None:
        members = [self.members] if isinstance(self.members, str) else list(self.members)
        read = [self.read] if isinstance(self.read, str) else list(self.read)
        problem = name_problem(self.name) or owner_problem(self.owner)
        problem = problem or next(filter(None, map(member_problem, members)), None)
        if not problem and not members:
            problem = "needs at least one member"
        names = [getattr(service, "name", service) for service in read]
        if not problem and not all(isinstance(name, str) for name in names):
            problem = "read takes feature services or their names"
        if not problem and not (names or self.apply):
            problem = "grants nothing: give it services to read, or apply=True"
        if not problem and ALL_SERVICES in names and len(names) > 1:
            problem = f"read {ALL_SERVICES!r} already means every service; list nothing else"
        if problem:
            raise AccessPolicyError(str(self.name), self.location, problem)
        object.__setattr__(self, "members", tuple(sorted(set(members))))
        object.__setattr__(self, "read", tuple(sorted(set(names))))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "members": list(self.members),
            "read": list(self.read),
            "apply": self.apply,
            "description": self.description,
            "owner": self.owner,
        }
