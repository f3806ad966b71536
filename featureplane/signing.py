"""Registry integrity: every file servers trust is signed when written and verified when read.

Servers run the on-demand functions a registry carries, with full builtins, and let in the API
keys whose digests its access documents hold: whoever could write the registry store or the
served file would run code in, and hold keys to, every server. So each file servers trust —
the applied versions (`v000042.json`), the serving pointers (`serving-000007.json`), the access
documents (`access-000003.json`) and the served registry file (`registry.json`) — carries
`"signature": {"key_id": ..., "value": ...}`: Ed25519 over the canonical text
(`registry_text`) of the document without it. Being inside the document, written by the same
exclusive create or atomic rename, a signature is never out of step with its file. A store's
file signs its own number too (`meta.version`, `meta.number`, a pointer's `number`), so a
signed file copied to another name is refused.

Keys. Whatever writes those files — `featureplane apply`, `access`, `registry`, and the rollout
sensor, which cuts over — signs with `$FEATUREPLANE_SIGNING_KEY`, the base64 of a raw 32-byte
Ed25519 private key (`featureplane keys --generate` makes one). Readers trust the base64 raw
public keys of `$FEATUREPLANE_VERIFY_KEYS`, comma-separated, and the public key of their own
signing key. A key's id is derived from its public key, so rotating is: add the new public key
to the readers' list, sign with the new key, and drop the old one once nothing served is
signed by it. With neither variable set, a local key pair signs and verifies, so a project on
one machine needs no setup: its private key is `<data dir>/keys/registry-signing.key` (mode
0600), made on first signing and linked into place exclusively, so two commands racing make
one pair. `featureplane keys` prints the public key to give servers.

Reading. The format is checked first (a truncated or garbled file stays `RegistryCorrupt`),
then the signature of what parsed: a document not signed, whose signature does not match, or
signed by a key not trusted raises `RegistryUntrusted` naming the file and why. A server
following a store that meets one keeps serving what it has and logs the refusal; a server
starting on one refuses to start. Plan and apply refuse an untrusted latest version too, since
apply would extend it, and history lists an untrusted version in place, as a corrupt one.
`$FEATUREPLANE_ALLOW_UNSIGNED_REGISTRY=1` loads such a document anyway, logging a warning each
time (and `/health` says so): for a store written before signing, apply, cut over and change
access once with it set, and the documents in force are signed from then on.

`cryptography` is imported on first signing or verifying, not with this module: the Lambda
handler imports it, and its cold start reads the registry before anything is verified.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from featureplane.errors import RegistryUntrusted, SigningKeyError
from featureplane.registry_format import SIGNATURE, registry_text, shape_problem
from featureplane.settings import keys_dir, signing_key, unsigned_registry_allowed, verify_keys

logger = logging.getLogger(__name__)
KEY_FILE = "registry-signing.key"
"""The local private key, in the keys directory (`featureplane.settings.keys_dir`)."""
KEY_BYTES = 32


class Signer(Protocol):
    """What signs registry files: `sign` returns the signature of `data` as text."""

    key_id: str

    def sign(self, data: bytes) -> str: ...


def key_id(public_key: bytes) -> str:
    """A public key's id, which signatures name: the start of its SHA-256, in hex."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def decode_key(text: str, source: str) -> bytes:
    """The raw 32 bytes of a base64 Ed25519 key; SigningKeyError naming `source` if it is not
    one."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEY_BYTES:
        raise SigningKeyError(f"{source}: not the base64 of a raw {KEY_BYTES}-byte Ed25519 key")
    return raw


class Ed25519Signer:
    """Signs with an Ed25519 private key (its raw 32 bytes)."""

    def __init__(self, private_key: bytes):
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        self._key = Ed25519PrivateKey.from_private_bytes(private_key)
        self.public_key = self._key.public_key().public_bytes_raw()
        self.key_id = key_id(self.public_key)

    @property
    def public_key_text(self) -> str:
        """The public key as `$FEATUREPLANE_VERIFY_KEYS` takes it."""
        return base64.b64encode(self.public_key).decode()

    def sign(self, data: bytes) -> str:
        return base64.b64encode(self._key.sign(data)).decode()


class Verifier:
    """Trusts the signatures of a set of Ed25519 public keys (raw bytes), by key id."""

    def __init__(self, public_keys: Iterable[bytes]):
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        self.keys = {key_id(key): Ed25519PublicKey.from_public_bytes(key) for key in public_keys}

    def verify(self, data: bytes, signature: Mapping[str, str]) -> str | None:
        """Why `signature` (`{"key_id", "value"}`) is not a trusted key's of `data`, or None."""
        from cryptography.exceptions import InvalidSignature

        key = self.keys.get(signature["key_id"])
        if key is None:
            trusted = ", ".join(sorted(self.keys)) or "none"
            return f"signed by unknown key {signature['key_id']} (trusted: {trusted})"
        try:
            key.verify(base64.b64decode(signature["value"], validate=True), data)
        except (InvalidSignature, binascii.Error, ValueError):
            return "signature does not match"
        return None


