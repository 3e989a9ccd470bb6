"""A small, strict zip central-directory reader that sees what torch's miniz reader would load.

We do not use :mod:`zipfile`: it rejects archives torch reads (bad CRCs), it hides duplicate
names, and it decompresses without bounds. Every disagreement between the views a loader
could take of an archive (central vs local names, duplicates, overlaps, several end records)
is reported, because a scanner and a loader that disagree are a bypass.
"""

from __future__ import annotations

import itertools
import struct
import zlib
from dataclasses import dataclass
from typing import NamedTuple

from trainwarden.findings import Severity
from trainwarden.scan._formats._base import Blob, Context, MemoryBlob, SubBlob, join_member

__all__ = [
    "ZipArchive",
    "ZipEntry",
    "data_offset",
    "escapes_archive",
    "inflate_member",
    "member_blob",
    "read_zip",
]

_EOCD = b"PK\x05\x06"
_EOCD64 = b"PK\x06\x06"
_EOCD64_LOCATOR = b"PK\x06\x07"
_CDH = b"PK\x01\x02"
_LFH = b"PK\x03\x04"
_EOCD_SIZE = 22
_MAX_COMMENT = 0xFFFF
_S_IFLNK = 0o120000

STORED, DEFLATED, BZIP2, LZMA = 0, 8, 12, 14
_CDH_STRUCT = struct.Struct("<4sHHHHHHIIIHHHHHII")


class ZipEntry(NamedTuple):
    """One central-directory record (a tuple: archives with many tensors have many)."""

    position: int  # in central-directory order
    raw_name: bytes
    name: str
    method: int
    flags: int
    crc: int
    compressed_size: int
    size: int
    header_offset: int
    is_symlink: bool

    @property
    def encrypted(self) -> bool:
        """General-purpose flag bit 0."""
        return bool(self.flags & 1)

    @property
    def is_dir(self) -> bool:
        """Directory entries carry no data."""
        return self.name.endswith("/") and self.size == 0


@dataclass(frozen=True, slots=True)
class ZipArchive:
    """The entries of a zip archive, in central-directory order."""

    entries: tuple[ZipEntry, ...]
    prefix: int  # bytes before the archive start (Python's zipfile tolerates them, miniz not)


def _decode(raw: bytes, flags: int) -> str:
    if raw.isascii():
        return raw.decode("ascii")
    if flags & 0x800:
        return raw.decode("utf-8", "replace")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp437")


def _find_eocd(blob: Blob) -> tuple[int | None, int | None]:
    """The end record nearest the end of the file, and the one before it (if any)."""
    tail_len = min(blob.size, _EOCD_SIZE + _MAX_COMMENT)
    tail_start = blob.size - tail_len
    tail = bytes(blob.read(tail_start, tail_len))
    # miniz and zipfile both take the end record nearest the end of the file.
    pos = tail.rfind(_EOCD)
    if pos < 0:
        return None, None
    other = tail.rfind(_EOCD, 0, pos)
    return tail_start + pos, (tail_start + other if other >= 0 else None)


def _other_end_record(
    ctx: Context, blob: Blob, other: int | None, entries: list[ZipEntry], member: str | None
) -> None:
    # A second end record inside a member's data is that member's own (a zip stored in the
    # zip: an .npz in a bundle). Anywhere else, readers that pick it see other members.
    if other is None:
        return
    for entry in entries:
        header = bytes(blob.read(entry.header_offset, 30))
        if len(header) < 30 or header[:4] != _LFH:
            continue
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        start = entry.header_offset + 30 + name_len + extra_len
        if start <= other < start + entry.compressed_size:
            return
    ctx.unknown(
        "archive.multiple-end-records",
        "the archive has more than one end-of-central-directory record; readers that "
        "pick a different one see different members",
        member,
        offset=other,
    )


