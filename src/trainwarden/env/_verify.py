"""Verify installed distributions against their RECORD, a lock, and their bytecode.

One :class:`~trainwarden.findings.FileReport` a distribution (its ``.dist-info`` path) and one
a site directory (files no distribution owns, startup hooks); a distribution that cannot be
verified is never reported as intact.
"""

# os.path on str is used on purpose: these paths are walked by the ten thousand and pathlib
# objects would cost more than the hashing of small files.
# ruff: noqa: PTH110, PTH112, PTH118, PTH119, PTH120

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized

from trainwarden.env._dists import (
    KIND_FILE,
    KIND_LINK,
    SCOPE_IMPORTABLE,
    Distribution,
    SiteLayout,
    discover,
    editable_sources,
    is_code_file,
    walk_files,
    walk_importable,
)
from trainwarden.env._hashing import FileDigest, HashFailure, hash_files, record_digest
from trainwarden.env._lock import (
    EditableRoot,
    EnvLock,
    LockedFile,
    compare_lock,
    join_rel,
    lock_entries,
)
from trainwarden.env._pyc import PycCheck, check_pycs, pyc_source
from trainwarden.env._site import (
    VERIFY_COMMAND,
    SiteScan,
    default_site_dirs,
    finding,
    install_prefix,
    merge_reports,
    site_path,
    within,
)
from trainwarden.env._startup import check_startup as startup_checks
from trainwarden.errors import InputError
from trainwarden.findings import FileReport, Finding, Report, Severity, Verdict

__all__ = [
    "editable_roots",
    "run_verification",
    "verify_environment",
]

Progress = Callable[[str], None]

COMMAND = VERIFY_COMMAND
# Judged (with their own explanation) by the startup checks, not as unowned code.
_STARTUP_MODULES = frozenset({"sitecustomize", "usercustomize"})


def _record_algorithm_files(scan: SiteScan) -> dict[str, set[str]]:
    wanted: dict[str, set[str]] = {}
    for dist in scan.layout.distributions:
        for entry in dist.entries:
            if entry.algorithm is not None:
                wanted.setdefault(entry.algorithm, set()).add(entry.path)
    return wanted


