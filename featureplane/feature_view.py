"""Batch feature views: a transformation from sources to (join keys, event time, features) rows.

A view is an immutable value object built by `@batch_feature_view`. Everything that can be checked
without data is checked here, when the repository module is imported, so a mistake fails the load
with the view's name, file and line. Output columns are checked against the schema each time the
transformation runs (see `featureplane.compute.transform`).
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

from featureplane._location import function_location
from featureplane.aggregation import TILE_START, Aggregation
from featureplane.durations import in_words
from featureplane.entity import Entity
from featureplane.errors import FeatureViewError
from featureplane.feature_service import FeatureSelection, select_features
from featureplane.naming import name_problem, owner_problem
from featureplane.quality import DEFAULT_INVALID_SHARE
from featureplane.quality.volume import DEFAULT_VOLUME_GUARD, VolumeGuard
from featureplane.source import BatchSource
from featureplane.types import DType, Field

Mode = Literal["pyspark", "spark_sql", "pandas"]
MODES: tuple[str, ...] = ("pyspark", "spark_sql", "pandas")
BatchTrigger = Literal["scheduled", "manual"]
BATCH_TRIGGERS: tuple[str, ...] = ("scheduled", "manual")


def schedule_cron(schedule: timedelta) -> str:
    """The cron expression of a batch schedule, which partitions the view's time axis.

    Schedules are whole hours dividing a day, one day, or one week, so that partitions tile days
    and the event-date layout of the Delta table stays aligned.
    """
    hours, rest = divmod(schedule, timedelta(hours=1))
    if rest or hours <= 0:
        raise ValueError("must be a positive whole number of hours")
    if hours < 24 and 24 % hours == 0:
        return "0 * * * *" if hours == 1 else f"0 */{hours} * * *"
    if hours == 24:
        return "0 0 * * *"
    if hours == 24 * 7:
        return "0 0 * * 1"
    raise ValueError("must divide a day (1h, 2h, 3h, 4h, 6h, 8h, 12h), or be 1 day or 7 days")


def schedule_problem(label: str, schedule: object) -> str | None:
    """What is wrong with a schedule (one line naming it), or None."""
    if not isinstance(schedule, timedelta):
        return f"{label} must be a timedelta, got {schedule!r}"
    try:
        schedule_cron(schedule)
    except ValueError as exc:
        return f"{label} {in_words(schedule)} {exc}"
    return None


def _as_utc(moment: datetime | date) -> datetime | date:
    """A datetime in UTC (naive means UTC), a date as its UTC midnight; anything else unchanged."""
    if isinstance(moment, datetime):
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    if isinstance(moment, date):
        return datetime.combine(moment, time(), tzinfo=UTC)
    return moment


def arity_problem(fn: Callable, sources: int) -> str | None:
    """Why `fn` cannot be called with one positional argument per source, or None."""
    params = inspect.signature(fn).parameters.values()
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) != sources or len(positional) != len(params):
        return (
            f"the function must take exactly {sources} positional parameters, "
            f"one per source in order, but its signature is {inspect.signature(fn)}"
        )
    return None


def _transformation_source(fn: Callable) -> str:
    """The function without decorators, docstring, comments or formatting: what computes values."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return fn.__code__.co_code.hex()
    node = tree.body[0]
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        node.decorator_list = []
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            node.body = body[1:] or [ast.Pass()]
    return ast.unparse(node)


