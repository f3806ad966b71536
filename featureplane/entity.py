"""Entity: the thing features describe (a user, an ad), identified by its join keys."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from featureplane._location import caller_location
from featureplane.errors import EntityError
from featureplane.naming import name_problem, owner_problem


@dataclass(frozen=True)
class Entity:
    """`Entity("user", join_keys=["user_id"])`: feature views keyed on it carry these columns."""

    name: str
    join_keys: Sequence[str]
    description: str = ""
    owner: str | None = None
    location: str = field(default_factory=caller_location, compare=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.join_keys, str):
            object.__setattr__(self, "join_keys", (self.join_keys,))
        object.__setattr__(self, "join_keys", tuple(self.join_keys))
        problem = name_problem(self.name) or owner_problem(self.owner)
        if not problem and not self.join_keys:
            problem = "needs at least one join key"
        for key in self.join_keys:
            problem = problem or name_problem(key)
        if not problem and len(set(self.join_keys)) != len(self.join_keys):
            problem = f"join keys {list(self.join_keys)} repeat a name"
        if problem:
            raise EntityError(str(self.name), self.location, problem)
