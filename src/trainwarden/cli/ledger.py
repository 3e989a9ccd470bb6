"""``trainwarden ledger init|append|seal|verify|show``: the signed, tamper-evident event ledger.

A thin layer over :mod:`trainwarden.ledger` and :mod:`trainwarden.report`; options are spelt
as everywhere (``--key`` private, ``--pubkey`` trusted public keys; ``--key`` stays accepted on
``ledger verify``, where the interface contract names it).
"""

from __future__ import annotations

import argparse
import sys
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
    write_output,
)
from trainwarden.errors import ConfigError, InputError

if TYPE_CHECKING:
    from trainwarden.ledger import LedgerReport


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``ledger`` and its sub-commands."""
    parser = subparsers.add_parser(
        "ledger",
        help="create, append to, seal, verify and show a tamper-evident signed ledger",
        description=(
            "A ledger is a directory with one append-only, hash-chained, signed file per "
            "writer, sealed by a more trusted key. Exit codes: 0 intact, 1 tampered, 2 error."
        ),
    )
    sub = parser.add_subparsers(dest="ledger_command", metavar="ACTION")
    sub.required = True

    p = sub.add_parser(
        "init",
        help="create an empty ledger directory",
        description="Create DIR with writers/ and seals/ (sticky, like /tmp: on a shared "
        "ledger each user can add files but only remove their own). Safe to repeat.",
    )
    p.add_argument("ledger", metavar="DIR", type=path_arg, help="ledger directory to create")
    add_output_arguments(p, ("text", "json"))
    p.set_defaults(handler=_init)

    p = sub.add_parser("append", help="sign and append one event")
    p.add_argument("ledger", metavar="DIR", type=path_arg, help="ledger directory")
    add_key_argument(p, "writer's private key", required=True)
    p.add_argument("--event", required=True, metavar="TYPE", help="event type, e.g. run.started")
    p.add_argument("--run", help="training run the event is about")
    p.add_argument("--data", metavar="JSON", help="event payload: a JSON object")
    p.add_argument(
        "--create",
        action="store_true",
        help="create the ledger if DIR does not exist (otherwise a missing ledger is an error)",
    )
    p.add_argument(
        "--new-writer",
        action="store_true",
        help="start a new writer file instead of continuing this key's file on this host",
    )
    add_output_arguments(p, ("text", "json"))
    p.set_defaults(handler=_append)

    p = sub.add_parser("seal", help="sign a Merkle root over every writer's chain")
    p.add_argument("ledger", metavar="DIR", type=path_arg, help="ledger directory")
    add_key_argument(p, "sealer's private key", required=True)
    add_pubkey_argument(
        p,
        "--pubkey",
        "trusted writer public key (file, or directory of *.pub); repeatable",
        aliases=("--writer-key",),
    )
    add_pubkey_argument(
        p,
        "--seal-pubkey",
        "other trusted seal key whose seals this one must extend; repeatable",
        aliases=("--seal-key",),
    )
    p.add_argument(
        "--receipt",
        type=path_arg,
        metavar="FILE",
        help="also write the seal to FILE (keep it off the shared storage)",
    )
    add_output_arguments(p, ("text", "json"))
    p.set_defaults(handler=_seal)

    p = sub.add_parser(
        "verify",
        help="verify chains, signatures and seals",
        description=(
            "Exit 0 intact, 1 tampered (the report names the first altered, dropped, "
            "reordered, duplicated, forged or truncated entry), 2 error. Without --pubkey "
            "the chains are checked but not who signed them: exit 2 unless "
            "--insecure-no-signer-check."
        ),
    )
    p.add_argument("ledger", metavar="PATH", type=path_arg, help="ledger directory or writer file")
    add_pubkey_argument(
        p,
        "--pubkey",
        "trusted writer public key (file, or directory of *.pub); repeatable",
        aliases=("--key",),
    )
    add_pubkey_argument(
        p,
        "--seal-pubkey",
        "trusted seal public key; requires at least one seal by it; repeatable",
        aliases=("--seal-key",),
    )
    p.add_argument(
        "--seal-receipt",
        action="append",
        default=[],
        type=path_arg,
        metavar="FILE",
        help="seal receipt kept off the ledger: detects seals rolled back; repeatable",
    )
    p.add_argument(
        "--check-files",
        action="store_true",
        help="also check that recorded files (events with path and digest) are unchanged",
    )
    p.add_argument(
        "--insecure-no-signer-check",
        action="store_true",
        help="without --pubkey, accept chains signed by any key (integrity only, no trust)",
    )
    add_jobs_argument(
        p, "processes checking signatures of large ledgers (default: CPUs available, max 8)"
    )
    add_progress_argument(p)
    add_output_arguments(p)
    p.set_defaults(handler=_verify)

    p = sub.add_parser("show", help="timeline of events with attribution (unverified)")
    p.add_argument("ledger", metavar="PATH", type=path_arg, help="ledger directory or writer file")
    p.add_argument("--run", help="only events about RUN")
    p.add_argument("--event", action="append", default=[], metavar="TYPE", help="only TYPE")
    add_output_arguments(p, ("text", "json"))
    p.set_defaults(handler=_show)


# -- handlers ------------------------------------------------------------------------------


def _init(args: argparse.Namespace) -> int:
    from trainwarden.ledger import init_ledger, is_ledger

    check_output(args.output, [args.ledger])
    existed = is_ledger(args.ledger)
    root = init_ledger(args.ledger)
    if args.format == "json":
        doc = {"schema_version": SCHEMA_VERSION, "ledger": str(root), "created": not existed}
        write_output(dumps(doc), args.output)
    else:
        state = "already a ledger" if existed else "created ledger"
        write_output(f"{state} {root}\n", args.output)
    return EXIT_OK


def _append(args: argparse.Namespace) -> int:
    import json

    from trainwarden.ledger import Ledger

    data: dict[str, Any] = {}
    if args.data is not None:
        try:
            parsed = json.loads(args.data)
        except (ValueError, RecursionError) as exc:
            raise ConfigError(f"--data is not valid JSON: {exc}") from exc
        if not isinstance(parsed, dict):
            raise ConfigError("--data must be a JSON object")
        data = parsed
    check_output(args.output, [args.ledger, args.key])
    key = load_private_key(args.key)
    with Ledger(args.ledger, key=key, resume=not args.new_writer, create=args.create) as ledger:
        entry = ledger.append_data(args.event, data, run=args.run)
    if args.format == "json":
        write_output(dumps({"schema_version": SCHEMA_VERSION, **entry.to_dict()}), args.output)
    else:
        write_output(
            f"appended {entry.event} as {entry.writer} seq {entry.seq} ({entry.hash})\n",
            args.output,
        )
    return EXIT_OK


def _seal(args: argparse.Namespace) -> int:
    from trainwarden._fs import check_output_path
    from trainwarden.ledger import LedgerTampered, seal_ledger

    keys = [args.key, *args.pubkey, *args.seal_pubkey]
    check_output(args.output, [args.ledger, args.receipt, *keys])
    if args.receipt is not None:
        # The receipt must not replace a key or a trusted public key (the library checks the
        # ledger itself, and that the path is writable, before sealing).
        try:
            check_output_path(args.receipt, keys)
        except InputError as exc:
            raise InputError(f"the seal receipt {args.receipt} would replace a key") from exc
    key = load_private_key(args.key)
    try:
        seal = seal_ledger(
            args.ledger,
            key=key,
            writer_keys=load_public_keys(args.pubkey),
            seal_keys=load_public_keys(args.seal_pubkey, flag="--seal-pubkey"),
            receipt=args.receipt,
        )
    except LedgerTampered as exc:
        _seal_key_hint(exc.report)
        raise
    if args.format == "json":
        write_output(dumps({"schema_version": SCHEMA_VERSION, **seal.to_dict()}), args.output)
    else:
        total = sum(w.count for w in seal.writers)
        receipt = f"\nreceipt {args.receipt}" if args.receipt is not None else ""
        write_output(
            f"sealed {len(seal.writers)} writer(s), {total} entries as {seal.name}\n"
            f"root {seal.root}{receipt}\n",
            args.output,
        )
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    from trainwarden.ledger import inspect_ledger
    from trainwarden.report import render, render_ledger_report

    check_output(args.output, [args.ledger, *args.seal_receipt, *args.pubkey, *args.seal_pubkey])
    keys = load_public_keys(args.pubkey)
    if keys and args.insecure_no_signer_check:
        raise ConfigError("--insecure-no-signer-check makes no sense with --pubkey")
    seal_keys = load_public_keys(args.seal_pubkey, flag="--seal-pubkey")
    label = f"verifying ledger {args.ledger}"
    with Progress(label, enabled=not args.no_progress, unit="files") as progress:
        report = inspect_ledger(
            args.ledger,
            keys=keys,
            seal_keys=seal_keys,
            seal_receipts=args.seal_receipt,
            check_files=args.check_files,
            insecure_skip_signer_check=not keys,
            workers=args.jobs,
            progress=lambda done, total, _entries: progress.update(done=done, total=total),
        )
    if args.format == "sarif":
        write_output(render(report.to_findings(), "sarif"), args.output)
    elif args.format == "json":
        write_output(dumps(report.to_dict()), args.output)
    else:
        write_output(render_ledger_report(report), args.output)
    if report.issues:
        _seal_key_hint(report)
        return EXIT_FINDINGS
    if not report.signers_checked and not args.insecure_no_signer_check:
        # Fail closed: intact chains signed by unknown keys prove nothing about who wrote them.
        raise ConfigError(
            "chains are intact but signer trust was NOT checked: "
            "pass --pubkey PUB for each trusted writer (or --insecure-no-signer-check)"
        )
    return EXIT_OK


def _seal_key_hint(report: LedgerReport) -> None:
    """Name ``--seal-pubkey`` when the only issues are seals by a key not given as trusted.

    ``trainwarden run`` seals its run's ledger with its supervisor key; verifying or sealing
    that ledger with another seal key reads "TAMPERED ... not a trusted key", and a user has
    no way to tell a forged seal from a key they simply did not name.
    """
    kinds = {issue.kind for issue in report.issues}
    if "seal_forged" in kinds and kinds <= {"seal_forged", "seal_missing"}:
        print(
            "trainwarden: hint: every issue is a seal by a key not given as trusted: if that "
            "key is one you trust (trainwarden run seals its run's ledger with its supervisor "
            "key), name its public key with --seal-pubkey",
            file=sys.stderr,
        )


def _show(args: argparse.Namespace) -> int:
    from trainwarden.ledger import read_entries
    from trainwarden.report import render_ledger_timeline, text_safe

    check_output(args.output, [args.ledger])
    contents = read_entries(args.ledger, run=args.run)
    events = set(args.event)
    entries = [e for e in contents.entries if not events or e.event in events]
    print(
        "trainwarden: note: entries shown as recorded, NOT verified "
        "(run `trainwarden ledger verify`)",
        file=sys.stderr,
    )
    for problem in contents.problems:
        print(f"trainwarden: warning: {text_safe(problem)}", file=sys.stderr)
    if args.format == "json":
        doc = {
            "schema_version": SCHEMA_VERSION,
            "ledger": str(args.ledger),
            "verified": False,
            "problems": list(contents.problems),
            "entries": [e.to_dict() for e in entries],
        }
        text = dumps(doc)
    else:
        text = render_ledger_timeline(entries)
    write_output(text, args.output)
    return EXIT_OK
