"""How records become stored items: injective keys, exact values, integer times.

Every backend stores the same item, encoded here once so that the stores agree:
- key: `<view>#<version>#<join key values as JSON>`, e.g. `ad_stats#3f2a9c01d4e5#["u1",42]`.
  View and version cannot contain `#` and the values are typed JSON (so `1` and `"1"` differ),
  hence distinct (view, version, entity key) triples never share a key. Keys are ASCII.
- event time: integer microseconds since the Unix epoch (UTC), compared exactly.
- values: JSON with tags for what JSON lacks, so ints of any size, floats (with NaN and
  infinities), datetimes, dates and bytes come back exactly. Ints beyond 64 bits are tagged
  too, so that untagged text decodes with orjson, which reads them as floats; it is the
  serving hot path, four times faster than `json` on tiles.
- expiry: integer epoch seconds, rounded up, which is what DynamoDB TTL reads.

A push's journal entries (`featureplane.online_push`) live in the same table under
`_push#<view>#<version>#…`, apart from every record (view names start with a letter), so that
a view version's records and entries are found, and deleted, by their two key prefixes.
"""

from __future__ import annotations

import json
import operator
import re
from base64 import b64decode, b64encode
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from json.encoder import c_make_encoder, encode_basestring_ascii
from json.scanner import make_scanner
from typing import Any

import orjson

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
JOURNAL = "_push#"
"""The key prefix of push journal entries, before the view version's `key_prefix`."""
MAX_KEY_LENGTH = 2048
"""DynamoDB's limit on a partition key in bytes, applied to every backend so they agree."""

_VERSION = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_VIEW = re.compile(r"[a-z][a-z0-9_]{0,127}")

TIMESTAMP_TAG, DATE_TAG, BYTES_TAG, INT_TAG = "$ts", "$date", "$bytes", "$int"
INT64 = range(-(2**63), 2**63)
_LONG_NUMBER = re.compile(r"(?<![0-9])[0-9]{19}")
"""19 digits in a row: maybe an int beyond 64 bits (a float's text never has so many)."""


class EntityKeyError(ValueError):
    """A view, version or entity key that cannot address a record (a client error, not ours)."""


@lru_cache(maxsize=4096)
def key_prefix(view: str, version: str) -> str:
    """The key prefix of a view version; checked once per pair, then cached."""
    if not isinstance(view, str) or not _VIEW.fullmatch(view):
        raise EntityKeyError(f"feature view name {view!r} must be lower snake case")
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise EntityKeyError(f"version {version!r} must be 1-64 letters, digits, '_', '.', '-'")
    return f"{view}#{version}#"


def key_part(part: object) -> str:
    """The text of one join key value in a stored key: a string as JSON, an int in digits."""
    if type(part) is str:
        return encode_basestring_ascii(part)
    if type(part) is int:
        return str(part)
    if isinstance(part, bool) or not hasattr(part, "__index__"):
        raise EntityKeyError(
            f"join key value {part!r} is a {type(part).__name__}; join keys are strings or ints"
        )
    return str(operator.index(part))


def entity_texts(parts: Iterable[Sequence[str]]) -> list[str]:
    """The entity parts of stored keys (`[...]`, after a `key_prefix`), from the entities'
    `key_part` texts: made once for all views keyed by the same join keys."""
    return [f"[{','.join(entity)}]" for entity in parts]


def prefixed_keys(prefix: str, texts: Sequence[str]) -> list[str]:
    """The stored keys of entities under a `key_prefix`, from their `entity_texts`."""
    longest = len(prefix) + max(map(len, texts), default=0)
    if longest > MAX_KEY_LENGTH:
        raise EntityKeyError(f"entity key is {longest} bytes encoded, over {MAX_KEY_LENGTH}")
    return [prefix + text for text in texts]


def prefixed_key(prefix: str, entity_key: Sequence[str | int]) -> str:
    """The stored key of an entity under a `key_prefix`: injective, ASCII, at most 2048 bytes."""
    if isinstance(entity_key, str | bytes) or not entity_key:
        raise EntityKeyError(
            f"entity key {entity_key!r} must be a non-empty tuple of join key values"
        )
    return prefixed_keys(prefix, entity_texts([[key_part(p) for p in entity_key]]))[0]


def item_key(view: str, version: str, entity_key: Sequence[str | int]) -> str:
    """The stored key of one entity of a view version."""
    return prefixed_key(key_prefix(view, version), entity_key)


