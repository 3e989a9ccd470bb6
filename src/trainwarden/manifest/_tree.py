"""Walk a file or directory tree and hash its files in parallel shards, never leaving the tree.

Every file is opened relative to the tree's root directory, one component at a time, with
``O_NOFOLLOW``: a symlink swapped in anywhere (even after the walk) can never make us read
outside the tree. Every file's identity (device, inode, size, mtime, ctime) is recorded by the
walk and compared with ``fstat`` before and after each shard is hashed, so a file rewritten in
place while it is hashed is reported instead of yielding digests of bytes that never existed
together.
"""

from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import os
import stat
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trainwarden._system import cpu_count
from trainwarden.errors import ConfigError, InputError, LimitExceeded
from trainwarden.manifest._model import (
    DEFAULT_SHARD_SIZE,
    METHODS,
    FileEntry,
    Shard,
    shard_ranges,
)

__all__ = [
    "MAX_DEPTH",
    "MAX_FILES",
    "HashResult",
    "ProgressCallback",
    "Stamp",
    "Tree",
    "hash_tree",
    "walk_tree",
]

# Read size per syscall: large enough that hashlib releases the GIL and syscalls are rare,
# small enough that the buffer stays in the core's cache between the copy and the hash
# (measured: 1 MiB beats 256 KiB and 4 MiB).
_CHUNK = 1 << 20
#: Bounds on untrusted trees (a hostile directory cannot make us walk forever).
MAX_FILES = 1_000_000
MAX_DEPTH = 64
_DIR_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_DIRECTORY", 0)
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
)
# O_NONBLOCK: opening a FIFO swapped in after the walk must not block; we refuse it after fstat.
_FILE_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
)
_EMPTY = hashlib.sha256(b"").hexdigest()

#: ``progress(bytes_done, bytes_total)``; called under a lock (never concurrently), from the
#: hashing threads, at least once per MiB hashed.
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class Stamp:
    """What identifies one version of a file: any write, truncation or replacement changes it.

    ``ctime`` cannot be set by a user (``utime`` sets it to now), so an in-place rewrite that
    restores size and mtime still shows; a file swapped by rename has another inode.
    """

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Stamp:
        """The stamp of a ``stat`` result."""
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def changes(self, now: Stamp) -> str | None:
        """What differs in ``now`` (``None`` when nothing does), for a message."""
        if (now.dev, now.ino) != (self.dev, self.ino):
            return "replaced by another file"
        if now.size != self.size:
            return f"size changed from {self.size} to {now.size} bytes"
        if now.mtime_ns != self.mtime_ns or now.ctime_ns != self.ctime_ns:
            return "rewritten (modification or change time moved)"
        return None


@dataclass(frozen=True, slots=True)
class Tree:
    """What a walk found: regular files with sizes, and everything that is not one.

    Attributes:
        root: The walked path.
        is_dir: Whether ``root`` is a directory (else a single file, listed as ``"."``).
        files: ``(relative POSIX path, size)`` of every regular file, sorted.
        symlinks: Symbolic links met (never followed); ``(".",)`` when ``root`` is one.
        special: FIFOs, sockets and devices met.
        unreadable: ``(relative path, reason)`` of directories that could not be read.
        stamps: Each regular file's identity at the walk (see :class:`Stamp`).
    """

    root: Path
    is_dir: bool
    files: tuple[tuple[str, int], ...]
    symlinks: tuple[str, ...] = ()
    special: tuple[str, ...] = ()
    unreadable: tuple[tuple[str, str], ...] = ()
    stamps: dict[str, Stamp] = field(default_factory=dict, compare=False, repr=False)


def walk_tree(root: str | os.PathLike[str]) -> Tree:
    """List the regular files under ``root`` without following any symlink.

    Args:
        root: A regular file or a directory.

    Returns:
        The files (relative POSIX paths, sizes) and the symlinks, special files and
        unreadable directories met on the way.

    Raises:
        InputError: ``root`` does not exist or cannot be opened.
        LimitExceeded: More than ``MAX_FILES`` files or deeper than ``MAX_DEPTH``.
    """
    root = Path(root)
    try:
        st = os.lstat(root)
    except OSError as exc:
        raise InputError(f"cannot read {root}: {_reason(exc)}") from exc
    if stat.S_ISLNK(st.st_mode):
        return Tree(root=root, is_dir=False, files=(), symlinks=(".",))
    if stat.S_ISREG(st.st_mode):
        return Tree(root=root, is_dir=False, files=((".", st.st_size),), stamps={".": Stamp.of(st)})
    if not stat.S_ISDIR(st.st_mode):
        return Tree(root=root, is_dir=False, files=(), special=(".",))
    walk = _Walk()
    root_fd = _open_dir(root)
    try:
        walk.visit(root_fd, "", 0)
    finally:
        os.close(root_fd)
    walk.files.sort()
    return Tree(
        root=root,
        is_dir=True,
        files=tuple(walk.files),
        symlinks=tuple(sorted(walk.symlinks)),
        special=tuple(sorted(walk.special)),
        unreadable=tuple(sorted(walk.unreadable)),
        stamps=walk.stamps,
    )


