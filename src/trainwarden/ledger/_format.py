"""The ledger's on-disk format: canonical JSON, entry hashes, signing messages, layout.

Everything a verifier needs to reproduce bytes lives here, so the spec in ``docs/ledger.md``
has one place to match.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from typing import Any

from trainwarden._canonical import canonical_bytes as _canonical_bytes
from trainwarden._canonical import canonical_json as _canonical_json
from trainwarden.errors import InputError

#: Version of the entry format (the ``v`` field of every entry).
FORMAT_VERSION = 1
#: Sub-directory of a ledger holding one append-only file per writer.
WRITERS_DIR = "writers"
#: Sub-directory of a ledger holding one append-only file per sealer.
SEALS_DIR = "seals"
#: Suffix of writer and seal files.
SUFFIX = ".jsonl"
#: Event of the first entry of every file: names the file's public key and role.
OPEN_EVENT = "ledger.open"
#: Event of a seal entry (only in seal files).
SEAL_EVENT = "ledger.seal"
#: Events in the ``ledger.`` namespace are written by the ledger itself, never by callers.
RESERVED_PREFIX = "ledger."
#: Largest entry line (bytes, newline included) written or accepted.
MAX_LINE = 1 << 20
#: Hash value naming "no previous entry" is JSON ``null``; hashes are ``sha256:<hex>``.
HASH_PREFIX = "sha256:"

# Domain separation: an entry signature can never be replayed as a signature over anything
# else trainwarden signs (manifests, env locks), because those messages start differently.
ENTRY_SIGNING_DOMAIN = b"trainwarden/ledger/entry/v1\x00"

# The exact key set of an entry line; anything more or less is malformed (an attacker
# must not be able to smuggle unsigned fields next to signed ones).
ENTRY_KEYS = frozenset(
    {"actor", "data", "event", "prev", "run", "seq", "sig", "time", "v", "writer"}
)
ACTOR_KEYS = frozenset({"host", "identity", "key", "pid", "uid", "user"})

WRITER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
EVENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}")
MAX_RUN = 256
_HASH_RE = re.compile(r"sha256:[0-9a-f]{64}")
TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")


def canonical_json(value: Any) -> str:
    """Canonical JSON text (``trainwarden._canonical``): the bytes ``docs/ledger.md`` specifies.

    Raises:
        InputError: ``value`` holds something JSON cannot represent.
    """
    return _canonical_json(value, what="ledger data")


def canonical_bytes(value: Any) -> bytes:
    """:func:`canonical_json` encoded as UTF-8 (lone surrogates are refused).

    Raises:
        InputError: As :func:`canonical_json`, or the text is not valid Unicode.
    """
    return _canonical_bytes(value, what="ledger data")


def check_json_value(value: object, *, _depth: int = 0) -> None:
    """Refuse values whose canonical form would not survive a JSON round trip.

    Non-string object keys are the trap: ``json`` turns ``{10: x, 9: y}`` into string keys
    but sorts them as integers, so the written line would not be canonical when re-read and
    an honest entry would look edited.

    Raises:
        InputError: A key is not a string, a value is not JSON, or nesting is too deep.
    """
    if _depth > 64:
        raise InputError("ledger data is nested more than 64 levels deep")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InputError(f"ledger data keys must be strings, not {type(key).__name__}")
            check_json_value(item, _depth=_depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            check_json_value(item, _depth=_depth + 1)
    elif not isinstance(value, (str, int, float, type(None), os.PathLike)):
        raise InputError(f"ledger data is not JSON-serialisable: {type(value).__name__}")


def hash_body(body: bytes) -> str:
    """The entry hash: ``sha256:`` + hex SHA-256 of the canonical body (entry minus ``sig``)."""
    return HASH_PREFIX + hashlib.sha256(body).hexdigest()


def signing_message(entry_hash: str) -> bytes:
    """What the writer's key signs for an entry: the domain string, then the raw 32-byte hash."""
    return ENTRY_SIGNING_DOMAIN + bytes.fromhex(entry_hash[len(HASH_PREFIX) :])


def b64encode(data: bytes) -> str:
    """Standard base64 with padding (RFC 4648 section 4)."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str) -> bytes:
    """Strict inverse of :func:`b64encode`.

    Raises:
        ValueError: ``text`` is not canonical standard base64.
    """
    raw = base64.b64decode(text, validate=True)
    if b64encode(raw) != text:
        raise ValueError("non-canonical base64")
    return raw


def is_hash(value: object) -> bool:
    """True for a well-formed ``sha256:<64 lower-case hex>`` string."""
    return isinstance(value, str) and _HASH_RE.fullmatch(value) is not None