def _check_records(
    scan: SiteScan,
    extra: dict[str, FileDigest | HashFailure],
    *,
    anchored: bool = False,
    editables: set[str] | frozenset[str] = frozenset(),
    snapshot: bool = False,
) -> None:
    """Compare every RECORD row with what is on disk.

    With ``anchored`` (a lock is compared too), what RECORD cannot vouch for is still
    covered by the lock, so it is reported as information instead of "cannot verify".
    ``editables`` names the editable installs whose source trees this run hashed (against
    the lock, or to record in a new one with ``snapshot``).
    """
    unknown_sev, unknown = (
        (Severity.INFO, Verdict.SAFE)
        if anchored
        else (
            Severity.MEDIUM,
            Verdict.UNKNOWN,
        )
    )
    covered = " (its files are checked against the lock)" if anchored else ""
    for dist in scan.layout.distributions:
        key = dist.metadata_dir
        scan.findings.setdefault(key, [])
        if dist.record_problem is not None:
            scan.add(
                key,
                finding(
                    "unverifiable-distribution",
                    unknown_sev,
                    unknown,
                    f"{dist.label} cannot be verified by RECORD: {dist.record_problem}{covered}.",
                    dist.metadata_dir,
                    evidence=dist.label,
                ),
            )
            continue
        for problem in dist.bad_rows:
            scan.add(
                key,
                finding(
                    "record-invalid",
                    Severity.MEDIUM,
                    Verdict.UNKNOWN,
                    f"RECORD row cannot be used: {problem}.",
                    os.path.join(dist.metadata_dir, "RECORD"),
                ),
            )
        if dist.editable:
            scan.add(key, _editable_finding(dist, editables, anchored=anchored, snapshot=snapshot))
        record_path = os.path.join(dist.metadata_dir, "RECORD")
        prefix = install_prefix(scan.layout.site)
        for entry in dist.entries:
            if not within(entry.path, prefix):
                # A RECORD is untrusted input: a row naming /etc/shadow or a huge file
                # elsewhere must not make us read it (nor print its digest).
                scan.add(
                    key,
                    finding(
                        "record-outside",
                        Severity.LOW,
                        Verdict.UNKNOWN,
                        f"{entry.raw} in the RECORD of {dist.label} points outside the "
                        "environment and was not checked.",
                        os.path.join(dist.metadata_dir, "RECORD"),
                        evidence=entry.raw[:200],
                    ),
                )
                continue
            is_pyc = entry.path.endswith(".pyc")
            source = scan.digests if entry.algorithm in (None, "sha256") else extra
            result = source.get(entry.path)
            if (isinstance(result, HashFailure) and result.missing) or (
                result is None and not _present(scan, entry.path)
            ):
                if is_pyc and entry.algorithm is None:
                    continue  # a compiled file may be deleted; Python recompiles it
                # Inside the site directory a missing file is a change to importable code;
                # outside (console scripts, data) the tree may just have been relocated.
                inside = entry.path.startswith(scan.layout.site + os.sep)
                scan.add(
                    key,
                    finding(
                        "file-missing",
                        Severity.MEDIUM if inside else Severity.LOW,
                        Verdict.UNSAFE if inside else Verdict.UNKNOWN,
                        f"{entry.raw} is listed in the RECORD of {dist.label} but is missing.",
                        entry.path,
                        evidence=dist.label,
                    ),
                )
                continue
            if entry.algorithm is None or entry.digest is None:
                in_cache = os.path.basename(os.path.dirname(entry.path)) == "__pycache__"
                if entry.path == record_path or (is_pyc and in_cache):
                    # RECORD cannot hash itself; __pycache__ pycs are compared with their
                    # source below. A sourceless pyc elsewhere is imported as is: unhashed.
                    continue
                scan.add(
                    key,
                    finding(
                        "file-unhashed",
                        unknown_sev,
                        unknown,
                        f"{entry.raw} is listed without a hash in the RECORD of {dist.label}, "
                        f"so RECORD cannot verify its content{covered}.",
                        entry.path,
                        evidence=dist.label,
                    ),
                )
                continue
            if result is None or isinstance(result, HashFailure):
                reason = result.reason if result is not None else "not hashed"
                scan.add(
                    key,
                    finding(
                        "file-unreadable",
                        Severity.MEDIUM,
                        Verdict.ERROR,
                        f"{entry.raw} of {dist.label} cannot be read: {reason}.",
                        entry.path,
                        evidence=dist.label,
                    ),
                )
                continue
            actual = record_digest(result.digest)
            if actual != entry.digest or (entry.size is not None and entry.size != result.size):
                scan.add(
                    key,
                    finding(
                        "file-modified",
                        Severity.HIGH,
                        Verdict.UNSAFE,
                        f"{entry.raw} of {dist.label} differs from its RECORD "
                        f"({entry.algorithm}={entry.digest}, {entry.size} bytes recorded; "
                        f"{entry.algorithm}={actual}, {result.size} bytes on disk).",
                        entry.path,
                        evidence=dist.label,
                        expected=f"{entry.algorithm}={entry.digest}",
                        actual=f"{entry.algorithm}={actual}",
                    ),
                )


