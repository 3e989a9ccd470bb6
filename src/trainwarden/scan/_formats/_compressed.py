"""Bounded decompression of gzip, zlib, bz2, xz/lzma, lz4-frame and zstd streams.

Output is produced in steps with ``max_length``, so a bomb stops at the cap (per member,
per file, and by compression ratio) instead of filling memory.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any, Protocol

from trainwarden.scan._formats._base import Blob, Context

__all__ = ["decompress_bounded", "is_lzma_alone", "stream_kind"]

# Input is fed in small steps so the compression ratio is measured on what the decompressor
# actually consumed: a bomb is stopped after _RATIO_FLOOR bytes of output, not at its end.
_IN_CHUNK = 64 << 10
_OUT_STEP = 1 << 20
# Below this output size the ratio is not checked: tiny members of zeros compress a lot.
_RATIO_FLOOR = 4 << 20


class _Decompressor(Protocol):
    def decompress(self, data: bytes, max_length: int = -1) -> bytes: ...

    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    @property
    def needs_input(self) -> bool: ...


class _Zlib:
    """zlib's decompressobj behind the bz2/lzma decompressor protocol."""

    def __init__(self, wbits: int) -> None:
        self._d = zlib.decompressobj(wbits)
        self._pending = b""

    def decompress(self, data: bytes, max_length: int = -1) -> bytes:
        buf = self._pending + data
        out = self._d.decompress(buf, max(0, max_length))
        self._pending = self._d.unconsumed_tail
        return out

    @property
    def eof(self) -> bool:
        return self._d.eof

    @property
    def unused_data(self) -> bytes:
        return self._d.unused_data

    @property
    def needs_input(self) -> bool:
        return not self._pending

    @property
    def unconsumed(self) -> int:
        """Input bytes given but not consumed yet (exact for zlib)."""
        return len(self._pending)


class _Lz4:
    def __init__(self) -> None:
        import lz4.frame

        self._d = lz4.frame.LZ4FrameDecompressor()

    def decompress(self, data: bytes, max_length: int = -1) -> bytes:
        return bytes(self._d.decompress(data, max_length=max_length))

    @property
    def eof(self) -> bool:
        return bool(self._d.eof)

    @property
    def unused_data(self) -> bytes:
        return bytes(self._d.unused_data or b"")

    @property
    def needs_input(self) -> bool:
        return bool(self._d.needs_input)


class _Zstd:
    """zstandard's decompressobj behind the protocol, fed a little input at a time.

    Its ``decompress`` has no output bound, and one zstd block of four bytes can expand to
    128 KiB (an RLE block): input goes in ``_ZSTD_STEP`` bytes at a time, so one call
    yields at most a few MiB before the caller's caps are checked again.
    """

    def __init__(self) -> None:
        import importlib

        # Optional (pandas needs it for .zst): imported only when a zstd stream is met.
        zstandard: Any = importlib.import_module("zstandard")
        self._d = zstandard.ZstdDecompressor(max_window_size=_LZMA_MEMLIMIT).decompressobj()
        self._errors = (zstandard.ZstdError,)
        self._pending = b""

    def decompress(self, data: bytes, max_length: int = -1) -> bytes:
        buf = self._pending + data
        out = bytearray()
        pos = 0
        try:
            while pos < len(buf) and not self._d.eof and (max_length < 0 or len(out) < max_length):
                out += self._d.decompress(buf[pos : pos + _ZSTD_STEP])
                pos += _ZSTD_STEP
        except self._errors as exc:
            raise ValueError(f"zstd: {exc}") from exc
        # Input not fed yet stays pending; once the frame ends it is what follows the frame.
        self._pending = buf[pos:]
        return bytes(out)

    @property
    def eof(self) -> bool:
        return bool(self._d.eof)

    @property
    def unused_data(self) -> bytes:
        return bytes(self._d.unused_data) + self._pending

    @property
    def needs_input(self) -> bool:
        return not self._pending and not self._d.eof

    @property
    def unconsumed(self) -> int:
        """Input bytes given but not fed to zstd yet."""
        return len(self._pending)


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# 1 KiB of zstd input expands to 32 MiB at most (256 RLE blocks of 128 KiB).
_ZSTD_STEP = 1 << 10


