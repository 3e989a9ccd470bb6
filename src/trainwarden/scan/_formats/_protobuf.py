"""A small, bounded protobuf wire-format reader over a Blob (no protobuf dependency).

Only the wire format: varints, fixed 32/64-bit values, and length-delimited spans that the
caller parses as submessages or reads as strings. Large fields (ONNX weights, TF constants)
are skipped by their length, never read. Malformed input raises :class:`ProtoError`.
"""

from __future__ import annotations

from collections.abc import Iterator

from trainwarden.scan._formats._base import Blob

__all__ = ["I32", "I64", "LEN", "SGROUP", "VARINT", "ProtoError", "fields", "read_string"]

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5
_CHUNK = 64 << 10
# Strings we read whole (names, op types, paths, JSON metadata); longer ones are cut here.
_MAX_STRING = 1 << 20
_MAX_GROUP_DEPTH = 100  # protobuf's default recursion limit


class ProtoError(Exception):
    """The bytes are not protobuf wire format this reader can follow.

    ``rejected`` is True when every protobuf parser rejects them too (a length or value
    running past its message, a wire type that does not exist, field number 0): no loader
    can read the message, so no loader acts on it. It is False for what parsers accept but
    this reader does not follow (groups, more fields than the bound): not analysed.
    """

    def __init__(self, reason: str, *, rejected: bool = True) -> None:
        super().__init__(reason)
        self.rejected = rejected


class _Cursor:
    """A forward reader of ``blob[start:end]`` through a 64 KiB buffer."""

    __slots__ = ("_blob", "_buf", "_buf_at", "end", "pos")

    def __init__(self, blob: Blob, start: int, end: int) -> None:
        self._blob = blob
        self.pos = start
        self.end = min(end, blob.size)
        self._buf = b""
        self._buf_at = start

    def _byte(self) -> int:
        rel = self.pos - self._buf_at
        if rel < 0 or rel >= len(self._buf):
            self._buf = bytes(self._blob.read(self.pos, _CHUNK))
            self._buf_at = self.pos
            rel = 0
            if not self._buf:
                raise ProtoError("truncated")
        self.pos += 1
        return self._buf[rel]

    def varint(self) -> int:
        value = 0
        for shift in range(0, 70, 7):
            if self.pos >= self.end:
                raise ProtoError("truncated varint")
            byte = self._byte()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
        raise ProtoError("varint longer than 10 bytes")


def fields(
    blob: Blob, start: int = 0, end: int | None = None, *, max_fields: int = 1_000_000
) -> Iterator[tuple[int, int, int]]:
    """Yield ``(field_number, wire_type, value)`` for each field of one message.

    ``value`` is the integer for VARINT/I64/I32 and the *start offset* of the payload for LEN
    (its end is the offset of the next field: use :func:`spans` for ``(start, end)``).
    """
    for number, wire, value, _ in spans(blob, start, end, max_fields=max_fields):
        yield number, wire, value


def spans(
    blob: Blob, start: int = 0, end: int | None = None, *, max_fields: int = 1_000_000
) -> Iterator[tuple[int, int, int, int]]:
    """Yield ``(field_number, wire_type, value_or_start, end)`` for each field of a message."""
    cur = _Cursor(blob, start, blob.size if end is None else end)
    count = 0
    while cur.pos < cur.end:
        count += 1
        if count > max_fields:
            raise ProtoError("too many fields", rejected=False)
        number, wire, value = _field(cur)
        if wire == SGROUP:
            # No field of the schemas read here is a group, so parsers keep a group as an
            # unknown field, skipped whole: skipped here too, never yielded.
            _skip_group(cur, number)
        elif wire == EGROUP:
            raise ProtoError(f"group end {number} without its start")
        else:
            yield number, wire, value, cur.pos


def _field(cur: _Cursor) -> tuple[int, int, int]:
    """Read one field's key and move past its value: ``(number, wire, value_or_start)``.

    A varint's value is returned; a fixed or length-delimited field's start (the cursor is
    then at its end); a group key (start or end) is returned as read, for the caller to
    follow. Anything a parser rejects raises.
    """
    key = cur.varint()
    number, wire = key >> 3, key & 7
    if number == 0:
        raise ProtoError("field number 0")
    if wire == VARINT:
        return number, wire, cur.varint()
    if wire in (I64, I32, LEN):
        size = {I64: 8, I32: 4}.get(wire)
        if size is None:
            size = cur.varint()
        at = cur.pos
        if at + size > cur.end:
            what = "length-delimited field" if wire == LEN else "fixed field"
            raise ProtoError(f"{what} runs past its message")
        cur.pos = at + size
        return number, wire, at
    if wire in (SGROUP, EGROUP):
        return number, wire, cur.pos
    raise ProtoError(f"wire type {wire} does not exist")


def _skip_group(cur: _Cursor, number: int) -> None:
    """Move past a group whose start key (field ``number``) was just read, as parsers do.

    Every group inside must close with its own number before the outer one does; a group
    left open at the end of its message, or nested deeper than parsers recurse, is rejected.
    """
    open_groups = [number]
    while open_groups:
        if cur.pos >= cur.end:
            raise ProtoError(f"group {open_groups[-1]} is not closed")
        inner, wire, _ = _field(cur)
        if wire == SGROUP:
            open_groups.append(inner)
            if len(open_groups) > _MAX_GROUP_DEPTH:
                raise ProtoError("groups nested deeper than parsers recurse")
        elif wire == EGROUP and open_groups.pop() != inner:
            raise ProtoError(f"group end {inner} closes another group")


def read_string(blob: Blob, start: int, end: int) -> str:
    """The UTF-8 text of a LEN field (cut at 1 MiB; invalid bytes replaced)."""
    return bytes(blob.read(start, min(end - start, _MAX_STRING))).decode("utf-8", "replace")