def _editable_finding(
    dist: Distribution, editables: set[str] | frozenset[str], *, anchored: bool, snapshot: bool
) -> Finding:
    where = ", ".join(d for d, _ in editable_sources(dist)[0]) or "a location not recorded here"
    if dist.name in editables:
        message = f"{dist.label} is an editable install; its source tree ({where}) " + (
            "is recorded in the lock file by file."
            if snapshot
            else "was compared with the lock file by file."
        )
        return finding(
            "editable-install",
            Severity.INFO,
            Verdict.SAFE,
            message,
            dist.metadata_dir,
            evidence=dist.label,
        )
    how = (
        "the lock does not record its source tree: take a new snapshot"
        if anchored
        else "verify it against a lock, which records that tree too: `trainwarden env snapshot "
        "--lock env.lock`, then `trainwarden env verify --lock env.lock`"
    )
    return finding(
        "editable-install",
        Severity.MEDIUM,
        Verdict.UNKNOWN,
        f"{dist.label} is an editable install: its code lives outside the site directory "
        f"({where}), where no RECORD reaches, so it cannot be verified here; {how}.",
        dist.metadata_dir,
        evidence=dist.label,
    )


def _rel(scan: SiteScan, path: str) -> str:
    prefix = scan.layout.site + os.sep
    return path[len(prefix) :] if path.startswith(prefix) else path


def _present(scan: SiteScan, path: str) -> bool:
    if path.startswith(scan.layout.site + os.sep):
        return path in scan.files
    return os.path.lexists(path)


def _unverifiable_tops(layout: SiteLayout) -> set[str]:
    tops: set[str] = set()
    for dist in layout.distributions:
        if dist.record_problem is not None:
            tops.update(dist.top_level)
            tops.add(os.path.basename(dist.metadata_dir))
    return tops


def _check_unlisted(scan: SiteScan) -> list[PycCheck]:
    """Report files no RECORD lists; return the ``__pycache__`` pycs to compare with source.

    An editable source tree has no RECORD (the lock vouches for its files): only its pycs
    are collected.
    """
    if not scan.is_site:
        return _editable_pycs(scan)
    layout = scan.layout
    site_dir = layout.site
    prefix = site_dir + os.sep
    skip_tops = _unverifiable_tops(layout)
    pycs: list[PycCheck] = []
    unowned: dict[str, list[str]] = {}
    files = scan.files
    cache_dir = os.sep + "__pycache__"
    cut = len(prefix)
    for path, kind in files.items():
        rel = path[cut:]
        top = rel.split(os.sep, 1)[0]
        is_listed = path in layout.owners
        head, _, name = path.rpartition(os.sep)
        if name.endswith(".pyc") and head.endswith(cache_dir):
            task = pyc_source(path)
            # The walk already knows whether the source is a regular file; anything else
            # (a link, a FIFO) is checked the way the import system would see it.
            source_kind = files.get(task.source) if task is not None else None
            if task is not None and (
                source_kind == KIND_FILE
                or (source_kind is not None and os.path.exists(task.source))
            ):
                pycs.append(task)
                continue
            if task is not None and not is_listed and top not in skip_tops:
                scan.add(
                    scan.owner_key(path),
                    finding(
                        "pyc-orphan",
                        Severity.LOW,
                        Verdict.SAFE,
                        f"{rel} has no source: CPython never imports a __pycache__ pyc whose "
                        "source is gone.",
                        path,
                    ),
                )
                continue
            if task is None and not is_listed:
                # This interpreter only ever loads <name>.<its cache tag>[.opt-N].pyc from
                # __pycache__; other names belong to other interpreters (or nobody).
                scan.add(
                    scan.owner_key(path),
                    finding(
                        "pyc-other-interpreter",
                        Severity.INFO,
                        Verdict.SAFE,
                        f"{rel} is not a pyc this interpreter imports (another cache tag).",
                        path,
                    ),
                )
                continue
        if is_listed or top in skip_tops or top.split(".", 1)[0] in skip_tops:
            continue
        if os.sep not in rel:
            if name.endswith(".pth") or top.split(".", 1)[0] in _STARTUP_MODULES:
                continue  # startup files are judged by the startup checks
            unowned.setdefault(top, []).append(path)
            continue
        if top not in layout.owned_top:
            if top not in _STARTUP_MODULES:
                unowned.setdefault(top, []).append(path)
            continue
        key = scan.owner_key(path)
        code = is_code_file(name) or kind == KIND_LINK
        in_metadata = top.endswith((".dist-info", ".egg-info"))
        dist = scan.dist_of(key)
        owner = dist.label if dist is not None else "no distribution"
        scan.add(
            key,
            finding(
                "file-unexpected",
                Severity.HIGH if code or in_metadata else Severity.MEDIUM,
                # Importable code (or metadata such as entry points, which loads code) that
                # nobody installed is tampering; an extra data file is at least unverified.
                Verdict.UNSAFE if code or in_metadata else Verdict.UNKNOWN,
                f"{rel} is not listed in any RECORD but sits inside a directory of "
                f"{owner}" + (": importable code nobody installed." if code else "."),
                path,
                evidence=owner,
            ),
        )
    for top, paths in sorted(unowned.items()):
        code_files = [p for p in paths if is_code_file(os.path.basename(p))]
        if top == "__pycache__" and not code_files:
            continue
        target = os.path.join(site_dir, top)
        if code_files:
            scan.add(
                site_dir,
                finding(
                    "unowned-code",
                    Severity.HIGH,
                    Verdict.UNSAFE,
                    f"{top} holds {len(code_files)} code file(s) that no installed distribution "
                    "owns: anything can import it.",
                    target,
                    evidence=top,
                ),
            )
        else:
            scan.add(
                site_dir,
                finding(
                    "unowned-file",
                    Severity.LOW,
                    Verdict.SAFE,
                    f"{top} ({len(paths)} file(s), no code) is owned by no distribution.",
                    target,
                    evidence=top,
                ),
            )
    return pycs


