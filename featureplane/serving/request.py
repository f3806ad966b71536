"""What a request may send: its limits, the checks of its join keys and request data, and
the errors that answer it (4xx)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

import orjson

from featureplane.online_store.encoding import (
    key_part,
)
from featureplane.serving.responses import cut, names_shown, shown
from featureplane.types import DType, dtype_named, float32

if TYPE_CHECKING:
    from featureplane.serving.plans import ServicePlan


RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})?")
"""Timestamps requests may send: RFC 3339 date-times (no offset means UTC), nothing else
`datetime.fromisoformat` would read (`"11111111"`, `"2026-W42-3"`)."""
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
TOKENS = re.compile(rb'"([^"\\]*(?:\\.[^"\\]*)*)"[ \t\n\r]*(:?)|([{}\[\]])')
"""The strings (with whether a colon follows: a key) and brackets of JSON text, in order."""


class RequestError(ValueError):
    """A request that cannot be served as sent; `status` is its HTTP status (4xx)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """Request limits; `from_env` reads `FEATUREPLANE_MAX_BATCH_ROWS` and
    `FEATUREPLANE_MAX_BODY_BYTES`."""

    max_batch_rows: int = 1000
    max_body_bytes: int = 1 << 20

    @classmethod
    def from_env(cls) -> Limits:
        return cls(
            max_batch_rows=int(os.environ.get("FEATUREPLANE_MAX_BATCH_ROWS", cls.max_batch_rows)),
            max_body_bytes=int(os.environ.get("FEATUREPLANE_MAX_BODY_BYTES", cls.max_body_bytes)),
        )


def int_check(bits: int) -> Callable[[Any], bool]:
    low, high = -(1 << (bits - 1)), 1 << (bits - 1)
    return lambda value: type(value) is int and low <= value < high


KEY_CHECKS: dict[str | None, tuple[Callable[[Any], bool], str]] = {
    "String": (lambda value: type(value) is str, "a string"),
    "Int64": (int_check(64), "an integer (64-bit)"),
    "Int32": (int_check(32), "an integer (32-bit)"),
    None: (lambda value: type(value) in (str, int), "a string or an integer"),
}
"""Join key type → (check of a decoded JSON value, what it expects); bool is not an int."""


def allow_method(method: str, allowed: str, path: str) -> None:
    if method != allowed:
        raise RequestError(405, f"{cut(path)} takes {allowed}, not {cut(method)}")


