"""Feature value types, independent of any engine.

Types are named once here and mapped to a Spark SQL type string, so definitions (and the online
side, which must not import Spark) can speak about types without importing pyspark.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass


@dataclass(frozen=True)
class DType:
    """A feature value type; `spark` is its Spark SQL DDL name."""

    name: str
    spark: str

    def __repr__(self) -> str:
        return self.name


String = DType("String", "string")
Int32 = DType("Int32", "int")
Int64 = DType("Int64", "bigint")
Float32 = DType("Float32", "float")
Float64 = DType("Float64", "double")
Bool = DType("Bool", "boolean")
Timestamp = DType("Timestamp", "timestamp")
Date = DType("Date", "date")


def Array(element: DType) -> DType:  # noqa: N802 - reads as a type constructor, like Feast's Array
    """An array of `element` values."""
    return DType(f"Array({element.name})", f"array<{element.spark}>")


NUMERIC = frozenset({Int32, Int64, Float32, Float64})
SCALARS = {t.name: t for t in (String, Int32, Int64, Float32, Float64, Bool, Timestamp, Date)}


def dtype_named(name: str) -> DType:
    """The type whose `name` this is (`Int64`, `Array(String)`), as serialised in a registry."""
    if name.startswith("Array(") and name.endswith(")"):
        return Array(dtype_named(name[len("Array(") : -1]))
    if name not in SCALARS:
        raise ValueError(f"unknown type {name!r}")
    return SCALARS[name]


@dataclass(frozen=True)
class Field:
    """A named, typed column of a feature view's output."""

    name: str
    dtype: DType
    description: str = ""


_FLOAT32 = struct.Struct("f")


def float32(value: float) -> float:
    """`value` rounded to the nearest float32, as a Float32 column holds it and gives it back
    (0.1 becomes 0.10000000149011612; beyond the float32 range, an infinity)."""
    return _FLOAT32.unpack(_FLOAT32.pack(value))[0]