def _editable_pycs(scan: SiteScan) -> list[PycCheck]:
    files = scan.files
    cache_dir = os.sep + "__pycache__"
    pycs: list[PycCheck] = []
    for path in files:
        head, _, name = path.rpartition(os.sep)
        if not (name.endswith(".pyc") and head.endswith(cache_dir)):
            continue
        task = pyc_source(path)
        if task is None:
            continue
        source_kind = files.get(task.source)
        if source_kind == KIND_FILE or (source_kind is not None and os.path.exists(task.source)):
            pycs.append(task)
    return pycs


def _check_pyc_results(
    scan: SiteScan,
    tasks: list[PycCheck],
    workers: int | None,
    progress: Callable[[int], None] | None = None,
) -> None:
    for result in check_pycs(tasks, workers=workers, progress=progress):
        key = scan.owner_key(result.pyc)
        if result.status == "forged":
            scan.add(
                key,
                finding(
                    "pyc-forged",
                    Severity.CRITICAL,
                    Verdict.UNSAFE,
                    f"{_rel(scan, result.pyc)}: bytecode that CPython imports in place of its "
                    f"source holds different code ({result.detail}).",
                    result.pyc,
                    evidence=os.path.basename(result.source),
                ),
            )
        elif result.status == "unchecked-hash":
            scan.add(
                key,
                finding(
                    "pyc-unchecked-hash",
                    Severity.HIGH,
                    Verdict.UNSAFE,
                    f"{_rel(scan, result.pyc)}: unchecked hash-based pyc whose source hash does "
                    "not match: CPython imports it without looking at the source.",
                    result.pyc,
                    evidence=os.path.basename(result.source),
                ),
            )
        elif result.status == "error":
            scan.add(
                key,
                finding(
                    "pyc-unreadable",
                    Severity.MEDIUM,
                    Verdict.ERROR,
                    f"{_rel(scan, result.pyc)} could not be checked: {result.detail}.",
                    result.pyc,
                ),
            )
        elif result.status == "stale":
            scan.add(
                key,
                finding(
                    "pyc-stale",
                    Severity.INFO,
                    Verdict.SAFE,
                    f"Stale {_rel(scan, result.pyc)} ({result.detail}): CPython ignores it "
                    "and compiles the source.",
                    result.pyc,
                ),
            )


