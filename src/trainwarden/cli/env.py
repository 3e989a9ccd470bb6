"""``trainwarden env verify|snapshot|diff``: installed-environment integrity (T2)."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainwarden.cli._common import EXIT_FINDINGS, EXIT_OK, add_format_arguments, emit_report
from trainwarden.errors import ConfigError, InputError
from trainwarden.findings import Verdict

if TYPE_CHECKING:
    from collections.abc import Iterable

    from trainwarden.findings import Report
    from trainwarden.keys import PrivateKey, PublicKey

# Plain progress lines (stderr not a terminal): the first once the work has run this long,
# then at most one every _PLAIN_EVERY seconds, so short runs print nothing.
_PLAIN_AFTER = 3.0
_PLAIN_EVERY = 5.0


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
        "--lock", metavar="FILE", type=Path, help="also compare every file with this env.lock"
    )
    _add_pubkey_argument(
        verify, "public key the lock must be signed by (requires --lock; FILE.sig must verify)"
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
    _add_progress_argument(verify)
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
        "--lock", metavar="FILE", type=Path, help="where to write the lock (required)"
    )
    # The old spelling, kept working.
    snapshot.add_argument("--out", dest="lock_out", type=Path, help=argparse.SUPPRESS)
    snapshot.add_argument(
        "--key", metavar="KEY", type=Path, help="private key to sign the lock with"
    )
    snapshot.add_argument(
        "--unsafe-accept-findings",
        action="store_true",
        help="write the lock even when verification finds tampering (enshrines it)",
    )
    add_format_arguments(snapshot)
    _add_progress_argument(snapshot)
    snapshot.set_defaults(handler=_snapshot)

    diff = commands.add_parser(
        "diff",
        help="compare two locks (exit 0 same, 1 different)",
        description="List files added, removed or changed between lock A and lock B.",
    )
    diff.add_argument("old", metavar="A", type=Path, help="the earlier lock")
    diff.add_argument("new", metavar="B", type=Path, help="the later lock")
    _add_pubkey_argument(diff, "public key both locks must be signed by")
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
        "-j",
        metavar="N",
        type=int,
        default=None,
        help="hashing threads and compiling processes (default: one a usable CPU)",
    )


def _add_pubkey_argument(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument("--pubkey", metavar="PUB", type=Path, help=text)
    # `--key` was the old spelling for this public key: kept working, hidden (`--key` names
    # the private signing key everywhere else).
    parser.add_argument("--key", dest="pubkey_alias", type=Path, help=argparse.SUPPRESS)


def _add_progress_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="never show progress on stderr")


class _Progress:
    """Progress of long work on stderr: a live line on a terminal, plain lines otherwise.

    Nothing shows for work shorter than a few seconds. On a terminal the line is redrawn in
    place (rich); elsewhere (a CI log, ``2> file``) a plain line is printed now and then, so a
    long verification is never silent.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.start = time.monotonic()
        self.last: float | None = None
        self.lock = threading.Lock()
        self.status: Any = None
        self.tty = enabled and sys.stderr.isatty()

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        with self.lock:
            now = time.monotonic()
            elapsed = now - self.start
            if elapsed < _PLAIN_AFTER:
                return
            text = f"trainwarden env: {message} ({elapsed:.0f} s)"
            if self.tty:
                self._live(text)
                return
            if self.last is not None and now - self.last < _PLAIN_EVERY:
                return
            self.last = now
            try:
                sys.stderr.write(text + "\n")
                sys.stderr.flush()
            except OSError:
                self.enabled = False  # progress is never worth failing the command for

    def _live(self, text: str) -> None:
        if self.status is None:
            from rich.console import Console

            self.status = Console(stderr=True).status(text)
            self.status.start()
        else:
            self.status.update(text)

    def close(self) -> None:
        with self.lock:
            if self.status is not None:
                self.status.stop()
                self.status = None


def _jobs(args: argparse.Namespace) -> int | None:
    jobs: int | None = args.jobs
    if jobs is not None and not 1 <= jobs <= 256:
        raise ConfigError(f"--jobs must be between 1 and 256, not {jobs}")
    return jobs


def _public_key(args: argparse.Namespace) -> Path | None:
    pubkey: Path | None = args.pubkey
    alias: Path | None = args.pubkey_alias
    if pubkey is not None and alias is not None and pubkey != alias:
        raise ConfigError("give the verification key once, with --pubkey")
    return pubkey or alias