@dataclass(frozen=True)
class FeatureView:
    """A batch feature view; see `batch_feature_view` for the meaning of each field."""

    name: str
    function: Callable = field(repr=False)
    mode: Mode
    sources: tuple[BatchSource | str, ...]
    entities: tuple[Entity, ...]
    schema: tuple[Field, ...]
    timestamp_field: str
    feature_start_time: datetime
    batch_schedule: timedelta = timedelta(days=1)
    ttl: timedelta | None = None
    freshness: timedelta | None = None
    online: bool = True
    offline: bool = True
    owner: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    aggregations: tuple[Aggregation, ...] = ()
    aggregation_interval: timedelta | None = None
    expectations: Any = field(default=None, compare=False, repr=False)
    volume_guard: VolumeGuard | None = DEFAULT_VOLUME_GUARD
    max_invalid_share: float = DEFAULT_INVALID_SHARE
    batch_trigger: BatchTrigger = "scheduled"
    location: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "aggregations", tuple(self.aggregations))
        object.__setattr__(self, "feature_start_time", _as_utc(self.feature_start_time))
        object.__setattr__(self, "tags", dict(self.tags))
        problem = self._problem()
        if problem:
            raise FeatureViewError(str(self.name), self.location, problem)

    def _problem(self) -> str | None:
        checks = (
            self._naming_problem,
            self._mode_problem,
            self._schema_problem,
            self._timing_problem,
            self._aggregation_problem,
            self._quality_problem,
        )
        for check in checks:
            problem = check()
            if problem:
                return problem
        return None

    def _naming_problem(self) -> str | None:
        problem = name_problem(self.name) or owner_problem(self.owner)
        if problem:
            return problem
        if not self.sources:
            return "needs at least one source"
        for source in self.sources:
            if not isinstance(source, BatchSource | str):
                return f"source {source!r} is not a BatchSource or the name of one"
        if not self.entities:
            return "needs at least one entity"
        for entity in self.entities:
            if not isinstance(entity, Entity):
                return f"entity {entity!r} is not an Entity"
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.tags.items()):
            return "tags must map strings to strings"
        return None

    def _mode_problem(self) -> str | None:
        if self.mode not in MODES:
            return f"mode {self.mode!r} is not one of {', '.join(MODES)}"
        if self.mode == "pandas" and len(self.sources) != 1:
            return "pandas mode takes exactly one source (run per entity group); join in pyspark"
        return arity_problem(self.function, len(self.sources))

    def _schema_problem(self) -> str | None:
        if not (isinstance(self.timestamp_field, str) and self.timestamp_field):
            return "timestamp_field must name the output's event-time column"
        if not self.schema:
            return "schema must declare at least one feature Field"
        reserved = {*self.join_keys, self.timestamp_field, "event_date"}
        seen: set[str] = set()
        for column in self.schema:
            if not isinstance(column, Field) or not isinstance(column.dtype, DType):
                return f"schema entry {column!r} is not a Field with a featureplane type"
            problem = name_problem(column.name)
            if problem:
                return f"schema {problem}"
            if column.name in reserved:
                return (
                    f"schema declares {column.name!r}, which is a join key, the timestamp "
                    "or the reserved partition column 'event_date'"
                )
            if column.name in seen:
                return f"schema declares {column.name!r} twice"
            seen.add(column.name)
        if len(set(self.join_keys)) != len(self.join_keys):
            return f"entities share a join key: {list(self.join_keys)}"
        return None

    def _timing_problem(self) -> str | None:
        for label, value in (("ttl", self.ttl), ("freshness", self.freshness)):
            if value is not None and (not isinstance(value, timedelta) or value <= timedelta(0)):
                return f"{label} must be a positive timedelta, got {value!r}"
        if self.batch_trigger not in BATCH_TRIGGERS:
            return f"batch_trigger {self.batch_trigger!r} is not one of {', '.join(BATCH_TRIGGERS)}"
        problem = schedule_problem("batch_schedule", self.batch_schedule)
        if problem:
            return problem
        if not isinstance(self.feature_start_time, datetime):
            return f"feature_start_time must be a datetime, got {self.feature_start_time!r}"
        if self.feature_start_time > datetime.now(UTC):
            return f"feature_start_time {self.feature_start_time.isoformat()} is in the future"
        return None

    def _aggregation_problem(self) -> str | None:
        if not self.aggregations:
            if self.aggregation_interval is not None:
                return "aggregation_interval is set but there are no aggregations"
            return None
        interval = self.interval
        if not isinstance(interval, timedelta) or interval <= timedelta(0):
            return f"aggregation_interval must be a positive timedelta, got {interval!r}"
        if timedelta(days=1) % interval or self.batch_schedule % interval:
            schedule = in_words(self.batch_schedule)
            return (
                f"aggregation_interval {in_words(interval)} must divide a day and the "
                f"batch_schedule {schedule}, so tiles never straddle a partition"
            )
        types = {column.name: column.dtype for column in self.schema}
        names: set[str] = set()
        for aggregation in self.aggregations:
            if not isinstance(aggregation, Aggregation):
                return f"aggregation {aggregation!r} is not an Aggregation"
            problem = aggregation.problem(types.get(aggregation.column), interval)
            if problem:
                return problem
            problem = name_problem(aggregation.name)
            if problem:
                return f"aggregation {problem}"
            if aggregation.name in names or aggregation.name in (*self.join_keys, "event_date"):
                return f"aggregation name {aggregation.name!r} is used twice or is reserved"
            names.add(aggregation.name)
        return None

    def _quality_problem(self) -> str | None:
        guard = self.volume_guard
        if guard is not None and not isinstance(guard, VolumeGuard):
            return f"volume_guard must be a VolumeGuard or None, got {guard!r}"
        if guard is not None and guard.problem():
            return guard.problem()
        share = self.max_invalid_share
        if not (isinstance(share, int | float) and 0 <= share <= 1):
            return f"max_invalid_share must be a share between 0 and 1, got {share!r}"
        if self.expectations is None:
            return None
        from featureplane.quality.expectations import schema_problem

        key_types = {k: t.spark if t else None for k, t in self.join_key_types.items()}
        columns = {
            **key_types,
            self.timestamp_field: "timestamp",
            **{column.name: column.dtype.spark for column in self.schema},
        }
        return schema_problem(self.expectations, columns)

    @property
    def interval(self) -> timedelta:
        """The tile size of aggregations: `aggregation_interval`, by default the schedule."""
        if self.aggregation_interval is None:
            return self.batch_schedule
        return self.aggregation_interval

    @property
    def table_timestamp_field(self) -> str:
        """The event-time column of the stored table: tiles are stamped with their start."""
        return TILE_START if self.aggregations else self.timestamp_field

    def __getitem__(self, features: Sequence[str]) -> FeatureSelection:
        """A selection of this view's features, e.g. `ad_stats[["ctr_1d"]]`."""
        return select_features(self, features)

    @property
    def join_keys(self) -> tuple[str, ...]:
        return tuple(key for entity in self.entities for key in entity.join_keys)

    @property
    def join_key_types(self) -> dict[str, DType | None]:
        """Each join key's declared type, None where its entity leaves it open."""
        return {key: e.join_key_types.get(key) for e in self.entities for key in e.join_keys}

    @property
    def schema_names(self) -> tuple[str, ...]:
        """The columns the transformation outputs besides join keys and timestamp."""
        return tuple(column.name for column in self.schema)

    @property
    def feature_names(self) -> tuple[str, ...]:
        """What the view serves: its aggregations, or else its schema columns."""
        if self.aggregations:
            return tuple(a.name for a in self.aggregations)
        return self.schema_names

    @property
    def feature_types(self) -> dict[str, DType]:
        types = {column.name: column.dtype for column in self.schema}
        if self.aggregations:
            return {a.name: a.output_type(types[a.column]) for a in self.aggregations}
        return types

    @property
    def source_names(self) -> tuple[str, ...]:
        return tuple(s if isinstance(s, str) else s.name for s in self.sources)

    @property
    def version(self) -> str:
        """Stable hash of what determines the stored values: a new version must be recomputed.

        The batch schedule is in: it sets the windows a transformation sees. Descriptions, owners,
        tags, ttl, freshness and flags do not change stored values and are left out; neither do
        reformatting or comments in the function.
        """
        config = {
            "mode": self.mode,
            "transformation": _transformation_source(self.function),
            "sources": [
                [s.name, s.path, s.table, s.timestamp_field] if isinstance(s, BatchSource) else [s]
                for s in self.sources
            ],
            "join_keys": list(self.join_keys),
            "schema": [[c.name, c.dtype.spark] for c in self.schema],
            "timestamp_field": self.timestamp_field,
            "feature_start_time": self.feature_start_time.isoformat(),
            "batch_schedule": self.batch_schedule.total_seconds(),
        }
        if self.aggregations:
            config["interval"] = self.interval.total_seconds()
            config["aggregations"] = [
                [a.name, a.column, str(a.fn), a.time_window.total_seconds()]
                for a in self.aggregations
            ]
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
        return digest[:12]


