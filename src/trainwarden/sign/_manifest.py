"""Manifests of per-file, per-shard SHA-256 digests, hashed in parallel inside the tree.

Every file is opened relative to the tree's root directory, one component at a time, with
``O_NOFOLLOW``: a symlink swapped in anywhere (even after the walk) can never make us read
outside the tree.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trainwarden.errors import InputError, LimitExceeded

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "FileEntry",
    "Manifest",
    "Shard",
    "Tree",
    "hash_tree",
    "walk_tree",
]

#: Bytes per shard. Files are split at these offsets (model-signing's shard layout; its
#: verifier reads the size from the statement) and shards are hashed in parallel. 256 MiB
#: keeps every core busy to the end (an 8 GiB file is 32 equal tasks) at 4 KiB of manifest
#: per GiB.
DEFAULT_SHARD_SIZE = 1 << 28
# Read size per syscall: large enough that hashlib releases the GIL and syscalls are rare,
# small enough that the buffer stays in the core's cache between the copy and the hash
# (measured: 1 MiB beats 256 KiB and 4 MiB).
_CHUNK = 1 << 20
# Bounds on untrusted trees (a hostile directory cannot make us walk forever).
MAX_FILES = 1_000_000
MAX_DEPTH = 64
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
# O_NONBLOCK: opening a FIFO swapped in after the walk must not block; we refuse it after fstat.
_FILE_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
)

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class Shard:
    """The digest of bytes ``[start, end)`` of a file."""

    start: int
    end: int
    digest: str  # lower-case hex SHA-256


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One regular file of a manifest: relative POSIX path, size and shard digests."""

    path: str
    size: int
    shards: tuple[Shard, ...]


@dataclass(frozen=True, slots=True)
class Manifest:
    """Per-file, per-shard digests of a file or a directory tree.

    ``method`` is model-signing's serialization: ``shards`` (ours; every file is split at
    ``shard_size``) or ``files`` (one digest per file, what model-signing writes by default).
    A single signed file appears under the path ``"."`` as model-signing names it.
    """

    name: str
    files: tuple[FileEntry, ...]
    method: str = "shards"
    shard_size: int = DEFAULT_SHARD_SIZE

    def resources(self) -> list[tuple[str, str]]:
        """``(name, hex digest)`` pairs in model-signing's canonical order.

        model-signing sorts its items by path *components*, then by shard offsets (not by
        the string), and the root digest depends on that order.
        """
        items: list[tuple[tuple[tuple[str, ...], int, int], str, str]] = []
        for entry in self.files:
            parts = tuple(entry.path.split("/")) if entry.path != "." else ()
            if self.method == "files":
                items.append(((parts, 0, 0), entry.path, entry.shards[0].digest))
                continue
            items.extend(
                ((parts, s.start, s.end), f"{entry.path}:{s.start}:{s.end}", s.digest)
                for s in entry.shards
            )
        items.sort(key=lambda item: item[0])
        return [(name, digest) for _, name, digest in items]

    @property
    def root_digest(self) -> str:
        """SHA-256 (hex) over every resource digest in canonical order: the subject digest."""
        hasher = hashlib.sha256()
        for _, digest in self.resources():
            hasher.update(bytes.fromhex(digest))
        return hasher.hexdigest()

    @property
    def digest(self) -> str:
        """The checkpoint digest used by lineage and the ledger: ``sha256:<root digest>``."""
        return f"sha256:{self.root_digest}"

    @property
    def total_size(self) -> int:
        """Sum of the file sizes."""
        return sum(f.size for f in self.files)

    def by_path(self) -> dict[str, FileEntry]:
        """Entries keyed by relative path."""
        return {f.path: f for f in self.files}


@dataclass(frozen=True, slots=True)
class Tree:
    """What a walk found: regular files with sizes, and everything that is not one."""

    root: Path
    is_dir: bool
    files: tuple[tuple[str, int], ...]
    symlinks: tuple[str, ...] = ()
    special: tuple[str, ...] = ()
    unreadable: tuple[tuple[str, str], ...] = field(default_factory=tuple)


def walk_tree(root: Path) -> Tree:
    """List the regular files under ``root`` without following any symlink.

    Args:
        root: A regular file or a directory.

    Returns:
        The files (relative POSIX paths, sizes) and the symlinks, special files and
        unreadable directories met on the way.

    Raises:
        InputError: ``root`` does not exist or is not a file or directory.
        LimitExceeded: More than ``MAX_FILES`` files or deeper than ``MAX_DEPTH``.
    """
    root = Path(root)
    try:
        st = os.lstat(root)
    except OSError as exc:
        raise InputError(f"cannot read {root}: {exc.strerror or exc}") from exc
    if stat.S_ISLNK(st.st_mode):
        return Tree(root=root, is_dir=False, files=(), symlinks=(".",))
    if stat.S_ISREG(st.st_mode):
        return Tree(root=root, is_dir=False, files=((".", st.st_size),))
    if not stat.S_ISDIR(st.st_mode):
        return Tree(root=root, is_dir=False, files=(), special=(".",))
    files: list[tuple[str, int]] = []
    symlinks: list[str] = []
    special: list[str] = []
    unreadable: list[tuple[str, str]] = []
    root_fd = _open_dir(root)
    try:
        _walk(root_fd, "", 0, files, symlinks, special, unreadable)
    finally:
        os.close(root_fd)
    files.sort()
    return Tree(
        root=root,
        is_dir=True,
        files=tuple(files),
        symlinks=tuple(sorted(symlinks)),
        special=tuple(sorted(special)),
        unreadable=tuple(sorted(unreadable)),
    )


