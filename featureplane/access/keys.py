"""API keys: `fpk_<id>_<secret>`, shown once when made and stored only as a SHA-256 digest.

The id (12 hex digits) finds the key's record without a search and names the key in `access
list` and audit lines; the secret is 32 random bytes. A fast digest is the right one here
(GitHub's tokens are checked the same way): a key is random, not a password, so there is
nothing to guess from its digest, and checking it costs a microsecond on every request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

KEY = re.compile(r"fpk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")


def new_key() -> tuple[str, str, str]:
    """(key, its id, its digest) of a fresh random key."""
    key_id = secrets.token_hex(6)
    key = f"fpk_{key_id}_{secrets.token_urlsafe(32)}"
    return key, key_id, digest(key)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id(key: str) -> str | None:
    """The id of a well-formed key, else None."""
    match = KEY.fullmatch(key)
    return match.group(1) if match else None


def matches(key: str, stored_digest: str) -> bool:
    """Whether `key` is the one of `stored_digest`, compared in constant time."""
    return hmac.compare_digest(digest(key), stored_digest)