def _zip_lzma(head: bytes) -> tuple[Any, int]:
    import lzma

    # Zip's LZMA method: 2 bytes version, 2 bytes property size, properties, raw LZMA1.
    if len(head) < 4:
        raise lzma.LZMAError("truncated zip lzma header")
    (psize,) = struct.unpack("<H", head[2:4])
    props = head[4 : 4 + psize]
    if len(props) < 5 or struct.unpack("<I", props[1:5])[0] > _LZMA_MEMLIMIT:
        raise lzma.LZMAError("zip lzma properties missing or dictionary too large")
    filters = [lzma._decode_filter_properties(lzma.FILTER_LZMA1, props)]  # type: ignore[attr-defined]
    return lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=filters), 4 + psize


# liblzma allocates the dictionary a stream header asks for; a hostile header can ask for
# gigabytes. The decoder refuses streams needing more than this.
_LZMA_MEMLIMIT = 128 << 20


def _new(kind: str) -> Any:
    if kind == "deflate":
        return _Zlib(-15)
    if kind == "zlib":
        return _Zlib(15)
    if kind == "gzip":
        return _Zlib(31)
    # bz2 and lzma are imported when a stream needs them: most scans never do.
    if kind == "bz2":
        import bz2

        return bz2.BZ2Decompressor()
    if kind in ("xz", "lzma"):
        import lzma

        return lzma.LZMADecompressor(lzma.FORMAT_AUTO, memlimit=_LZMA_MEMLIMIT)
    if kind == "lz4":
        return _Lz4()
    if kind == "zstd":
        return _Zstd()
    raise ValueError(kind)


def _stream_errors() -> tuple[type[Exception], ...]:
    # What the decompressors raise on corrupt input (lzma's error type only exists once
    # lzma is imported, which a corrupt xz stream has already done).
    errors: tuple[type[Exception], ...] = (zlib.error, OSError, EOFError, ValueError, RuntimeError)
    import sys

    lzma = sys.modules.get("lzma")
    return errors if lzma is None else (*errors, lzma.LZMAError)


def stream_kind(head: bytes) -> str | None:
    """The compressed-stream kind ``head`` starts with, or ``None``."""
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:3] == b"BZh" and len(head) > 3 and 0x31 <= head[3] <= 0x39:
        return "bz2"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    if head[:4] == b"\x04\x22\x4d\x18":
        return "lz4"
    if head[:4] == _ZSTD_MAGIC or (
        len(head) >= 4 and head[1:4] == b"\x2a\x4d\x18" and head[0] >> 4 == 5
    ):
        return "zstd"  # a data frame, or a skippable frame (magic 0x184D2A50-5F) first
    if len(head) >= 2 and head[0] == 0x78 and (head[0] << 8 | head[1]) % 31 == 0:
        return "zlib"
    if is_lzma_alone(head):
        return "lzma"
    return None


def is_lzma_alone(head: bytes) -> bool:
    """True when ``head`` starts a stream liblzma's ``.lzma`` (alone) decoder would take.

    joblib reads any file starting with bytes 5d 00 with it and ``lzma.open`` (pandas' ``.xz``)
    any file that is not xz; neither limits the dictionary. So the test is the decoder's
    own: a properties byte with lc + lp <= 4 (packed as (pb * 5 + lp) * 9 + lc), then,
    after the dictionary and size fields, the range coder's first byte, which is always 0.
    This is weak evidence (raw tensors pass it): see ``decompress_bounded(partial=True)``.
    """
    if len(head) < 14 or head[0] >= 225:
        return False
    return head[0] % 9 + head[0] // 9 % 5 <= 4 and head[13] == 0


