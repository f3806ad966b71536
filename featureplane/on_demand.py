"""On-demand feature views: a pure Python function of request data and other features.

The same function runs twice: online in the handler, on the request and the served features, and
offline in `FeatureStore.get_historical_features`, on the point-in-time joined rows. It sees plain
Python only: one `dict` per source (request fields, or a view's selected features by plain name;
missing values are None and the function must handle them) and returns a `dict` with exactly
the schema's names. The online side has no feature repository to import, so it receives the
function as source text (`function_source`) and rebuilds it with `function_from_source` in a
namespace of builtins plus `FUNCTION_GLOBALS`; a function using anything else fails at load.

This module imports neither Spark, Dagster nor pandas: it is what the Lambda handler runs.
"""

from __future__ import annotations
import __future__

import ast
import builtins
import dis
import hashlib
import inspect
import json
import math
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from types import CodeType, NoneType

from featureplane._location import function_location
from featureplane.errors import OnDemandFeatureViewError
from featureplane.feature_service import FeatureSelection, select_features
from featureplane.feature_view import FeatureView, _transformation_source, arity_problem
from featureplane.naming import name_problem, owner_problem
from featureplane.types import DType, Field, float32

FUNCTION_GLOBALS: dict[str, object] = {
    "math": math,
    "datetime": datetime,
    "timedelta": timedelta,
    "timezone": timezone,
}
"""The only names besides builtins an on-demand function may use: all the handler provides."""


@dataclass(frozen=True)
class RequestSource:
    """Fields sent with each request (online) or read from spine columns (offline)."""

    schema: Sequence[Field]
    name: str = "request"

    def __post_init__(self) -> None:
        object.__setattr__(self, "schema", tuple(self.schema))

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.schema)


Source = RequestSource | FeatureSelection


def function_from_source(source: str, name: str) -> Callable:
    """The function `name` defined by `source`, with only builtins and `FUNCTION_GLOBALS` in scope.

    Annotations are kept as strings, so a signature may name types the namespace lacks.
    """
    namespace: dict[str, object] = {"__builtins__": builtins, **FUNCTION_GLOBALS}
    flags = __future__.annotations.compiler_flag
    exec(compile(source, f"<on-demand {name}>", "exec", flags=flags, dont_inherit=True), namespace)
    function = namespace.get(name)
    if not callable(function):
        raise ValueError(f"the source does not define a function named {name!r}")
    return function


def _function_node(function: Callable) -> ast.FunctionDef | None:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError):
        return None
    node = tree.body[0] if tree.body else None
    return node if isinstance(node, ast.FunctionDef) else None


def _global_names(code: CodeType) -> set[str]:
    """Names a code object (and the functions and comprehensions inside it) reads as globals."""
    names = {i.argval for i in dis.get_instructions(code) if i.opname == "LOAD_GLOBAL"}
    for const in code.co_consts:
        if isinstance(const, CodeType):
            names |= _global_names(const)
    return names


def _unavailable_online(function: Callable) -> list[str]:
    """Globals the function reads that the handler's namespace lacks or binds differently."""
    bound = function.__globals__
    unavailable = []
    for name in sorted(_global_names(function.__code__)):
        if name in FUNCTION_GLOBALS:
            if bound.get(name, FUNCTION_GLOBALS[name]) is not FUNCTION_GLOBALS[name]:
                unavailable.append(name)
        elif name in bound or not hasattr(builtins, name):
            unavailable.append(name)
    return unavailable


