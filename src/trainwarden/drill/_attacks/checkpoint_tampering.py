"""T7: a colleague's signed checkpoints modified, rolled back and deleted.

All three need only write access to the team's checkpoint directory, not to the files: a new
file renamed over the old one, or an unlink. Modification flips the sign of some weights of
the first tensor (the checkpoint still loads, its model is silently different); rollback puts
an older checkpoint and its valid signature in place of the newest one (a signature alone
cannot tell); deletion removes a checkpoint and its signature.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

from trainwarden._fs import atomic_write
from trainwarden.drill._attacks import AttackContext, AttackFailed, AttackOutcome

__all__ = ["alter_weights", "attack_delete", "attack_modify", "attack_rollback"]


def alter_weights(data: bytes, *, values: int = 64) -> bytes:
    """A PyTorch zip checkpoint with the sign of ``values`` float32s of its first tensor flipped.

    The bytes are patched in place and the member's CRC-32 updated wherever the archive
    keeps it, so the file keeps its size, its layout and its name, and loads as before.

    Raises:
        AttackFailed: ``data`` is not a PyTorch zip checkpoint with a stored tensor.
    """
    try:
        members = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except zipfile.BadZipFile as exc:
        raise AttackFailed(f"not a PyTorch zip checkpoint: {exc}") from exc
    storages = [m for m in members if _is_storage(m.filename)]
    if not storages:
        raise AttackFailed("the checkpoint holds no tensor storage")
    first = min(storages, key=lambda m: int(m.filename.rsplit("/", 1)[1]))
    if first.compress_type != zipfile.ZIP_STORED or first.file_size < 8:
        raise AttackFailed("the first tensor is not stored uncompressed")
    out = bytearray(data)
    offset = first.header_offset
    if out[offset : offset + 4] != b"PK\x03\x04":
        raise AttackFailed("no local header where the directory says")
    name_len, extra_len = struct.unpack_from("<HH", out, offset + 26)
    begin = offset + 30 + name_len + extra_len
    end = begin + first.file_size
    raw = out[begin:end]
    # Little-endian float32: the sign bit is bit 7 of each value's last byte.
    middle = (len(raw) // 2) & ~3
    for i in range(middle + 3, min(len(raw), middle + 4 * values), 4):
        raw[i] ^= 0x80
    out[begin:end] = raw
    crc = zlib.crc32(raw) & 0xFFFFFFFF
    if first.flag_bits & 0x08:  # the CRC follows the data, in a data descriptor
        at = end + 4 if out[end : end + 4] == b"PK\x07\x08" else end
        struct.pack_into("<I", out, at, crc)
    else:
        struct.pack_into("<I", out, offset + 14, crc)
    _set_central_crc(out, first.orig_filename, crc)
    return bytes(out)


def _set_central_crc(data: bytearray, name: str, crc: int) -> None:
    eocd = data.rfind(b"PK\x05\x06")
    if eocd < 0:
        raise AttackFailed("no end of central directory")
    (start,) = struct.unpack_from("<I", data, eocd + 16)
    if start == 0xFFFFFFFF:  # zip64: the offset is in the zip64 end record
        locator = data.rfind(b"PK\x06\x07", 0, eocd)
        (record,) = struct.unpack_from("<Q", data, locator + 8)
        (start,) = struct.unpack_from("<Q", data, record + 48)
    wanted = name.encode("utf-8")
    pos = start
    while data[pos : pos + 4] == b"PK\x01\x02":
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, pos + 28)
        if data[pos + 46 : pos + 46 + name_len] == wanted:
            struct.pack_into("<I", data, pos + 16, crc)
            return
        pos += 46 + name_len + extra_len + comment_len
    raise AttackFailed(f"{name} is not in the central directory")


def _is_storage(name: str) -> bool:
    parts = name.split("/")
    return len(parts) >= 3 and parts[-2] == "data" and parts[-1].isdigit()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise AttackFailed(f"cannot read {path}: {exc.strerror or exc}") from exc


def attack_modify(ctx: AttackContext) -> AttackOutcome:
    """Rewrite the target checkpoint with altered weights (its signature left as it was)."""
    path = Path(ctx.params["target"])
    original = _read(path)
    ctx.begin()
    atomic_write(path, alter_weights(original), mode=0o644, what="checkpoint")
    return AttackOutcome(touched=[str(path)], details={"path": str(path)})


def attack_rollback(ctx: AttackContext) -> AttackOutcome:
    """Put an older checkpoint, and its valid signature, in place of the target."""
    target = Path(ctx.params["target"])
    older = Path(ctx.params["older"])
    target_sig = Path(ctx.params["target_sig"])
    older_sig = Path(ctx.params["older_sig"])
    data, signature = _read(older), _read(older_sig)
    ctx.begin()
    atomic_write(target, data, mode=0o644, what="checkpoint")
    atomic_write(target_sig, signature, mode=0o644, what="signature")
    return AttackOutcome(
        touched=[str(target), str(target_sig)],
        details={"path": str(target), "older": str(older)},
    )


def attack_delete(ctx: AttackContext) -> AttackOutcome:
    """Delete the target checkpoint and its signature."""
    target = Path(ctx.params["target"])
    target_sig = Path(ctx.params["target_sig"])
    if not target.exists():
        raise AttackFailed(f"{target} is not there to delete")
    ctx.begin()
    removed = []
    for path in (target, target_sig):
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise AttackFailed(f"cannot delete {path}: {exc.strerror or exc}") from exc
        removed.append(str(path))
    return AttackOutcome(touched=removed, details={"path": str(target)})
