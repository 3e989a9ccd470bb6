"""``trainwarden env verify|snapshot|diff``: installed-environment integrity (T2)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainwarden.cli._common import (
    EXIT_FINDINGS,
    EXIT_OK,
    Progress,
    add_jobs_argument,
    add_key_argument,
    add_output_arguments,
    add_progress_argument,
    add_pubkey_argument,
    check_output,
    emit_report,
    load_private_key,
    load_public_keys,
    path_arg,
)
from trainwarden.errors import ConfigError

if TYPE_CHECKING:
    from trainwarden.findings import Report
    from trainwarden.keys import PublicKey


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
        "with the lock, including the source trees of editable installs (which RECORD cannot "
        "cover: without a lock they are unknown). Exit 0 intact, 1 tampered or not "
        "verifiable, 2 error.",
    )
    _add_site_arguments(verify)
    verify.add_argument(
        "--lock", metavar="FILE", type=path_arg, help="also compare every file with this env.lock"
    )
    _add_pubkey_argument(
        verify,
        "public key the lock must be signed by, or a directory holding it (requires --lock; "
        "FILE.sig must verify)",
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
    add_output_arguments(verify)
    add_progress_argument(verify)
    verify.set_defaults(handler=_verify)

    snapshot = commands.add_parser(
        "snapshot",
        help="record every file (digest, size, mode) into a lock, signed with --key",
        description="Verify the site directories, then record every file (including pyc, files "
        "RECORD does not hash, and the source trees of editable installs) in a lock file; with "
        "--key, write a detached Ed25519 signature to FILE.sig. Refuses (exit 1) when the "
        "environment is already tampered.",
    )
    _add_site_arguments(snapshot)
    snapshot.add_argument(
        "--lock", metavar="FILE", type=path_arg, help="where to write the lock (required)"
    )
    # The old spelling, kept working.
    snapshot.add_argument("--out", dest="lock_out", type=path_arg, help=argparse.SUPPRESS)
    add_key_argument(snapshot, "private key to sign the lock with")
    snapshot.add_argument(
        "--unsafe-accept-findings",
        action="store_true",
        help="write the lock even when verification finds tampering (enshrines it)",
    )
    add_output_arguments(snapshot)
    add_progress_argument(snapshot)
    snapshot.set_defaults(handler=_snapshot)

    diff = commands.add_parser(
        "diff",
        help="compare two locks (exit 0 same, 1 different)",
        description="List files added, removed or changed between lock A and lock B.",
    )
    diff.add_argument("old", metavar="A", type=path_arg, help="the earlier lock")
    diff.add_argument("new", metavar="B", type=path_arg, help="the later lock")
    _add_pubkey_argument(diff, "public key both locks must be signed by, or a directory holding it")
    add_output_arguments(diff)
    diff.set_defaults(handler=_diff)


def _add_site_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--path",
        metavar="SITE_DIR",
        action="append",
        type=path_arg,
        default=[],
        help="site directory to check; repeat for several (default: this interpreter's)",
    )
    add_jobs_argument(parser, "hashing threads and compiling processes (default: one a usable CPU)")


def _add_pubkey_argument(parser: argparse.ArgumentParser, text: str) -> None:
    # `--key` was the old spelling for this public key: kept working, hidden (`--key` names
    # the private signing key everywhere else).
    add_pubkey_argument(parser, "--pubkey", text, aliases=("--key",))


def _lock_key(args: argparse.Namespace) -> PublicKey | None:
    """The one public key a lock must be signed by (``None``: no signature check)."""
    keys = load_public_keys(args.pubkey)
    if len(keys) > 1:
        # A lock carries one signature: which of several keys was meant to make it?
        names = ", ".join(k.identity for k in keys)
        raise ConfigError(
            f"--pubkey names {len(keys)} keys ({names}); a lock has one signature: "
            "give the public key of whoever signs the lock"
        )
    return keys[0] if keys else None


def _sites(args: argparse.Namespace) -> list[Path]:
    from trainwarden.env import default_site_dirs

    return [Path(p) for p in (args.path or default_site_dirs())]


def _editable_hint(report: Report, *, locked: bool) -> None:
    """Say on stderr which editable installs could not be verified, and how to verify them."""
    from trainwarden.findings import Verdict

    names = sorted(
        {
            f.evidence or f.location.path
            for f in report.findings
            if f.rule_id == "env.editable-install" and f.verdict is not Verdict.SAFE
        }
    )
    if not names:
        return
    how = (
        "the lock does not record their source: take a new one with `trainwarden env "
        "snapshot --lock FILE`"
        if locked
        else "no RECORD covers code outside site-packages; verify such an environment against "
        "a lock: `trainwarden env snapshot --lock env.lock [--key KEY]` once, then "
        "`trainwarden env verify --lock env.lock [--pubkey KEY.pub]`"
    )
    print(
        f"trainwarden: {len(names)} editable install(s) not verified ({', '.join(names)}): {how}",
        file=sys.stderr,
    )


def _verify(args: argparse.Namespace) -> int:
    from trainwarden.env import read_lock, verify_environment
    from trainwarden.findings import Verdict

    if args.pubkey and args.lock is None:
        raise ConfigError("--pubkey checks the signature of a lock: give --lock FILE too")
    check_output(args.output, [args.lock, *args.pubkey, *_sites(args)])
    lock = None
    if args.lock is not None:
        lock = read_lock(args.lock, key=_lock_key(args))
    with Progress("env verify", enabled=not args.no_progress) as progress:
        report = verify_environment(
            args.path or None,
            lock=lock,
            check_pyc=not args.skip_pyc,
            workers=args.jobs,
            progress=lambda message: progress.update(message=message),
        )
    emit_report(report, args.format, args.output)
    _editable_hint(report, locked=lock is not None)
    fail_on = Verdict.UNSAFE if args.fail_on == "unsafe" else Verdict.UNKNOWN
    return EXIT_FINDINGS if report.fails(fail_on) else EXIT_OK


def _snapshot(args: argparse.Namespace) -> int:
    from trainwarden.env import signature_path, snapshot_environment, write_lock
    from trainwarden.findings import Verdict

    if args.lock is not None and args.lock_out is not None and args.lock != args.lock_out:
        raise ConfigError("give the lock path once, with --lock")
    lock_path: Path | None = args.lock or args.lock_out
    if lock_path is None:
        raise ConfigError("give the lock to write: --lock FILE")
    # Nothing we write may land on the signing key or inside the directories being recorded
    # (a lock inside site-packages would be an unexpected file of the next verification),
    # and the report not on the lock.
    sites = _sites(args)
    check_output(lock_path, [args.key, *sites], what="--lock")
    check_output(signature_path(lock_path), [args.key, *sites], what="the lock's signature")
    check_output(args.output, [lock_path, signature_path(lock_path), args.key, *sites])
    # Load the key first: a bad key path should fail before minutes of hashing.
    key = load_private_key(args.key) if args.key is not None else None
    with Progress("env snapshot", enabled=not args.no_progress) as progress:
        lock, report = snapshot_environment(
            args.path or None,
            workers=args.jobs,
            progress=lambda message: progress.update(message=message),
        )
    # Unknowns (egg-info, editable installs without a source tree) are recorded: the lock
    # anchors them from now on. Tampering is not: a lock of a tampered environment would vouch
    # for the tampering.
    if report.fails(Verdict.UNSAFE) and not args.unsafe_accept_findings:
        emit_report(report, args.format, args.output)
        print(
            "trainwarden: refusing to write a lock of a tampered environment "
            "(see the findings above; --unsafe-accept-findings overrides)",
            file=sys.stderr,
        )
        return EXIT_FINDINGS
    sig = write_lock(lock, lock_path, key=key)
    if args.format != "text" or args.output is not None:
        emit_report(report, args.format, args.output)
    signed = f", signed ({sig})" if sig is not None else ", unsigned"
    editable = len(lock.editable)
    trees = f" and {editable} editable source tree(s)" if editable else ""
    print(
        f"trainwarden: wrote {lock_path}: {lock.file_count} files in "
        f"{len(lock.site_roots)} site dir(s){trees}{signed}",
        file=sys.stderr,
    )
    return EXIT_OK


def _diff(args: argparse.Namespace) -> int:
    from trainwarden.env import diff_locks, read_lock

    check_output(args.output, [args.old, args.new, *args.pubkey])
    key = _lock_key(args)
    report = diff_locks(read_lock(args.old, key=key), read_lock(args.new, key=key))
    emit_report(report, args.format, args.output)
    return EXIT_FINDINGS if report.findings else EXIT_OK
