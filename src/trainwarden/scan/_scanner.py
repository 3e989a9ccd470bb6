"""Orchestration: walk paths, scan each file once within its budgets, collect a report.

Files are read with ``pread`` on demand; only small files are read whole (and hashed).
Directories are walked without following symlinks, except links to regular files outside
the tree (scanned as the file a loader would read); every entry is reported, none dropped.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from trainwarden.errors import InputError
from trainwarden.findings import FileReport, Finding, Location, Report, Severity, Verdict
from trainwarden.scan._formats._base import (
    Blob,
    Context,
    FileBlob,
    MemoryBlob,
    ScanAborted,
)
from trainwarden.scan._limits import DEFAULT_LIMITS, Limits

# The walk uses os.* on str paths on purpose: it runs once per directory entry of trees with
# thousands of files, where pathlib objects cost measurably more.
# ruff: noqa: PTH110, PTH116, PTH118, PTH119, PTH120

if TYPE_CHECKING:
    from trainwarden.scan._policy import Policy

__all__ = ["default_jobs", "scan_buffer", "scan_file", "scan_paths", "walk"]

# Files up to this size are read whole in one call, which also gives their sha256 for free.
# Larger files are read on demand and get no digest: hashing an 8 GB checkpoint would cost
# seconds to learn nothing the scan needs (`trainwarden sign` hashes files properly).
WHOLE_READ_BYTES = 256 << 10
# Below this many files a process pool costs more than it saves. Files of a model folder scan
# in ~0.3 ms each in one process; a forked pool adds ~30 ms to start, every worker imports
# the format readers it meets again, and each report is pickled back: measured on a 2-core
# machine over 523 mixed files, 2 workers took 1.5x the CPU time and no less wall time than
# one process. From a few thousand files (a second or more of work) a second idle CPU pays.
_PARALLEL_MIN_FILES = 2000


@dataclass(frozen=True, slots=True)
class _Item:
    """One thing to report: a file to scan, or an entry reported without being opened."""

    path: str
    finding: Finding | None = None
    format: str = ""
    follow: bool = False  # open through a symlink: paths the user named, links to files
    link_target: str | None = None  # a walked link to a file outside the tree, scanned


def walk(paths: Sequence[str | os.PathLike[str]]) -> list[_Item]:
    """Expand ``paths`` into the files to scan, in a deterministic order.

    Raises:
        InputError: a path does not exist or cannot be listed.
    """
    items: list[_Item] = []
    for raw in paths:
        path = os.fspath(raw)
        try:
            st = os.stat(path)
        except OSError as exc:
            raise InputError(f"cannot scan {path}: {exc.strerror or exc}") from exc
        if stat.S_ISDIR(st.st_mode):
            root = os.path.realpath(path)
            items.extend(_walk_dir(path, root))
        else:
            items.append(_Item(path, follow=True))
    return items


def _walk_dir(top: str, root: str) -> Iterator[_Item]:
    # Iterative (an explicit stack), so a hostile tree thousands of directories deep cannot
    # exhaust Python's recursion limit. Order: depth-first, entries sorted by name.
    stack: list[Iterator[os.DirEntry[str] | str]] = [iter([top])]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        if isinstance(entry, str):  # the top directory itself
            listing = _list(entry)
            if isinstance(listing, _Item):
                yield listing
            else:
                stack.append(iter(listing))
            continue
        path = entry.path
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError as exc:
            yield _entry_error(path, "file.unreadable", f"cannot stat: {exc}")
            continue
        if stat.S_ISLNK(st.st_mode):
            yield _symlink(path, root)
        elif stat.S_ISDIR(st.st_mode):
            listing = _list(path)
            if isinstance(listing, _Item):
                yield listing
            else:
                stack.append(iter(listing))
        elif stat.S_ISREG(st.st_mode):
            yield _Item(path)
        else:
            yield _Item(
                path,
                Finding(
                    "file.special",
                    Severity.MEDIUM,
                    "not a regular file (device, fifo or socket); not opened",
                    Location(path),
                    verdict=Verdict.UNKNOWN,
                ),
                "special",
            )


def _list(directory: str) -> list[os.DirEntry[str]] | _Item:
    try:
        with os.scandir(directory) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as exc:
        return _entry_error(directory, "file.unreadable", f"cannot list directory: {exc}")


def _entry_error(path: str, rule: str, message: str) -> _Item:
    return _Item(
        path,
        Finding(rule, Severity.HIGH, message, Location(path), verdict=Verdict.ERROR),
        "directory-error",
    )


# Pseudo-filesystems: their files claim a size (or none) unrelated to what a read returns.
_PSEUDO_ROOTS = ("/proc/", "/sys/", "/dev/")


def _symlink(path: str, root: str) -> _Item:
    # A link inside the tree points at something the walk reaches anyway: noted, not
    # followed. A link to a regular file outside it (the Hugging Face cache: snapshots/<rev>/
    # config.json -> ../../blobs/<sha>) is what a loader opening this path reads, so that
    # file is scanned and reported here. Links to directories or anything else are not
    # followed (no walk escapes the tree).
    try:
        target = os.path.realpath(path)
    except OSError:
        target = ""
    inside = target == root or target.startswith(root.rstrip(os.sep) + os.sep)
    if not inside and target and not target.startswith(_PSEUDO_ROOTS):
        try:
            st = os.stat(target)
        except OSError:
            st = None
        if st is not None and stat.S_ISREG(st.st_mode):
            return _Item(path, follow=True, link_target=target)
    if inside and os.path.exists(target):
        finding = Finding(
            "file.symlink",
            Severity.INFO,
            "symbolic link to a file inside the scanned tree (scanned there)",
            Location(path),
            evidence=os.path.relpath(target, root),
        )
    else:
        finding = Finding(
            "file.symlink-outside",
            Severity.MEDIUM,
            "symbolic link leading outside the scanned tree (or dangling); not followed, "
            "so what a loader would read here was not analysed",
            Location(path),
            verdict=Verdict.UNKNOWN,
        )
    return _Item(path, finding, "symlink")


def scan_file(path: str, policy: Policy, limits: Limits, *, follow: bool = True) -> FileReport:
    """Scan one file; never raises for problems with the file itself.

    ``follow=False`` refuses to open through a symlink (a walked entry swapped for a link
    after it was listed is not followed). Opening is non-blocking so a fifo cannot hang us.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
    if not follow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        return _error_report(path, f"cannot open: {exc.strerror or exc}")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return FileReport(
                path,
                "special",
                (
                    Finding(
                        "file.special",
                        Severity.MEDIUM,
                        "not a regular file; not analysed",
                        Location(path),
                        verdict=Verdict.UNKNOWN,
                    ),
                ),
            )
        size = st.st_size
        digest: str | None = None
        blob: Blob
        if size <= WHOLE_READ_BYTES:
            data = FileBlob(fd, size).read(0, size)
            digest = hashlib.sha256(data).hexdigest()
            blob = MemoryBlob(data)
        else:
            blob = FileBlob(fd, size)
        return _analyse(path, blob, policy, limits, size=size, digest=digest)
    except OSError as exc:
        return _error_report(path, f"read failed: {exc.strerror or exc}")
    finally:
        os.close(fd)


