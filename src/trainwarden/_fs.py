"""File-system primitives every capability shares: one atomic write, safe opens, output checks.

Private to trainwarden, shared by all of its packages (a top-level ``_module`` is the one kind of
private module another package may import; see ``docs/architecture.md``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import TypeAlias

from trainwarden.errors import InputError

#: What ``atomic_write`` writes piece by piece: anything the buffer protocol exposes as bytes.
Buffer: TypeAlias = bytes | bytearray | memoryview

__all__ = [
    "atomic_write",
    "check_output_path",
    "fsync_directory",
    "open_regular",
    "read_regular",
    "refuse_special",
]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def atomic_write(
    path: str | os.PathLike[str],
    data: bytes | str | Iterable[Buffer],
    *,
    mode: int = 0o644,
    exclusive: bool = False,
    what: str = "file",
) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    A fresh temporary file is created beside ``path`` with ``O_CREAT | O_EXCL | O_NOFOLLOW``
    (so a symlink or file planted at the temporary name is never followed or reused), given
    ``mode`` explicitly (the umask cannot widen or narrow it), written, ``fsync``-ed, renamed
    over ``path``, and the directory is ``fsync``-ed so the rename itself survives a crash.

    Args:
        path: The destination. A symlink at ``path`` is replaced, never written through. An
            existing device, FIFO or socket (``/dev/full``, ``/dev/stdout``) is refused: a
            rename would replace the node itself with a regular file.
        data: Bytes, text written as UTF-8, or an iterable of byte buffers written in turn
            (for large files produced piece by piece, without one buffer of them all).
        mode: Permission bits of the new file (``0o600`` for secrets).
        exclusive: Refuse when ``path`` already exists (for files that must never be
            overwritten, such as a new key). Checked with a hard link, which is atomic.
        what: What the file is, for the error message ("signature", "lock"...).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        InputError: The file cannot be written (full disk, permissions, ``path`` is a
            directory or a special file, or it exists and ``exclusive`` is set). Nothing is
            left behind; an exception raised by ``data``'s iterator propagates, also leaving
            nothing behind.
    """
    target = Path(path)
    chunks: Iterable[Buffer]
    if isinstance(data, str):
        chunks = (data.encode("utf-8"),)
    elif isinstance(data, (bytes, bytearray, memoryview)):
        chunks = (data,)
    else:
        chunks = data
    refuse_special(target, what)
    directory = target.parent
    # os.urandom is what secrets.token_hex draws from; importing secrets (hmac, random,
    # hashlib) costs every short-lived command ~5 ms of start-up for one name.
    tmp = directory / f".{target.name}.{os.urandom(6).hex()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, mode)
    except OSError as exc:
        raise InputError(f"cannot write {what} {target}: {_reason(exc)}") from exc
    try:
        try:
            os.fchmod(fd, mode)
            for chunk in chunks:
                view = memoryview(chunk).cast("B")
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
            os.fsync(fd)
        except BaseException:
            # Not only OSError: the data's iterator may fail; nothing may be left behind.
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        finally:
            os.close(fd)
        if exclusive:
            # link() fails if the target exists, atomically; then drop the temporary name.
            os.link(tmp, target, follow_symlinks=False)
            tmp.unlink()
        else:
            if target.is_dir() and not target.is_symlink():
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(target))
            tmp.replace(target)
        fsync_directory(directory)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise InputError(f"cannot write {what} {target}: {_reason(exc)}") from exc
    return target