def _reports(scans: Sequence[SiteScan], extra_reports: Iterable[FileReport]) -> Report:
    files: list[FileReport] = []
    for scan in scans:
        if not scan.is_site:
            files.append(
                FileReport(
                    scan.layout.site,
                    "editable-source",
                    tuple(scan.findings.get(scan.layout.site, ())),
                    details={"distributions": list(scan.editable_of), "files": len(scan.files)},
                )
            )
            continue
        dists = {d.metadata_dir: d for d in scan.layout.distributions}
        keys = set(scan.findings) | set(dists) | {scan.layout.site}
        for key in sorted(keys):
            found = tuple(scan.findings.get(key, ()))
            dist = dists.get(key)
            if dist is not None:
                details: dict[str, object] = {
                    "name": dist.name,
                    "version": dist.version,
                    "site": scan.layout.site,
                    "record_entries": len(dist.entries),
                }
                files.append(FileReport(key, "distribution", found, details=details))
            else:
                site_details: dict[str, object] = {
                    "distributions": len(dists),
                    "files": len(scan.files),
                }
                files.append(FileReport(key, "site-dir", found, details=site_details))
    files.extend(extra_reports)
    return Report(files=tuple(files), command=COMMAND)


def verify_environment(
    site_dirs: Sequence[str] | None = None,
    *,
    lock: EnvLock | None = None,
    check_pyc: bool = True,
    check_startup: bool = True,
    workers: int | None = None,
    progress: Progress | None = None,
) -> Report:
    """Verify site directories against RECORD (and ``lock`` when given).

    Editable installs keep their code outside the site directory, where no RECORD reaches:
    without a lock they are ``unknown`` (not verifiable). A lock taken by
    :func:`snapshot_environment` records their source trees too, and with it they are
    compared file by file like everything else.

    Args:
        site_dirs: Directories to verify (default: the lock's site directories when a lock is
            given, else :func:`default_site_dirs`).
        lock: A lock read (and signature-checked) by :func:`trainwarden.env.read_lock`; every
            file is then also compared with its recorded digest, size and mode, including
            the source trees of the editable installs of the verified site directories.
        check_pyc: Compare each ``__pycache__`` pyc with a fresh compile of its source. With
            a lock, pycs whose bytes and source bytes both match the lock are not compiled
            again (the snapshot compiled them before recording them).
        check_startup: Look for startup-code vectors (``.pth``, sitecustomize, environment).
        workers: Threads for hashing and processes for compiling (default: one a CPU).
        progress: Called with short progress messages (for stderr), a few a second at most.

    Returns:
        One report per distribution and per site directory, ``command="env verify"``.

    Raises:
        InputError: a site directory does not exist or cannot be read.
    """
    editable: Mapping[str, EditableRoot] | None = None
    if lock is not None:
        editable = lock.editable
    if not site_dirs:
        site_dirs = lock.site_roots if lock is not None else default_site_dirs()
    report, _ = run_verification(
        site_dirs,
        lock=lock,
        hash_all=lock is not None,
        check_pyc=check_pyc,
        check_startup=check_startup,
        workers=workers,
        progress=progress,
        editable=editable,
    )
    return report


