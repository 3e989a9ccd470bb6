"""Verify installed distributions against their RECORD, a lock, and their bytecode.

One :class:`~trainwarden.findings.FileReport` a distribution (its ``.dist-info`` path) and one
a site directory (files no distribution owns, startup hooks); a distribution that cannot be
verified is never reported as intact.
"""

# os.path on str is used on purpose: these paths are walked by the ten thousand and pathlib
# objects would cost more than the hashing of small files.
# ruff: noqa: PTH100, PTH110, PTH112, PTH118, PTH119, PTH120, PTH208

from __future__ import annotations

import os
import site
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from trainwarden.env._dists import (
    KIND_FILE,
    KIND_LINK,
    Distribution,
    SiteLayout,
    discover,
    is_code_file,
    walk_files,
)
from trainwarden.env._hashing import FileDigest, HashFailure, hash_files, record_digest
from trainwarden.env._pyc import PycCheck, check_pycs, pyc_source
from trainwarden.errors import InputError
from trainwarden.findings import FileReport, Finding, Location, Report, Severity, Verdict

if TYPE_CHECKING:
    from trainwarden.env._lock import EnvLock, LockedFile

__all__ = [
    "SiteScan",
    "default_site_dirs",
    "finding",
    "run_verification",
    "scan_site",
    "verify_environment",
]

COMMAND = "env verify"
# Judged (with their own explanation) by the startup checks, not as unowned code.
_STARTUP_MODULES = frozenset({"sitecustomize", "usercustomize"})


def default_site_dirs() -> tuple[str, ...]:
    """The running interpreter's site directories, plus the user site when it is enabled."""
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        user = site.getusersitepackages()
        if os.path.isdir(user):
            dirs.append(user)
    seen: dict[str, None] = {}
    for d in dirs:
        if os.path.isdir(d):
            seen.setdefault(os.path.normpath(os.path.abspath(d)), None)
    return tuple(seen)


def finding(
    rule: str,
    severity: Severity,
    verdict: Verdict,
    message: str,
    path: str,
    *,
    evidence: str | None = None,
    **extra: str | int,
) -> Finding:
    """Build a finding with the ``env.`` rule prefix.

    File names are attacker-chosen bytes: undecodable ones are shown with U+FFFD so every
    report format can be written.
    """
    return Finding(
        rule_id=f"env.{rule}",
        severity=severity,
        message=printable(message),
        location=Location(path=printable(path), extra=extra),
        evidence=printable(evidence) if evidence is not None else None,
        verdict=verdict,
    )


def printable(text: str) -> str:
    """``text`` with surrogate escapes (undecodable file-name bytes) replaced by U+FFFD."""
    if text.isascii():
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


@dataclass
class SiteScan:
    """What was seen in one site directory: its layout, its files and their digests."""

    layout: SiteLayout
    files: dict[str, int]
    digests: dict[str, FileDigest | HashFailure] = field(default_factory=dict)
    # Findings keyed by the report they belong to (a dist-info path, or the site itself).
    findings: dict[str, list[Finding]] = field(default_factory=dict)

    def add(self, key: str, item: Finding) -> None:
        """File ``item`` under the report ``key``."""
        self.findings.setdefault(key, []).append(item)

    def dist_of(self, key: str) -> Distribution | None:
        """The distribution whose report is ``key`` (``None`` for the site directory)."""
        for dist in self.layout.distributions:
            if dist.metadata_dir == key:
                return dist
        return None

    def owner_key(self, path: str) -> str:
        """The report a file's findings go to: its distribution, else the site directory."""
        owners = self.layout.owners.get(path)
        if owners:
            return owners[0].metadata_dir
        parent = os.path.dirname(path)
        site_dir = self.layout.site
        while parent.startswith(site_dir + os.sep):
            dist = self.layout.dir_owner.get(parent)
            if dist is not None:
                return dist.metadata_dir
            parent = os.path.dirname(parent)
        return site_dir


def scan_site(site_dir: str, *, walk: bool = True) -> SiteScan:
    """Discover distributions and list every file under ``site_dir`` (no hashing yet).

    With ``walk=False`` the file listing is left empty, for the caller to fill in (in
    parallel with hashing).

    Raises:
        InputError: ``site_dir`` is not a readable directory.
    """
    path = _site_path(site_dir)
    layout = discover(path)
    return SiteScan(layout, dict(walk_files(path)) if walk else {})