def read_zip(ctx: Context, blob: Blob, member: str | None) -> ZipArchive | None:
    """Parse the central directory; report discrepancies; ``None`` (with a finding) if broken."""
    limits = ctx.limits
    eocd, other_eocd = _find_eocd(blob)
    if eocd is None:
        ctx.unknown("archive.malformed", "zip end-of-central-directory record not found", member)
        return None
    rec = bytes(blob.read(eocd, _EOCD_SIZE))
    if len(rec) < _EOCD_SIZE:
        ctx.unknown("archive.malformed", "truncated zip end record", member, offset=eocd)
        return None
    (_, disk, cd_disk, n_disk, n_total, cd_size, cd_offset, _) = struct.unpack("<4sHHHHIIH", rec)
    eocd_for_prefix = eocd
    # A zip64 end record sits right before its locator, which sits right before the end
    # record. torch always writes one; like zipfile, we use it whenever it is there.
    locator = bytes(blob.read(eocd - 20, 20)) if eocd >= 20 else b""
    if len(locator) == 20 and locator[:4] == _EOCD64_LOCATOR:
        (_, _, stored_off, _) = struct.unpack("<4sIQI", locator)
        rec64_pos = eocd - 20 - 56
        rec64 = bytes(blob.read(rec64_pos, 56)) if rec64_pos >= 0 else b""
        if len(rec64) < 56 or rec64[:4] != _EOCD64:
            ctx.unknown("archive.malformed", "bad zip64 end record", member, offset=eocd - 20)
            return None
        (_, _, _, _, disk64, cd_disk64, n_disk, n_total, cd_size, cd_offset) = struct.unpack(
            "<4sQHHIIQQQQ", rec64
        )
        eocd_for_prefix = rec64_pos
        # torch's reader (miniz) takes the disk numbers and both entry counts from this
        # record and refuses an archive where they disagree: it would not load what we read.
        disk, cd_disk = disk | disk64, cd_disk | cd_disk64
        if stored_off + (rec64_pos - cd_size - cd_offset) != rec64_pos:
            ctx.unknown(
                "archive.malformed",
                "the zip64 locator points somewhere other than the zip64 end record",
                member,
                offset=eocd - 20,
            )
    if n_disk != n_total:
        # torch's reader (miniz) takes this for a multi-disk archive and refuses it.
        ctx.unknown(
            "archive.malformed",
            "the zip end record counts a different number of entries on this disk than in all",
            member,
            offset=eocd_for_prefix,
            evidence=f"{n_disk} != {n_total}",
        )
        return None
    if disk != 0 or cd_disk != 0:
        ctx.unknown("archive.malformed", "multi-disk zip archives are not supported", member)
        return None
    # Bytes before the archive (a prepended stub) shift every offset; zipfile corrects for
    # them, torch's reader does not.
    prefix = eocd_for_prefix - cd_size - cd_offset
    if prefix < 0:
        ctx.unknown(
            "archive.malformed",
            "central directory lies outside the file",
            member,
            offset=eocd,
            evidence=f"cd_offset={cd_offset} cd_size={cd_size}",
        )
        return None
    if n_total > limits.max_archive_members:
        ctx.unknown(
            "limit.members",
            "the archive lists more members than the scanner looks at",
            member,
            evidence=f"{n_total} > max_archive_members={limits.max_archive_members}",
        )
        return None
    if cd_size > limits.max_header_bytes:
        ctx.unknown(
            "limit.header-bytes",
            "the zip central directory is larger than the scanner reads",
            member,
            evidence=f"{cd_size} > max_header_bytes={limits.max_header_bytes}",
        )
        return None
    cd = bytes(blob.read(prefix + cd_offset, cd_size))
    if len(cd) < cd_size:
        ctx.unknown("archive.malformed", "truncated central directory", member)
        return None
    entries: list[ZipEntry] = []
    pos = 0
    while pos + 46 <= len(cd) and cd[pos : pos + 4] == _CDH:
        if len(entries) >= limits.max_archive_members:
            ctx.unknown(
                "limit.members",
                "the archive has more members than the scanner looks at",
                member,
                evidence=f"max_archive_members={limits.max_archive_members}",
            )
            return None
        (
            _,
            version_made,
            _,
            flags,
            method,
            _,
            _,
            crc,
            csize,
            usize,
            name_len,
            extra_len,
            comment_len_e,
            disk_start,
            _,
            ext_attr,
            header_off,
        ) = _CDH_STRUCT.unpack_from(cd, pos)
        raw_name = cd[pos + 46 : pos + 46 + name_len]
        if extra_len and 0xFFFFFFFF in (usize, csize, header_off):
            extra = cd[pos + 46 + name_len : pos + 46 + name_len + extra_len]
            usize, csize, header_off = _zip64(extra, usize, csize, header_off)
        pos += 46 + name_len + extra_len + comment_len_e
        if pos > len(cd):
            ctx.unknown("archive.malformed", "truncated central-directory record", member)
            return None
        if disk_start > 1:
            # torch's reader (miniz) accepts disk 0 or 1 here and refuses the archive else.
            ctx.unknown("archive.malformed", "multi-disk zip archives are not supported", member)
            return None
        name = _decode(raw_name, flags)
        if method == 0 and csize != usize and not flags & 1:
            # Legitimate writers never produce it; torch's reader refuses the archive, and
            # readers that trust one size or the other read different bytes.
            ctx.unknown(
                "archive.malformed",
                "a stored (uncompressed) member's compressed and uncompressed sizes differ",
                join_member(member, name),
                evidence=f"{csize} != {usize}",
            )
        is_symlink = (version_made >> 8) == 3 and (ext_attr >> 16) & 0o170000 == _S_IFLNK
        entries.append(
            ZipEntry(
                position=len(entries),
                raw_name=raw_name,
                name=name,
                method=method,
                flags=flags,
                crc=crc,
                compressed_size=csize,
                size=usize,
                header_offset=prefix + header_off,
                is_symlink=is_symlink,
            )
        )
    if len(entries) != n_total:
        ctx.unknown(
            "archive.malformed",
            "the central directory holds a different number of records than its end record says",
            member,
            evidence=f"{len(entries)} != {n_total}",
        )
    _other_end_record(ctx, blob, other_eocd, entries, member)
    _check_entries(ctx, blob, entries, member)
    return ZipArchive(tuple(entries), prefix)