def editable_roots(scans: Iterable[SiteScan]) -> tuple[dict[str, EditableRoot], list[FileReport]]:
    """The source trees of the editable installs in ``scans``, to record in a lock.

    A tree inside a scanned site directory is covered already and left out.

    Returns:
        The roots (directory -> the distributions and scope), and reports about editable
        installs whose source could not be located (they stay unverifiable).
    """
    sites = [s.layout.site for s in scans if s.is_site]
    roots: dict[str, tuple[list[str], str]] = {}
    problems: list[FileReport] = []
    for scan in scans:
        for dist in scan.layout.distributions:
            if not dist.editable:
                continue
            found, problem = editable_sources(dist)
            if problem is not None:
                problems.append(
                    FileReport(
                        dist.metadata_dir,
                        "distribution",
                        (
                            finding(
                                "editable-source-unknown",
                                Severity.MEDIUM,
                                Verdict.UNKNOWN,
                                f"The source of the editable install {dist.label} cannot be "
                                f"located ({problem}): the lock cannot anchor it.",
                                dist.metadata_dir,
                                evidence=dist.label,
                            ),
                        ),
                    )
                )
            for directory, scope in found:
                if any(within(directory, site) for site in sites):
                    continue
                names, _ = roots.setdefault(directory, ([], scope))
                names.append(dist.name)
    return (
        {d: EditableRoot(tuple(sorted(set(n))), scope) for d, (n, scope) in sorted(roots.items())},
        problems,
    )


def _trusted_by_lock(
    lock: EnvLock, scan: SiteScan, task: PycCheck, now: Mapping[str, LockedFile]
) -> bool:
    """True when both the pyc and its source are byte-identical to the (verified) lock.

    ``now`` holds the lock entries of the files as hashed in this run.
    """
    locked = lock.files.get(scan.layout.site)
    if locked is None or not lock.pyc_verified:
        return False
    prefix = scan.layout.site + os.sep
    for path in (task.pyc, task.source):
        if not path.startswith(prefix):
            return False
        rel = path[len(prefix) :].replace(os.sep, "/")
        entry = locked.get(rel)
        seen = now.get(rel)
        if entry is None or seen is None or entry.sha256 is None or entry.sha256 != seen.sha256:
            return False
    return True