def _clamped_alone_header(header: bytes) -> bytes:
    # The decoder never needs a dictionary larger than its output, and ours is capped: a
    # header asking for more is decoded with the memory limit instead (same output; a
    # stream that reached further back would fail to decode, and is reported).
    size = min(int.from_bytes(header[1:5], "little"), _LZMA_MEMLIMIT // 2)
    return header[:1] + size.to_bytes(4, "little") + header[5:]


_CONCATENATED = frozenset({"gzip", "bz2", "xz", "lz4", "zstd"})


def decompress_bounded(
    ctx: Context, source: Blob, kind: str, member: str | None, *, cap: int, partial: bool = False
) -> bytearray | None:
    """Decompress all of ``source`` (concatenated streams included) up to ``cap`` bytes.

    Returns ``None`` with a finding when the data is corrupt or a bound was hit: such a
    member is never reported safe. With ``partial``, corrupt or truncated data instead
    returns what decoded before the fault: a streaming loader (``pickle.load`` on an
    ``LZMAFile``) unpickles that much before the error stops it, so it is what to analyse.
    """
    limits = ctx.limits
    # Half the memory bound at most: the analysis of what we decompress needs memory too.
    cap = min(cap, limits.max_member_bytes, limits.max_memory // 2)
    out = bytearray()
    consumed = 0
    pos = 0
    try:
        if kind == "zip-lzma":
            dec, skip = _zip_lzma(bytes(source.read(0, 64)))
            pos = skip
        else:
            dec = _new(kind)
        pending = b""
        if kind == "lzma":
            pending = _clamped_alone_header(bytes(source.read(0, 13)))
            pos = consumed = len(pending)
        while True:
            ctx.check_time(member)
            if not pending and dec.needs_input:
                pending = bytes(source.read(pos, _IN_CHUNK))
                pos += len(pending)
                consumed += len(pending)
                if not pending:
                    if not dec.eof and partial:
                        _partial(ctx, kind, member, out, "ends before its end marker")
                        return out
                    if not dec.eof:
                        ctx.unknown(
                            "archive.truncated",
                            f"{kind} stream ends before its end marker",
                            member,
                        )
                        return None
                    break
            room = cap - len(out)
            chunk = dec.decompress(pending, max_length=min(_OUT_STEP, room + 1))
            pending = b""
            out += chunk
            ctx.charge(len(chunk), member)
            used = max(1, consumed - getattr(dec, "unconsumed", 0))
            if len(out) > cap:
                ctx.unknown(
                    "limit.member-bytes",
                    "decompressed member is larger than the scanner reads into memory; "
                    "not analysed",
                    member,
                    evidence=f"> {cap} bytes",
                )
                return None
            if len(out) > _RATIO_FLOOR and len(out) > limits.max_compression_ratio * used:
                ctx.unknown(
                    "limit.compression-ratio",
                    "compression ratio above the bound (a decompression bomb); not analysed",
                    member,
                    evidence=f"max_compression_ratio={limits.max_compression_ratio}",
                )
                return None
            if dec.eof:
                rest = dec.unused_data
                more = rest or pos < source.size
                if kind in _CONCATENATED and more:
                    # Concatenated streams: gzip/bz2/lzma/lz4 readers continue with the next,
                    # zstd readers too (pandas reads one frame; a later one is analysed anyway).
                    tail = rest + bytes(source.read(pos, 16))
                    if stream_kind(tail) == kind:
                        dec = _new(kind)
                        pending = rest
                        continue
                break
    except ImportError:
        package = "zstandard" if kind == "zstd" else "lz4"
        ctx.unknown(
            "archive.unsupported",
            f"{kind} support is not installed (pip install {package}); not analysed",
            member,
        )
        return None
    except Exception as exc:
        if not isinstance(exc, _stream_errors()):
            raise
        if partial:
            _partial(ctx, kind, member, out, f"is corrupt ({exc})")
            return out
        ctx.unknown(
            "archive.corrupt-stream",
            f"{kind} data could not be decompressed: {exc}",
            member,
        )
        return None
    return out  # no copy: the caller only reads it


def _partial(ctx: Context, kind: str, member: str | None, out: bytearray, why: str) -> None:
    ctx.info(
        "archive.partial-stream",
        f"{kind} stream {why}; what decodes before that was analysed",
        member,
        evidence=f"{len(out)} bytes decoded",
    )
