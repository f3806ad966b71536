"""Arrow columns encoded as stored items a column at a time: the online push's fast path.

`encoding` turns one Python value at a time into key and JSON text; a push of a million rows
would spend microseconds per row doing so. Here Arrow compute builds the same texts for whole
columns: keys byte for byte as `encoding.prefixed_key` writes them, values as JSON that
`encoding.decode_values` decodes to exactly what `encoding.encode_values` gives (the text may
differ: floats in Arrow's shortest round-trip form, non-ASCII characters unescaped). Types
Arrow cannot format (lists, maps, binary, decimals) fall back to `encoding` per value.

Push-only: importing it costs pyarrow, so the online handler never does.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from json.encoder import encode_basestring_ascii

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from featureplane.online_store.encoding import (
    DATE_TAG,
    MAX_KEY_LENGTH,
    TIMESTAMP_TAG,
    EntityKeyError,
    encode_values,
)

_PLAIN_KEY = r"^[\x20\x21\x23-\x5b\x5d-\x7e]*$"
"""Printable ASCII but `"` and `\\`: strings `encode_basestring_ascii` only quotes."""
_CONTROL = r"[\x00-\x1f]"
_INTEGRAL = r"^-?[0-9]+$"
TEXTS = pa.system_memory_pool()
"""Where the texts are allocated: tens of megabytes a batch, freed when its items are made.
Arrow's default allocator (mimalloc) returns freed memory to the system within milliseconds,
so a push's encoder, which waits on the store between batches, faulted every batch's memory
in again: a fifth of an aggregate push's time. The system allocator keeps it for reuse."""
_SMALL = 1 << 16
"""Integers below it are written from a table of their texts."""


def concat(*parts: pa.Array | str) -> pa.Array:
    """Element-wise concatenation of string arrays and literals (no nulls expected), adjacent
    literals joined first."""
    merged: list[pa.Array | str] = []
    for part in parts:
        if isinstance(part, str) and merged and isinstance(merged[-1], str):
            merged[-1] += part
        else:
            merged.append(part)
    return pc.binary_join_element_wise(*merged, "", memory_pool=TEXTS)


def int_texts(values: pa.Array) -> pa.Array:
    """Integers as decimal text. Small non-negative ones, most numbers of a push (counts,
    tile steps), are picked from a table of texts: several times faster than Arrow's cast."""
    bounds = pc.min_max(values)
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    if low is not None and low >= 0 and high < _SMALL:
        return pc.take(_small_texts(), values, memory_pool=TEXTS)
    return pc.cast(values, pa.string(), memory_pool=TEXTS)


@cache
def _small_texts() -> pa.Array:
    return pc.cast(pa.array(np.arange(_SMALL)), pa.string())


def with_nulls(values: pa.Array, texts: pa.Array) -> pa.Array:
    """`texts`, with JSON null where `values` is null."""
    if not values.null_count:
        return texts
    return pc.if_else(pc.is_valid(values), texts, pa.scalar("null"))


def micros(values: pa.Array) -> pa.Array:
    """Timestamps as int64 epoch microseconds; naive ones are UTC (the project's convention)."""
    return pc.cast(pc.cast(values, pa.timestamp("us", values.type.tz)), pa.int64())


def _floats(values: pa.Array) -> pa.Array:
    """Python's JSON of floats: integral ones keep a `.0`, so they decode as floats, and
    NaN and the infinities are spelt as `json` spells them."""
    values = pc.cast(values, pa.float64())
    text = pc.cast(values, pa.string())
    text = pc.if_else(pc.match_substring_regex(text, _INTEGRAL), concat(text, ".0"), text)
    text = pc.if_else(pc.is_nan(values), pa.scalar("NaN"), text)
    infinity = pc.if_else(pc.greater(values, 0), pa.scalar("Infinity"), pa.scalar("-Infinity"))
    return pc.if_else(pc.is_inf(values), infinity, text)