def run_verification(
    site_dirs: Sequence[str],
    *,
    lock: EnvLock | None,
    hash_all: bool,
    check_pyc: bool,
    check_startup: bool,
    workers: int | None,
    progress: Progress | None,
    editable: Mapping[str, EditableRoot] | None = None,
) -> tuple[Report, list[SiteScan]]:
    """Run a verification and return the report with the scans (digests included).

    ``hash_all`` hashes every regular file, not only those RECORD hashes (for a lock).
    ``editable`` names editable source trees to walk and hash as well (those of the lock, or
    ``None`` to find them in the scanned site directories, for a snapshot); only the trees
    of editable installs found in the scanned site directories are used.
    """
    if not site_dirs:
        raise InputError("no site directory to verify")
    note = progress or (lambda _msg: None)
    # RECORD (and the lock) name the files to hash, so hashing starts as soon as they are
    # read and the directory walk (syscall-bound, GIL released) runs beside it. Files the
    # walk finds beyond those are hashed afterwards (for a lock, every file is hashed).
    # Only a snapshot without a lock must walk first: the walk is its only list.
    walk_first = hash_all and lock is None
    sites = list(dict.fromkeys(site_path(d) for d in site_dirs))
    scans: list[SiteScan] = []
    digests: dict[str, FileDigest | HashFailure] = {}
    # Site -> the __pycache__ pycs to compare; the unlisted-file check needs no digests, so
    # the walking thread does it too while this one hashes.
    pyc_tasks: dict[str, list[PycCheck]] = {}
    walk_errors: list[BaseException] = []
    unlocated: list[FileReport] = []
    if lock is not None:
        # The lock names (nearly) every file: hash them at once, while another thread reads
        # the RECORDs, walks the tree and looks for unlisted files. What RECORD names beyond
        # the lock (scripts outside the site directory, files added since) is hashed below.
        early_roots = [*sites, *(editable or {})]
        early = {
            join_rel(root, rel): expected.size
            for root in early_roots
            for rel, expected in lock.files.get(root, {}).items()
            if expected.link is None
        }
        walker = threading.Thread(
            target=_discover_walk_all,
            args=(sites, editable or {}, scans, pyc_tasks, walk_errors),
            name="tw-walk",
        )
        walker.start()
        try:
            digests = hash_files(
                early, workers=workers, sizes=early, progress=_counter(note, "hashing", early)
            )
        finally:
            walker.join()
        _raise_walk_errors(walk_errors)
    else:
        scans = [_scan_site(d, walk=walk_first) for d in sites]
        if walk_first:
            # A snapshot records the source trees of editable installs too: their code is
            # imported like any other and no RECORD covers it.
            found, unlocated = editable_roots(scans)
            scans.extend(_editable_scan(root, entry, sites) for root, entry in found.items())
    want: dict[str, int] = {}
    other: dict[str, set[str]] = {}
    for scan in scans:
        prefix = install_prefix(scan.layout.site)
        for dist in scan.layout.distributions:
            for entry in dist.entries:
                if not within(entry.path, prefix):
                    continue  # never read files a RECORD points at outside the environment
                if entry.algorithm == "sha256":
                    if entry.path not in digests:
                        want[entry.path] = entry.size or 0
                elif entry.algorithm is not None:
                    other.setdefault(entry.algorithm, set()).add(entry.path)
        if walk_first:
            for p, kind in scan.files.items():
                if kind == KIND_FILE:
                    want.setdefault(p, 0)
    record_walker: threading.Thread | None = None
    if lock is None and not walk_first:
        # RECORD names the files to hash, so hashing starts now and the directory walk
        # (syscall-bound, GIL released) runs beside it.
        record_walker = threading.Thread(
            target=_walk_all, args=(scans, pyc_tasks, walk_errors), name="tw-walk"
        )
        record_walker.start()
    try:
        digests.update(
            hash_files(want, workers=workers, sizes=want, progress=_counter(note, "hashing", want))
        )
        extra: dict[str, FileDigest | HashFailure] = {}
        for algorithm, paths in other.items():
            extra.update(hash_files(sorted(paths), algorithm=algorithm, workers=workers))
    finally:
        if record_walker is not None:
            record_walker.join()
    _raise_walk_errors(walk_errors)
    if hash_all:
        # Files on disk that neither RECORD nor the lock named (added since): hash them too.
        late = [
            p
            for s in scans
            for p, kind in s.files.items()
            if kind == KIND_FILE and p not in digests
        ]
        digests.update(hash_files(late, workers=workers, progress=_counter(note, "hashing", late)))
    note(f"hashed {len(digests)} of {sum(len(s.files) for s in scans)} files")
    anchored = {name for s in scans for name in s.editable_of}
    all_pycs: list[tuple[SiteScan, list[PycCheck]]] = []
    # The lock view of what was hashed, computed once: the pyc trust check and the lock
    # comparison both need it.
    current: dict[str, tuple[dict[str, LockedFile], dict[str, str]]] = {}
    for scan in scans:
        scan.digests = digests
        if lock is not None:
            current[scan.layout.site] = lock_entries(scan, ordered=False)
        _check_records(
            scan, extra, anchored=lock is not None, editables=anchored, snapshot=walk_first
        )
        tasks = pyc_tasks.get(scan.layout.site)
        all_pycs.append((scan, tasks if tasks is not None else _check_unlisted(scan)))
    todo_by_scan: list[tuple[SiteScan, list[PycCheck]]] = []
    for scan, tasks in all_pycs:
        if not check_pyc:
            scan.add(
                scan.layout.site,
                finding(
                    "pyc-skipped",
                    Severity.INFO,
                    Verdict.SAFE,
                    f"{len(tasks)} pyc file(s) were not compared with their sources "
                    "(pyc check turned off).",
                    scan.layout.site,
                ),
            )
            continue
        seen = current.get(scan.layout.site)
        todo = [
            t
            for t in tasks
            if lock is None or seen is None or not _trusted_by_lock(lock, scan, t, seen[0])
        ]
        todo_by_scan.append((scan, todo))
    if todo_by_scan:
        total = sum(len(t) for _, t in todo_by_scan)
        skipped = sum(len(t) for _, t in all_pycs) - total
        note(
            f"comparing {total} pyc file(s) with a fresh compile of their source"
            + (f" ({skipped} vouched for by the lock)" if skipped else "")
        )
        done = 0
        for scan, todo in todo_by_scan:
            base = done

            def report_pycs(count: int, base: int = base) -> None:
                note(f"compared {base + count} of {total} pyc files with their sources")

            _check_pyc_results(scan, todo, workers, report_pycs)
            done += len(todo)
    extra_reports: list[FileReport] = list(unlocated)
    if lock is not None:
        extra_reports.extend(compare_lock(lock, scans, current=current))
    if check_startup:
        extra_reports.extend(startup_checks(scans))
    return merge_reports(_reports(scans, ()), extra_reports, command=COMMAND), scans


