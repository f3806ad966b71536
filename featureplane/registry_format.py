"""The registry format on disk, checked on every read: every part a reader indexes into.

Servers read a registry at cold start; plan, apply, list and history read the applied versions.
A file that is truncated, not JSON, of another format or edited by hand must be refused with
its path and the part that is wrong (`RegistryCorrupt`), never crash a reader on a missing key
or a value of the wrong type. `parse_registry_json` reads the bytes; `registry_problem` holds
the document against `REGISTRY` (the format `featureplane.registry` writes and describes) and
then its references: every entity, source, view and service a definition names is defined,
and every selected feature exists. What passes is safe to index into everywhere.

Imports neither Spark, pandas nor Dagster: the Lambda handler runs it at cold start.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from featureplane.aggregation import FUNCTIONS
from featureplane.errors import RegistryCorrupt
from featureplane.naming import name_problem
from featureplane.types import dtype_named

FORMAT = 1
"""The registry format this code writes and reads; a reader refuses any other."""
_VERSION = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True)
class Check:
    """A value that a plain JSON type does not describe: `description` says what is expected."""

    description: str
    valid: Callable[[Any], bool]


@dataclass(frozen=True)
class MapOf:
    """An object of any keys whose values all have one shape (tags: strings to strings)."""

    value: Any


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_seconds(value: Any) -> bool:
    """A positive duration a timedelta can hold (readers turn it into one)."""
    if not (_is_number(value) and value > 0):
        return False
    try:
        timedelta(seconds=value)
    except OverflowError:
        return False
    return True


def _is_type_name(value: Any) -> bool:
    try:
        dtype_named(value)
    except (ValueError, TypeError, AttributeError):
        return False
    return True


def _is_time(value: Any) -> bool:
    try:
        datetime.fromisoformat(value)
    except (ValueError, TypeError):
        return False
    return True


NAME = Check("a lower snake case name", lambda v: name_problem(v) is None)
VERSION = Check(
    "a version of 1-64 letters, digits, '_', '.', '-' (it is part of online keys)",
    lambda v: isinstance(v, str) and _VERSION.fullmatch(v) is not None,
)
INTEGER = Check("a whole number", lambda v: isinstance(v, int) and not isinstance(v, bool))
SECONDS = Check("a positive number of seconds", _is_seconds)
TYPE_NAME = Check("a type name such as Int64 or Array(String)", _is_type_name)
TIME = Check("an ISO 8601 time", _is_time)
FUNCTION = Check(
    f"an aggregation function ({', '.join(FUNCTIONS)}, last_n)",
    lambda v: v in FUNCTIONS or v == "last_n",
)
OWNER = (str, None)
TAGS = MapOf(str)
KEY = {"name": str, "type": (TYPE_NAME, None)}
COLUMN = {"name": str, "type": TYPE_NAME, "description": str}
SELECTION = {"view": str, "features": [str]}

REGISTRY: dict[str, Any] = {
    "online_store": {"type": str},
    "entities": [{"name": NAME, "join_keys": [KEY], "description": str, "owner": OWNER}],
    "sources": [
        {
            "name": NAME,
            "path": (str, None),
            "table": (str, None),
            "timestamp_field": str,
            "description": str,
            "owner": OWNER,
        }
    ],
    "training_datasets": [
        {
            "name": NAME,
            "version": VERSION,
            "spine": str,
            "service": str,
            "timestamp_column": str,
            "full_feature_names": bool,
            "description": str,
            "owner": OWNER,
            "tags": TAGS,
        }
    ],
    "feature_views": [
        {
            "name": NAME,
            "version": VERSION,
            "online": bool,
            "offline": bool,
            "join_keys": [KEY],
            "features": [COLUMN],
            "ttl_seconds": (SECONDS, None),
            "feature_start_time": TIME,
            "batch_schedule_seconds": SECONDS,
            "entities": [str],
            "sources": [str],
            "aggregation_interval_seconds": (SECONDS, None),
            "aggregations": [
                {
                    "name": str,
                    "column": str,
                    "function": FUNCTION,
                    "n": INTEGER,
                    "time_window_seconds": SECONDS,
                }
            ],
            "description": str,
            "owner": OWNER,
            "tags": TAGS,
        }
    ],
    "feature_services": [
        {"name": NAME, "features": [SELECTION], "description": str, "owner": OWNER, "tags": TAGS}
    ],
    "on_demand_views": [
        {
            "name": NAME,
            "version": VERSION,
            "features": [COLUMN],
            "request": ({"name": str, "fields": [COLUMN]}, None),
            "sources": [({"request": str}, SELECTION)],
            "function_source": str,
            "description": str,
            "owner": OWNER,
            "tags": TAGS,
        }
    ],
}
"""The shape of every section: an object is a dict of its required keys (others are allowed),
a list `[item shape]`, a tuple alternatives, a type or None a JSON value of that type."""

RATE = Check("a positive number", lambda v: _is_number(v) and v > 0)
PRINCIPALS: dict[str, Any] = {
    "format": Check("access format 1", lambda v: type(v) is int and v == 1),
    "principals": [
        {
            "name": str,
            "kind": Check("service_account or user", lambda v: v in ("service_account", "user")),
            "groups": [str],
            "identities": [str],
            "created_at": TIME,
            "requests_per_second": (RATE, None),
            "rows_per_second": (RATE, None),
            "keys": [
                {
                    "id": str,
                    "digest": str,
                    "created_at": TIME,
                    "expires_at": (TIME, None),
                    "revoked_at": (TIME, None),
                }
            ],
        }
    ],
}
"""An access document: principals and their keys' digests (`featureplane.access.principals`)."""
OPTIONAL: dict[str, Any] = {
    "access_policies": [
        {
            "name": NAME,
            "members": [str],
            "read": [str],
            "apply": bool,
            "description": str,
            "owner": OWNER,
        }
    ],
    "access": PRINCIPALS,
}
"""Sections a registry may lack (one applied before they existed), checked when present."""