def _open_dir(path: Path) -> int:
    try:
        return os.open(path, _DIR_FLAGS)
    except OSError as exc:
        raise InputError(f"cannot open directory {path}: {_reason(exc)}") from exc


class _Walk:
    """Accumulates one directory walk (descriptor-relative, never through a symlink)."""

    def __init__(self) -> None:
        self.files: list[tuple[str, int]] = []
        self.symlinks: list[str] = []
        self.special: list[str] = []
        self.unreadable: list[tuple[str, str]] = []
        self.stamps: dict[str, Stamp] = {}

    def visit(self, dir_fd: int, prefix: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise LimitExceeded(
                "max_depth", MAX_DEPTH, f"directory nesting deeper than {MAX_DEPTH}"
            )
        with os.scandir(dir_fd) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            rel = f"{prefix}{entry.name}"
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as exc:  # removed since the listing
                self.unreadable.append((rel, _reason(exc)))
                continue
            if stat.S_ISLNK(st.st_mode):
                self.symlinks.append(rel)
            elif stat.S_ISDIR(st.st_mode):
                try:
                    sub_fd = os.open(entry.name, _DIR_FLAGS, dir_fd=dir_fd)
                except OSError as exc:
                    self.unreadable.append((rel, _reason(exc)))
                    continue
                try:
                    self.visit(sub_fd, f"{rel}/", depth + 1)
                finally:
                    os.close(sub_fd)
            elif stat.S_ISREG(st.st_mode):
                self.files.append((rel, st.st_size))
                self.stamps[rel] = Stamp.of(st)
                if len(self.files) > MAX_FILES:
                    raise LimitExceeded("max_files", MAX_FILES, f"more than {MAX_FILES} files")
            else:
                self.special.append(rel)


class _Changed(Exception):
    """A file changed (type, size, content stamp) between the walk and the end of its hash."""


def open_beneath(root: Path, is_dir: bool, rel: str) -> int:
    """Open ``rel`` under ``root`` for reading, refusing a symlink at every component.

    Never blocks (a FIFO swapped in is opened non-blocking, then refused).

    Raises:
        OSError: A component is missing, a symlink (``ELOOP``) or not a directory.
        _Changed: The file is no longer a regular file.
    """
    if not is_dir:
        fd = os.open(root, _FILE_FLAGS)
    else:
        dir_fd = os.open(root, _DIR_FLAGS)
        try:
            *dirs, name = rel.split("/")
            for part in dirs:
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=dir_fd)
                os.close(dir_fd)
                dir_fd = next_fd
            fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _Changed(f"{rel} is no longer a regular file")
    return fd


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    # preadv fills our buffer in place (no allocation per chunk) and, being positional, lets
    # several threads read shards of the same file without sharing a file offset.
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], offset)
    data = os.pread(fd, len(view), offset)  # platforms without preadv
    view[: len(data)] = data
    return len(data)


class _Progress:
    """Thread-safe byte counter that calls the user's callback one call at a time."""

    def __init__(self, callback: ProgressCallback | None, total: int) -> None:
        self.callback = callback
        self.total = total
        self.done = 0
        self.lock = threading.Lock()

    def add(self, n: int) -> None:
        if self.callback is None:
            return
        with self.lock:
            self.done += n
            self.callback(self.done, self.total)


def _check_stamp(rel: str, fd: int, expected: Stamp | None, when: str) -> Stamp:
    now = Stamp.of(os.fstat(fd))
    if expected is not None:
        change = expected.changes(now)
        if change is not None:
            raise _Changed(f"{rel} changed {when}: {change}")
    return now


def _hash_range(
    root: Path,
    is_dir: bool,
    rel: str,
    start: int,
    end: int,
    stamp: Stamp | None,
    progress: _Progress,
) -> str:
    fd = open_beneath(root, is_dir, rel)
    try:
        # The file must still be the one the walk saw; without a recorded stamp (a caller's
        # own path list) the stamp at open is the reference for the end of this shard.
        stamp = _check_stamp(rel, fd, stamp, "after the walk")
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_SEQUENTIAL)
        hasher = hashlib.sha256()
        buf = bytearray(min(_CHUNK, max(end - start, 1)))
        view = memoryview(buf)
        offset = start
        while offset < end:
            want = min(len(buf), end - offset)
            n = _pread_into(fd, view[:want], offset)
            if n <= 0:
                raise _Changed(f"{rel} is shorter than recorded ({offset} < {end} bytes)")
            # hashlib releases the GIL for buffers this large: threads hash in parallel.
            hasher.update(view[:n])
            offset += n
            progress.add(n)
        # Every shard of a file is checked against the walk's stamp before and after it is
        # read, and stamps only move forward: if the last check still matches, no byte of
        # the file changed between the walk and the end of hashing, so the shard digests
        # together describe one version of the file.
        _check_stamp(rel, fd, stamp, "while it was being hashed")
        return hasher.hexdigest()
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class HashResult:
    """Digests of the files that could be hashed, and why the others could not.

    ``failed`` holds ``(relative path, reason)``; ``changed`` the subset of those paths that
    changed while being hashed (rather than vanishing or becoming unreadable).
    """

    entries: tuple[FileEntry, ...]
    failed: tuple[tuple[str, str], ...]
    changed: frozenset[str] = frozenset()


