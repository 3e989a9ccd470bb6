"""Canonical JSON: the one byte form trainwarden hashes and signs (ledger, locks, statements).

Private to trainwarden, shared by all of its packages. The format is specified in
``docs/ledger.md`` ("Canonical JSON"); every signed document uses exactly these bytes.
"""

from __future__ import annotations

import json
import os
from typing import Any

from trainwarden.errors import InputError

__all__ = ["canonical_bytes", "canonical_json"]


def canonical_json(value: Any, *, what: str = "data") -> str:
    """Canonical JSON text: sorted keys, no spaces, raw UTF-8, no NaN or infinities.

    ``os.PathLike`` values are written as their string; nothing else is converted, so a
    recorded value is never a surprise.

    Raises:
        InputError: ``value`` holds something JSON cannot represent (``what`` names it).
    """
    try:
        return json.dumps(
            value,
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
            default=_json_default,
        )
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} is not JSON-serialisable: {exc}") from exc


def canonical_bytes(value: Any, *, what: str = "data") -> bytes:
    """:func:`canonical_json` encoded as UTF-8 (lone surrogates are refused).

    Raises:
        InputError: As :func:`canonical_json`, or the text is not valid Unicode.
    """
    try:
        return canonical_json(value, what=what).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{what} is not valid Unicode: {exc}") from exc


def _json_default(value: object) -> str:
    if isinstance(value, os.PathLike):
        return os.fspath(value)  # type: ignore[no-any-return]
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")