def _site_path(site_dir: str) -> str:
    """``site_dir`` made absolute and normal, after checking it is a readable directory.

    Raises:
        InputError: ``site_dir`` is not a readable directory.
    """
    path = os.path.normpath(os.path.abspath(site_dir))
    if not os.path.isdir(path):
        raise InputError(f"site directory {site_dir} does not exist or is not a directory")
    try:
        os.listdir(path)
    except OSError as exc:
        raise InputError(f"cannot read site directory {site_dir}: {exc.strerror}") from exc
    return path


def _record_algorithm_files(scan: SiteScan) -> dict[str, set[str]]:
    wanted: dict[str, set[str]] = {}
    for dist in scan.layout.distributions:
        for entry in dist.entries:
            if entry.algorithm is not None:
                wanted.setdefault(entry.algorithm, set()).add(entry.path)
    return wanted


def _check_records(
    scan: SiteScan, extra: dict[str, FileDigest | HashFailure], *, anchored: bool = False
) -> None:
    """Compare every RECORD row with what is on disk.

    With ``anchored`` (a lock is compared too), what RECORD cannot vouch for is still
    covered by the lock, so it is reported as information instead of "cannot verify".
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
            scan.add(
                key,
                finding(
                    "editable-install",
                    Severity.MEDIUM,
                    Verdict.UNKNOWN,
                    f"{dist.label} is an editable install: its source lives outside the site "
                    "directory and no RECORD covers it.",
                    dist.metadata_dir,
                    evidence=dist.label,
                ),
            )
        record_path = os.path.join(dist.metadata_dir, "RECORD")
        prefix = install_prefix(scan.layout.site)
        for entry in dist.entries:
            if not _within(entry.path, prefix):
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


def install_prefix(site_dir: str) -> str:
    """The environment a site directory belongs to (``<prefix>/lib/pythonX.Y/site-packages``).

    RECORD rows may leave the site directory for scripts and data (``../../../bin/x``), but
    not the installation prefix; for other layouts the site directory itself is the bound.
    """
    parent = os.path.dirname(site_dir)
    if os.path.basename(site_dir) in ("site-packages", "dist-packages") and (
        os.path.basename(parent).startswith("python")
    ):
        return os.path.dirname(os.path.dirname(parent))
    return site_dir


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


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
    """Report files no RECORD lists; return the ``__pycache__`` pycs to compare with source."""
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


def _check_pyc_results(scan: SiteScan, tasks: list[PycCheck], workers: int | None) -> None:
    for result in check_pycs(tasks, workers=workers):
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
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Verify site directories against RECORD (and ``lock`` when given).

    Args:
        site_dirs: Directories to verify (default: the lock's roots when a lock is given,
            else :func:`default_site_dirs`).
        lock: A lock read (and signature-checked) by :func:`trainwarden.env.read_lock`; every
            file is then also compared with its recorded digest, size and mode.
        check_pyc: Compare each ``__pycache__`` pyc with a fresh compile of its source. With
            a lock, pycs whose bytes and source bytes both match the lock are not compiled
            again (the snapshot compiled them before recording them).
        check_startup: Look for startup-code vectors (``.pth``, sitecustomize, environment).
        workers: Threads for hashing and processes for compiling (default: one a CPU).
        progress: Called with short progress messages (for stderr).

    Returns:
        One report per distribution and per site directory, ``command="env verify"``.

    Raises:
        InputError: a site directory does not exist or cannot be read.
    """
    if not site_dirs:
        site_dirs = lock.roots if lock is not None else default_site_dirs()
    report, _ = run_verification(
        site_dirs,
        lock=lock,
        hash_all=lock is not None,
        check_pyc=check_pyc,
        check_startup=check_startup,
        workers=workers,
        progress=progress,
    )
    return report


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
    progress: Callable[[str], None] | None,
) -> tuple[Report, list[SiteScan]]:
    """Run a verification and return the report with the scans (digests included).

    ``hash_all`` hashes every regular file, not only those RECORD hashes (for a lock).
    """
    from trainwarden.env._lock import compare_lock, join_rel, lock_entries

    if not site_dirs:
        raise InputError("no site directory to verify")
    note = progress or (lambda _msg: None)
    # RECORD (and the lock) name the files to hash, so hashing starts as soon as they are
    # read and the directory walk (syscall-bound, GIL released) runs beside it. Files the
    # walk finds beyond those are hashed afterwards (for a lock, every file is hashed).
    # Only a snapshot without a lock must walk first: the walk is its only list.
    walk_first = hash_all and lock is None
    sites = list(dict.fromkeys(_site_path(d) for d in site_dirs))
    scans: list[SiteScan] = []
    digests: dict[str, FileDigest | HashFailure] = {}
    # Site -> the __pycache__ pycs to compare; the unlisted-file check needs no digests, so
    # the walking thread does it too while this one hashes.
    pyc_tasks: dict[str, list[PycCheck]] = {}
    walk_errors: list[BaseException] = []
    if lock is not None:
        # The lock names (nearly) every file: hash them at once, while another thread reads
        # the RECORDs, walks the tree and looks for unlisted files. What RECORD names beyond
        # the lock (scripts outside the site directory, files added since) is hashed below.
        early = {
            join_rel(site_path, rel): expected.size
            for site_path in sites
            for rel, expected in lock.files.get(site_path, {}).items()
            if expected.link is None
        }
        walker = threading.Thread(
            target=_discover_walk_all, args=(sites, scans, pyc_tasks, walk_errors), name="tw-walk"
        )
        walker.start()
        try:
            digests = hash_files(early, workers=workers, sizes=early)
        finally:
            walker.join()
        _raise_walk_errors(walk_errors)
    else:
        scans = [scan_site(d, walk=walk_first) for d in sites]
    want: dict[str, int] = {}
    other: dict[str, set[str]] = {}
    for scan in scans:
        prefix = install_prefix(scan.layout.site)
        for dist in scan.layout.distributions:
            for entry in dist.entries:
                if not _within(entry.path, prefix):
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
        digests.update(hash_files(want, workers=workers, sizes=want))
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
        digests.update(hash_files(late, workers=workers))
    note(f"hashed {len(digests)} of {sum(len(s.files) for s in scans)} files")
    all_pycs: list[tuple[SiteScan, list[PycCheck]]] = []
    # The lock view of what was hashed, computed once: the pyc trust check and the lock
    # comparison both need it.
    current: dict[str, tuple[dict[str, LockedFile], dict[str, str]]] = {}
    for scan in scans:
        scan.digests = digests
        if lock is not None:
            current[scan.layout.site] = lock_entries(scan, ordered=False)
        _check_records(scan, extra, anchored=lock is not None)
        tasks = pyc_tasks.get(scan.layout.site)
        all_pycs.append((scan, tasks if tasks is not None else _check_unlisted(scan)))
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
        note(f"comparing {len(todo)} of {len(tasks)} pyc files with their sources")
        _check_pyc_results(scan, todo, workers)
    extra_reports: list[FileReport] = []
    if lock is not None:
        extra_reports.extend(compare_lock(lock, scans, current=current))
    if check_startup:
        from trainwarden.env._startup import check_startup as startup_checks

        extra_reports.extend(startup_checks(scans))
    return _merge(_reports(scans, ()), extra_reports), scans