def _counter(note: Progress, what: str, items: Sized) -> Callable[[int], None]:
    total = len(items)

    def count(done: int) -> None:
        note(f"{what}: {done} of {total} files")

    return count


def _scan_site(site_dir: str, *, walk: bool) -> SiteScan:
    layout = discover(site_dir)
    return SiteScan(layout, dict(walk_files(site_dir)) if walk else {})


def _editable_scan(root: str, entry: EditableRoot, sites: Sequence[str]) -> SiteScan:
    """Walk an editable source tree (only what ``import`` reaches for a sys.path entry).

    Raises:
        InputError: the tree cannot be listed (its absence shows as removed files against a
            lock; a snapshot cannot record a tree it cannot read).
    """
    path = site_path(root)
    if entry.scope == SCOPE_IMPORTABLE:
        files = dict(walk_importable(path, exclude=tuple(sites)))
    else:
        files = dict(walk_files(path))
    return SiteScan(SiteLayout(path, ()), files, editable_of=entry.distributions, scope=entry.scope)


def _raise_walk_errors(errors: list[BaseException]) -> None:
    if errors:
        # A half walk is never "clean".
        raise InputError(f"walking the site directories failed: {errors[0]}") from errors[0]


def _discover_walk_all(
    sites: Sequence[str],
    editable: Mapping[str, EditableRoot],
    scans: list[SiteScan],
    pyc_tasks: dict[str, list[PycCheck]],
    errors: list[BaseException],
) -> None:
    try:
        for site_dir in sites:
            scan = SiteScan(discover(site_dir), {})
            scans.append(scan)
            scan.files = dict(walk_files(site_dir))
            pyc_tasks[site_dir] = _check_unlisted(scan)
        # The lock's editable source trees of the editable installs found here (a tree
        # whose distribution is not in the verified site directories is not this run's).
        names = {d.name for s in list(scans) for d in s.layout.distributions if d.editable}
        for root, entry in editable.items():
            if not names.intersection(entry.distributions):
                continue
            if not os.path.isdir(root):
                # Gone: every file it held shows as removed against the lock.
                scans.append(
                    SiteScan(
                        SiteLayout(root, ()),
                        {},
                        editable_of=entry.distributions,
                        scope=entry.scope,
                    )
                )
                continue
            scan = _editable_scan(root, entry, sites)
            scans.append(scan)
            pyc_tasks[root] = _check_unlisted(scan)
    except BaseException as exc:  # handed to the waiting thread, re-raised
        errors.append(exc)


def _walk_all(
    scans: Sequence[SiteScan],
    pyc_tasks: dict[str, list[PycCheck]],
    errors: list[BaseException],
) -> None:
    try:
        for scan in scans:
            scan.files = dict(walk_files(scan.layout.site))
            pyc_tasks[scan.layout.site] = _check_unlisted(scan)
    except BaseException as exc:  # handed to the waiting thread, re-raised
        errors.append(exc)