def to_micros(moment: datetime) -> int:
    """Microseconds since the epoch; a naive datetime is UTC (the project's convention)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // MICROSECOND


def from_micros(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def to_epoch_seconds(moment: datetime) -> int:
    """Whole epoch seconds, rounded up so that a value never expires early."""
    return -(-to_micros(moment) // 1_000_000)


def from_epoch_seconds(seconds: int) -> datetime:
    return EPOCH + timedelta(seconds=seconds)


def _tag(value: Any) -> Any:
    """`json`'s hook for what it cannot encode itself."""
    if isinstance(value, datetime):
        return {TIMESTAMP_TAG: to_micros(value)}
    if isinstance(value, date):
        return {DATE_TAG: value.isoformat()}
    if isinstance(value, bytes | bytearray | memoryview):
        return {BYTES_TAG: b64encode(value).decode("ascii")}
    if isinstance(value, Mapping):
        return dict(value)
    tolist = getattr(value, "tolist", None)  # numpy scalars and arrays
    if callable(tolist):
        return tolist()
    raise TypeError(f"cannot store a {type(value).__name__} feature value: {value!r}")


def _untag(obj: dict[str, Any]) -> Any:
    """`json`'s hook for every decoded object: tags become values, escaped keys are restored."""
    if len(obj) == 1:
        ((key, value),) = obj.items()
        if key == TIMESTAMP_TAG:
            return from_micros(value)
        if key == DATE_TAG:
            return date.fromisoformat(value)
        if key == BYTES_TAG:
            return b64decode(value)
        if key == INT_TAG:
            return int(value)
    if any(key[:1] == "$" for key in obj):
        return {key[1:] if key[:1] == "$" else key: value for key, value in obj.items()}
    return obj


def _has_dollar_key(value: Any) -> bool:
    if isinstance(value, Mapping):
        return any(isinstance(k, str) and k[:1] == "$" for k in value) or any(
            map(_has_dollar_key, value.values())
        )
    if isinstance(value, list | tuple):
        return any(map(_has_dollar_key, value))
    return False


def _escape(value: Any) -> Any:
    """Double a leading `$` of mapping keys, so that no user mapping can pass for a tag, and
    tag ints beyond 64 bits."""
    if isinstance(value, Mapping):
        return {
            (f"${key}" if isinstance(key, str) and key[:1] == "$" else key): _escape(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_escape(item) for item in value]
    if type(value) is int and value not in INT64:
        return {INT_TAG: str(value)}
    return value


def _compact_encoder() -> Callable[[Any], str]:
    """Compact JSON with `_tag`; straight to the C encoder when there is one: `json.dumps`
    builds an encoder per call, which costs as much as encoding a small mapping."""
    if c_make_encoder is None:
        return json.JSONEncoder(separators=(",", ":"), default=_tag).encode
    encode = c_make_encoder(None, _tag, encode_basestring_ascii, None, ":", ",", False, False, True)
    return lambda value: "".join(encode(value, 0))


def _loader(decoder: json.JSONDecoder) -> Callable[[str], Any]:
    """The decoder's scanner called directly: `json.loads` spends three Python calls and a
    whitespace match around it, as much as scanning a small record. Stored texts are compact."""
    scan = make_scanner(decoder)

    def load(text: str) -> Any:
        try:
            value, end = scan(text, 0)
        except StopIteration:
            end = -1
        if end != len(text):
            raise ValueError(f"stored values are not one compact JSON value: {text[:80]!r}")
        return value

    return load


_dumps = _compact_encoder()
_loads_tagged = _loader(json.JSONDecoder(object_hook=_untag))


def encode_values(values: Any) -> str:
    """Feature values (a mapping, or one value) as compact tagged JSON; mapping keys are
    strings, tuples come back as lists.

    The fast path is one C-encoder call. A mapping key starting with `$` can only appear after
    `{` or `,` in the text, an int beyond 64 bits only as 19 digits or more; only then is the
    value walked, and escaped where needed.
    """
    text = _dumps(values)
    dollar = "$" in text and ('{"$' in text or ',"$' in text)  # a one-character scan first
    if (dollar and _has_dollar_key(values)) or _LONG_NUMBER.search(text):
        return _dumps(_escape(values))
    return text


def decode_values(text: str) -> dict[str, Any]:
    """The values `encode_values` encoded; without a `$` in the text nothing is tagged (a scan
    for one character is a memchr, forty times faster than one for `"$` in JSON text), and
    orjson reads it, unless it holds NaN or infinities, which only `json` accepts."""
    if "$" in text:
        return _loads_tagged(text)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