def _zip64(extra: bytes, usize: int, csize: int, offset: int) -> tuple[int, int, int]:
    pos = 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack("<HH", extra[pos : pos + 4])
        body = extra[pos + 4 : pos + 4 + size]
        if tag == 1:
            values = [v for (v,) in struct.iter_unpack("<Q", body[: len(body) // 8 * 8])]
            if usize == 0xFFFFFFFF and values:
                usize = values.pop(0)
            if csize == 0xFFFFFFFF and values:
                csize = values.pop(0)
            if offset == 0xFFFFFFFF and values:
                offset = values.pop(0)
            break
        pos += 4 + size
    return usize, csize, offset


def _local_header(
    ctx: Context, blob: Blob, offset: int, raw_name: bytes, name: str, member: str | None
) -> int | None:
    header = bytes(blob.read(offset, 30))
    where = join_member(member, name)
    if len(header) < 30 or header[:4] != _LFH:
        ctx.unknown(
            "archive.bad-local-header",
            "a central-directory record points at no local file header",
            where,
            offset=offset,
        )
        return None
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    local_name = bytes(blob.read(offset + 30, name_len))
    if local_name != raw_name:
        # Loaders that walk local headers (streaming unzip) see a different name than
        # loaders that use the central directory (miniz, zipfile).
        ctx.unknown(
            "archive.name-mismatch",
            "the local header names this member differently from the central directory",
            where,
            offset=offset,
            evidence=f"local name {local_name[:80]!r}",
        )
    return int(offset + 30 + name_len + extra_len)


def escapes_archive(name: str) -> bool:
    """True when extracting a member of this name writes outside the target directory."""
    text = name.replace("\\", "/")
    if text.startswith("/") or (len(text) > 1 and text[1] == ":") or "\0" in text:
        return True
    depth = 0
    for part in text.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def _check_entries(ctx: Context, blob: Blob, entries: list[ZipEntry], member: str | None) -> None:
    seen: dict[bytes, ZipEntry] = {}
    for entry in entries:
        if escapes_archive(entry.name):
            # Zip slip: extractors that trust names write files anywhere the user can.
            ctx.unknown(
                "archive.path-escape",
                "member name leads outside the archive (absolute, or climbing with ..): "
                "extracting it writes files elsewhere",
                join_member(member, entry.name),
                offset=entry.header_offset,
                evidence=entry.name[:200],
                severity=Severity.HIGH,
            )
        key = entry.raw_name
        if key in seen:
            ctx.unknown(
                "archive.duplicate-name",
                "two members share a name; loaders disagree on which one they read",
                join_member(member, entry.name),
                offset=entry.header_offset,
                evidence=f"also at offset {seen[key].header_offset}",
            )
        else:
            seen[key] = entry
        if entry.header_offset + 30 + len(entry.raw_name) + entry.compressed_size > blob.size:
            ctx.unknown(
                "archive.member-out-of-bounds",
                "a member's data runs past the end of the archive",
                join_member(member, entry.name),
                offset=entry.header_offset,
            )
    # Local headers are only read for members we read (tensor members never are), so spans
    # here use the shortest a member can be: header, central name, data. An overlap even at
    # that size is certain.
    spans = sorted(
        (
            (e.header_offset, e.header_offset + 30 + len(e.raw_name) + e.compressed_size, e)
            for e in entries
            if not e.is_dir or e.compressed_size
        ),
        key=lambda span: (span[0], span[1], span[2].position),
    )
    for (_, end_a, a), (start_b, _, b) in itertools.pairwise(spans):
        if start_b < end_a:
            ctx.unknown(
                "archive.overlap",
                "two members' data overlap (a zip-bomb and scanner-evasion technique)",
                join_member(member, b.name),
                offset=start_b,
                evidence=f"overlaps {a.name[:80]}",
            )


def data_offset(ctx: Context, blob: Blob, entry: ZipEntry, member: str) -> int | None:
    """Where the member's data starts, from its local header (as miniz and zipfile read it)."""
    return _local_header(ctx, blob, entry.header_offset, entry.raw_name, entry.name, member)


def member_blob(ctx: Context, blob: Blob, entry: ZipEntry, member: str, *, cap: int) -> Blob | None:
    """The member's uncompressed bytes as a blob (lazy for stored members).

    Returns ``None`` when the member cannot be read, with a finding saying why.
    """
    start = data_offset(ctx, blob, entry, member)
    if start is None:
        return None
    if entry.encrypted:
        ctx.unknown("archive.encrypted", "encrypted member cannot be analysed", member)
        return None
    if entry.method == STORED:
        return SubBlob(blob, start, entry.compressed_size)
    data = inflate_member(ctx, blob, entry, start, member, cap=cap)
    return None if data is None else MemoryBlob(data)


def inflate_member(
    ctx: Context, blob: Blob, entry: ZipEntry, start: int, member: str, *, cap: int
) -> bytearray | None:
    """Decompress a member with bounds on output size and compression ratio."""
    from trainwarden.scan._formats._compressed import decompress_bounded

    if entry.method == DEFLATED:
        kind = "deflate"
    elif entry.method == BZIP2:
        kind = "bz2"
    elif entry.method == LZMA:
        kind = "zip-lzma"
    else:
        ctx.unknown(
            "archive.unsupported-compression",
            "member uses a compression method the scanner does not read",
            member,
            evidence=f"method={entry.method}",
        )
        return None
    source = SubBlob(blob, start, entry.compressed_size)
    data = decompress_bounded(ctx, source, kind, member, cap=cap)
    if data is not None and zlib.crc32(data) != entry.crc and len(data) == entry.size:
        # Legitimate writers never produce this; it makes zipfile-based scanners skip a
        # member that torch still loads.
        ctx.unknown(
            "archive.crc-mismatch",
            "member CRC-32 does not match (torch does not check it; zipfile refuses it)",
            member,
            severity=Severity.LOW,
        )
    return data