def scan_buffer(
    data: bytes | memoryview, name: str, policy: Policy, limits: Limits, *, digest: bool = True
) -> FileReport:
    """Scan an in-memory buffer (what a loader is about to unpickle)."""
    return _analyse(
        name,
        MemoryBlob(data),
        policy,
        limits,
        size=len(data),
        digest=hashlib.sha256(data).hexdigest() if digest else None,
    )


def _analyse(
    path: str, blob: Blob, policy: Policy, limits: Limits, *, size: int, digest: str | None
) -> FileReport:
    from trainwarden.scan._formats._dispatch import analyse
    from trainwarden.scan._pickle import gc_paused

    ctx = Context(path=path, policy=policy, limits=limits, input_size=size)
    fmt = "data"
    try:
        # The readers build large acyclic structures (zip directories of 100k entries, pickle
        # memos): collector passes over them cost up to 40% of a scan. The analysis is
        # bounded by Limits (members, bytes, seconds), so cyclic garbage waits that long.
        with gc_paused():
            fmt = analyse(ctx, blob, None, 0)
    except ScanAborted:
        fmt = ctx.sniffed
    except (RecursionError, MemoryError) as exc:
        ctx.add(
            "scan.resource-exhausted",
            Severity.HIGH,
            f"analysis ran out of resources ({type(exc).__name__}); not analysed",
            None,
            verdict=Verdict.ERROR,
        )
    ctx.finish()
    return FileReport(
        path=path,
        format=fmt,
        findings=tuple(ctx.findings),
        size=size,
        sha256=digest,
        details=dict(ctx.details),
    )