def _check_key_file(path: Path) -> None:
    """Refuse a key path that is not a regular file before anything reads it.

    A FIFO planted where the key should be would block the key loader forever; this opens
    without blocking and fails with the reason instead.

    Raises:
        InputError: missing, a directory, a FIFO or device, a symlink loop, unreadable.
    """
    import os

    from trainwarden._fs import open_regular

    os.close(open_regular(path, what="key"))


def _load_public(path: Path) -> PublicKey:
    from trainwarden.keys import load_public_key

    _check_key_file(path)
    return load_public_key(path)


def _load_private(path: Path) -> PrivateKey:
    """The private signing key at ``path``; a public key there is named for what it is.

    Raises:
        InputError: not a usable private key.
    """
    from trainwarden.errors import Error
    from trainwarden.keys import load_private_key, load_public_key

    _check_key_file(path)
    try:
        return load_private_key(path)
    except InputError as exc:
        try:
            load_public_key(path)
        except Error:
            raise exc from None
        private = path.with_suffix("") if path.suffix == ".pub" else None
        hint = f" (its private key is probably {private})" if private is not None else ""
        raise InputError(
            f"{path} is a public key: --key needs the private signing key{hint}"
        ) from exc


def _sites(args: argparse.Namespace) -> list[Path]:
    from trainwarden.env import default_site_dirs

    return [Path(p) for p in (args.path or default_site_dirs())]


def _check_outputs(output: Path | None, inputs: Iterable[Path | None]) -> None:
    from trainwarden._fs import check_output_path

    check_output_path(output, [p for p in inputs if p is not None])


def _editable_hint(report: Report, *, locked: bool) -> None:
    """Say on stderr which editable installs could not be verified, and how to verify them."""
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

    pubkey = _public_key(args)
    if pubkey is not None and args.lock is None:
        raise ConfigError("--pubkey checks the signature of a lock: give --lock FILE too")
    _check_outputs(args.output, [args.lock, pubkey, *_sites(args)])
    lock = None
    if args.lock is not None:
        key = _load_public(pubkey) if pubkey is not None else None
        lock = read_lock(args.lock, key=key)
    progress = _Progress(not args.no_progress)
    try:
        report = verify_environment(
            args.path or None,
            lock=lock,
            check_pyc=not args.skip_pyc,
            workers=_jobs(args),
            progress=progress,
        )
    finally:
        progress.close()
    emit_report(report, args.format, args.output)
    _editable_hint(report, locked=lock is not None)
    fail_on = Verdict.UNSAFE if args.fail_on == "unsafe" else Verdict.UNKNOWN
    return EXIT_FINDINGS if report.fails(fail_on) else EXIT_OK


def _snapshot(args: argparse.Namespace) -> int:
    from trainwarden.env import signature_path, snapshot_environment, write_lock

    if args.lock is not None and args.lock_out is not None and args.lock != args.lock_out:
        raise ConfigError("give the lock path once, with --lock")
    lock_path: Path | None = args.lock or args.lock_out
    if lock_path is None:
        raise ConfigError("give the lock to write: --lock FILE")
    # Nothing we write may land on the signing key or inside the directories being recorded
    # (a lock inside site-packages would be an unexpected file of the next verification),
    # and the report not on the lock.
    sites = _sites(args)
    _check_outputs(lock_path, [args.key, *sites])
    _check_outputs(signature_path(lock_path), [args.key, *sites])
    _check_outputs(args.output, [lock_path, signature_path(lock_path), args.key, *sites])
    # Load the key first: a bad key path should fail before minutes of hashing.
    key = _load_private(args.key) if args.key is not None else None
    progress = _Progress(not args.no_progress)
    try:
        lock, report = snapshot_environment(
            args.path or None, workers=_jobs(args), progress=progress
        )
    finally:
        progress.close()
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

    pubkey = _public_key(args)
    _check_outputs(args.output, [args.old, args.new, pubkey])
    key = _load_public(pubkey) if pubkey is not None else None
    report = diff_locks(read_lock(args.old, key=key), read_lock(args.new, key=key))
    emit_report(report, args.format, args.output)
    return EXIT_FINDINGS if report.findings else EXIT_OK
