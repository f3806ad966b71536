"""Rules for names and owners shared by every definition."""

from __future__ import annotations

import re

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_TEAM = re.compile(r"^team:[A-Za-z0-9_.-]+$")


def name_problem(name: object) -> str | None:
    """Why `name` cannot name a definition, or None: names become asset keys, SQL identifiers and
    online keys, so they are lower snake case."""
    if not isinstance(name, str) or not _NAME.match(name):
        return (
            f"name {name!r} must be lower snake case (letters, digits, '_'; starting with a letter)"
        )
    return None


def owner_problem(owner: object) -> str | None:
    """Why `owner` is not a valid owner, or None: an email or `team:<name>`, as in Dagster."""
    if owner is None:
        return None
    if not isinstance(owner, str) or not (_EMAIL.match(owner) or _TEAM.match(owner)):
        return f"owner {owner!r} must be an email address or 'team:<name>'"
    return None