def _error_report(path: str, message: str) -> FileReport:
    return FileReport(
        path,
        "directory-error",
        (
            Finding(
                "file.unreadable", Severity.HIGH, message, Location(path), verdict=Verdict.ERROR
            ),
        ),
    )


# The policy and limits for pool workers, set before the pool forks (or by the initializer).
_WORKER: tuple[Policy, Limits] | None = None


def _init_worker(policy: Policy, limits: Limits) -> None:
    global _WORKER  # process-local state of a pool worker
    _WORKER = (policy, limits)


def _worker_scan(job: tuple[str, bool]) -> FileReport:
    assert _WORKER is not None
    return scan_file(job[0], *_WORKER, follow=job[1])


def _report_item(item: _Item) -> FileReport:
    assert item.finding is not None
    return FileReport(item.path, item.format, (item.finding,))


def default_jobs(n_files: int) -> int:
    """Workers to use when the caller did not say: one per CPU for large trees."""
    if n_files < _PARALLEL_MIN_FILES:
        return 1
    from trainwarden._system import cpu_count

    cpus = cpu_count()
    # Only CPUs that are idle help: on a busy machine extra processes just add fork and IPC
    # costs (measured: slower than one process when the load is above the CPU count).
    try:
        idle = (cpus or 1) - round(os.getloadavg()[0])
    except OSError:
        idle = cpus or 1
    return max(1, min(idle, 8))


def scan_paths(
    paths: Sequence[str | os.PathLike[str]],
    *,
    policy: Policy,
    limits: Limits = DEFAULT_LIMITS,
    jobs: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Scan every file under ``paths`` and return the report (files in path order)."""
    items = walk(paths)
    to_scan = [(item.path, item.follow) for item in items if item.finding is None]
    workers = default_jobs(len(to_scan)) if jobs is None else max(1, jobs)
    reports: dict[str, FileReport] = {}
    if workers > 1 and len(to_scan) > 1:
        reports = _scan_parallel(to_scan, policy, limits, workers, progress)
    else:
        for path, follow in to_scan:
            reports[path] = scan_file(path, policy, limits, follow=follow)
            if progress is not None:
                progress(path)
    for item in items:
        if item.link_target is not None:
            got = reports[item.path]
            note = Finding(
                "file.symlink-followed",
                Severity.INFO,
                "symbolic link to a file outside the scanned tree: the file it leads to was "
                "scanned (what a loader opening this path reads)",
                Location(item.path),
                evidence=item.link_target,
            )
            reports[item.path] = replace(got, findings=(note, *got.findings))
    out = [reports[item.path] if item.finding is None else _report_item(item) for item in items]
    return Report(files=tuple(_mark_remote_code(out)))


def _mark_remote_code(files: list[FileReport]) -> list[FileReport]:
    """Flag the ``.py`` files an HF config's ``auto_map`` makes loaders import.

    On their own they are text; next to a config that maps model classes to them they are
    the code ``trust_remote_code=True`` runs.
    """
    wanted: dict[str, str] = {}
    for file in files:
        modules = file.details.get("auto_map_modules") if file.details else None
        if isinstance(modules, list):
            folder = os.path.dirname(file.path)
            for module in modules:
                wanted[os.path.join(folder, str(module))] = file.path
    if not wanted:
        return files
    out = []
    for file in files:
        config = wanted.get(file.path)
        if config is not None:
            finding = Finding(
                "hf.remote-code-file",
                Severity.MEDIUM,
                "Python module that a config's auto_map makes transformers import and run "
                "(trust_remote_code=True)",
                Location(file.path),
                evidence=os.path.basename(config),
                verdict=Verdict.UNKNOWN,
            )
            file = replace(file, findings=(*file.findings, finding))
        out.append(file)
    return out


def _scan_parallel(
    jobs: list[tuple[str, bool]],
    policy: Policy,
    limits: Limits,
    workers: int,
    progress: Callable[[str], None] | None,
) -> dict[str, FileReport]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # fork: workers inherit the imported scanner and policy, so they start in milliseconds.
    method = "fork" if sys.platform.startswith("linux") else None
    context = multiprocessing.get_context(method)
    chunk = max(1, min(16, len(jobs) // (workers * 4) or 1))
    reports: dict[str, FileReport] = {}
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(policy, limits)
    ) as pool:
        for (path, _), report in zip(jobs, pool.map(_worker_scan, jobs, chunksize=chunk)):  # noqa: B905
            reports[path] = report
            if progress is not None:
                progress(path)
    return reports
