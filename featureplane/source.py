"""Batch sources: the tables feature views read, each with an event-time column."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from featureplane._location import caller_location
from featureplane.errors import SourceError
from featureplane.naming import name_problem, owner_problem
from featureplane.quality import DEFAULT_QUIET_PERIOD
from featureplane.settings import data_dir


@dataclass(frozen=True)
class BatchSource:
    """A Delta table (`path`, local or `s3://`) or a Spark catalog table (`table`).

    A relative `path` is read under the data directory (`FEATUREPLANE_DATA_DIR`), so the same
    repository runs on a laptop and, with absolute URIs, on a cluster.

    `quiet_period` is the longest the source goes without events while complete: a window is
    written once the source holds an event within it of the window's end (None for sources
    whose rows come rarely, such as profile updates: they never hold a window back; see
    `featureplane.quality.completeness`). `expectations` (a pandera PySpark schema) are checked
    on the source's rows of every window a feature view reads.
    """

    name: str
    timestamp_field: str
    path: str | None = None
    table: str | None = None
    description: str = ""
    owner: str | None = None
    quiet_period: timedelta | None = DEFAULT_QUIET_PERIOD
    expectations: Any = field(default=None, compare=False, repr=False)
    location: str = field(default_factory=caller_location, compare=False, repr=False)

    def __post_init__(self) -> None:
        problem = name_problem(self.name) or owner_problem(self.owner)
        if not problem and (self.path is None) == (self.table is None):
            problem = "give exactly one of path= (a Delta table) or table= (a Spark table)"
        if not problem and not (isinstance(self.timestamp_field, str) and self.timestamp_field):
            problem = "timestamp_field must name the event-time column"
        quiet = self.quiet_period
        if (
            not problem
            and quiet is not None
            and not (isinstance(quiet, timedelta) and quiet >= timedelta(0))
        ):
            problem = f"quiet_period must be a timedelta >= 0 or None, got {quiet!r}"
        if not problem and self.expectations is not None:
            from featureplane.quality.expectations import as_schema

            try:
                as_schema(self.expectations)
            except TypeError as error:
                problem = str(error)
        if problem:
            raise SourceError(str(self.name), self.location, problem)

    @property
    def uri(self) -> str | None:
        """The Delta table's absolute location, or None for a catalog table."""
        if self.path is None:
            return None
        if "://" in self.path or self.path.startswith("/"):
            return self.path
        return str(data_dir() / self.path)
