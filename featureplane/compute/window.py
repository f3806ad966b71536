"""Half-open time windows [start, end) in UTC: the unit every computation and write works on."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time

from pyspark.sql import Column
from pyspark.sql import functions as F


@dataclass(frozen=True)
class TimeWindow:
    """Event times `start <= t < end`, both UTC."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        for label in ("start", "end"):
            moment = getattr(self, label)
            utc = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
            object.__setattr__(self, label, utc)
        if self.end <= self.start:
            raise ValueError(f"empty time window: {self.start} .. {self.end}")

    def contains(self, column: str) -> Column:
        """Spark predicate: `column` lies in the window."""
        return (F.col(column) >= F.lit(self.start)) & (F.col(column) < F.lit(self.end))

    def sql(self, column: str, date_column: str | None = None) -> str:
        """The same predicate as SQL text (for Delta's `replaceWhere`).

        A window of whole days is said on `date_column` (the table's partition column) when
        given: Delta then swaps whole partitions instead of rewriting files row by row.
        """
        if date_column and self.start.time() == self.end.time() == time(0):
            start, end = (m.date().isoformat() for m in (self.start, self.end))
            return f"`{date_column}` >= DATE '{start}' AND `{date_column}` < DATE '{end}'"
        start, end = (m.strftime("%Y-%m-%d %H:%M:%S.%f") for m in (self.start, self.end))
        return f"`{column}` >= TIMESTAMP '{start}' AND `{column}` < TIMESTAMP '{end}'"


def utc_from_micros(micros: int | None) -> datetime | None:
    """A timestamp read as `unix_micros(...)`: exact, and free of the Python process's zone
    (Spark hands plain timestamps to Python as naive local times)."""
    return None if micros is None else datetime.fromtimestamp(micros / 1_000_000, UTC)
