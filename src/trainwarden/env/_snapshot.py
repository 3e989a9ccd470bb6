"""``env snapshot``: verify the environment, then record every file of it in a lock.

Built on the verification (``_verify``) and the lock format (``_lock``); neither imports this.
"""

# ruff: noqa: PTH118

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Mapping, Sequence

from trainwarden.env._lock import EditableRoot, EnvLock, LockedFile, lock_entries
from trainwarden.env._site import (
    default_site_dirs,
    finding,
    merge_reports,
    python_description,
)
from trainwarden.env._verify import run_verification
from trainwarden.findings import FileReport, Report, Severity, Verdict

__all__ = ["SNAPSHOT_COMMAND", "snapshot_environment"]

SNAPSHOT_COMMAND = "env snapshot"
_PYC_PROBLEMS = frozenset({"env.pyc-forged", "env.pyc-unchecked-hash", "env.pyc-unreadable"})


def snapshot_environment(
    site_dirs: Sequence[str] | None = None,
    *,
    workers: int | None = None,
    check_pyc: bool = True,
    progress: Callable[[str], None] | None = None,
) -> tuple[EnvLock, Report]:
    """Record every file of the site directories, after verifying them.

    The source trees of editable installs in those site directories are recorded too (as
    roots marked ``editable``): no RECORD covers them, the lock then does. The verification
    report comes back with the lock so the caller can refuse to write a lock that would
    enshrine a tampered environment (the CLI refuses unless told otherwise).

    Raises:
        InputError: a site directory (or an editable source tree) cannot be read.
    """
    dirs = tuple(site_dirs) if site_dirs else default_site_dirs()
    report, scans = run_verification(
        dirs,
        lock=None,
        hash_all=True,
        check_pyc=check_pyc,
        check_startup=True,
        workers=workers,
        progress=progress,
    )
    files: dict[str, Mapping[str, LockedFile]] = {}
    dists: dict[str, Mapping[str, str]] = {}
    editable: dict[str, EditableRoot] = {}
    problems: list[FileReport] = []
    for scan in scans:
        root = scan.layout.site
        if root in files:
            continue  # an editable tree that is also a site directory given: recorded once
        entries, failed = lock_entries(scan)
        files[root] = entries
        dists[root] = {
            d.name: d.version for d in sorted(scan.layout.distributions, key=lambda d: d.name)
        }
        if scan.editable_of:
            editable[root] = EditableRoot(scan.editable_of, scan.scope)
        found = tuple(
            finding(
                "lock-unrecorded",
                Severity.MEDIUM,
                Verdict.ERROR,
                f"{rel} could not be recorded in the lock: {why}.",
                os.path.join(root, rel),
            )
            for rel, why in sorted(failed.items())
        )
        if found:
            problems.append(FileReport(root, "site-dir", found))
    lock = EnvLock(
        roots=tuple(files),
        files=files,
        distributions=dists,
        created=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        python=python_description(),
        # Only a snapshot that compared every pyc with its source, and found none forged,
        # may vouch for pycs later (verify then skips compiling those that still match).
        pyc_verified=check_pyc and not any(f.rule_id in _PYC_PROBLEMS for f in report.findings),
        editable=editable,
    )
    return lock, merge_reports(report, problems, command=SNAPSHOT_COMMAND)