def batch_feature_view(
    *,
    sources: Sequence[BatchSource | str],
    entities: Sequence[Entity],
    schema: Sequence[Field],
    timestamp_field: str,
    feature_start_time: datetime,
    mode: Mode = "pyspark",
    batch_schedule: timedelta = timedelta(days=1),
    ttl: timedelta | None = None,
    freshness: timedelta | None = None,
    online: bool = True,
    offline: bool = True,
    owner: str | None = None,
    tags: Mapping[str, str] | None = None,
    description: str | None = None,
    name: str | None = None,
    aggregations: Sequence[Aggregation] = (),
    aggregation_interval: timedelta | None = None,
    expectations: Any = None,
    volume_guard: VolumeGuard | None = DEFAULT_VOLUME_GUARD,
    max_invalid_share: float = DEFAULT_INVALID_SHARE,
    batch_trigger: BatchTrigger = "scheduled",
) -> Callable[[Callable], FeatureView]:
    """Declare a batch feature view computed by the decorated function.

    The function takes one argument per source, in order, and is called for one time window:
    - `pyspark`: Spark DataFrames already restricted to the window; returns a DataFrame.
    - `spark_sql`: table references to put in the query (`f"SELECT … FROM {clicks}"`); returns SQL.
    - `pandas`: a pandas DataFrame holding one entity's rows of the window (one source, grouped
      by join keys on Spark, so it scales with the cluster); returns a pandas DataFrame.
    The output holds the entities' join keys, `timestamp_field` and exactly the `schema` features.
    Rows whose event time falls outside the window are dropped, so each run owns its window.
    With `aggregations`, the output rows are events and the features are time-window
    aggregations of them, stored as tiles of `aggregation_interval` (default: the schedule).
    `ttl` bounds how old a row-level value may be when read; `freshness` is how late data may
    be before the asset is flagged (default twice the schedule); `feature_start_time` is the
    first partition.
    Quality (`featureplane.quality`): `expectations` is a pandera PySpark schema checked on the
    output of every window, whose errors block the window's online push; rows with a null join
    key or event time, or an event time outside the window, are dropped before the write and
    fail the check above `max_invalid_share` of the rows; `volume_guard` keeps a window whose
    new rows are far fewer than the stored ones from replacing them (None turns it off).
    `batch_trigger="scheduled"` computes each window once its sources have landed it and again
    when late rows reach it (`featureplane.dagster.automation`); `"manual"` leaves runs to
    people and to apply's backfills.
    """

    def decorate(fn: Callable) -> FeatureView:
        return FeatureView(
            name=name or fn.__name__,
            function=fn,
            mode=mode,
            sources=tuple(sources),
            entities=tuple(entities),
            schema=tuple(schema),
            timestamp_field=timestamp_field,
            feature_start_time=feature_start_time,
            batch_schedule=batch_schedule,
            ttl=ttl,
            freshness=freshness,
            online=online,
            offline=offline,
            owner=owner,
            tags=tags or {},
            description=description if description is not None else inspect.getdoc(fn) or "",
            aggregations=tuple(aggregations),
            aggregation_interval=aggregation_interval,
            expectations=expectations,
            volume_guard=volume_guard,
            max_invalid_share=max_invalid_share,
            batch_trigger=batch_trigger,
            location=function_location(fn),
        )

    return decorate