@dataclass(frozen=True)
class OnDemandFeatureView:
    """An on-demand feature view; see `on_demand_feature_view` for the meaning of each field."""

    name: str
    sources: tuple[Source, ...]
    schema: tuple[Field, ...]
    function: Callable = field(repr=False)
    description: str = ""
    owner: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    location: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        sources = tuple(
            FeatureSelection(s, s.feature_names) if isinstance(s, FeatureView) else s
            for s in self.sources
        )
        object.__setattr__(self, "sources", sources)
        object.__setattr__(self, "schema", tuple(self.schema))
        object.__setattr__(self, "tags", dict(self.tags))
        problem = (
            self._naming_problem()
            or self._source_problem()
            or self._schema_problem()
            or self._function_problem()
        )
        if problem:
            raise OnDemandFeatureViewError(str(self.name), self.location, problem)

    def _naming_problem(self) -> str | None:
        problem = name_problem(self.name) or owner_problem(self.owner)
        if problem:
            return problem
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.tags.items()):
            return "tags must map strings to strings"
        return None

    def _source_problem(self) -> str | None:
        if not self.sources:
            return "needs at least one source"
        for source in self.sources:
            valid = isinstance(source, RequestSource) or (
                isinstance(source, FeatureSelection) and isinstance(source.view, FeatureView)
            )
            if not valid:
                return (
                    f"source {source!r} is not a RequestSource, a feature view or a selection "
                    "of one (on-demand views cannot be chained)"
                )
            if isinstance(source, FeatureSelection) and source.problem():
                return source.problem()
        requests = [s for s in self.sources if isinstance(s, RequestSource)]
        if len(requests) > 1:
            return "takes at most one RequestSource: put every request field in it"
        for request in requests:
            problem = name_problem(request.name) or _fields_problem(request.schema)
            if problem:
                return f"request source {problem}"
        return None

    def _schema_problem(self) -> str | None:
        problem = _fields_problem(self.schema)
        if problem:
            return f"schema {problem}"
        inputs = {name for source in self.sources for name in _input_names(source)}
        shadowed = [name for name in self.feature_names if name in inputs]
        if shadowed:
            return (
                f"schema names {shadowed} are also inputs: name outputs apart from the request "
                "fields and features they are computed from"
            )
        return None

    def _function_problem(self) -> str | None:
        if not callable(self.function):
            return f"function {self.function!r} is not callable"
        problem = arity_problem(self.function, len(self.sources))
        if problem:
            return problem
        if _function_node(self.function) is None:
            return "the function must be a `def` in a source file: its source is shipped online"
        closed = self.function.__code__.co_freevars
        if closed:
            return f"the function closes over {list(closed)}: online it runs from its source alone"
        unavailable = _unavailable_online(self.function)
        if unavailable:
            allowed = ", ".join(FUNCTION_GLOBALS)
            return (
                f"the function uses {unavailable}, which the online handler does not have: "
                f"it provides builtins and {allowed} only (import them inside the function "
                "or compute the value in a feature view)"
            )
        return None

    def __getitem__(self, features: Sequence[str] | str) -> FeatureSelection:
        """A selection of this view's outputs, e.g. `ctr_features[["user_ctr_1d"]]`."""
        return select_features(self, features)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.schema)

    @property
    def feature_types(self) -> dict[str, DType]:
        return {f.name: f.dtype for f in self.schema}

    @property
    def request_source(self) -> RequestSource | None:
        return next((s for s in self.sources if isinstance(s, RequestSource)), None)

    @property
    def feature_sources(self) -> tuple[FeatureSelection, ...]:
        """The selections of feature views this view is computed from."""
        return tuple(s for s in self.sources if isinstance(s, FeatureSelection))

    @property
    def function_source(self) -> str:
        """The function as text, decorators removed and renamed to the view's name, so that
        `function_from_source(view.function_source, view.name)` rebuilds it (comments dropped)."""
        node = _function_node(self.function)
        node.decorator_list = []
        node.name = self.name
        return ast.unparse(node)

    @property
    def version(self) -> str:
        """Hash of what determines its values: the normalised function, sources and schema.

        Its feature sources' versions are in, so what is versioned by this view (a training
        dataset) changes when its inputs do, although nothing of it is stored.
        """
        config = {
            "function": _transformation_source(self.function),
            "sources": [
                ["request", s.name, [[f.name, f.dtype.spark] for f in s.schema]]
                if isinstance(s, RequestSource)
                else ["features", s.view_name, s.view.version, list(s.features)]
                for s in self.sources
            ],
            "schema": [[f.name, f.dtype.spark] for f in self.schema],
        }
        return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]

    def compute(self, inputs: Sequence[Mapping[str, object]]) -> dict[str, object]:
        """The features for one row from one dict per source, in order; see `compute_features`."""
        if len(inputs) != len(self.sources):
            raise OnDemandFeatureViewError(
                self.name,
                self.location,
                f"takes {len(self.sources)} inputs, one per source, but got {len(inputs)}",
            )
        return compute_features(self.function, self.name, self.schema, inputs)


