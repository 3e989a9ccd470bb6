"""Forged and stale bytecode: is each ``__pycache__/*.pyc`` the code its source compiles to?

CPython imports a timestamp pyc whenever the mtime and size in its header match the source,
and an unchecked hash-based pyc without looking at the source at all. RECORD lists pycs
without a hash, so a forged pyc beside an untouched source runs unseen unless the source is
compiled afresh and the two code objects are compared. That is what this module does.
"""

# os.path on str is used on purpose: these paths are walked by the ten thousand and pathlib
# objects would cost more than the hashing of small files.
# ruff: noqa: PTH118, PTH119, PTH120

from __future__ import annotations

import _imp
import importlib.util
import marshal
import os
import stat
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import CodeType

from trainwarden._system import cpu_count

__all__ = ["PycCheck", "PycResult", "check_pycs", "pyc_source"]

_MAGIC = importlib.util.MAGIC_NUMBER
_TAG = sys.implementation.cache_tag
_HEADER = 16
# Process pools pay ~50 ms to start; below this many pycs one process is faster.
_POOL_THRESHOLD = 64
_CHUNK = 32


@dataclass(frozen=True, slots=True)
class PycCheck:
    """One pyc to check: where it is, its source and the optimisation level it claims."""

    pyc: str
    source: str
    optimize: int


@dataclass(frozen=True, slots=True)
class PycResult:
    """Outcome for one pyc.

    ``status`` is one of ``ok`` (same code as the source), ``forged`` (CPython would import
    it and its code differs), ``unchecked-hash`` (an unchecked hash-based pyc whose source
    hash does not match: imported anyway, code compared too), ``stale`` (CPython would
    ignore it and recompile), ``foreign`` (another interpreter's magic number), or
    ``error`` (cannot be analysed).
    """

    pyc: str
    source: str
    status: str
    detail: str = ""


def pyc_source(pyc_path: str) -> PycCheck | None:
    """The source a ``__pycache__`` pyc belongs to, or ``None`` when it is not ours to check.

    Returns ``None`` for pycs of another interpreter (a different cache tag), which this
    interpreter never imports.
    """
    directory, name = os.path.split(pyc_path)
    if os.path.basename(directory) != "__pycache__" or not name.endswith(".pyc"):
        return None
    parts = name[:-4].split(".")
    optimize = 0
    if len(parts) >= 3 and parts[-1].startswith("opt-"):
        level = parts.pop()[4:]
        optimize = int(level) if level.isdigit() else -1
    if len(parts) < 2 or parts[-1] != _TAG or optimize not in (0, 1, 2):
        return None
    stem = ".".join(parts[:-1])
    source = os.path.join(os.path.dirname(directory), stem + ".py")
    return PycCheck(pyc_path, source, optimize)