def _strings(values: pa.Array) -> pa.Array:
    if pc.any(pc.match_substring_regex(values, _CONTROL)).as_py():
        return _per_value(values)
    escaped = pc.replace_substring(pc.replace_substring(values, "\\", "\\\\"), '"', '\\"')
    return concat('"', escaped, '"')


def _per_value(values: pa.Array) -> pa.Array:
    return pa.array([encode_values(v) for v in values.to_pylist()], pa.string())


def object_texts(names: Sequence[str], texts: Sequence[pa.Array]) -> pa.Array:
    """JSON objects of the given member texts, keys escaped as `encoding` escapes them."""
    parts: list[pa.Array | str] = []
    for index, (name, text) in enumerate(zip(names, texts, strict=True)):
        key = f"${name}" if name[:1] == "$" else name
        parts += [("{" if index == 0 else ",") + encode_basestring_ascii(key) + ":", text]
    return concat(*parts, "}")


def _plain(values: pa.Array) -> pa.Array:
    """Dictionary-decoded, and large or view strings as plain ones, so that kernels and
    literals combine."""
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if pa.types.is_large_string(values.type) or pa.types.is_string_view(values.type):
        values = pc.cast(values, pa.string())
    return values


def json_texts(values: pa.Array) -> pa.Array:
    """Each value as JSON text that decodes, with `encoding`'s tags, to the value."""
    values = _plain(values)
    kind = values.type
    if pa.types.is_null(kind):
        return pa.array(["null"] * len(values), pa.string())
    if pa.types.is_integer(kind):
        texts = int_texts(values)
    elif pa.types.is_boolean(kind):
        texts = pc.if_else(values, pa.scalar("true"), pa.scalar("false"))
    elif pa.types.is_floating(kind):
        texts = _floats(values)
    elif pa.types.is_string(kind):
        texts = _strings(values)
    elif pa.types.is_timestamp(kind):
        texts = concat('{"', TIMESTAMP_TAG, '":', pc.cast(micros(values), pa.string()), "}")
    elif pa.types.is_date32(kind):
        texts = concat('{"', DATE_TAG, '":"', pc.cast(values, pa.string()), '"}')
    elif pa.types.is_struct(kind) and kind.num_fields:
        names = [kind.field(i).name for i in range(kind.num_fields)]
        texts = object_texts(names, [json_texts(values.field(i)) for i in range(kind.num_fields)])
    else:
        return _per_value(values)
    return with_nulls(values, texts)


def item_keys(prefix: str, columns: Sequence[pa.Array]) -> pa.Array:
    """The stored keys of entities whose join key values are `columns`, in key order."""
    parts: list[pa.Array | str] = []
    for index, column in enumerate(map(_plain, columns)):
        if column.null_count:
            raise EntityKeyError(f"{column.null_count} entity keys hold a null join key value")
        kind = column.type
        if pa.types.is_integer(kind):
            text = int_texts(column)
        elif pa.types.is_string(kind):
            if pc.all(pc.match_substring_regex(column, _PLAIN_KEY)).as_py() is not False:
                text = concat('"', column, '"')
            else:
                text = pa.array(map(encode_basestring_ascii, column.to_pylist()), pa.string())
        else:
            raise EntityKeyError(f"join key values of type {kind}; join keys are strings or ints")
        parts += [prefix + "[" if index == 0 else ",", text]
    keys = concat(*parts, "]")
    longest = pc.max(pc.binary_length(keys)).as_py() or 0
    if longest > MAX_KEY_LENGTH:
        raise EntityKeyError(f"an entity key is {longest} bytes encoded, over {MAX_KEY_LENGTH}")
    return keys


def epoch_seconds_up(epoch_micros: pa.Array) -> pa.Array:
    """Epoch microseconds as whole epoch seconds rounded up (`encoding.to_epoch_seconds`)."""
    return pa.array(-(-epoch_micros.to_numpy() // 1_000_000))
