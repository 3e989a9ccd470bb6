"""The ``keygen``, ``sign`` and ``verify`` commands: keys, signed checkpoints, verification.

Flags mean the same in every command of this module and of ``ledger``: ``--key`` is the
private key you sign or write with, ``--pubkey`` a public key you trust (``--key`` stays
accepted where the interface contract names it), ``--format``/``--output``/``-o`` the report,
``--jobs`` the parallelism and ``--no-progress`` silences progress on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainwarden._fs import check_output_path
from trainwarden.cli._common import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK, write_output
from trainwarden.errors import ConfigError, InputError

if TYPE_CHECKING:
    from trainwarden.findings import Report
    from trainwarden.keys import PublicKey
    from trainwarden.sign import Signature, Verification

#: Version of the JSON documents ``keygen`` and ``sign`` print (``verify`` prints a report,
#: which carries its own).
SCHEMA_VERSION = 1
# Plain progress lines (stderr not a terminal) appear after this long, then this often.
_PLAIN_EVERY = 5.0


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register ``keygen``, ``sign`` and ``verify``."""
    keygen = subparsers.add_parser(
        "keygen",
        help="create an Ed25519 signing key (PATH, mode 0600) and its public key (PATH.pub)",
        description="Create an Ed25519 private key at PATH (mode 0600, never readable by "
        "others) and its public key at PATH.pub. The identity travels with the public key.",
    )
    keygen.add_argument("path", metavar="PATH", help="where to write the private key")
    keygen.add_argument("--identity", metavar="NAME", help="who holds the key (default: user@host)")
    keygen.add_argument("--force", action="store_true", help="overwrite existing PATH and PATH.pub")
    add_output_arguments(keygen, ("text", "json"))
    keygen.set_defaults(handler=_keygen)

    sign = subparsers.add_parser(
        "sign",
        help="sign a file or checkpoint directory (writes PATH.sig beside it)",
        description="Hash every file (large files in parallel shards) and write a signed "
        "OpenSSF model-signing bundle with the signer, run, step and parent checkpoint. "
        "A file that changes while it is hashed is an error, never signed.",
    )
    sign.add_argument("path", metavar="PATH", type=path_arg, help="file or checkpoint directory")
    sign.add_argument(
        "--key",
        metavar="KEY",
        type=path_arg,
        required=True,
        help="private key (ours, or an OpenSSH Ed25519 key)",
    )
    sign.add_argument(
        "--sig",
        metavar="FILE",
        type=path_arg,
        help="signature path (default: PATH.sig beside PATH)",
    )
    sign.add_argument("--run", metavar="RUN", help="training run the checkpoint belongs to")
    sign.add_argument("--step", metavar="N", type=int, help="training step of the checkpoint")
    sign.add_argument(
        "--parent",
        metavar="DIGEST",
        help="digest (sha256:...) of the run's previous checkpoint",
    )
    sign.add_argument(
        "--ledger",
        metavar="DIR",
        type=path_arg,
        help="also record checkpoint.signed in this existing ledger",
    )
    add_work_arguments(sign, "hashing threads (default: the CPUs available)")
    add_output_arguments(sign, ("text", "json"))
    sign.set_defaults(handler=_sign)

    verify = subparsers.add_parser(
        "verify",
        help="verify a file or checkpoint directory against its signature",
        description="Exit 0 when PATH matches its signature made by a trusted key; 1 on any "
        "mismatch (modified, missing, extra, renamed, symlinked file, untrusted signer, bad "
        "signature, rollback, swap, deletion); 2 on errors.",
    )
    verify.add_argument("path", metavar="PATH", type=path_arg, help="file or checkpoint directory")
    add_key_list(
        verify,
        "--pubkey",
        "trusted public key (ours or OpenSSH ssh-ed25519); repeat for several (required)",
        aliases=("--key",),
    )
    verify.add_argument(
        "--sig",
        metavar="FILE",
        type=path_arg,
        help="signature path (default: PATH.sig beside PATH)",
    )
    verify.add_argument(
        "--ledger",
        metavar="DIR",
        type=path_arg,
        help="also detect rollback, swap and deletion through this ledger",
    )
    add_key_list(
        verify,
        "--ledger-pubkey",
        "public key trusted to write the ledger (default: the --pubkey keys); repeatable",
        aliases=("--ledger-key",),
    )
    verify.add_argument("--run", metavar="RUN", help="the run the checkpoint must belong to")
    add_work_arguments(verify, "hashing threads (default: the CPUs available)")
    add_output_arguments(verify, ("text", "json"))
    verify.set_defaults(handler=_verify)


# -- options shared with the ledger commands -------------------------------------------------


