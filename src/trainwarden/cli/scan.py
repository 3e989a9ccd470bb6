"""``trainwarden scan`` (static analysis of model files) and ``trainwarden demo``.

Exit codes: 0 every file safe; 1 a file at or above ``--fail-on``, or one that could not be
analysed; 2 usage or operational error (missing path, bad ``--allow``, bad configuration).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainwarden.cli._common import (
    EXIT_FINDINGS,
    EXIT_OK,
    Progress,
    add_jobs_argument,
    add_output_arguments,
    add_progress_argument,
    check_output,
    emit_report,
)
from trainwarden.errors import ConfigError

if TYPE_CHECKING:
    from trainwarden.findings import FileReport, Report
    from trainwarden.scan import Limits, Policy

__all__ = ["register"]

_EPILOG = """\
exit status: 0 every file safe; 1 a file at or above --fail-on, or one that could not be
analysed; 2 usage or operational error.

Formats are recognised from their bytes (never the extension): pickle, PyTorch zip and legacy
checkpoints, TorchScript, torch.export .pt2 programs, NumPy .npy/.npz, joblib, skops,
zip/tar/7z/gzip/bz2/xz/lzma/lz4/zstd (entered; a zip behind other data too), safetensors,
GGUF, ONNX, TensorFlow SavedModel, Keras and Hugging Face config files. Nothing
scanned is imported, executed or unpickled. A path that does not exist is listed as an error
(exit 2 only when nothing could be scanned). The allowlist, profiles and limits can also be
set in pyproject.toml: [tool.trainwarden] allow = [...], profiles = [...], and a
[tool.trainwarden.limits] table; every report lists the configuration applied.
"""


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``scan`` and ``demo`` commands."""
    scan = subparsers.add_parser(
        "scan",
        help="statically scan model files for code that loading them would run",
        description=(
            "Statically scan model files and directories for code that loading them would\n"
            "run. Every import a pickle would perform is checked against an allowlist;\n"
            "known code-execution primitives are unsafe, anything else is unknown."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    scan.add_argument("paths", nargs="+", metavar="PATH", help="files or directories to scan")
    add_output_arguments(scan)
    scan.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="MODULE.NAME",
        help="also allow this global (repeatable; dangerous globals are refused)",
    )
    scan.add_argument(
        "--profile",
        action="append",
        default=[],
        metavar="NAME",
        help="enable an allowlist profile: torch-modules, transformers, lightning, accelerate, "
        "sklearn (repeatable)",
    )
    scan.add_argument(
        "--fail-on",
        choices=("unsafe", "unknown"),
        default="unknown",
        help="lowest verdict that makes the exit status 1 (default: unknown)",
    )
    add_jobs_argument(scan, "worker processes (default: one per idle CPU for large trees)")
    scan.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a resource limit, e.g. max_seconds=120 (repeatable)",
    )
    add_progress_argument(scan)
    scan.set_defaults(handler=_run_scan)

    demo = subparsers.add_parser(
        "demo",
        help="scan the bundled example checkpoints (one of them malicious)",
        description=(
            "Scan the example folder shipped with trainwarden: real checkpoints written by "
            "torch, numpy and safetensors, and one malicious torch checkpoint (its payload "
            "only runs `echo`). Exits 0 when the malicious file is caught and every other "
            "file is safe."
        ),
    )
    add_output_arguments(demo)
    demo.set_defaults(handler=_run_demo)


def parse_limits(
    items: list[str],
    *,
    file_limits: Mapping[str, int | float] | None = None,
    file_source: str = "pyproject.toml",
    sources: dict[str, str] | None = None,
) -> Limits:
    """Parse ``NAME=VALUE`` overrides into :class:`~trainwarden.scan.Limits`.

    ``file_limits`` (from ``[tool.trainwarden.limits]``) apply first, ``--limit`` over them;
    ``sources`` (when given) receives where each changed limit came from.
    """
    from trainwarden.scan import DEFAULT_LIMITS

    changes: dict[str, int | float] = {}
    origin: dict[str, str] = {}
    for name, number in (file_limits or {}).items():
        key = name.strip().replace("-", "_")
        changes[key] = number
        origin[key] = file_source
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise ConfigError(f"--limit expects NAME=VALUE, got {item!r}")
        try:
            value: int | float = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise ConfigError(f"--limit {name}: {text!r} is not a number") from None
        changes[name] = value
        origin[name] = "--limit"
    try:
        limits = DEFAULT_LIMITS.replace(**changes)
    except ValueError as exc:
        raise ConfigError(f"limits ({', '.join(sorted(set(origin.values())))}): {exc}") from None
    if sources is not None:
        sources.update(origin)
    return limits


