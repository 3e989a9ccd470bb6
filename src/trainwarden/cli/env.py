"""``trainwarden env verify|snapshot|diff``: installed-environment integrity (T2)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from trainwarden.cli._common import EXIT_FINDINGS, EXIT_OK, add_format_arguments, emit_report
from trainwarden.errors import ConfigError
from trainwarden.findings import Verdict


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register ``env`` with its sub-commands ``verify``, ``snapshot`` and ``diff``."""
    env = subparsers.add_parser(
        "env",
        help="verify installed packages, startup hooks and bytecode against RECORD or a lock",
        description="Detect edits to installed packages (torch included), startup-code "
        "injection (.pth, sitecustomize, PYTHONPATH) and forged bytecode.",
    )
    commands = env.add_subparsers(dest="env_command", metavar="COMMAND")
    commands.required = True

    verify = commands.add_parser(
        "verify",
        help="verify site directories against RECORD hashes (and a lock)",
        description="Verify every installed distribution against its wheel RECORD (modified, "
        "missing and unexpected files), compare each __pycache__ pyc with a fresh compile of "
        "its source, and look for startup-code vectors. With --lock, also compare every file "
        "with the lock. Exit 0 intact, 1 tampered or not verifiable, 2 error.",
    )
    _add_site_arguments(verify)
    verify.add_argument(
        "--lock", metavar="FILE", type=Path, help="also compare every file with this env.lock"
    )
    verify.add_argument(
        "--key",
        metavar="PUB",
        type=Path,
        help="public key the lock must be signed by (requires --lock; FILE.sig must verify)",
    )
    verify.add_argument(
        "--fail-on",
        choices=("unsafe", "unknown"),
        default="unknown",
        help="exit 1 at this verdict or worse (default: unknown: what cannot be verified fails)",
    )
    verify.add_argument(
        "--skip-pyc",
        action="store_true",
        help="do not compare pyc files with their sources (faster; forged bytecode goes unseen)",
    )
    add_format_arguments(verify)
    verify.set_defaults(handler=_verify)

    snapshot = commands.add_parser(
        "snapshot",
        help="record every file (digest, size, mode) into a lock, signed with --key",
        description="Verify the site directories, then record every file (including pyc and "
        "files RECORD does not hash) in a lock file; with --key, write a detached Ed25519 "
        "signature to OUT.sig. Refuses (exit 1) when the environment is already tampered.",
    )
    _add_site_arguments(snapshot)
    snapshot.add_argument(
        "--out", metavar="FILE", type=Path, required=True, help="where to write the lock"
    )
    snapshot.add_argument(
        "--key", metavar="KEY", type=Path, help="private key to sign the lock with"
    )
    snapshot.add_argument(
        "--unsafe-accept-findings",
        action="store_true",
        help="write the lock even when verification finds tampering (enshrines it)",
    )
    add_format_arguments(snapshot)
    snapshot.set_defaults(handler=_snapshot)

    diff = commands.add_parser(
        "diff",
        help="compare two locks (exit 0 same, 1 different)",
        description="List files added, removed or changed between lock A and lock B.",
    )
    diff.add_argument("old", metavar="A", type=Path, help="the earlier lock")
    diff.add_argument("new", metavar="B", type=Path, help="the later lock")
    diff.add_argument(
        "--key", metavar="PUB", type=Path, help="public key both locks must be signed by"
    )
    add_format_arguments(diff)
    diff.set_defaults(handler=_diff)


def _add_site_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--path",
        metavar="SITE_DIR",
        action="append",
        default=[],
        help="site directory to check; repeat for several (default: this interpreter's)",
    )
    parser.add_argument(
        "--jobs",
        metavar="N",
        type=int,
        default=None,
        help="hashing threads and compiling processes (default: one a CPU)",
    )


def _progress(args: argparse.Namespace) -> Any:
    if not sys.stderr.isatty():
        return None

    def note(message: str) -> None:
        print(f"trainwarden env: {message}", file=sys.stderr)

    return note


def _jobs(args: argparse.Namespace) -> int | None:
    jobs: int | None = args.jobs
    if jobs is not None and not 1 <= jobs <= 256:
        raise ConfigError(f"--jobs must be between 1 and 256, not {jobs}")
    return jobs


def _verify(args: argparse.Namespace) -> int:
    from trainwarden.env import read_lock, verify_environment

    if args.key is not None and args.lock is None:
        raise ConfigError("--key checks the signature of a lock: give --lock FILE too")
    lock = None
    if args.lock is not None:
        key = None
        if args.key is not None:
            from trainwarden.keys import load_public_key

            key = load_public_key(args.key)
        lock = read_lock(args.lock, key=key)
    report = verify_environment(
        args.path or None,
        lock=lock,
        check_pyc=not args.skip_pyc,
        workers=_jobs(args),
        progress=_progress(args),
    )
    emit_report(report, args.format, args.output)
    fail_on = Verdict.UNSAFE if args.fail_on == "unsafe" else Verdict.UNKNOWN
    return EXIT_FINDINGS if report.fails(fail_on) else EXIT_OK


def _snapshot(args: argparse.Namespace) -> int:
    from trainwarden.env import snapshot_environment, write_lock

    key = None
    if args.key is not None:
        from trainwarden.keys import load_private_key

        # Load the key first: a bad key path should fail before minutes of hashing.
        key = load_private_key(args.key)
    lock, report = snapshot_environment(
        args.path or None, workers=_jobs(args), progress=_progress(args)
    )
    # Unknowns (editable installs, egg-info) are recorded: the lock anchors them from now on.
    # Tampering is not: a lock of a tampered environment would vouch for the tampering.
    if report.fails(Verdict.UNSAFE) and not args.unsafe_accept_findings:
        emit_report(report, args.format, args.output)
        print(
            "trainwarden: refusing to write a lock of a tampered environment "
            "(see the findings above; --unsafe-accept-findings overrides)",
            file=sys.stderr,
        )
        return EXIT_FINDINGS
    sig = write_lock(lock, args.out, key=key)
    if args.format != "text" or args.output is not None:
        emit_report(report, args.format, args.output)
    signed = f", signed ({sig})" if sig is not None else ", unsigned"
    print(
        f"trainwarden: wrote {args.out}: {lock.file_count} files in {len(lock.roots)} site "
        f"dir(s){signed}",
        file=sys.stderr,
    )
    return EXIT_OK


def _diff(args: argparse.Namespace) -> int:
    from trainwarden.env import diff_locks, read_lock

    key = None
    if args.key is not None:
        from trainwarden.keys import load_public_key

        key = load_public_key(args.key)
    report = diff_locks(read_lock(args.old, key=key), read_lock(args.new, key=key))
    emit_report(report, args.format, args.output)
    return EXIT_FINDINGS if report.findings else EXIT_OK
