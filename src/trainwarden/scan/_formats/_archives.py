"""Containers other than zip: tar, 7z and single compressed streams, nested up to a bound.

Members are handed back to the dispatcher. Links are reported and never followed; sizes,
member counts, ratios and nesting are bounded so hostile archives end in a verdict.
"""

from __future__ import annotations

import io
from typing import IO, TYPE_CHECKING, Any, cast

from trainwarden.findings import Severity
from trainwarden.scan._formats._base import (
    Blob,
    Context,
    MemoryBlob,
    ScanAborted,
    SubBlob,
    join_member,
)

if TYPE_CHECKING:
    import tarfile

__all__ = ["BlobFile", "analyse_7z", "analyse_compressed", "analyse_tar"]

_INNER = {"gzip": "(gunzipped)", "bz2": "(bunzipped)", "xz": "(unxz)", "lz4": "(unlz4)",
          "zstd": "(unzstd)", "zlib": "(inflated)", "lzma": "(unlzma)"}  # fmt: skip


class BlobFile(io.RawIOBase):
    """A read-only, seekable file over a blob that refuses any single huge read.

    ``tarfile`` reads PAX and GNU long-name headers whole; a header claiming gigabytes
    must not turn into a gigabyte allocation.
    """

    def __init__(self, blob: Blob, max_read: int) -> None:
        super().__init__()
        self._blob = blob
        self._pos = 0
        self._max_read = max_read

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._blob.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = self._blob.size - self._pos
        if size > self._max_read:
            raise OSError(f"refusing a single read of {size} bytes")
        data = bytes(self._blob.read(self._pos, size))
        self._pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def analyse_compressed(ctx: Context, blob: Blob, member: str | None, depth: int, kind: str) -> str:
    """Decompress a gzip/bz2/xz/lz4/zstd/zlib/lzma stream (bounded) and analyse its content."""
    from trainwarden.scan._formats._compressed import decompress_bounded

    if kind == "lzma":
        return _analyse_lzma_alone(ctx, blob, member, depth)
    if kind == "zlib" and not _opens_as_zlib(blob):
        # Two magic bytes are weak evidence: bytes that merely start like a zlib stream
        # are judged as they are.
        return ctx.analyse_unrecognised(blob, member, bytes(blob.read(0, 1024)))
    data = decompress_bounded(ctx, blob, kind, member, cap=ctx.limits.max_member_bytes)
    if data is None:
        return {"zlib": "joblib", "lzma": "xz"}.get(kind, kind)
    inner = ctx.analyse(MemoryBlob(data), join_member(member, _INNER[kind]), depth + 1)
    if inner in ("joblib", "pickle") and kind in ("zlib", "lzma"):
        return "joblib"
    if inner == "joblib":
        return "joblib"
    if kind in ("zlib", "lzma"):
        return inner
    return kind


def _opens_as_zlib(blob: Blob) -> bool:
    import zlib

    try:
        zlib.decompressobj().decompress(bytes(blob.read(0, 1 << 16)), 1)
    except zlib.error:
        return False
    return True


def _analyse_lzma_alone(ctx: Context, blob: Blob, member: str | None, depth: int) -> str:
    # An alone header is weak evidence (raw tensors often pass it), so a fault in the stream
    # is not a finding: what liblzma decodes before it is what joblib or pandas would
    # unpickle, and is analysed; nothing decoded means the bytes are judged as they are.
    from trainwarden.scan._formats._compressed import decompress_bounded

    data = decompress_bounded(
        ctx, blob, "lzma", member, cap=ctx.limits.max_member_bytes, partial=True
    )
    if data is None:
        return "xz"  # a bound was hit (reported)
    faulty = any(
        f.rule_id == "archive.partial-stream" and f.location.member == member for f in ctx.findings
    )
    raw = None
    if faulty or not data:
        # Perhaps not lzma at all (a graph, a config, a zip behind a prefix): the bytes as
        # they are get every check they would get without the header.
        raw = ctx.analyse_unrecognised(blob, member, bytes(blob.read(0, 1024)))
    if not data:
        return raw or "data"
    inner = ctx.analyse(MemoryBlob(data), join_member(member, _INNER["lzma"]), depth + 1)
    if inner in ("joblib", "pickle"):
        return "joblib"
    return raw or inner


