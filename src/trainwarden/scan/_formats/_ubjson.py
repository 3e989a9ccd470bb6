"""Universal Binary JSON (xgboost's ``.ubj``, and its models saved under any other name).

xgboost 2+ writes models as UBJSON unless the name ends in ``.json``: users' ``model.bin``
files are UBJSON. It is data only (numbers, strings, arrays, objects); xgboost's loader
parses it strictly into its own structures and runs nothing. A document is recognised only
when it validates to its end, every length and type marker in bounds: then it is as fully
analysed as JSON is, and nothing in it can make any loader run code.
"""

from __future__ import annotations

import struct

from trainwarden.scan._formats._base import Blob, Context

__all__ = ["is_ubjson"]

_CHUNK = 64 << 10
_FIXED = {b"i": 1, b"U": 1, b"I": 2, b"l": 4, b"L": 8, b"d": 4, b"D": 8, b"C": 1}
_LENGTH = {b"i": ">b", b"U": ">B", b"I": ">h", b"l": ">i", b"L": ">q"}
_EMPTY = frozenset({b"Z", b"N", b"T", b"F"})
_MAX_DEPTH = 64
_MAX_DECODED = 1 << 20


class _Invalid(Exception):
    """Not a UBJSON document (or not one that validates to its end)."""


class _Reader:
    """Forward reads of a blob through a 64 KiB buffer."""

    def __init__(self, blob: Blob) -> None:
        self._blob = blob
        self.pos = 0
        self._buf = b""
        self._at = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self._blob.size:
            raise _Invalid("runs past the end")
        rel = self.pos - self._at
        if rel < 0 or rel + n > len(self._buf):
            self._buf = bytes(self._blob.read(self.pos, max(n, _CHUNK)))
            self._at, rel = self.pos, 0
        self.pos += n
        return self._buf[rel : rel + n]

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > self._blob.size:
            raise _Invalid("runs past the end")
        self.pos += n


def is_ubjson(ctx: Context | None, blob: Blob, member: str | None, head: bytes) -> bool:
    """True when the whole blob is exactly one valid UBJSON object (xgboost's top level)."""
    if head[:1] != b"{" or head[1:2] not in _LENGTH:
        return False
    reader = _Reader(blob)
    try:
        reader.take(1)
        _container(ctx, reader, member, b"}", 0)
    except (_Invalid, struct.error, UnicodeDecodeError):
        return False
    return reader.pos == blob.size


def _length(reader: _Reader) -> int:
    marker = reader.take(1)
    fmt = _LENGTH.get(marker)
    if fmt is None:
        raise _Invalid("length without an integer type")
    (value,) = struct.unpack(fmt, reader.take(struct.calcsize(fmt)))
    if value < 0:
        raise _Invalid("negative length")
    return int(value)


def _container(
    ctx: Context | None, reader: _Reader, member: str | None, close: bytes, depth: int
) -> None:
    """Validate an object (``close`` is ``}``) or array (``]``) whose opener was read."""
    if depth > _MAX_DEPTH:
        raise _Invalid("nested too deep")
    if ctx is not None:
        ctx.check_time(member)
    is_object = close == b"}"
    kind, count = b"", -1
    marker = reader.take(1)
    if marker == b"$":
        kind = reader.take(1)
        marker = reader.take(1)
        if marker != b"#":
            raise _Invalid("typed container without a count")
    if marker == b"#":
        count = _length(reader)
    else:
        reader.pos -= 1
    if kind and kind in _FIXED and not is_object:
        reader.skip(count * _FIXED[kind])  # a typed numeric array: raw values
        return
    done = 0
    while count < 0 or done < count:
        if count < 0 and reader.take(1) == close:
            return
        if count < 0:
            reader.pos -= 1
        if is_object:
            _string(reader)
        _value(ctx, reader, member, kind or reader.take(1), depth)
        done += 1


def _string(reader: _Reader) -> None:
    """A string must be UTF-8; long ones are only skipped (their bytes change nothing)."""
    size = _length(reader)
    if size > _MAX_DECODED:
        reader.skip(size)
    else:
        reader.take(size).decode("utf-8")


def _value(
    ctx: Context | None, reader: _Reader, member: str | None, marker: bytes, depth: int
) -> None:
    if marker in _EMPTY:
        return
    if marker in _FIXED:
        reader.skip(_FIXED[marker])
    elif marker in (b"S", b"H"):
        _string(reader)
    elif marker == b"{":
        _container(ctx, reader, member, b"}", depth + 1)
    elif marker == b"[":
        _container(ctx, reader, member, b"]", depth + 1)
    else:
        raise _Invalid(f"unknown type marker {marker!r}")