def generate_key() -> str:
    """A new private key, as `$FEATUREPLANE_SIGNING_KEY` takes it."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return base64.b64encode(Ed25519PrivateKey.generate().private_bytes_raw()).decode()


def local_key_path() -> Path:
    """The local private key, used while neither signing variable is set."""
    return keys_dir() / KEY_FILE


def signer() -> Ed25519Signer:
    """This process's signer: `$FEATUREPLANE_SIGNING_KEY`, else the local key pair (made now
    if there is none)."""
    configured = signing_key()
    if configured:
        return Ed25519Signer(decode_key(configured, "FEATUREPLANE_SIGNING_KEY"))
    path = local_key_path()
    if not path.exists():
        _create_local_key(path)
    return Ed25519Signer(decode_key(path.read_text(), str(path)))


def verifier() -> Verifier:
    """The keys this process trusts: `$FEATUREPLANE_VERIFY_KEYS` and the signing key's own;
    with neither set, the local key pair's (none before it is made)."""
    configured, own = verify_keys(), signing_key()
    if configured or own:
        keys = [decode_key(key, "FEATUREPLANE_VERIFY_KEYS") for key in configured]
        return Verifier([*keys, *([signer().public_key] if own else [])])
    return Verifier([signer().public_key] if local_key_path().exists() else [])


def _create_local_key(path: Path) -> None:
    """Write a new private key readable by its owner only, linked into place so that of
    processes racing, one key wins and every one of them then reads it."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(f"{generate_key()}\n")
    try:
        os.link(partial, path)
    except FileExistsError:
        pass  # another process made the pair first: its key is the one
    finally:
        partial.unlink()


def signed(document: Mapping[str, Any], by: Signer | None = None) -> dict[str, Any]:
    """`document` with its signature by `by` (default: this process's `signer`)."""
    content = {key: value for key, value in document.items() if key != "signature"}
    by = by or signer()
    value = by.sign(registry_text(content).encode())
    return {**content, "signature": {"key_id": by.key_id, "value": value}}


def verified(document: Mapping[str, Any], origin: str) -> dict[str, Any]:
    """`document` without its signature, once it is a trusted key's; RegistryUntrusted naming
    `origin` and why if not (only a logged warning with `$FEATUREPLANE_ALLOW_UNSIGNED_REGISTRY`)."""
    content = {key: value for key, value in document.items() if key != "signature"}
    problem = _untrusted(document, content)
    if problem is not None:
        if not unsigned_registry_allowed():
            raise RegistryUntrusted(origin, problem)
        logger.warning(
            "loading %s although it is untrusted (%s): FEATUREPLANE_ALLOW_UNSIGNED_REGISTRY=1",
            origin,
            problem,
        )
    return content


def _untrusted(document: Mapping[str, Any], content: Mapping[str, Any]) -> str | None:
    if "signature" not in document:
        return "not signed"
    problem = shape_problem(document["signature"], SIGNATURE, "signature")
    if problem is not None:
        return problem
    return verifier().verify(registry_text(content).encode(), document["signature"])
