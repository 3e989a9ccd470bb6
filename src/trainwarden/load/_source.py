"""Read a loader's input once, through one descriptor, into the buffer that is scanned.

Small files become a private snapshot; large ones are mapped and read with ``pread`` (one copy).
"""

from __future__ import annotations

import contextlib
import errno
import io
import mmap
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainwarden.errors import InputError

__all__ = ["SNAPSHOT_BYTES", "BufferReader", "Source", "is_path", "open_source", "source_name"]

#: Files up to this size are read into private memory; larger ones are mapped.
SNAPSHOT_BYTES = 64 * 1024 * 1024


@dataclass
class Source:
    """The bytes of one input, read once.

    Attributes:
        name: how the input is named in reports and logs.
        data: the whole input (a read-only view of a private mapping or of bytes read).
        path: the path given, if any.
        fd: our descriptor of that path (the inode we read), while the source is open.
        private: ``data`` is our own copy; ``False`` when it maps the file, so an in-place
            writer could still change it (loaders then judge each pickle again as read).
        raw: the private copy as a ``bytes`` object, when there is one.
    """

    name: str
    data: memoryview
    path: str | None = None
    fd: int | None = None
    private: bool = True
    raw: bytes | None = None

    @property
    def fd_path(self) -> str | None:
        """A path that reopens *our* descriptor's file (not whatever is at ``path`` now)."""
        if self.fd is None:
            return None
        for root in ("/proc/self/fd", "/dev/fd"):
            candidate = f"{root}/{self.fd}"
            if _same_file(candidate, self.fd):
                return candidate
        return None

    def reader(self) -> Any:
        """A fresh file object over the input (what the real loader reads)."""
        if self.raw is not None:
            # BytesIO shares a bytes object without copying it, and reads at C speed.
            return io.BytesIO(self.raw)
        raw: io.RawIOBase
        if self.private or self.fd is None:
            raw = BufferReader(self.data, self.name)
        else:
            # pread on our descriptor: the kernel copies tensor bytes straight into their
            # storage, as torch's own reads do, without faulting the mapping in as well.
            raw = _DescriptorReader(self.fd, len(self.data), self.name)
        return io.BufferedReader(raw, buffer_size=1 << 16)


class _SeekableReader(io.RawIOBase):
    """A read-only, seekable raw file over ``size`` bytes; subclasses supply ``readinto``."""

    def __init__(self, size: int, name: str) -> None:
        super().__init__()
        self._size = size
        self._pos = 0
        self.name = name

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos


class BufferReader(_SeekableReader):
    """A seekable, read-only file over a buffer, without copying it (``BytesIO`` would)."""

    def __init__(self, data: memoryview, name: str = "<bytes>") -> None:
        super().__init__(len(data), name)
        self._data = data

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = max(0, min(len(view), self._size - self._pos))
        view[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n

    def readall(self) -> bytes:
        out = bytes(self._data[self._pos :])
        self._pos = self._size
        return out


class _DescriptorReader(_SeekableReader):
    """A seekable reader over ``size`` bytes of a descriptor, by ``pread`` (no shared offset)."""

    def __init__(self, fd: int, size: int, name: str) -> None:
        super().__init__(size, name)
        self._fd = fd

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        # Never read past the length that was scanned, even if the file grew since.
        want = max(0, min(len(view), self._size - self._pos))
        if not want:
            return 0
        n = os.preadv(self._fd, [view[:want]], self._pos)
        self._pos += n
        return n


def is_path(obj: object) -> bool:
    """True for ``str`` and path-like objects (what torch treats as a file name)."""
    return isinstance(obj, (str, os.PathLike))


def source_name(obj: object) -> str:
    """A name for ``obj`` in reports: its path, its file object's name, or ``<stream>``."""
    if is_path(obj):
        return os.fsdecode(os.fspath(obj))  # type: ignore[call-overload]
    name = getattr(obj, "name", None)
    return name if isinstance(name, str) else "<stream>"


@contextmanager
def open_source(f: Any, *, name: str = "<bytes>") -> Iterator[Source]:
    """Read ``f`` (path, path-like, file object or bytes) once and yield its :class:`Source`.

    ``name`` names an in-memory buffer in reports (paths and file objects name themselves).

    Raises:
        InputError: the input cannot be opened or read, or is not binary.
    """
    if is_path(f):
        with _open_path(os.fsdecode(os.fspath(f))) as source:
            yield source
        return
    if isinstance(f, bytes):
        yield Source(name, memoryview(f), raw=f)
        return
    if isinstance(f, (bytearray, memoryview)):
        yield Source(name, memoryview(f).toreadonly().cast("B"))
        return
    read = getattr(f, "read", None)
    if read is None:
        raise InputError(f"cannot load from a {type(f).__name__}: expected a path or file object")
    # One read of the rest of the stream: the loader then only ever sees these bytes, even if
    # the stream would answer differently when read again.
    data = read()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InputError(f"{source_name(f)}: the file object is not opened in binary mode")
    raw = data if isinstance(data, bytes) else None
    yield Source(source_name(f), memoryview(data).toreadonly().cast("B"), raw=raw)


@contextmanager
def _open_path(path: str) -> Iterator[Source]:
    try:
        # O_NONBLOCK: opening a FIFO planted where a checkpoint was expected must not hang.
        fd = os.open(path, os.O_RDONLY | _CLOEXEC | _NONBLOCK)
    except OSError as exc:
        raise os_input_error(exc) from exc
    mapping: mmap.mmap | None = None
    view: memoryview | None = None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise os_input_error(IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path))
        if not stat.S_ISREG(info.st_mode):
            # A FIFO blocks or never ends, a device (/dev/zero) never ends: neither is a file
            # that can be scanned and then loaded as the same bytes.
            raise InputError(f"{path} is {_describe(info.st_mode)}, not a regular file")
        if _NONBLOCK:
            os.set_blocking(fd, True)
        if info.st_size > SNAPSHOT_BYTES:
            # A read-only mapping of the inode we opened: zero-copy, and a rename or replace
            # of the path cannot change it. Every import is still re-checked at unpickle time,
            # so even an in-place writer can change data, never what code runs.
            try:
                mapping = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError):
                mapping = None
        raw = None if mapping is not None else _read_all(fd, path)
        view = memoryview(mapping) if mapping is not None else memoryview(raw)  # type: ignore[arg-type]
        yield Source(path, view, path=path, fd=fd, private=mapping is None, raw=raw)
    finally:
        if view is not None:
            view.release()
        if mapping is not None:
            # A view still exported (a loader kept one) makes close fail: the GC unmaps it later.
            with contextlib.suppress(BufferError):
                mapping.close()
        os.close(fd)


_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def _describe(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _read_all(fd: int, path: str) -> bytes:
    chunks: list[bytes] = []
    try:
        while chunk := os.read(fd, 1 << 24):
            chunks.append(chunk)
    except OSError as exc:
        raise os_input_error(exc) from exc
    return b"".join(chunks)


def os_input_error(exc: OSError) -> InputError:
    """An error that is both an :class:`InputError` and ``exc``'s own ``OSError`` subclass.

    Code written for ``torch.load`` catches ``FileNotFoundError`` and friends; the CLI maps
    ``InputError`` to exit 2. One exception satisfies both.
    """
    kind = type(exc)
    cls = _OS_ERRORS.get(kind)
    if cls is None:
        cls = _OS_ERRORS[kind] = type(kind.__name__, (InputError, kind), {})
    if exc.errno is None:
        return cls(str(exc))  # type: ignore[no-any-return]
    return cls(exc.errno, exc.strerror, exc.filename)  # type: ignore[no-any-return]


_OS_ERRORS: dict[type[OSError], type[Any]] = {}


def _same_file(candidate: str, fd: int) -> bool:
    try:
        a, b = Path(candidate).stat(), os.fstat(fd)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
