"""Recognise a format from its first bytes; extensions are never consulted.

The answer only chooses a reader. Bytes no reader recognises go through the pickle rule,
because ``pickle.load`` accepts any bytes that happen to be opcodes.
"""

from __future__ import annotations

import struct

__all__ = ["TORCH_LEGACY_MAGIC", "is_tar_header", "sniff_head"]

# The magic number torch's legacy (pre-zip) format pickles first, as LONG1 payload.
TORCH_LEGACY_MAGIC = b"\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_SEVEN_ZIP = b"7z\xbc\xaf\x27\x1c"
_HDF5 = b"\x89HDF\r\n\x1a\n"
_NPY = b"\x93NUMPY"


def is_tar_header(block: bytes) -> bool:
    """True when ``block`` is a tar header whose checksum verifies, exactly as tarfile checks it.

    Parity with ``tarfile.nti`` matters: a header tarfile accepts but we do not would be
    "data" to us and a tar archive to torch's legacy loader. So an empty checksum field
    counts as 0 and base-256 fields (first byte 0x80 or 0xff) are decoded.
    """
    if len(block) < 512 or block[:512].count(0) == 512:
        return False
    field = block[148:156]
    if field[0] in (0o200, 0o377):
        stored = int.from_bytes(field[1:], "big")
        if field[0] == 0o377:
            stored -= 256 ** (len(field) - 1)
    else:
        try:
            stored = int(field.split(b"\0", 1)[0].decode("ascii").strip() or "0", 8)
        except ValueError:
            return False
    # tarfile sums the header both as unsigned and as signed bytes. The signed sum is the
    # unsigned one less 256 for every byte >= 0x80: counted in C (translate), not by
    # unpacking 504 Python ints, since every file's first block goes through here.
    head = block[:148] + block[156:512]
    unsigned = 256 + sum(head)
    signed = unsigned - 256 * len(head.translate(None, _LOW_BYTES))
    return stored in (unsigned, signed)


_LOW_BYTES = bytes(range(0x80))


def sniff_head(head: bytes, size: int) -> str:
    """Format name from the first bytes (``head``, up to 512+) and the total ``size``.

    Zip archives come back as ``"zip"``; the zip reader refines them (torch, npz, keras...).
    Unrecognised bytes come back as ``"unrecognised"`` for the pickle rule to decide.
    """
    if size == 0:
        return "empty"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:6] == _NPY:
        return "numpy-npy"
    if head[:4] == b"GGUF":
        return "gguf"
    if head[:8] == _HDF5:
        return "hdf5"
    if head[:6] == _SEVEN_ZIP:
        return "7z"
    if _looks_safetensors(head, size):
        return "safetensors"
    if head[:2] == b"ZF" and _is_joblib_compat(head):
        return "joblib"
    if TORCH_LEGACY_MAGIC in head[:32] and head[:1] == b"\x80":
        return "torch-legacy"
    from trainwarden.scan._formats._compressed import stream_kind

    kind = stream_kind(head)
    if kind in ("gzip", "bz2", "xz", "lz4", "zstd"):
        return kind  # strong magic numbers first
    if size >= 512 and is_tar_header(head):
        return "tar"
    if kind is not None:
        return kind
    return "unrecognised"


def _looks_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= size - 8 and head[8:9] == b"{"


def _is_joblib_compat(head: bytes) -> bool:
    # joblib < 0.9.3: "ZF" + hex length padded to 19 chars, then a zlib stream.
    length = head[2:21].split(b" ", 1)[0]
    try:
        int(length, 16)
    except ValueError:
        return False
    return True