def analyse_tar(ctx: Context, blob: Blob, member: str | None, depth: int) -> str:
    """Walk a tar archive's members (lazily: member data is read only when analysed)."""
    import tarfile

    limits = ctx.limits
    members: list[tarfile.TarInfo] = []
    try:
        with tarfile.open(
            fileobj=cast(IO[bytes], BlobFile(blob, limits.max_header_bytes)),
            mode="r:",
        ) as tar:
            while True:
                ctx.check_time(member)
                info = tar.next()
                if info is None:
                    _check_tar_end(ctx, blob, tar.offset, member)
                    break
                members.append(info)
                if len(members) > limits.max_archive_members:
                    ctx.unknown(
                        "limit.members",
                        "the archive has more members than the scanner looks at",
                        member,
                        evidence=f"max_archive_members={limits.max_archive_members}",
                    )
                    break
    except (tarfile.TarError, OSError, ValueError, EOFError, UnicodeError) as exc:
        ctx.unknown("archive.malformed", f"tar archive could not be read: {exc}", member)
    names = {m.name for m in members}
    fmt = "torch-legacy-tar" if {"storages", "tensors", "pickle"} <= names else "tar"
    seen: set[str] = set()
    from trainwarden.scan._formats._zip import escapes_archive

    for info in members:
        where = join_member(member, info.name)
        if escapes_archive(info.name):
            ctx.unknown(
                "archive.path-escape",
                "member name leads outside the archive (absolute, or climbing with ..): "
                "extracting it writes files elsewhere",
                where,
                evidence=info.name[:200],
                severity=Severity.HIGH,
            )
        if info.name in seen:
            ctx.unknown(
                "archive.duplicate-name",
                "two members share a name; extractors keep the last, scanners may read the first",
                where,
            )
        seen.add(info.name)
        if info.issym() or info.islnk():
            kind = "symlink" if info.issym() else "hardlink"
            # Extraction would follow the link. torch's legacy loader extracts "storages"
            # and "tensors" and unpickles them: a link there makes it unpickle whatever
            # file the link names, possibly outside the archive, which we cannot see.
            loaded = fmt == "torch-legacy-tar" and info.name in ("storages", "tensors", "pickle")
            ctx.unknown(
                f"archive.{kind}",
                f"member is a {kind}; it was not followed"
                + ("; torch would unpickle the file it points to" if loaded else ""),
                where,
                evidence=info.linkname[:200],
                severity=Severity.HIGH if loaded else Severity.LOW,
            )
            continue
        if info.isdir():
            continue
        if not info.isreg() and info.type in tarfile.SUPPORTED_TYPES:
            ctx.info("archive.special-member", "device or fifo member; no data", where)
            continue
        # A member of a type tarfile does not know carries data, and extraction writes it
        # as a regular file (TarFile.makeunknown): it is analysed like one.
        if info.issparse():
            ctx.unknown("archive.sparse-member", "sparse tar member is not analysed", where)
            continue
        sub = SubBlob(blob, info.offset_data, info.size)
        if sub.size < info.size:
            ctx.unknown("archive.truncated", "member data runs past the end of the tar", where)
        if fmt == "torch-legacy-tar" and info.name in ("storages", "tensors", "pickle"):
            from trainwarden.scan._formats._torch import analyse_legacy_tar_member

            analyse_legacy_tar_member(ctx, sub, where, info.name)
            continue
        ctx.analyse(sub, where, depth + 1)
    return fmt


# Writers pad a tar with zero blocks up to a record (10 KiB by default, more with a large
# blocking factor); past this much, what follows the archive is not padding we check.
_TAR_TAIL_MAX = 1 << 20