def is_json(content_type: str) -> bool:
    """`application/json` or a `+json` type, parameters aside."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def row_key_parts(plan: ServicePlan, row: Any, index: int | None) -> list[str]:
    """The row's join key values in the service's order, checked against their types, as
    `encoding.key_part` texts."""
    where = "entities" if index is None else f"entities[{index}]"
    if type(row) is not dict:
        raise RequestError(400, f"{where} must be a JSON object of join key values")
    if row.keys() != plan.key_set:
        problems = _mismatch(plan.join_keys, row, "join keys")
        raise RequestError(
            400,
            f"{where}: {problems}; service {plan.name!r} takes join keys {list(plan.join_keys)}",
        )
    values = []
    for key, check, expects in plan.key_checks:
        value = row[key]
        if not check(value):
            raise RequestError(
                400, f"{where}: join key {key!r} must be {expects}, got {shown(value)}"
            )
        values.append(key_part(value))
    return values


def _mismatch(expected: Collection[str], given: Mapping[str, Any], what: str) -> str:
    """What is missing from and extra in `given` against the `expected` names (the first
    few of each: a request's names are not echoed without bound)."""
    missing = [name for name in expected if name not in given]
    extra = [name for name in given if name not in expected]
    problems = [f"missing {what} {names_shown(missing)}"] if missing else []
    kind = "keys" if what == "join keys" else what
    problems += [f"unexpected {kind} {names_shown(extra)}"] if extra else []
    return " and ".join(problems)


def request_rows(plan: ServicePlan, data: Any, rows: int, batch: bool) -> list[dict[str, Any]]:
    """Each row's request data, checked and typed for the service's on-demand views: one
    object for every row, or in a batch a list of one object per row."""
    if not plan.request_fields:
        if data not in (None, {}):
            raise RequestError(400, f"service {plan.name!r} takes no 'request_data'")
        return [{}] * rows
    if data is None:
        if not plan.request_needed:
            return [{}] * rows
        raise RequestError(
            400,
            f"service {plan.name!r} needs 'request_data' with fields {list(plan.request_fields)}",
        )
    if batch and type(data) is list:
        if len(data) != rows:
            raise RequestError(
                400, f"'request_data' has {len(data)} objects for {rows} entity rows"
            )
        return [_request_row(plan, row, f"request_data[{i}]") for i, row in enumerate(data)]
    return [_request_row(plan, data, "request_data")] * rows


def _request_row(plan: ServicePlan, data: Any, where: str) -> dict[str, Any]:
    fields = plan.request_fields
    if type(data) is not dict:
        raise RequestError(400, f"{where} must be a JSON object with fields {list(fields)}")
    if data.keys() != fields.keys():
        problems = _mismatch(fields, data, "fields")
        raise RequestError(400, f"{where}: {problems}; service {plan.name!r} takes {list(fields)}")
    values = {}
    for name, field in fields.items():
        try:
            values[name] = typed(data[name], field.dtype)
        except (TypeError, ValueError, OverflowError):  # overflow: beyond the years 1-9999 in UTC
            raise RequestError(
                400, f"{where}: field {name!r} must be {field.dtype.name}, got {shown(data[name])}"
            ) from None
    return values


def typed(value: Any, dtype: DType) -> Any:
    """A decoded JSON value as a value of `dtype` (timestamps and dates from ISO 8601 text;
    timestamps in UTC, and one without an offset is UTC), or TypeError/ValueError (or
    OverflowError for a moment outside the years 1-9999 in UTC)."""
    if value is None:
        return None
    name = dtype.name
    if name.startswith("Array("):
        if type(value) is not list:
            raise TypeError(value)
        element = dtype_named(name[len("Array(") : -1])
        return [typed(item, element) for item in value]
    if name in ("Int32", "Int64"):
        if not int_check(32 if name == "Int32" else 64)(value):
            raise TypeError(value)
        return value
    if name in ("Float32", "Float64"):
        if type(value) not in (int, float):
            raise TypeError(value)
        return float32(value) if name == "Float32" else float(value)  # as the offline column
    if name == "Timestamp":
        if type(value) is not str or not RFC3339.fullmatch(value):
            raise ValueError(value)
        moment = datetime.fromisoformat(value)
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    if name == "Date":
        if type(value) is not str or not DATE.fullmatch(value):
            raise ValueError(value)
        return date.fromisoformat(value)
    if type(value) is not {"String": str, "Bool": bool}[name]:
        raise TypeError(value)
    return value


def parse_body(body: bytes | str | None, limits: Limits) -> dict[str, Any]:
    """The request object of a body: UTF-8 JSON within the limit, an object."""
    if isinstance(body, str):
        try:
            body = body.encode()
        except UnicodeEncodeError:  # a lone surrogate: no UTF-8 text has one
            raise RequestError(400, "body is not valid UTF-8 text") from None
    if not body:
        raise RequestError(400, 'empty body: send a JSON object like {"entities": {...}}')
    if len(body) > limits.max_body_bytes:
        raise RequestError(
            413, f"body of {len(body)} bytes is over the limit of {limits.max_body_bytes}"
        )
    try:
        request = orjson.loads(body)
    except (ValueError, RecursionError) as error:
        raise RequestError(400, f"body is not valid JSON: {error}") from None
    if type(request) is not dict:
        raise RequestError(400, "body must be a JSON object with an 'entities' field")
    key = None if _keys_unique(body, request) else _duplicate_key(body)
    if key is not None:
        raise RequestError(400, f"key {shown(key)} appears twice in one object of the body")
    return request


def _keys_unique(body: bytes, request: dict[str, Any]) -> bool:
    """Whether the body's objects name each key once, cheaply. orjson keeps the last of a
    repeated key, so the parsed request re-encoded has fewer members, each one colon outside
    strings; a body without escapes holds its strings as orjson writes them, colons included,
    so the two have as many colons exactly when no key repeats. False when unsure (escapes, or
    nesting deeper than orjson writes): `_duplicate_key` then decides."""
    if b"\\" in body:
        return False
    try:
        return orjson.dumps(request).count(b":") == body.count(b":")
    except orjson.JSONEncodeError:
        return False


def _duplicate_key(body: bytes) -> str | None:
    """The first key a body's object names twice (escapes decoded), by a scan of its tokens;
    the body is valid JSON, so every quote outside a string opens one."""
    objects: list[set[str]] = []  # per open bracket, the keys seen (none in an array)
    for text, colon, bracket in TOKENS.findall(body):
        if bracket:
            if bracket in b"{[":
                objects.append(set())
            else:
                objects.pop()
        elif colon:
            key = orjson.loads(b'"%s"' % text) if b"\\" in text else text.decode()
            if key in objects[-1]:
                return key
            objects[-1].add(key)
    return None


def entity_rows(entities: Any, batch: bool, limits: Limits) -> list[Any]:
    """The entity rows of a request: its one object, or its batch within the row limit."""
    if not batch:
        if type(entities) is not dict:
            raise RequestError(400, "'entities' must be a JSON object of join key values")
        return [entities]
    if type(entities) is not list or not entities:
        raise RequestError(400, "'entities' must be a non-empty JSON array of join key objects")
    if len(entities) > limits.max_batch_rows:
        raise RequestError(
            400,
            f"too many rows: {len(entities)}, the limit is {limits.max_batch_rows}",
        )
    return entities
