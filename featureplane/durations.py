"""Durations as users read them: `7 days`, `1 hour 30 minutes`, never `7 days, 0:00:00`."""

from __future__ import annotations

from datetime import timedelta

SECONDS = "_seconds"
"""How the registry names a duration field: `ttl_seconds`."""
_UNITS = (
    ("day", timedelta(days=1)),
    ("hour", timedelta(hours=1)),
    ("minute", timedelta(minutes=1)),
    ("second", timedelta(seconds=1)),
    ("microsecond", timedelta(microseconds=1)),
)


def in_words(duration: timedelta | float, largest: int | None = None) -> str:
    """`duration` (a timedelta, or seconds as the registry keeps them) in words, from days
    down to the smallest unit it holds, or only its `largest` units (an age: `3 days 4 hours`)."""
    rest = duration if isinstance(duration, timedelta) else timedelta(seconds=duration)
    if rest < timedelta(0):
        return f"minus {in_words(-rest, largest)}"
    parts = []
    for name, size in _UNITS:
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count} {name}{'' if count == 1 else 's'}")
    return " ".join(parts[:largest]) or "0 seconds"


def field_in_words(key: str, value: object) -> tuple[str, object]:
    """A registry field as users read it: `ttl_seconds: 172800` is `ttl: 2 days`."""
    if not key.endswith(SECONDS):
        return key, value
    return key.removesuffix(SECONDS), in_words(value) if isinstance(value, int | float) else value