def _check_tar_end(ctx: Context, blob: Blob, end: int, member: str | None) -> None:
    # tarfile stops silently at the first zero or invalid header block. Extractors that
    # skip such blocks (GNU tar does, `tar -i` and tarfile's ignore_zeros too) go on and
    # extract whatever members follow: anything but zero padding there was not analysed.
    tail = blob.size - end
    padding = tail <= _TAR_TAIL_MAX
    pos = end
    while padding and pos < blob.size:
        chunk = bytes(blob.read(pos, 64 << 10))
        padding = bool(chunk) and chunk.count(0) == len(chunk)
        pos += len(chunk)
    if tail > 0 and not padding:
        ctx.unknown(
            "archive.trailing-data",
            "data follows the end of the tar archive; extractors that skip bad or zero "
            "blocks read members there that were not analysed",
            member,
            offset=end,
            evidence=f"{tail} byte(s)",
        )


class _CappedIO:
    """py7zr writer that keeps a member in memory up to a cap and aborts past it."""

    def __init__(self, name: str, sink: _SevenZipSink) -> None:
        self.name = name
        self.sink = sink
        self.buffer = bytearray()

    def write(self, s: bytes | bytearray) -> int:
        self.buffer += s
        self.sink.charge(len(s), self.name)
        if len(self.buffer) > self.sink.cap:
            raise _TooBig(self.name)
        return len(s)

    def read(self, size: int | None = None) -> bytes:
        return b""

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def flush(self) -> None:
        return None

    def size(self) -> int:
        return len(self.buffer)

    def close(self) -> None:
        self.sink.done(self)


class _TooBig(Exception):
    pass


class _SevenZipSink:
    def __init__(self, ctx: Context, member: str | None, depth: int) -> None:
        self.ctx = ctx
        self.member = member
        self.depth = depth
        self.cap = ctx.limits.max_member_bytes
        self.analysed: set[str] = set()

    def create(self, filename: str) -> _CappedIO:
        return _CappedIO(filename, self)

    def charge(self, n: int, name: str) -> None:
        self.ctx.charge(n, join_member(self.member, name))
        self.ctx.check_time(self.member)

    def done(self, io_: _CappedIO) -> None:
        if io_.name in self.analysed:
            return
        self.analysed.add(io_.name)
        data = bytes(io_.buffer)
        io_.buffer = bytearray()
        self.ctx.analyse(MemoryBlob(data), join_member(self.member, io_.name), self.depth + 1)


def analyse_7z(ctx: Context, blob: Blob, member: str | None, depth: int) -> str:
    """Decompress a 7z archive member by member (bounded) and analyse each member."""
    try:
        import py7zr
        import py7zr.io
    except ImportError:
        ctx.unknown("archive.unsupported", "py7zr is not installed; 7z not analysed", member)
        return "7z"
    sink = _SevenZipSink(ctx, member, depth)

    class _Factory(py7zr.io.WriterFactory):
        def create(self, filename: str) -> Any:
            return sink.create(filename)

    try:
        source = cast(IO[bytes], BlobFile(blob, ctx.limits.max_header_bytes))
        with py7zr.SevenZipFile(source, mode="r") as archive:
            if archive.needs_password():
                ctx.unknown("archive.encrypted", "encrypted 7z archive cannot be analysed", member)
                return "7z"
            infos = archive.list()
            if len(infos) > ctx.limits.max_archive_members:
                ctx.unknown(
                    "limit.members",
                    "the archive has more members than the scanner looks at",
                    member,
                    evidence=f"max_archive_members={ctx.limits.max_archive_members}",
                )
                return "7z"
            for info in infos:
                if getattr(info, "is_symlink", False):
                    ctx.unknown(
                        "archive.symlink",
                        "member is a symbolic link; it was not followed",
                        join_member(member, info.filename),
                        severity=Severity.LOW,
                    )
            archive.extractall(factory=_Factory())  # noqa: S202  # into memory, capped
    except ScanAborted:
        raise
    except _TooBig as exc:
        ctx.unknown(
            "limit.member-bytes",
            "decompressed member is larger than the scanner reads into memory; not analysed",
            join_member(member, str(exc)),
            evidence=f"> {sink.cap} bytes",
        )
    except Exception as exc:  # py7zr raises many types on hostile input
        ctx.unknown("archive.malformed", f"7z archive could not be read: {exc}", member)
    return "7z"