SIGNATURE = {"key_id": str, "value": str}
"""The signature every file servers trust carries beside its content, checked apart from the
format by `featureplane.signing` (the format stays 1: readers before signing ignore it)."""


def registry_text(document: Mapping[str, Any]) -> str:
    """A registry file's canonical text: sorted keys, two-space indent, final newline (what
    is signed, and how the same registry always gives the same bytes)."""
    return json.dumps(document, sort_keys=True, indent=2) + "\n"


def parse_registry_json(data: bytes, origin: str) -> Any:
    """The JSON document in a registry file's bytes; RegistryCorrupt naming `origin` if none."""
    if not data.strip():
        raise RegistryCorrupt(origin, "the file is empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RegistryCorrupt(
            origin, f"not UTF-8 text (byte {data[error.start]:#04x} at offset {error.start})"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        # every registry ends with its closing brace: one that does not was cut short
        cut = "" if text.rstrip().endswith("}") else "; the file ends mid-document: truncated?"
        raise RegistryCorrupt(
            origin, f"not valid JSON ({error.msg}: line {error.lineno} column {error.colno}){cut}"
        ) from None


def registry_problem(document: Any) -> str | None:
    """What makes `document` not a registry of this format (the first part found), or None."""
    if not isinstance(document, dict):
        return f"expected a registry (a JSON object), got {_kind(document)}"
    if "format" not in document:
        return "missing 'format': not a featureplane registry"
    found = document["format"]
    if type(found) is not int or found != FORMAT:
        return f"format {found!r} is not supported (this build of featureplane reads {FORMAT})"
    optional = {key: shape for key, shape in OPTIONAL.items() if key in document}
    return (
        shape_problem(document, REGISTRY)
        or shape_problem(document, optional)
        or next(_reference_problems(document), None)
    )


def shape_problem(value: Any, shape: Any, where: str = "") -> str | None:
    """Where `value` departs from `shape` and how (`feature_views[user_stats].version:
    expected a string, got null`), or None."""
    if isinstance(shape, tuple):
        return _alternatives_problem(value, shape, where)
    if not _fits(value, shape):
        return _expected(where, shape, value)
    if isinstance(shape, dict):
        missing = next((key for key in shape if key not in value), None)
        if missing is not None:
            return f"{where}: missing {missing!r}" if where else f"missing {missing!r}"
        parts = ((value[key], part, _key(where, key)) for key, part in shape.items())
    elif isinstance(shape, list):
        parts = ((item, shape[0], _item(where, i, item)) for i, item in enumerate(value))
    elif isinstance(shape, MapOf):
        parts = ((item, shape.value, _key(where, key)) for key, item in value.items())
    else:
        return None
    return next(filter(None, (shape_problem(*part) for part in parts)), None)


def _alternatives_problem(value: Any, shapes: tuple, where: str) -> str | None:
    """None if any alternative fits; else the problem against the object alternative whose
    keys the value uses (a source with "view" is a selection), or what was expected."""
    problems = [shape_problem(value, shape, where) for shape in shapes]
    if None in problems:
        return None
    if isinstance(value, dict):
        for shape, problem in zip(shapes, problems, strict=True):
            if isinstance(shape, dict) and value.keys() & shape.keys():
                return problem
    return _expected(where, shapes, value)


def _fits(value: Any, shape: Any) -> bool:
    """Whether `value` is of the JSON type `shape` wants (its parts aside)."""
    if shape is None:
        return value is None
    if isinstance(shape, Check):
        return shape.valid(value)
    if isinstance(shape, dict | MapOf):
        return isinstance(value, dict)
    if isinstance(shape, list):
        return isinstance(value, list)
    return isinstance(value, shape)


def _key(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _item(where: str, index: int, item: Any) -> str:
    """`features[clicks]` for an object with a name (names are unique), else `features[3]`."""
    name = item.get("name") if isinstance(item, dict) else None
    return f"{where}[{name if isinstance(name, str) and name else index}]"


def _describe(shape: Any) -> str:
    if isinstance(shape, tuple):
        return " or ".join(_describe(s) for s in shape)
    if isinstance(shape, Check):
        return shape.description
    if isinstance(shape, dict):
        return "an object with " + ", ".join(repr(key) for key in shape)
    if isinstance(shape, MapOf):
        return f"an object whose values are each {_describe(shape.value)}"
    if isinstance(shape, list):
        return "a list"
    return {str: "a string", bool: "true or false", None: "null"}[shape]


def _kind(value: Any) -> str:
    """A JSON value as a reader would name it: `null`, `an object`, `a string "2d"`."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    shown = json.dumps(value)
    shown = shown if len(shown) <= 40 else f"{shown[:37]}..."
    return f"{'a string' if isinstance(value, str) else 'a number'} {shown}"


def _expected(where: str, shape: Any, value: Any) -> str:
    return f"{where or 'the document'}: expected {_describe(shape)}, got {_kind(value)}"


def _reference_problems(registry: Mapping[str, Any]) -> Iterator[str]:
    """Names used but not defined, features selected but not served, and names defined twice:
    each would make a reader fail on a lookup."""
    sections = ("entities", "sources", "feature_views", "on_demand_views")
    sections += ("feature_services", "training_datasets")
    defined: dict[str, str] = {}
    for section in sections:
        for obj in registry[section]:
            if obj["name"] in defined:
                yield f"{section}[{obj['name']}]: name already used in {defined[obj['name']]}"
            defined[obj["name"]] = section
    names = {section: {obj["name"] for obj in registry[section]} for section in sections}
    served = {
        view["name"]: [feature["name"] for feature in view["features"]]
        for section in ("feature_views", "on_demand_views")
        for view in registry[section]
    }
    stored = {name: served[name] for name in names["feature_views"]}
    for view in registry["feature_views"]:
        where = f"feature_views[{view['name']}]"
        for key, section in (("entities", "entities"), ("sources", "sources")):
            for name in view[key]:
                if name not in names[section]:
                    yield f"{where}.{key}: {name!r} is not defined in {section}"
        yield from _aggregate_view_problems(where, view)
    for view in registry["on_demand_views"]:
        where = f"on_demand_views[{view['name']}].sources"
        for source in view["sources"]:
            if "request" not in source:
                yield from _selection_problems(where, source, stored)
            elif view["request"] is None or view["request"]["name"] != source["request"]:
                yield f"{where}: request {source['request']!r} is not the view's request"
    for service in registry["feature_services"]:
        where = f"feature_services[{service['name']}].features"
        for selection in service["features"]:
            yield from _selection_problems(where, selection, served)
    for dataset in registry["training_datasets"]:
        where = f"training_datasets[{dataset['name']}]"
        if dataset["service"] not in names["feature_services"]:
            yield f"{where}.service: {dataset['service']!r} is not defined in feature_services"
        if dataset["spine"] not in names["sources"] | names["feature_views"]:
            yield f"{where}.spine: {dataset['spine']!r} is neither a source nor a feature view"
    for policy in registry.get("access_policies", []):
        for service in policy["read"]:
            if service != "*" and service not in names["feature_services"]:
                where = f"access_policies[{policy['name']}].read"
                yield f"{where}: {service!r} is not defined in feature_services"


def _aggregate_view_problems(where: str, view: Mapping[str, Any]) -> Iterator[str]:
    """An aggregate view serves exactly its aggregations, in tiles of its interval."""
    if not view["aggregations"]:
        return
    aggregations = [aggregation["name"] for aggregation in view["aggregations"]]
    features = [feature["name"] for feature in view["features"]]
    if features != aggregations:
        yield f"{where}.features: {features} are not its aggregations {aggregations}"
    if view["aggregation_interval_seconds"] is None:
        yield f"{where}.aggregation_interval_seconds: null, but the view has aggregations"


def _selection_problems(
    where: str, selection: Mapping[str, Any], views: Mapping[str, list[str]]
) -> Iterator[str]:
    features = views.get(selection["view"])
    if features is None:
        yield f"{where}: selects view {selection['view']!r}, which is not defined"
        return
    unknown = [name for name in selection["features"] if name not in features]
    if unknown:
        yield (f"{where}: selects {unknown} of view {selection['view']!r}, which serves {features}")