def _run_scan(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from trainwarden.errors import InputError
    from trainwarden.findings import Verdict
    from trainwarden.scan import Policy, describe_config, read_config, scan_path

    # Refused before any work: a report written over a scanned file destroys the evidence.
    check_output(args.output, args.paths)
    file_config = read_config(Path.cwd())
    sources: dict[str, str] = {}
    limits = parse_limits(
        args.limit,
        file_limits=file_config.limits,
        file_source=str(file_config.path),
        sources=sources,
    )
    policy = Policy.from_pyproject(profiles=args.profile, allow=args.allow)
    existing = [p for p in args.paths if os.path.lexists(p)]
    missing = [p for p in args.paths if not os.path.lexists(p)]
    if not existing:
        raise InputError(f"nothing could be scanned: {', '.join(missing)}: no such file")
    with Progress("scan", enabled=not args.no_progress, unit="files") as progress:
        report = scan_path(
            *existing,
            policy=policy,
            limits=limits,
            jobs=args.jobs,
            progress=lambda path: progress.update(advance=1, message=path),
        )
    config = {
        **describe_config(policy, limits, limit_sources=sources),
        "fail_on": args.fail_on,
        "pyproject": str(file_config.path) if file_config.path is not None else None,
    }
    report = replace(report, files=(*report.files, *map(_missing, missing)), config=config)
    emit_report(report, args.format, args.output)
    hint = _profile_hint(report, policy)
    if hint is not None:
        print(f"trainwarden: hint: {hint}", file=sys.stderr)
    fail_on = Verdict.UNSAFE if args.fail_on == "unsafe" else Verdict.UNKNOWN
    return EXIT_FINDINGS if report.fails(fail_on) else EXIT_OK


def _profile_hint(report: Report, policy: Policy) -> str | None:
    """Name the opt-in profiles that would allow every unknown global in ``report``.

    A transformers ``training_args.bin`` or an sklearn pipeline is ``unknown`` until its
    framework's profile is on, and a new user sees a wall of "not in the allowlist" with no
    word of ``--profile``. The hint is given only when profiles cover every unknown global:
    a hint that left one unexplained would read as "all fine once you add this".
    """
    from trainwarden.scan import PROFILES

    unknown = {
        finding.evidence
        for file in report.files
        for finding in file.findings
        if finding.rule_id == "policy.unknown-global" and finding.evidence
    }
    optional = sorted(set(PROFILES) - set(policy.profiles))
    covers = {p: {d for d in unknown if _allows(policy.with_profiles([p]), d)} for p in optional}
    if not unknown or set().union(*covers.values()) != unknown:
        return None
    # Fewest flags: transformers' profile also allows the accelerate state its files carry.
    needed: set[str] = set()
    left = set(unknown)
    while left:
        best = max(optional, key=lambda p: (len(covers[p] & left), -optional.index(p)))
        needed.add(best)
        left -= covers[best]
    flags = " ".join(f"--profile {p}" for p in sorted(needed))
    return (
        "every unknown global above is a framework class that an opt-in profile allows; if you "
        f"trust the framework that wrote these files: {flags}"
    )


def _allows(policy: Policy, dotted: str) -> bool:
    """Whether ``policy`` allows ``dotted`` read as ``module.name`` at any of its dots."""
    from trainwarden.findings import Verdict

    parts = dotted.split(".")
    return any(
        policy.classify(".".join(parts[:i]), ".".join(parts[i:])).verdict is Verdict.SAFE
        for i in range(1, len(parts))
    )


def _missing(path: str) -> FileReport:
    from trainwarden.findings import FileReport, Finding, Location, Severity, Verdict

    return FileReport(
        path,
        "missing",
        (
            Finding(
                "file.missing",
                Severity.HIGH,
                "no such file or directory: nothing was scanned here",
                Location(path),
                verdict=Verdict.ERROR,
            ),
        ),
    )


def _examples_dir() -> str:
    from importlib import resources

    # The package is installed as plain files (package data), so the resource is a path.
    return str(resources.files("trainwarden") / "examples" / "checkpoints")


def _relabel(report: Report, root: str, label: str) -> Report:
    """Show paths relative to the example folder rather than the install location."""
    from dataclasses import replace

    def fix(path: str) -> str:
        return label + path[len(root) :] if path.startswith(root) else path

    files = tuple(
        replace(
            f,
            path=fix(f.path),
            findings=tuple(
                replace(x, location=replace(x.location, path=fix(x.location.path)))
                for x in f.findings
            ),
        )
        for f in report.files
    )
    return replace(report, files=files, command="demo")


def _run_demo(args: argparse.Namespace) -> int:
    from trainwarden.errors import InputError
    from trainwarden.findings import Verdict
    from trainwarden.scan import Policy, scan_path

    root = _examples_dir()
    if not Path(root).is_dir():
        raise InputError(f"the bundled examples are missing ({root}); reinstall trainwarden")
    check_output(args.output, [root])
    report = _relabel(scan_path(root, policy=Policy.default()), root, "examples/checkpoints")
    emit_report(report, args.format, args.output)
    unsafe = [f for f in report.files if f.verdict is Verdict.UNSAFE]
    others = [f for f in report.files if f.verdict is not Verdict.UNSAFE]
    expected = (
        len(unsafe) == 1
        and "malicious" in Path(unsafe[0].path).name
        and all(f.verdict is Verdict.SAFE for f in others)
    )
    if expected:
        print(
            f"demo: as expected: {unsafe[0].path} is unsafe, the other {len(others)} "
            "file(s) are safe",
            file=sys.stderr,
        )
        return 0
    print("demo: UNEXPECTED result (see the report above)", file=sys.stderr)
    return 1
