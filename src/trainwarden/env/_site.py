"""What every on-disk check shares: a scanned site directory, findings, and report plumbing.

The bottom layer of the on-disk checks (``_startup``, ``_lock``, ``_verify`` and ``_snapshot``
all build on it, none of them on each other in a circle).
"""

# os.path on str is used on purpose: these paths are walked by the ten thousand and pathlib
# objects would cost more than the hashing of small files.
# ruff: noqa: PTH100, PTH112, PTH119, PTH120, PTH208

from __future__ import annotations

import os
import site
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

from trainwarden.env._dists import Distribution, SiteLayout
from trainwarden.env._hashing import FileDigest, HashFailure
from trainwarden.errors import InputError
from trainwarden.findings import FileReport, Finding, Location, Report, Severity, Verdict

__all__ = [
    "VERIFY_COMMAND",
    "SiteScan",
    "default_site_dirs",
    "finding",
    "install_prefix",
    "merge_reports",
    "printable",
    "python_description",
    "site_path",
    "within",
]

#: ``command`` of the reports of :func:`trainwarden.env.verify_environment`.
VERIFY_COMMAND = "env verify"


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


def printable(text: str) -> str:
    """``text`` with surrogate escapes (undecodable file-name bytes) replaced by U+FFFD."""
    if text.isascii():
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


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


@dataclass
class SiteScan:
    """What was seen in one directory tree: its layout, its files and their digests.

    ``editable_of`` is empty for a site directory; for the source tree of editable installs
    (anchored only by a lock) it names the distributions whose code lives there: such a tree
    has no RECORD, so only the lock comparison and the pyc check apply to it.
    """

    layout: SiteLayout
    files: dict[str, int]
    digests: dict[str, FileDigest | HashFailure] = field(default_factory=dict)
    # Findings keyed by the report they belong to (a dist-info path, or the site itself).
    findings: dict[str, list[Finding]] = field(default_factory=dict)
    editable_of: tuple[str, ...] = ()
    # For an editable source tree: "importable" or "tree" (see trainwarden.env._dists).
    scope: str = ""

    @property
    def is_site(self) -> bool:
        """Whether this is a site directory (with distributions), not an editable source tree."""
        return not self.editable_of

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


def site_path(site_dir: str) -> str:
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


def within(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or lies below it (both normalised)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def merge_reports(base: Report, extra: Iterable[FileReport], *, command: str) -> Report:
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
    return Report(files=tuple(by_path.values()), command=command)


def python_description() -> dict[str, str]:
    """The interpreter a verification ran under (for lock files and reports)."""
    return {
        "implementation": sys.implementation.name,
        "version": ".".join(str(v) for v in sys.version_info[:3]),
        "cache_tag": sys.implementation.cache_tag or "",
        "executable": sys.executable,
    }
