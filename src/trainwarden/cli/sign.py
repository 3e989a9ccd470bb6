"""The ``keygen``, ``sign`` and ``verify`` commands: keys, signed checkpoints, verification.

``--key`` is the private key you sign with, ``--pubkey`` a public key you trust (``--key``
stays accepted on ``verify``, where the interface contract names it); the other flags are the
common ones of :mod:`trainwarden.cli._common`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainwarden.cli._common import (
    EXIT_FINDINGS,
    EXIT_OK,
    SCHEMA_VERSION,
    Progress,
    add_jobs_argument,
    add_key_argument,
    add_output_arguments,
    add_progress_argument,
    add_pubkey_argument,
    check_output,
    dumps,
    load_private_key,
    load_public_keys,
    path_arg,
    shown,
    write_output,
)
from trainwarden.errors import ConfigError, InputError

if TYPE_CHECKING:
    from trainwarden.findings import Report
    from trainwarden.sign import Signature, Verification


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
    add_key_argument(sign, "private key (ours, or an OpenSSH Ed25519 key)", required=True)
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
    add_jobs_argument(sign, "hashing threads (default: the CPUs available)")
    add_progress_argument(sign)
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
    add_pubkey_argument(
        verify,
        "--pubkey",
        "trusted public key (ours or OpenSSH ssh-ed25519), or a directory of *.pub; "
        "repeatable (required)",
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
    add_pubkey_argument(
        verify,
        "--ledger-pubkey",
        "public key trusted to write the ledger (default: the --pubkey keys); repeatable",
        aliases=("--ledger-key",),
    )
    verify.add_argument("--run", metavar="RUN", help="the run the checkpoint must belong to")
    add_jobs_argument(verify, "hashing threads (default: the CPUs available)")
    add_progress_argument(verify)
    add_output_arguments(verify)
    verify.set_defaults(handler=_verify)


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
        write_output(dumps(doc), args.output)
    else:
        write_output(
            f"wrote private key {private} (mode 0600) and public key {public}\n"
            f"identity {key.identity}\n"
            f"fingerprint {key.fingerprint}\n",
            args.output,
        )
    return EXIT_OK


def _sign(args: argparse.Namespace) -> int:
    from trainwarden.sign import default_sig_path, sign_path

    sig = args.sig if args.sig is not None else default_sig_path(args.path)
    check_output(args.output, [args.path, sig, args.ledger, args.key])
    # The signature must not replace the key either (the library checks it against the
    # signed path; it never sees the key's file).
    from trainwarden._fs import check_output_path

    try:
        check_output_path(sig, [args.key])
    except InputError as exc:
        raise InputError(f"the signature {sig} would replace the key {args.key}") from exc
    key = load_private_key(args.key)
    label = f"signing {args.path}"
    with Progress(label, enabled=not args.no_progress, unit="bytes") as progress:
        signature = sign_path(
            args.path,
            key,
            run=args.run,
            step=args.step,
            parent=args.parent,
            sig_path=args.sig,
            ledger=args.ledger,
            workers=args.jobs,
            progress=lambda done, total: progress.update(done=done, total=total),
        )
    if args.format == "json":
        write_output(dumps(_signature_dict(signature)), args.output)
    else:
        recorded = f"; recorded in ledger {args.ledger}" if args.ledger is not None else ""
        write_output(
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
    sig = args.sig if args.sig is not None else default_sig_path(args.path)
    check_output(args.output, [args.path, sig, args.ledger, *args.pubkey, *args.ledger_pubkey])
    keys = load_public_keys(args.pubkey)
    ledger_keys = (
        load_public_keys(args.ledger_pubkey, flag="--ledger-pubkey") if args.ledger_pubkey else None
    )
    label = f"verifying {args.path}"
    with Progress(label, enabled=not args.no_progress, unit="bytes") as progress:
        try:
            result = verify_path(
                args.path,
                keys,
                sig_path=args.sig,
                ledger=args.ledger,
                ledger_keys=ledger_keys,
                run=args.run,
                workers=args.jobs,
                progress=lambda done, total: progress.update(done=done, total=total),
            )
            mismatch: SignatureMismatch | None = None
        except SignatureMismatch as exc:
            mismatch = exc
    if mismatch is None:
        _emit(result.report, args.format, args.output, headline=_verified_text(result))
        return EXIT_OK
    _emit(mismatch.report, args.format, args.output, headline=None)
    if not mismatch.tampered:
        # Only errors stopped the check (an unreadable file): not verified, but no proof of
        # tampering either, so exit 2 rather than 1.
        raise InputError(f"NOT VERIFIED: {mismatch}") from mismatch
    print(f"trainwarden: NOT VERIFIED: {shown(str(mismatch))}", file=sys.stderr)
    return EXIT_FINDINGS


def _emit(report: Report, fmt: str, output: Path | None, *, headline: str | None) -> None:
    from trainwarden.findings import Report, Verdict
    from trainwarden.report import render

    if fmt != "text":
        write_output(render(report, fmt), output)
        return
    # In text, list only the files with something to say (the signature too, when it is the
    # problem): a verified checkpoint of ten thousand files should not print ten thousand
    # lines. The count below them is of every file checked, not of the lines listed, which
    # a reader would take for the size of the checkpoint.
    listed = tuple(
        f for f in report.files if any(x.verdict is not Verdict.SAFE for x in f.findings)
    )
    lines: list[str] = []
    if listed:
        text = render(Report(files=listed, tool=report.tool, command=report.command), "text")
        lines = text.splitlines()[:-1]  # its last line counts the listed files only
    problems = Report(files=tuple(f for f in listed if f.format != "signature")).summary()
    if problems["files"]:
        checked = sum(1 for f in report.files if f.format != "signature")
        counts = ", ".join(f"{n} {v}" for v, n in problems["verdicts"].items() if n)
        lines.append(f"{problems['files']} of {checked} file(s) not as signed: {counts}")
    if headline:
        lines.append(headline)
    write_output("".join(f"{line}\n" for line in lines), output)


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