def _read_regular(path: str) -> tuple[bytes, os.stat_result]:
    """Read a regular file; a FIFO or device planted in its place fails instead of blocking."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"not a regular file: {path}")
        chunks = []
        while True:
            chunk = os.read(fd, max(info.st_size + 1, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks), info
    finally:
        os.close(fd)


def _normalise(code: CodeType, filename: str) -> CodeType:
    """Set ``co_filename`` everywhere: the import system rewrites it on load anyway."""
    consts = tuple(
        _normalise(c, filename) if isinstance(c, CodeType) else c for c in code.co_consts
    )
    return code.replace(co_filename=filename, co_consts=consts)


def _check_one(task: PycCheck) -> PycResult:
    try:
        data, _ = _read_regular(task.pyc)
        source, source_stat = _read_regular(task.source)
    except OSError as exc:
        return PycResult(task.pyc, task.source, "error", f"cannot read: {exc.strerror or exc}")
    if len(data) < _HEADER:
        return PycResult(task.pyc, task.source, "stale", "truncated header")
    if data[:4] != _MAGIC:
        return PycResult(task.pyc, task.source, "foreign", "magic number of another Python")
    flags = int.from_bytes(data[4:8], "little")
    if flags & ~0b11:
        return PycResult(task.pyc, task.source, "stale", f"invalid flags {flags:#x}")
    status = "ok"
    if flags & 0b1:
        expected = _imp.source_hash(_RAW_MAGIC, source)
        if data[8:16] != expected:
            if flags & 0b10:
                # A checked hash pyc with a wrong hash is recompiled from source: harmless.
                return PycResult(task.pyc, task.source, "stale", "source hash differs")
            status = "unchecked-hash"
    else:
        mtime = int.from_bytes(data[8:12], "little")
        size = int.from_bytes(data[12:16], "little")
        if mtime != (int(source_stat.st_mtime) & 0xFFFFFFFF) or size != (
            source_stat.st_size & 0xFFFFFFFF
        ):
            return PycResult(task.pyc, task.source, "stale", "timestamp header does not match")
    try:
        fresh = compile(source, task.source, "exec", dont_inherit=True, optimize=task.optimize)
    except (SyntaxError, ValueError) as exc:
        # CPython would import this pyc although the source does not compile: its code
        # cannot have come from that source.
        return PycResult(task.pyc, task.source, "forged", f"source does not compile: {exc}")
    body = data[_HEADER:]
    if marshal.dumps(fresh) == body:
        return PycResult(task.pyc, task.source, status)
    # Byte-for-byte equality can fail on marshal reference flags alone; compare the code
    # objects. marshal.loads builds code objects but never runs them.
    try:
        stored = marshal.loads(body)  # noqa: S302  # builds code objects, never runs them
    except (EOFError, ValueError, TypeError) as exc:
        return PycResult(task.pyc, task.source, "forged", f"bytecode does not unmarshal: {exc}")
    if not isinstance(stored, CodeType):
        return PycResult(task.pyc, task.source, "forged", "pyc holds no code object")
    if _normalise(stored, task.source) == _normalise(fresh, task.source):
        return PycResult(task.pyc, task.source, status)
    return PycResult(
        task.pyc, task.source, "forged", "code differs from a fresh compile of the source"
    )


# The key CPython passes to source_hash for hash-based pycs (importlib's _RAW_MAGIC_NUMBER).
_RAW_MAGIC = int.from_bytes(_MAGIC, "little")


def _check_chunk(tasks: list[PycCheck]) -> list[PycResult]:
    return [_check_one(t) for t in tasks]


def check_pycs(
    tasks: Iterable[PycCheck],
    *,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[PycResult]:
    """Check pycs, compiling sources in parallel processes (compile holds the GIL).

    ``progress`` is called with the number of pycs checked so far, after each chunk.
    """
    todo = list(tasks)
    n_workers = workers or cpu_count()
    chunks = [todo[i : i + _CHUNK] for i in range(0, len(todo), _CHUNK)]
    if n_workers <= 1 or len(todo) < _POOL_THRESHOLD:
        done: list[PycResult] = []
        for chunk in chunks:
            done.extend(_check_chunk(chunk))
            if progress is not None:
                progress(len(done))
        return done
    import multiprocessing
    import threading

    # fork is cheapest and safe while this process is single-threaded: the children only
    # read files and compile. With other threads running (a training process), a lock one of
    # them held at fork time would stay locked in the child, so start clean processes.
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        method = "fork"
    else:
        method = "forkserver" if "forkserver" in methods else "spawn"
    context = multiprocessing.get_context(method)
    # Imported here: the process pool pulls in multiprocessing, which the runtime checks
    # (imported into every guarded training process) never need.
    from concurrent.futures import ProcessPoolExecutor

    results: list[PycResult] = []
    with ProcessPoolExecutor(max_workers=n_workers, mp_context=context) as pool:
        for chunk_result in pool.map(_check_chunk, chunks):
            results.extend(chunk_result)
            if progress is not None:
                progress(len(results))
    return results