def refuse_special(target: Path, what: str) -> None:
    """Refuse to replace an existing device, FIFO or socket with a regular file."""
    try:
        info = target.stat()  # follows links: /dev/stdout -> /proc/self/fd/1 -> a pipe
    except (OSError, ValueError):
        return  # absent, a dangling link, or unreadable: the write itself says what fails
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        raise InputError(
            f"cannot write {what} {target}: it is {describe_mode(info.st_mode)}; refusing to "
            "replace it with a regular file"
        )


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """``fsync`` a directory so that a rename or create in it survives a crash (best effort).

    Some file systems (and all of Windows) cannot open or sync a directory; that is not an
    error, the data itself was synced already.
    """
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def open_regular(path: str | os.PathLike[str], *, what: str = "file") -> int:
    """Open ``path`` read-only and return the descriptor, refusing anything but a regular file.

    Opening never blocks (``O_NONBLOCK``: a FIFO or a device cannot hang us) and does not
    follow a symlink in the last component when ``path`` itself is a symlink loop; the file
    type is checked on the open descriptor (``fstat``), so it cannot be swapped in between.
    Symlinks to regular files are followed (that is how checkpoints are often shared).

    Raises:
        InputError: Missing, unreadable, a directory, FIFO, socket, device or symlink loop.
    """
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | _NONBLOCK | _CLOEXEC)
    except OSError as exc:
        raise InputError(f"cannot open {what} {p}: {_reason(exc)}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{what} {p} is {describe_mode(st.st_mode)}, not a regular file")
        if _NONBLOCK:
            # Back to blocking reads: O_NONBLOCK was only there to make the open safe.
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(
    path: str | os.PathLike[str], *, limit: int | None = None, what: str = "file"
) -> bytes:
    """Read a whole regular file (see :func:`open_regular`), at most ``limit`` bytes.

    Raises:
        InputError: As :func:`open_regular`, a read error, or a file larger than ``limit``.
    """
    fd = open_regular(path, what=what)
    try:
        size = os.fstat(fd).st_size
        if limit is not None and size > limit:
            raise InputError(f"{what} {path} is {size} bytes; the limit is {limit}")
        chunks = []
        remaining = (limit + 1) if limit is not None else None
        while True:
            chunk = os.read(fd, 1 << 20 if remaining is None else min(1 << 20, remaining))
            if not chunk:
                break
            chunks.append(chunk)
            if remaining is not None:
                remaining -= len(chunk)
                if remaining <= 0:
                    raise InputError(f"{what} {path} grew past the limit of {limit} bytes")
        return b"".join(chunks)
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {_reason(exc)}") from exc
    finally:
        os.close(fd)


def check_output_path(
    output: str | os.PathLike[str] | None, inputs: Iterable[str | os.PathLike[str]]
) -> None:
    """Refuse an output path that is one of ``inputs`` or lies inside an input directory.

    Writing a report or signature over the file being checked destroys the evidence (and a
    checkpoint replaced by its own signature is silent data loss). Paths are compared after
    resolving symlinks and ``..``; hard links to an input are caught by device and inode.

    Raises:
        InputError: ``output`` would overwrite an input or be written inside one.
    """
    if output is None or str(output) == "-":
        return
    out = Path(output)
    out_resolved = _resolve(out)
    out_stat = _stat(out)
    for item in inputs:
        source = Path(item)
        src_resolved = _resolve(source)
        src_stat = _stat(source)
        same_file = (
            out_stat is not None
            and src_stat is not None
            and ((out_stat.st_dev, out_stat.st_ino) == (src_stat.st_dev, src_stat.st_ino))
        )
        if same_file or out_resolved == src_resolved:
            raise InputError(f"refusing to write the output over its input {source}")
        if (
            src_stat is not None
            and stat.S_ISDIR(src_stat.st_mode)
            and (src_resolved in out_resolved.parents)
        ):
            raise InputError(f"refusing to write the output {out} inside the input {source}")


def describe_mode(mode: int) -> str:
    """A short noun phrase for a file type: ``a directory``, ``a FIFO``..."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISLNK(mode):
        return "a symlink"
    return "not a regular file"


def _resolve(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # symlink loop
        return path.absolute()


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except (OSError, ValueError):
        return None


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "too many levels of symbolic links (a symlink loop)"
    return exc.strerror or str(exc)