def path_arg(text: str) -> Path:
    """An argparse type: a path, never the empty string (``Path("")`` would mean ``.``)."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path is not a file name")
    return Path(text)


def add_output_arguments(parser: argparse.ArgumentParser, formats: Sequence[str]) -> None:
    """``--format`` and ``--output/-o``, meaning the same in every command."""
    parser.add_argument(
        "--format", choices=tuple(formats), default="text", help="output format (default: text)"
    )
    parser.add_argument(
        "--output",
        "-o",
        metavar="FILE",
        help="write the output to FILE instead of stdout ('-' for stdout)",
    )


def add_work_arguments(parser: argparse.ArgumentParser, jobs_help: str) -> None:
    """``--jobs/-j N`` (0: default) and ``--no-progress``."""
    parser.add_argument("--jobs", "-j", type=int, default=0, metavar="N", help=jobs_help)
    parser.add_argument("--no-progress", action="store_true", help="never show progress on stderr")


def add_key_list(
    parser: argparse.ArgumentParser, flag: str, text: str, *, aliases: Sequence[str] = ()
) -> None:
    """A repeatable public-key option; older spellings work as hidden aliases."""
    dest = flag.lstrip("-").replace("-", "_")
    parser.add_argument(flag, action="append", default=[], metavar="PUB", dest=dest, help=text)
    for alias in aliases:
        parser.add_argument(
            alias, action="append", metavar="PUB", dest=dest, help=argparse.SUPPRESS
        )


def jobs(args: argparse.Namespace) -> int | None:
    """``--jobs`` as a worker count (``None``: the default)."""
    if args.jobs < 0:
        raise ConfigError(f"--jobs must be 0 (default) or more, not {args.jobs}")
    return args.jobs or None


def load_public_keys(paths: Sequence[str | os.PathLike[str]]) -> list[PublicKey]:
    """Load public keys from files, or from every ``*.pub`` of a directory."""
    from trainwarden.keys import load_public_key

    keys: list[PublicKey] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            found = sorted(path.glob("*.pub"))
            if not found:
                raise InputError(f"no *.pub key in directory {path}")
            keys.extend(load_public_key(p) for p in found)
        else:
            keys.append(load_public_key(path))
    return keys


def check_output(output: str | None, inputs: Sequence[str | os.PathLike[str] | None]) -> None:
    """Refuse an ``--output`` over an input or inside one, before any work is done."""
    if output is None or output == "-":
        return
    if output == "":
        raise InputError("--output needs a file name ('-' for stdout)")
    check_output_path(output, [p for p in inputs if p is not None])
    target = Path(output)
    if target.is_dir():
        raise InputError(f"--output {output} is a directory")


def write_report(text: str, output: str | os.PathLike[str] | None) -> None:
    """Write ``text`` to ``output`` or stdout (see :func:`trainwarden.cli._common.write_output`)."""
    write_output(text, None if output is None else Path(output))


def dumps(value: Any) -> str:
    """Deterministic, readable JSON for the terminal (sorted keys, indented, raw UTF-8)."""
    return json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


# -- progress ---------------------------------------------------------------------------------


@contextlib.contextmanager
def progress_display(
    label: str, *, enabled: bool, unit: str = "bytes"
) -> Iterator[Callable[[int, int], None] | None]:
    """A ``progress(done, total)`` callback drawing on stderr, or ``None`` when disabled.

    On a terminal: a rich progress bar. Otherwise: one plain line every few seconds, only
    once the work has taken that long (so logs of quick runs stay clean).
    """
    if not enabled:
        yield None
        return
    if sys.stderr.isatty():
        with _rich_progress(label, unit) as callback:
            yield callback
        return
    started = time.monotonic()
    last = [started]
    lock = threading.Lock()

    def plain(done: int, total: int) -> None:
        now = time.monotonic()
        with lock:
            if now - last[0] < _PLAIN_EVERY:
                return
            last[0] = now
        share = f" ({100 * done / total:.0f}%)" if total else ""
        amount = (
            f"{_size(done)} of {_size(total)}" if unit == "bytes" else f"{done} of {total} {unit}"
        )
        print(
            f"trainwarden: {label}: {amount}{share}, {now - started:.0f} s",
            file=sys.stderr,
            flush=True,
        )

    yield plain


@contextlib.contextmanager
def _rich_progress(label: str, unit: str) -> Iterator[Callable[[int, int], None]]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    columns: list[Any] = [TextColumn("{task.description}"), BarColumn()]
    if unit == "bytes":
        columns += [DownloadColumn(), TransferSpeedColumn()]
    else:
        columns += [MofNCompleteColumn(), TextColumn(unit)]
    columns.append(TimeElapsedColumn())
    progress = Progress(*columns, console=Console(stderr=True), transient=True)
    task = progress.add_task(label, total=None)
    with progress:

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total or None)

        yield update


def _size(n: int) -> str:
    value = float(n)
    for suffix in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or suffix == "TiB":
            return f"{value:.1f} {suffix}" if suffix != "B" else f"{n} B"
        value /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


# -- handlers ---------------------------------------------------------------------------------


def _keygen(args: argparse.Namespace) -> int:
    from trainwarden.keys import generate_key, load_public_key

    if not args.path:
        raise InputError("no key path given: name the private key file, e.g. keys/alice")
    check_output(args.output, [args.path, f"{args.path}.pub"])
    private, public = generate_key(args.path, identity=args.identity, overwrite=args.force)
    key = load_public_key(public)
    if args.format == "json":
        doc = {
            "schema_version": SCHEMA_VERSION,
            "private_key": str(private),
            "public_key": str(public),
            "identity": key.identity,
            "fingerprint": key.fingerprint,
        }
        write_report(dumps(doc), args.output)
    else:
        write_report(
            f"wrote private key {private} (mode 0600) and public key {public}\n"
            f"identity {key.identity}\n"
            f"fingerprint {key.fingerprint}\n",
            args.output,
        )
    return EXIT_OK


def _sign(args: argparse.Namespace) -> int:
    from trainwarden.keys import load_private_key
    from trainwarden.sign import default_sig_path, sign_path

    workers = jobs(args)
    sig = args.sig if args.sig is not None else default_sig_path(args.path)
    check_output(args.output, [args.path, sig, args.ledger, args.key])
    # The signature must not replace the key either (the library checks it against the
    # signed path; it never sees the key's file).
    try:
        check_output_path(sig, [args.key])
    except InputError as exc:
        raise InputError(f"the signature {sig} would replace the key {args.key}") from exc
    key = load_private_key(args.key)
    with progress_display(f"signing {args.path}", enabled=not args.no_progress) as progress:
        signature = sign_path(
            args.path,
            key,
            run=args.run,
            step=args.step,
            parent=args.parent,
            sig_path=args.sig,
            ledger=args.ledger,
            workers=workers,
            progress=progress,
        )
    if args.format == "json":
        write_report(dumps(_signature_dict(signature)), args.output)
    else:
        recorded = f"; recorded in ledger {args.ledger}" if args.ledger is not None else ""
        write_report(
            f"signed {signature.path}: {signature.digest} ({signature.files} file(s), "
            f"{signature.size} bytes) by {signature.identity} ({signature.fingerprint})"
            f"{_lineage_text(signature)} -> {signature.sig_path}{recorded}\n",
            args.output,
        )
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    from trainwarden.sign import SignatureMismatch, default_sig_path, verify_path

    if not args.pubkey:
        raise ConfigError("give at least one trusted public key with --pubkey PUB")
    workers = jobs(args)
    sig = args.sig if args.sig is not None else default_sig_path(args.path)
    check_output(args.output, [args.path, sig, args.ledger, *args.pubkey, *args.ledger_pubkey])
    keys = load_public_keys(args.pubkey)
    ledger_keys = load_public_keys(args.ledger_pubkey) if args.ledger_pubkey else None
    mismatch: SignatureMismatch | None = None
    with progress_display(f"verifying {args.path}", enabled=not args.no_progress) as progress:
        try:
            result = verify_path(
                args.path,
                keys,
                sig_path=args.sig,
                ledger=args.ledger,
                ledger_keys=ledger_keys,
                run=args.run,
                workers=workers,
                progress=progress,
            )
        except SignatureMismatch as exc:
            mismatch = exc
    if mismatch is not None:
        _emit(mismatch.report, args.format, args.output, headline=None)
        print(f"trainwarden: NOT VERIFIED: {mismatch}", file=sys.stderr)
        return EXIT_FINDINGS if mismatch.tampered else EXIT_ERROR
    _emit(result.report, args.format, args.output, headline=_verified_text(result))
    return EXIT_OK


def _emit(report: Report, fmt: str, output: str | None, *, headline: str | None) -> None:
    from trainwarden.findings import Report, Verdict
    from trainwarden.report import render

    if fmt == "json":
        write_report(render(report, "json"), output)
        return
    # In text, list only the signature and files with something to say: a verified
    # checkpoint of ten thousand files should not print ten thousand lines.
    shown = tuple(
        f
        for f in report.files
        if f.format == "signature" or any(x.verdict is not Verdict.SAFE for x in f.findings)
    )
    text = render(Report(files=shown, tool=report.tool, command=report.command), "text")
    if headline:
        text += headline + "\n"
    write_report(text, output)


def _lineage_text(sig: Signature) -> str:
    parts = []
    if sig.run is not None:
        parts.append(f"run {sig.run}")
    if sig.step is not None:
        parts.append(f"step {sig.step}")
    if sig.parent is not None:
        parts.append(f"parent {sig.parent}")
    return f", {', '.join(parts)}" if parts else ""


def _verified_text(result: Verification) -> str:
    sig = result.signature
    return (
        f"VERIFIED {sig.path}: {sig.digest} ({sig.files} file(s)) signed by {result.identity} "
        f"({result.fingerprint}) at {sig.signed_at}{_lineage_text(sig)}"
    )


def _signature_dict(sig: Signature) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "path": str(sig.path),
        "signature": str(sig.sig_path),
        "digest": sig.digest,
        "identity": sig.identity,
        "fingerprint": sig.fingerprint,
        "signed_at": sig.signed_at,
        "run": sig.run,
        "step": sig.step,
        "parent": sig.parent,
        "files": sig.files,
        "bytes": sig.size,
    }
