"""Parallel file hashing close to the machine's sha256 limit.

OpenSSL's sha256 (through :mod:`hashlib`) releases the GIL for buffers over 2 KiB, so threads
hash large files in parallel; small files are batched so per-task overhead stays low.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import stat
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

from trainwarden._system import cpu_count

__all__ = [
    "FileDigest",
    "HashFailure",
    "blake3_available",
    "default_workers",
    "hash_file",
    "hash_files",
    "new_hasher",
    "record_digest",
]

# Files up to this size are read in one call; larger ones stream through a reused buffer so
# peak memory stays at one buffer a thread whatever the file size.
_WHOLE_READ_LIMIT = 1 << 20
_CHUNK = 1 << 20
_BATCH_BYTES = 4 << 20
# At this size the GIL-free part (read + sha256) outweighs the per-file interpreter work.
_BIG_FILE = 256 << 10
_BATCH_FILES = 512

_local = threading.local()
_sha256 = hashlib.sha256
# O_NONBLOCK: a FIFO planted where a file was expected must not block the open (regular files
# ignore the flag); fstat then refuses anything that is not a regular file.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)


class FileDigest(NamedTuple):
    """The digest, size and mode of one file, as read at hashing time.

    A tuple rather than a dataclass: one is built per file, tens of thousands per run.
    """

    path: str
    digest: bytes
    size: int
    mode: int
    algorithm: str = "sha256"

    @property
    def hexdigest(self) -> str:
        """The digest as lower-case hex."""
        return self.digest.hex()


@dataclass(frozen=True, slots=True)
class HashFailure:
    """A file that could not be read; it is reported as not verified, never as intact."""

    path: str
    reason: str
    missing: bool = False


def default_workers() -> int:
    """Threads to hash with: one a usable CPU (hashing is CPU-bound once the page cache is warm)."""
    return cpu_count(cap=32)


def _buffer() -> bytearray:
    buf: bytearray | None = getattr(_local, "buffer", None)
    if buf is None:
        buf = bytearray(_CHUNK)
        _local.buffer = buf
    return buf


def new_hasher(algorithm: str) -> Any:
    """A hasher for ``algorithm``: a :mod:`hashlib` name, or ``blake3`` when that is installed.

    Raises:
        ValueError: the algorithm is unknown or not available here.
    """
    if algorithm == "blake3":
        try:
            import blake3  # optional in the core; the torch extra installs it
        except ImportError:
            raise ValueError("blake3 requested but the 'blake3' package is not installed") from None
        # max_threads=1: we parallelise across files already.
        return blake3.blake3()
    return hashlib.new(algorithm)


def blake3_available() -> bool:
    """Whether the optional ``blake3`` package is importable."""
    import importlib.util

    return importlib.util.find_spec("blake3") is not None


def hash_file(path: str, algorithm: str = "sha256") -> FileDigest:
    """Hash one file, following symlinks (the import system reads through them too).

    Raises:
        OSError: the file cannot be opened or read.
    """
    fd = os.open(path, _OPEN_FLAGS)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise IsADirectoryError(f"not a regular file: {path}")
        size = 0
        if info.st_size <= _WHOLE_READ_LIMIT:
            # One read of size+1 bytes tells us the whole file fits (a file that grew between
            # fstat and read is still hashed entirely by the loop below).
            data = os.read(fd, info.st_size + 1)
            size = len(data)
            if size <= info.st_size:
                if algorithm == "sha256":  # the common case, without the generic lookup
                    return FileDigest(path, _sha256(data).digest(), size, info.st_mode)
                whole = new_hasher(algorithm)
                whole.update(data)
                return FileDigest(path, whole.digest(), size, info.st_mode, algorithm)
            hasher = new_hasher(algorithm)
            hasher.update(data)
        else:
            hasher = new_hasher(algorithm)
        buf = _buffer()
        view = memoryview(buf)
        with open(fd, "rb", buffering=0, closefd=False) as stream:
            while True:
                n = stream.readinto(buf)
                if not n:
                    break
                hasher.update(view[:n])
                size += n
        return FileDigest(path, hasher.digest(), size, info.st_mode, algorithm)
    finally:
        os.close(fd)


def _hash_batch(paths: Sequence[str], algorithm: str) -> list[FileDigest | HashFailure]:
    """Hash a batch of files in one task, so the per-task cost is paid once a batch.

    The sha256 path for small files is inlined: per-file interpreter work holds the GIL
    (and hashlib keeps it for buffers under 2 KiB), so every call saved there is time the
    other thread can spend in open/read/sha256 of large buffers, which release it.
    """
    out: list[FileDigest | HashFailure] = []
    append = out.append
    if algorithm != "sha256":
        for path in paths:
            append(_hash_or_fail(path, algorithm))
        return out
    open_, read, fstat, close, sha256 = os.open, os.read, os.fstat, os.close, _sha256
    is_reg = stat.S_ISREG
    for path in paths:
        try:
            fd = open_(path, _OPEN_FLAGS)
        except OSError:  # one bad file must not stop the batch
            append(_hash_or_fail(path, algorithm))  # reports why, in one place
            continue
        try:
            info = fstat(fd)
            size = info.st_size
            # Same rules as hash_file: regular files only, and one read of size+1 bytes
            # proves the whole file was read (anything longer takes the streaming path).
            if is_reg(info.st_mode) and size <= _WHOLE_READ_LIMIT:
                data = read(fd, size + 1)
                if len(data) <= size:
                    append(FileDigest(path, sha256(data).digest(), len(data), info.st_mode))
                    continue
        except OSError:
            pass  # hash_file below repeats the step and reports the error
        finally:
            close(fd)
        append(_hash_or_fail(path, algorithm))
    return out


def _hash_or_fail(path: str, algorithm: str) -> FileDigest | HashFailure:
    try:
        return hash_file(path, algorithm)
    except FileNotFoundError:
        return HashFailure(path, "missing", missing=True)
    except OSError as exc:
        return HashFailure(path, exc.strerror or str(exc))


def _batches(items: Iterable[tuple[str, int]]) -> list[list[str]]:
    """Group paths so each task carries about the same bytes (big files alone)."""
    batches: list[list[str]] = []
    current: list[str] = []
    current_bytes = 0
    for path, size in items:
        current.append(path)
        current_bytes += size
        if current_bytes >= _BATCH_BYTES or len(current) >= _BATCH_FILES:
            batches.append(current)
            current, current_bytes = [], 0
    if current:
        batches.append(current)
    return batches


def hash_files(
    paths: Iterable[str],
    *,
    algorithm: str = "sha256",
    workers: int | None = None,
    sizes: dict[str, int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, FileDigest | HashFailure]:
    """Hash many files in parallel threads.

    Every task goes to a pool of ``workers`` threads: large files one a task, largest first
    (reading and hashing them releases the GIL, so they run truly in parallel), small files
    in batches of about the same bytes, so the per-task cost is paid once a batch and one
    thread's open/read syscalls (which release the GIL) overlap the other's interpreter work.

    Args:
        paths: Files to hash (duplicates are hashed once).
        algorithm: A :mod:`hashlib` algorithm name.
        workers: Threads (default: one a CPU); 1 hashes everything in the calling thread.
        sizes: Expected sizes (from RECORD or a lock), used only to split and order the work.
        progress: Called with the number of files done, now and then (always from the
            calling thread).

    Returns:
        A mapping from each path to its digest, or to the reason it could not be read.
    """
    unique = list(dict.fromkeys(paths))
    known = sizes or {}
    n_workers = workers or default_workers()
    results: dict[str, FileDigest | HashFailure] = {}
    if n_workers <= 1:
        for batch in _batches((p, known.get(p, 0)) for p in unique):
            for item in _hash_batch(batch, algorithm):
                results[item.path] = item
            if progress is not None:
                progress(len(results))
        return results
    # Largest first, so a big shared library does not start last and leave a thread idle.
    big = sorted((p for p in unique if known.get(p, 0) >= _BIG_FILE), key=lambda p: -known[p])
    small = ((p, known.get(p, 0)) for p in unique if known.get(p, 0) < _BIG_FILE)
    tasks = [[p] for p in big]
    tasks.extend(_batches(small))
    # The calling thread works too (one thread fewer to contend for the GIL); every thread
    # takes the next task from a shared counter (next() on it is atomic under the GIL).
    counter = itertools.count()
    outputs: list[list[FileDigest | HashFailure]] = []
    finished = [0]  # files done by all threads (+= on a list item under the GIL is a race,
    finished_lock = threading.Lock()  # so under a lock; taken once a task, not a file)

    def work(report: Callable[[int], None] | None = None) -> None:
        done: list[FileDigest | HashFailure] = []
        while (index := next(counter)) < len(tasks):
            done.extend(_hash_batch(tasks[index], algorithm))
            with finished_lock:
                finished[0] += len(tasks[index])
                so_far = finished[0]
            if report is not None:
                report(so_far)
        outputs.append(done)

    with ThreadPoolExecutor(max_workers=n_workers - 1, thread_name_prefix="tw-hash") as pool:
        futures = [pool.submit(work) for _ in range(n_workers - 1)]
        work(progress)
        for future in futures:
            future.result()
    for done in outputs:
        for item in done:
            results[item.path] = item
    if progress is not None:
        progress(len(results))
    return results


def record_digest(digest: bytes) -> str:
    """Encode a raw digest as a wheel RECORD does: urlsafe base64 without padding."""
    import base64

    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