def _raise_walk_errors(errors: list[BaseException]) -> None:
    if errors:
        # A half walk is never "clean".
        raise InputError(f"walking the site directories failed: {errors[0]}") from errors[0]


def _discover_walk_all(
    sites: Sequence[str],
    scans: list[SiteScan],
    pyc_tasks: dict[str, list[PycCheck]],
    errors: list[BaseException],
) -> None:
    try:
        for site_path in sites:
            scan = SiteScan(discover(site_path), {})
            scans.append(scan)
            scan.files = dict(walk_files(site_path))
            pyc_tasks[site_path] = _check_unlisted(scan)
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


def _merge(base: Report, extra: Iterable[FileReport]) -> Report:
    """Fold extra per-path findings into the reports of the same path."""
    by_path: dict[str, FileReport] = {f.path: f for f in base.files}
    for item in extra:
        current = by_path.get(item.path)
        if current is None:
            by_path[item.path] = item
        else:
            details = dict(current.details)
            details.update(item.details)
            by_path[item.path] = FileReport(
                current.path,
                current.format,
                current.findings + item.findings,
                details=details,
            )
    return Report(files=tuple(by_path.values()), command=COMMAND)


def python_description() -> dict[str, str]:
    """The interpreter a verification ran under (for lock files and reports)."""
    return {
        "implementation": sys.implementation.name,
        "version": ".".join(str(v) for v in sys.version_info[:3]),
        "cache_tag": sys.implementation.cache_tag or "",
        "executable": sys.executable,
    }
