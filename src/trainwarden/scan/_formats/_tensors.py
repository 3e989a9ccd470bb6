"""Pure-data tensor formats: safetensors and GGUF headers, validated strictly.

Their loaders run no code, so a valid file is safe data. A malformed one gets ``unknown``,
not ``unsafe``: nothing in it can execute through these loaders, but a file that is not what
it claims to be cannot be vouched for (another loader may read it differently). GGUF chat
templates are Jinja that inference servers render: risky constructs in them are reported.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from trainwarden.scan._formats._base import Blob, Context
from trainwarden.scan._formats._jinja import check_template

__all__ = ["analyse_gguf", "analyse_safetensors"]

# Bits per element of every dtype safetensors knows.
_ST_BITS = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "F64": 64,
    "I64": 64,
    "U64": 64,
    "C64": 64,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
}
# The safetensors library refuses headers above 100 MB.
_ST_MAX_HEADER = 100_000_000


def _bad_st(ctx: Context, member: str | None, why: str) -> str:
    ctx.unknown(
        "safetensors.malformed",
        f"invalid safetensors header: {why}; no loader runs code from it, but the file is "
        "not what it claims to be",
        member,
    )
    return "safetensors"


def analyse_safetensors(ctx: Context, blob: Blob, member: str | None) -> str:
    """Validate a safetensors header against the rules the safetensors library enforces."""
    (n,) = struct.unpack("<Q", bytes(blob.read(0, 8)))
    if n > min(_ST_MAX_HEADER, ctx.limits.max_header_bytes):
        return _bad_st(ctx, member, f"header length {n} too large")
    raw = bytes(blob.read(8, n))
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return _bad_st(ctx, member, "header is not UTF-8 JSON")
    if not isinstance(header, dict):
        return _bad_st(ctx, member, "header is not a JSON object")
    data_len = blob.size - 8 - n
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in info.items()
            ):
                return _bad_st(ctx, member, "__metadata__ is not a map of strings")
            continue
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            return _bad_st(ctx, member, f"tensor {name[:60]!r} has unexpected fields")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in _ST_BITS:
            return _bad_st(ctx, member, f"unknown dtype {str(dtype)[:20]!r}")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            return _bad_st(ctx, member, f"tensor {name[:60]!r} has a bad shape")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            return _bad_st(ctx, member, f"tensor {name[:60]!r} has bad data_offsets")
        numel = 1
        for dim in shape:
            numel *= dim
        bits = numel * _ST_BITS[dtype]
        if bits % 8 or bits // 8 != offsets[1] - offsets[0]:
            return _bad_st(ctx, member, f"tensor {name[:60]!r} size does not match its shape")
        spans.append((offsets[0], offsets[1], name))
    spans.sort()
    position = 0
    for start, end, name in spans:
        if start != position:
            return _bad_st(ctx, member, f"tensor {name[:60]!r} overlaps or leaves a gap")
        position = end
    if position != data_len:
        return _bad_st(ctx, member, f"data section is {data_len} bytes, tensors cover {position}")
    return "safetensors"


# --- GGUF ---------------------------------------------------------------------------------

_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
                 11: "<q", 12: "<d"}  # fmt: skip
_GGUF_STRING, _GGUF_ARRAY = 8, 9
_GGML_MAX_DIMS = 4
_GGML_MAX_TYPE = 64
_MAX_COUNT = 1 << 32


class _GgufError(Exception):
    pass


class _Cursor:
    """Sequential reads over a blob with chunked caching and a hard end."""

    def __init__(self, blob: Blob, limit: int) -> None:
        self.blob = blob
        self.pos = 0
        self.limit = min(limit, blob.size)
        self._buf = b""
        self._buf_start = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.limit:
            raise _GgufError("field runs past the end of the header")
        rel = self.pos - self._buf_start
        if rel < 0 or rel + n > len(self._buf):
            self._buf = bytes(self.blob.read(self.pos, max(n, 1 << 20)))
            self._buf_start = self.pos
            rel = 0
        self.pos += n
        return self._buf[rel : rel + n]

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> bytes:
        n = self.unpack("<Q") if self.wide else self.unpack("<I")
        return self.take(n)

    wide = True


def _gguf_value(cur: _Cursor, vtype: int, depth: int = 0) -> Any:
    if vtype in _GGUF_SCALARS:
        return cur.unpack(_GGUF_SCALARS[vtype])
    if vtype == _GGUF_STRING:
        return cur.string()
    if vtype == _GGUF_ARRAY and depth == 0:
        itype = cur.unpack("<I")
        count = cur.unpack("<Q") if cur.wide else cur.unpack("<I")
        if count > _MAX_COUNT:
            raise _GgufError("array count too large")
        if itype in _GGUF_SCALARS:
            cur.take(count * struct.calcsize(_GGUF_SCALARS[itype]))
            return None
        for _ in range(count):
            _gguf_value(cur, itype, depth + 1)
        return None
    raise _GgufError(f"unknown metadata value type {vtype}")


def analyse_gguf(ctx: Context, blob: Blob, member: str | None) -> str:
    """Validate a GGUF header (magic, version, counts, metadata, tensor infos)."""
    cur = _Cursor(blob, ctx.limits.max_header_bytes)
    try:
        cur.take(4)
        version = cur.unpack("<I")
        if version not in (1, 2, 3):
            raise _GgufError(f"unsupported version {version}")
        cur.wide = version >= 2
        n_tensors = cur.unpack("<Q") if cur.wide else cur.unpack("<I")
        n_kv = cur.unpack("<Q") if cur.wide else cur.unpack("<I")
        if n_tensors > _MAX_COUNT or n_kv > _MAX_COUNT:
            raise _GgufError("tensor or metadata count too large")
        alignment = 32
        for _ in range(n_kv):
            ctx.check_time(member)
            key = cur.string().decode("utf-8", "replace")
            vtype = cur.unpack("<I")
            value = _gguf_value(cur, vtype)
            if key == "general.alignment" and isinstance(value, int):
                alignment = value
            if key.startswith("tokenizer.chat_template") and isinstance(value, bytes):
                check_template(
                    ctx, value.decode("utf-8", "replace"), key, member, rule="gguf.chat-template"
                )
        if alignment <= 0 or alignment & (alignment - 1):
            raise _GgufError(f"alignment {alignment} is not a power of two")
        tensors: list[tuple[int, int]] = []
        for _ in range(n_tensors):
            cur.string()
            n_dims = cur.unpack("<I")
            if n_dims > _GGML_MAX_DIMS:
                raise _GgufError(f"tensor with {n_dims} dimensions")
            for _ in range(n_dims):
                cur.unpack("<Q") if cur.wide else cur.unpack("<I")
            ggml_type = cur.unpack("<I")
            if ggml_type >= _GGML_MAX_TYPE:
                raise _GgufError(f"unknown tensor type {ggml_type}")
            offset = cur.unpack("<Q")
            if offset % alignment:
                raise _GgufError("tensor data offset is not aligned")
            tensors.append((offset, ggml_type))
        data_start = -(-cur.pos // alignment) * alignment
        for offset, _ in tensors:
            if data_start + offset > blob.size:
                raise _GgufError("tensor data lies past the end of the file")
    except (_GgufError, struct.error) as exc:
        ctx.unknown(
            "gguf.malformed",
            f"invalid GGUF header: {exc}; GGUF loaders run no code from it, but the file "
            "is not what it claims to be",
            member,
            offset=cur.pos,
        )
    return "gguf"
