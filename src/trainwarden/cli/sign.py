"""The ``keygen``, ``sign`` and ``verify`` commands: keys, signed checkpoints, verification."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainwarden.cli._common import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK, write_output

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
    keygen.add_argument("path", metavar="PATH", type=Path, help="where to write the private key")
    keygen.add_argument("--identity", metavar="NAME", help="who holds the key (default: user@host)")
    keygen.add_argument("--force", action="store_true", help="overwrite existing PATH and PATH.pub")
    keygen.set_defaults(handler=_keygen)

    sign = subparsers.add_parser(
        "sign",
        help="sign a file or checkpoint directory (writes PATH.sig beside it)",
        description="Hash every file (large files in parallel shards) and write a signed "
        "OpenSSF model-signing bundle with the signer, run, step and parent checkpoint.",
    )
    sign.add_argument("path", metavar="PATH", type=Path, help="file or checkpoint directory")
    sign.add_argument(
        "--key",
        metavar="KEY",
        type=Path,
        required=True,
        help="private key (ours, or an OpenSSH Ed25519 key)",
    )
    sign.add_argument(
        "--sig", metavar="FILE", type=Path, help="signature path (default: PATH.sig beside PATH)"
    )
    sign.add_argument("--run", metavar="RUN", help="training run the checkpoint belongs to")
    sign.add_argument("--step", metavar="N", type=int, help="training step of the checkpoint")
    sign.add_argument(
        "--parent",
        metavar="DIGEST",
        help="digest (sha256:...) of the run's previous checkpoint",
    )
    sign.add_argument(
        "--ledger", metavar="DIR", type=Path, help="also record checkpoint.signed in this ledger"
    )
    sign.add_argument(
        "--format", choices=("text", "json"), default="text", help="output format (default: text)"
    )
    sign.set_defaults(handler=_sign)

    verify = subparsers.add_parser(
        "verify",
        help="verify a file or checkpoint directory against its signature",
        description="Exit 0 when PATH matches its signature made by a trusted key; 1 on any "
        "mismatch (modified, missing, extra, renamed, symlinked file, untrusted signer, bad "
        "signature, rollback, swap, deletion); 2 on errors.",
    )
    verify.add_argument("path", metavar="PATH", type=Path, help="file or checkpoint directory")
    verify.add_argument(
        "--key",
        metavar="PUB",
        type=Path,
        action="append",
        required=True,
        help="trusted public key (ours or OpenSSH ssh-ed25519); repeat for several",
    )
    verify.add_argument(
        "--sig", metavar="FILE", type=Path, help="signature path (default: PATH.sig beside PATH)"
    )
    verify.add_argument(
        "--ledger",
        metavar="DIR",
        type=Path,
        help="also detect rollback, swap and deletion through this ledger",
    )
    verify.add_argument(
        "--ledger-key",
        metavar="PUB",
        type=Path,
        action="append",
        help="public key trusted to write the ledger (default: the --key keys); repeatable",
    )
    verify.add_argument("--run", metavar="RUN", help="the run the checkpoint must belong to")
    verify.add_argument(
        "--format", choices=("text", "json"), default="text", help="report format (default: text)"
    )
    verify.add_argument(
        "--output", "-o", metavar="FILE", type=Path, help="write the report to FILE"
    )
    verify.set_defaults(handler=_verify)


def _keygen(args: argparse.Namespace) -> int:
    from trainwarden.keys import generate_key, load_public_key

    private, public = generate_key(args.path, identity=args.identity, overwrite=args.force)
    key = load_public_key(public)
    print(f"wrote private key {private} (mode 0600) and public key {public}")
    print(f"identity {key.identity}")
    print(f"fingerprint {key.fingerprint}")
    return EXIT_OK


def _sign(args: argparse.Namespace) -> int:
    from trainwarden.sign import load_private_key, sign_path

    key = load_private_key(args.key)
    signature = sign_path(
        args.path,
        key,
        run=args.run,
        step=args.step,
        parent=args.parent,
        sig_path=args.sig,
        ledger=args.ledger,
    )
    if args.format == "json":
        write_output(json.dumps(_signature_dict(signature), indent=2, sort_keys=True) + "\n", None)
    else:
        lineage = _lineage_text(signature)
        print(
            f"signed {signature.path}: {signature.digest} ({signature.files} file(s), "
            f"{signature.size} bytes) by {signature.identity} ({signature.fingerprint})"
            f"{lineage} -> {signature.sig_path}"
        )
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    from trainwarden.sign import SignatureMismatch, load_public_key, verify_path

    keys = [load_public_key(p) for p in args.key]
    ledger_keys = [load_public_key(p) for p in args.ledger_key] if args.ledger_key else None
    try:
        result = verify_path(
            args.path,
            keys,
            sig_path=args.sig,
            ledger=args.ledger,
            ledger_keys=ledger_keys,
            run=args.run,
        )
    except SignatureMismatch as exc:
        _emit(exc.report, args.format, args.output, headline=None)
        print(f"trainwarden: NOT VERIFIED: {exc}", file=sys.stderr)
        return EXIT_FINDINGS if exc.tampered else EXIT_ERROR
    _emit(result.report, args.format, args.output, headline=_verified_text(result))
    return EXIT_OK


def _emit(report: Report, fmt: str, output: Path | None, *, headline: str | None) -> None:
    from trainwarden.findings import Report, Verdict
    from trainwarden.report import render

    if fmt == "json":
        write_output(render(report, "json"), output)
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
    write_output(text, output)


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
