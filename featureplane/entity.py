"""Entity: the thing features describe (a user, an ad), identified by its join keys."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from featureplane._location import caller_location
from featureplane.errors import EntityError
from featureplane.naming import name_problem, owner_problem
from featureplane.types import DType, Int32, Int64, String

KEY_TYPES = (String, Int64, Int32)
"""What a join key can be: online store keys are strings or integers."""


@dataclass(frozen=True)
class Entity:
    """`Entity("user", join_keys=["user_id"], join_key_types={"user_id": Int64})`: feature views
    keyed on it carry these columns.

    `join_key_types` lets the online handler reject a key of the wrong type (`"12"` for an
    Int64 key) with a 400 instead of answering "missing"; a key without a declared type
    accepts a string or an integer.
    """

    name: str
    join_keys: Sequence[str]
    description: str = ""
    owner: str | None = None
    join_key_types: Mapping[str, DType] = field(default_factory=dict)
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
        object.__setattr__(self, "join_key_types", dict(self.join_key_types))
        for key, dtype in self.join_key_types.items():
            if problem:
                break
            if key not in self.join_keys:
                problem = f"join_key_types names {key!r}, which is not a join key"
            elif dtype not in KEY_TYPES:
                problem = (
                    f"join key {key!r} is {dtype!r}; join keys are "
                    f"{', '.join(map(repr, KEY_TYPES))}"
                )
        if problem:
            raise EntityError(str(self.name), self.location, problem)