def _input_names(source: Source) -> tuple[str, ...]:
    return source.field_names if isinstance(source, RequestSource) else source.features


def _fields_problem(fields: Sequence[Field]) -> str | None:
    if not fields:
        return "must declare at least one Field"
    seen: set[str] = set()
    for column in fields:
        if not isinstance(column, Field) or not isinstance(column.dtype, DType):
            return f"entry {column!r} is not a Field with a featureplane type"
        problem = name_problem(column.name)
        if problem:
            return problem
        if column.name in seen:
            return f"declares {column.name!r} twice"
        seen.add(column.name)
    return None


def on_demand_feature_view(
    *,
    sources: Sequence[RequestSource | FeatureView | FeatureSelection],
    schema: Sequence[Field],
    name: str | None = None,
    description: str | None = None,
    owner: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Callable[[Callable], OnDemandFeatureView]:
    """Declare an on-demand feature view computed by the decorated function, row by row.

    The function takes one positional `dict` per source, in order: a `RequestSource` gives the
    request's fields by name, a feature view (all its features) or a selection `view[["f"]]`
    gives those features by plain name. Values are plain Python (int, float, str, bool, UTC
    datetime, date, list) or None when missing: the function must handle None. It returns a
    dict with exactly the `schema` names; values are checked against their declared types.
    It may use builtins and `math`, `datetime`, `timedelta`, `timezone` only, since online it is
    rebuilt from its source text.
    """

    def decorate(fn: Callable) -> OnDemandFeatureView:
        return OnDemandFeatureView(
            name=name or fn.__name__,
            sources=tuple(sources),
            schema=tuple(schema),
            function=fn,
            description=description if description is not None else inspect.getdoc(fn) or "",
            owner=owner,
            tags=tags or {},
            location=function_location(fn),
        )

    return decorate


# ---- running the function ----------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return _is_int(value) or isinstance(value, float)


_ACCEPTS: dict[str, Callable[[object], bool]] = {
    "string": lambda v: isinstance(v, str),
    "int": lambda v: _is_int(v) and -(2**31) <= v < 2**31,
    "bigint": lambda v: _is_int(v) and -(2**63) <= v < 2**63,
    "float": _is_number,
    "double": _is_number,
    "boolean": lambda v: isinstance(v, bool),
    "timestamp": lambda v: isinstance(v, datetime),
    "date": lambda v: isinstance(v, date) and not isinstance(v, datetime),
}


def _utc(value: object) -> object:
    """A datetime in UTC with `timezone.utc` (naive means UTC), so both paths see the same."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
    return value


def _conform(value: object, spark_type: str) -> object:
    """`value` as stored under `spark_type` (ints widen to float); TypeError if it does not fit."""
    if value is None:
        return None
    if spark_type.startswith("array<"):
        if not isinstance(value, list | tuple):
            raise TypeError
        return [_conform(element, spark_type[len("array<") : -1]) for element in value]
    if not _ACCEPTS[spark_type](value):
        raise TypeError
    if spark_type == "double":
        return float(value)
    if spark_type == "float":  # rounded online as the offline float32 column rounds it
        return float32(value)
    try:
        return _utc(value)
    except OverflowError:  # a moment that is outside the years 1-9999 in UTC
        raise TypeError from None


_EXACT = {"double": float, "string": str, "boolean": bool}
"""Spark types whose values of exactly this Python type are stored as they are."""
_BOUNDS = {"int": (-(2**31), 2**31), "bigint": (-(2**63), 2**63)}
"""Spark integer types, whose ints within these bounds are stored as they are."""


@dataclass(frozen=True, eq=False)
class OutputSchema:
    """An output schema as `compute_columns` checks it, worked out once: hashing or scanning
    the fields for every call would cost as much as the function."""

    fields: tuple[Field, ...]
    names: frozenset[str]
    columns: tuple[tuple[str, str], ...]
    """(name, Spark type) of each field, in order."""

    @classmethod
    def of(cls, schema: Iterable[Field]) -> OutputSchema:
        fields = tuple(schema)
        names = frozenset(f.name for f in fields)
        return cls(fields, names, tuple((f.name, f.dtype.spark) for f in fields))


def function_inputs(row: Mapping[str, object]) -> dict[str, object]:
    """A copy of one source's values for the function, datetimes in UTC."""
    if any(isinstance(value, datetime) for value in row.values()):
        return {key: _utc(value) for key, value in row.items()}
    return dict(row)


def compute_features(
    function: Callable,
    view_name: str,
    schema: Iterable[Field] | OutputSchema,
    inputs: Sequence[Mapping[str, object]],
) -> dict[str, object]:
    """Run an on-demand function on one row (one dict per source) and check its output against
    `schema`: `compute_columns` of that row, whose inputs are copied, datetimes in UTC."""
    checks = schema if isinstance(schema, OutputSchema) else OutputSchema.of(schema)
    columns = compute_columns(
        function, view_name, checks, [[function_inputs(row) for row in inputs]]
    )
    return {name: column[0] for (name, _), column in zip(checks.columns, columns, strict=True)}


def compute_columns(
    function: Callable,
    view_name: str,
    checks: OutputSchema,
    rows: Iterable[Sequence[dict[str, object]]],
) -> list[list[object]]:
    """Run an on-demand function on each row's inputs and check its outputs: one column per
    field of the schema, in order.

    Shared by the online handler (with a function rebuilt from its source) and the offline path,
    so both apply the same checks: exactly the schema's names, each value None or of its type
    (ints widen to floats; datetimes come out in UTC). The inputs are the function's to keep:
    fresh dicts whose datetimes are in UTC. A column is checked at once, by the set of its
    value types, and only one that holds other types is conformed value by value.
    """
    outputs = []
    names = checks.names
    for inputs in rows:
        try:
            output = function(*inputs)
        except Exception as exc:
            raise OnDemandFeatureViewError(view_name, None, f"the function raised {exc!r}") from exc
        if not isinstance(output, Mapping):
            raise OnDemandFeatureViewError(
                view_name, None, f"the function returned {type(output).__name__}, not a dict"
            )
        if output.keys() != names:
            missing = [name for name, _ in checks.columns if name not in output]
            extra = [key for key in output if key not in names]
            wrong = [f"lacks features {missing}"] if missing else []
            wrong += [f"has keys {extra} that are not in the schema"] if extra else []
            raise OnDemandFeatureViewError(
                view_name, None, f"the function's output {' and '.join(wrong)}"
            )
        outputs.append(output)
    return [
        _conform_column(view_name, checks, name, spark_type, [output[name] for output in outputs])
        for name, spark_type in checks.columns
    ]


def _conform_column(
    view_name: str, checks: OutputSchema, name: str, spark_type: str, column: list[object]
) -> list[object]:
    types = set(map(type, column))
    exact = _EXACT.get(spark_type)
    if exact is not None and types <= {exact, NoneType}:  # most columns: as they are
        return column
    bounds = _BOUNDS.get(spark_type)
    if bounds is not None and types <= {int, NoneType}:
        present = [value for value in column if value is not None]
        if not present or (bounds[0] <= min(present) and max(present) < bounds[1]):
            return column
    conformed = []
    for value in column:
        try:
            conformed.append(_conform(value, spark_type))
        except TypeError:
            raise OnDemandFeatureViewError(
                view_name,
                None,
                f"feature {name!r} is {type(value).__name__} {value!r}, "
                f"not {_type_name(checks.fields, name)}",
            ) from None
    return conformed


def _type_name(schema: Iterable[Field], name: str) -> str:
    return next(f.dtype.name for f in schema if f.name == name)


def stored_views(selections: Iterable[FeatureSelection]) -> tuple[FeatureView, ...]:
    """The feature views whose stored rows these selections read, each once, in order:
    an on-demand view stands for the views it is computed from."""
    views: dict[str, FeatureView] = {}
    for selection in selections:
        view = selection.view
        inputs = view.feature_sources if isinstance(view, OnDemandFeatureView) else [selection]
        for source in inputs:
            views.setdefault(source.view_name, source.view)
    return tuple(views.values())