def hash_tree(
    tree: Tree,
    *,
    paths: Sequence[tuple[str, int]] | None = None,
    method: str = "shards",
    shard_size: int = DEFAULT_SHARD_SIZE,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> HashResult:
    """Hash files of ``tree`` (all of them, or ``paths``) in parallel shards.

    Shards of all files go to one thread pool, largest first, so one big file uses every
    core and many small files do too. ``method="files"`` hashes each file whole (one shard).

    Args:
        tree: The result of :func:`walk_tree`.
        paths: ``(relative path, size)`` pairs to hash instead of every file of ``tree``.
        method: ``shards`` or ``files``.
        shard_size: Bytes per shard (``shards`` method).
        workers: Hashing threads (default: the CPUs this process may use).
        progress: Called with ``(bytes_done, bytes_total)`` as bytes are hashed.

    Returns:
        The entries hashed, and ``(path, reason)`` for files that changed, vanished or could
        not be read (never a digest of a file that changed while it was read).

    Raises:
        ConfigError: Unknown ``method`` or a non-positive ``workers``.
    """
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be at least 1, not {workers}")
    todo = list(tree.files if paths is None else paths)
    tasks: list[tuple[str, int, int]] = []
    for rel, size in todo:
        if method == "files":
            if size:
                tasks.append((rel, 0, size))
        else:
            tasks.extend((rel, start, end) for start, end in shard_ranges(size, shard_size))
    tasks.sort(key=lambda t: t[1] - t[2])  # longest first: better balance across threads
    counter = _Progress(progress, sum(end - start for _, start, end in tasks))
    digests: dict[tuple[str, int, int], str] = {}
    failed: dict[str, str] = {}
    changed: set[str] = set()
    n_workers = min(workers or cpu_count(), max(1, len(tasks)))
    with concurrent.futures.ThreadPoolExecutor(max_workers=n_workers) as pool:
        futures = {
            pool.submit(
                _hash_range,
                tree.root,
                tree.is_dir,
                rel,
                start,
                end,
                tree.stamps.get(rel),
                counter,
            ): (rel, start, end)
            for rel, start, end in tasks
        }
        for future in concurrent.futures.as_completed(futures):
            key = futures[future]
            try:
                digests[key] = future.result()
            except _Changed as exc:
                failed.setdefault(key[0], str(exc))
                changed.add(key[0])
            except OSError as exc:
                failed.setdefault(key[0], _reason(exc))
    # Empty files are never opened by a shard; they must still be what the walk saw.
    for rel, size in todo:
        if size == 0 and rel not in failed:
            problem = _recheck_empty(tree, rel)
            if problem is not None:
                failed[rel], was_changed = problem
                if was_changed:
                    changed.add(rel)
    entries = []
    for rel, size in todo:
        if rel in failed:
            continue
        if method == "files":
            shards: tuple[Shard, ...] = (
                Shard(0, size, digests[(rel, 0, size)] if size else _EMPTY),
            )
        else:
            shards = tuple(
                Shard(s, e, digests[(rel, s, e)]) for s, e in shard_ranges(size, shard_size)
            )
        entries.append(FileEntry(path=rel, size=size, shards=shards))
    return HashResult(
        entries=tuple(entries),
        failed=tuple(sorted(failed.items())),
        changed=frozenset(changed & set(failed)),
    )


def _recheck_empty(tree: Tree, rel: str) -> tuple[str, bool] | None:
    """Why an empty file may not be listed as empty (reason, whether it changed), or None."""
    try:
        fd = open_beneath(tree.root, tree.is_dir, rel)
    except _Changed as exc:
        return str(exc), True
    except OSError as exc:
        return _reason(exc), False
    try:
        _check_stamp(rel, fd, tree.stamps.get(rel), "while it was being hashed")
    except _Changed as exc:
        return str(exc), True
    finally:
        os.close(fd)
    return None


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "is a symbolic link (never followed)"
    return exc.strerror or str(exc)