def _open_dir(path: Path) -> int:
    try:
        return os.open(path, _DIR_FLAGS)
    except OSError as exc:
        raise InputError(f"cannot open directory {path}: {exc.strerror or exc}") from exc


def _walk(
    dir_fd: int,
    prefix: str,
    depth: int,
    files: list[tuple[str, int]],
    symlinks: list[str],
    special: list[str],
    unreadable: list[tuple[str, str]],
) -> None:
    if depth > MAX_DEPTH:
        raise LimitExceeded("max_depth", MAX_DEPTH, f"directory nesting deeper than {MAX_DEPTH}")
    with os.scandir(dir_fd) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        rel = f"{prefix}{entry.name}"
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            symlinks.append(rel)
        elif stat.S_ISDIR(st.st_mode):
            try:
                sub_fd = os.open(entry.name, _DIR_FLAGS, dir_fd=dir_fd)
            except OSError as exc:
                unreadable.append((rel, exc.strerror or str(exc)))
                continue
            try:
                _walk(sub_fd, f"{rel}/", depth + 1, files, symlinks, special, unreadable)
            finally:
                os.close(sub_fd)
        elif stat.S_ISREG(st.st_mode):
            files.append((rel, st.st_size))
            if len(files) > MAX_FILES:
                raise LimitExceeded("max_files", MAX_FILES, f"more than {MAX_FILES} files")
        else:
            special.append(rel)


class _Changed(Exception):
    """A file changed type or size between the walk and the hash."""


def _open_beneath(root: Path, is_dir: bool, rel: str) -> int:
    """Open ``rel`` under ``root`` for reading, refusing a symlink at every component."""
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


def _shards(size: int, shard_size: int) -> Iterator[tuple[int, int]]:
    # model-signing's layout: [0, s), [s, 2s), ..., [ks, size); an empty file has no shard.
    start = 0
    while start < size:
        end = min(start + shard_size, size)
        yield start, end
        start = end


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    # preadv fills our buffer in place (no allocation per chunk) and, being positional, lets
    # several threads read shards of the same file without sharing a file offset.
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], offset)
    data = os.pread(fd, len(view), offset)  # platforms without preadv
    view[: len(data)] = data
    return len(data)


def _hash_range(root: Path, is_dir: bool, rel: str, start: int, end: int) -> str:
    fd = _open_beneath(root, is_dir, rel)
    try:
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
        return hasher.hexdigest()
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class HashResult:
    """Digests of the files that could be hashed, and why the others could not."""

    entries: tuple[FileEntry, ...]
    failed: tuple[tuple[str, str], ...]


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

    Returns:
        The entries hashed, and ``(path, reason)`` for files that changed or vanished.
    """
    todo = list(tree.files if paths is None else paths)
    tasks: list[tuple[str, int, int]] = []
    for rel, size in todo:
        if method == "files":
            tasks.append((rel, 0, size))
        else:
            tasks.extend((rel, start, end) for start, end in _shards(size, shard_size))
    tasks.sort(key=lambda t: t[1] - t[2])  # longest first: better balance across threads
    total = sum(end - start for _, start, end in tasks)
    digests: dict[tuple[str, int, int], str] = {}
    failed: dict[str, str] = {}
    n_workers = workers or _cpu_count()
    done = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=n_workers) as pool:
        futures = {
            pool.submit(_hash_range, tree.root, tree.is_dir, rel, start, end): (rel, start, end)
            for rel, start, end in tasks
            if not (method == "files" and end == 0)
        }
        for future in concurrent.futures.as_completed(futures):
            key = futures[future]
            try:
                digests[key] = future.result()
            except _Changed as exc:
                failed[key[0]] = str(exc)
            except OSError as exc:
                failed[key[0]] = exc.strerror or str(exc)
            done += key[2] - key[1]
            if progress is not None:
                progress(done, total)
    empty = hashlib.sha256(b"").hexdigest()
    entries = []
    for rel, size in todo:
        if rel in failed:
            continue
        if method == "files":
            shards: tuple[Shard, ...] = (
                Shard(0, size, digests[(rel, 0, size)] if size else empty),
            )
        else:
            shards = tuple(Shard(s, e, digests[(rel, s, e)]) for s, e in _shards(size, shard_size))
        entries.append(FileEntry(path=rel, size=size, shards=shards))
    return HashResult(entries=tuple(entries), failed=tuple(sorted(failed.items())))


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
