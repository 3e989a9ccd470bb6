"""Static analysis of model files: find what loading them would import or run, without loading.

``scan_path`` walks files and archives and returns a :class:`~trainwarden.findings.Report`;
``scan_bytes`` scans the exact buffer a loader is about to unpickle; ``sniff_format`` names a
format from its bytes. Nothing scanned is ever imported, executed or unpickled.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from trainwarden.findings import FileReport, Report
from trainwarden.scan._catalogue import dangerous_reason
from trainwarden.scan._config import FileConfig, read_config
from trainwarden.scan._limits import DEFAULT_LIMITS, Limits
from trainwarden.scan._policy import (
    PROFILES,
    RULE_ALLOWED,
    RULE_DANGEROUS,
    RULE_NESTED,
    RULE_UNEXPECTED_CALL,
    RULE_UNKNOWN,
    Decision,
    Policy,
)

__all__ = [
    "DEFAULT_LIMITS",
    "PROFILES",
    "RULE_ALLOWED",
    "RULE_DANGEROUS",
    "RULE_NESTED",
    "RULE_UNEXPECTED_CALL",
    "RULE_UNKNOWN",
    "Decision",
    "FileConfig",
    "Limits",
    "Policy",
    "dangerous_reason",
    "describe_config",
    "read_config",
    "scan_bytes",
    "scan_path",
    "sniff_format",
]


def scan_path(
    *paths: str | os.PathLike[str],
    policy: Policy | None = None,
    limits: Limits = DEFAULT_LIMITS,
    jobs: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Scan files and directories (walked, archives entered) and return one report.

    Args:
        *paths: files or directories. Symlinks met while walking are reported; only a
            link to a regular file outside the tree is followed (that file is scanned).
        policy: what is allowed; ``Policy.default()`` when ``None``.
        limits: bounds on the work done for each file.
        jobs: worker processes; ``None`` picks one per CPU for large trees, 1 otherwise.
        progress: called with each file's path once it is scanned.

    Returns:
        The report, one :class:`~trainwarden.findings.FileReport` per file or entry.

    Raises:
        trainwarden.errors.InputError: a path does not exist or cannot be listed.
    """
    from trainwarden.scan._scanner import scan_paths

    if not paths:
        from trainwarden.errors import InputError

        raise InputError("nothing to scan: no paths given")
    from dataclasses import replace

    policy = policy if policy is not None else Policy.default()
    report = scan_paths(paths, policy=policy, limits=limits, jobs=jobs, progress=progress)
    return replace(report, config=describe_config(policy, limits))


def describe_config(
    policy: Policy, limits: Limits, *, limit_sources: dict[str, str] | None = None
) -> dict[str, object]:
    """The applied configuration as reports list it (``Report.config``).

    Profiles and allow entries with where each came from, and every limit that differs from
    :data:`DEFAULT_LIMITS` with its value and source (``limit_sources``: name -> source;
    ``api`` when not given).
    """
    from dataclasses import fields

    sources = limit_sources or {}
    changed = {
        f.name: {"value": getattr(limits, f.name), "source": sources.get(f.name, "api")}
        for f in fields(limits)
        if getattr(limits, f.name) != getattr(DEFAULT_LIMITS, f.name)
    }
    return {**policy.describe(), "limits": changed}


def scan_bytes(
    data: bytes | memoryview,
    *,
    name: str = "<bytes>",
    policy: Policy | None = None,
    limits: Limits = DEFAULT_LIMITS,
    digest: bool = True,
) -> FileReport:
    """Scan an in-memory buffer, e.g. exactly the bytes a loader will then unpickle.

    Args:
        data: the bytes.
        name: the path shown in the report.
        policy: what is allowed; ``Policy.default()`` when ``None``.
        limits: bounds on the work done.
        digest: compute the report's ``sha256`` (``False`` leaves it ``None``: hashing a
            multi-GB checkpoint costs more than scanning it; the loader hashes on refusal).

    Returns:
        The buffer's report (its ``sha256`` is the digest of ``data`` when ``digest``).
    """
    from trainwarden.scan._scanner import scan_buffer

    return scan_buffer(
        data, name, policy if policy is not None else Policy.default(), limits, digest=digest
    )


def sniff_format(data: bytes | memoryview) -> str:
    """Name the format of ``data`` from its bytes alone (one of the ``FileReport.format`` names).

    Zip archives are told apart by their member names (``torch-zip``, ``torchscript``,
    ``numpy-npz``, ``keras``, ``zip``); bytes no reader recognises are ``pickle`` when the
    pickle machine reaches an import or completes a pickle, else ``data``/``json``/``text``.
    """
    from trainwarden.scan._formats import sniff_buffer

    return sniff_buffer(data)
