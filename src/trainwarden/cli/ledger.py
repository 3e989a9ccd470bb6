"""``trainwarden ledger append|seal|verify|show``: the signed, tamper-evident event ledger."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainwarden.cli._common import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK, emit_report, write_output
from trainwarden.errors import ConfigError, InputError

if TYPE_CHECKING:
    from trainwarden.keys import PublicKey
    from trainwarden.ledger import Entry, LedgerReport


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``ledger`` and its sub-commands."""
    parser = subparsers.add_parser(
        "ledger",
        help="append to, seal, verify and show a tamper-evident signed ledger",
        description=(
            "A ledger is a directory with one append-only, hash-chained, signed file per "
            "writer, sealed by a more trusted key. Exit codes: 0 intact, 1 tampered, 2 error."
        ),
    )
    sub = parser.add_subparsers(dest="ledger_command", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("append", help="sign and append one event")
    p.add_argument("ledger", metavar="DIR", type=Path, help="ledger directory (created if missing)")
    p.add_argument("--key", required=True, type=Path, help="writer's private key")
    p.add_argument("--event", required=True, metavar="TYPE", help="event type, e.g. run.started")
    p.add_argument("--run", help="training run the event is about")
    p.add_argument("--data", metavar="JSON", help="event payload: a JSON object")
    p.add_argument(
        "--new-writer",
        action="store_true",
        help="start a new writer file instead of continuing this key's file on this host",
    )
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(handler=_append)

    p = sub.add_parser("seal", help="sign a Merkle root over every writer's chain")
    p.add_argument("ledger", metavar="DIR", type=Path, help="ledger directory")
    p.add_argument("--key", required=True, type=Path, help="sealer's private key")
    _paths_option(
        p,
        "--writer-key",
        "PUB",
        "trusted writer public key (file, or directory of *.pub); repeatable",
    )
    _paths_option(
        p,
        "--seal-key",
        "PUB",
        "other trusted seal key whose seals this one must extend; repeatable",
    )
    p.add_argument(
        "--receipt",
        type=Path,
        metavar="FILE",
        help="also write the seal to FILE (keep it off the shared storage)",
    )
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(handler=_seal)

    p = sub.add_parser(
        "verify",
        help="verify chains, signatures and seals",
        description=(
            "Exit 0 intact, 1 tampered (the report names the first altered, dropped, "
            "reordered, duplicated, forged or truncated entry), 2 error. Without --key the "
            "chains are checked but not who signed them: exit 2 unless "
            "--insecure-no-signer-check."
        ),
    )
    p.add_argument("ledger", metavar="PATH", type=Path, help="ledger directory or writer file")
    _paths_option(
        p, "--key", "PUB", "trusted writer public key (file, or directory of *.pub); repeatable"
    )
    _paths_option(
        p,
        "--seal-key",
        "PUB",
        "trusted seal public key; requires at least one seal by it; repeatable",
    )
    _paths_option(
        p,
        "--seal-receipt",
        "FILE",
        "seal receipt kept off the ledger: detects seals rolled back; repeatable",
    )
    p.add_argument(
        "--check-files",
        action="store_true",
        help="also check that recorded files (events with path and digest) are unchanged",
    )
    p.add_argument(
        "--insecure-no-signer-check",
        action="store_true",
        help="without --key, accept chains signed by any key (integrity only, no trust)",
    )
    p.add_argument(
        "--jobs",
        "-j",
        type=int,
        default=0,
        metavar="N",
        help="processes checking signatures of large ledgers (default: CPUs available, max 8)",
    )
    p.add_argument("--format", choices=("text", "json", "sarif"), default="text")
    p.add_argument("--output", "-o", type=Path, metavar="FILE", help="write the report to FILE")
    p.set_defaults(handler=_verify)

    p = sub.add_parser("show", help="timeline of events with attribution (unverified)")
    p.add_argument("ledger", metavar="PATH", type=Path, help="ledger directory or writer file")
    p.add_argument("--run", help="only events about RUN")
    p.add_argument("--event", action="append", default=[], metavar="TYPE", help="only TYPE")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--output", "-o", type=Path, metavar="FILE", help="write to FILE")
    p.set_defaults(handler=_show)


# -- handlers ------------------------------------------------------------------------------


def _append(args: argparse.Namespace) -> int:
    from trainwarden.ledger import Ledger

    data: dict[str, Any] = {}
    if args.data is not None:
        try:
            parsed = json.loads(args.data)
        except ValueError as exc:
            raise ConfigError(f"--data is not valid JSON: {exc}") from exc
        if not isinstance(parsed, dict):
            raise ConfigError("--data must be a JSON object")
        data = parsed
    with Ledger(args.ledger, key=args.key, resume=not args.new_writer) as ledger:
        entry = ledger.append_data(args.event, data, run=args.run)
    if args.format == "json":
        print(_dumps(entry.to_dict()))
    else:
        print(f"appended {entry.event} as {entry.writer} seq {entry.seq} ({entry.hash})")
    return EXIT_OK


def _seal(args: argparse.Namespace) -> int:
    from trainwarden.ledger import seal_ledger

    seal = seal_ledger(
        args.ledger,
        key=args.key,
        writer_keys=_load_keys(args.writer_key),
        seal_keys=_load_keys(args.seal_key),
        receipt=args.receipt,
    )
    if args.format == "json":
        print(_dumps(seal.to_dict()))
    else:
        total = sum(w.count for w in seal.writers)
        print(
            f"sealed {len(seal.writers)} writer(s), {total} entries as {seal.name}\n"
            f"root {seal.root}"
        )
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    from trainwarden.ledger import inspect_ledger
    from trainwarden.ledger._sigcheck import default_workers

    if args.jobs < 0:
        raise ConfigError("--jobs must be 0 (all CPUs) or more")
    keys = _load_keys(args.key)
    if keys and args.insecure_no_signer_check:
        raise ConfigError("--insecure-no-signer-check makes no sense with --key")
    report = inspect_ledger(
        args.ledger,
        keys=keys,
        seal_keys=_load_keys(args.seal_key),
        seal_receipts=args.seal_receipt,
        check_files=args.check_files,
        insecure_skip_signer_check=not keys,
        workers=args.jobs or default_workers(),
    )
    if args.format == "sarif":
        emit_report(report.to_findings(), "sarif", args.output)
    else:
        text = _dumps(report.to_dict()) + "\n" if args.format == "json" else render_report(report)
        write_output(text, args.output)
    if report.issues:
        return EXIT_FINDINGS
    if not report.signers_checked and not args.insecure_no_signer_check:
        # Fail closed: intact chains signed by unknown keys prove nothing about who wrote them.
        print(
            "trainwarden: error: chains are intact but signer trust was NOT checked: "
            "pass --key PUB for each trusted writer (or --insecure-no-signer-check)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    return EXIT_OK


def _show(args: argparse.Namespace) -> int:
    entries, problems = _read_lenient(args.ledger)
    events = set(args.event)
    entries = [
        e
        for e in entries
        if (args.run is None or e.run == args.run) and (not events or e.event in events)
    ]
    print(
        "trainwarden: note: entries shown as recorded, NOT verified "
        "(run `trainwarden ledger verify`)",
        file=sys.stderr,
    )
    for problem in problems:
        print(f"trainwarden: warning: {problem}", file=sys.stderr)
    if args.format == "json":
        doc = {
            "schema_version": 1,
            "ledger": str(args.ledger),
            "verified": False,
            "entries": [e.to_dict() for e in entries],
        }
        text = _dumps(doc) + "\n"
    else:
        text = render_timeline(entries)
    write_output(text, args.output)
    return EXIT_OK


# -- helpers -------------------------------------------------------------------------------


def _load_keys(paths: list[Path]) -> list[PublicKey]:
    from trainwarden.keys import load_public_key

    keys: list[PublicKey] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.glob("*.pub"))
            if not found:
                raise InputError(f"no *.pub key in directory {path}")
            keys.extend(load_public_key(p) for p in found)
        else:
            keys.append(load_public_key(path))
    return keys


def _read_lenient(path: Path) -> tuple[list[Entry], list[str]]:
    from trainwarden.ledger._entry import MalformedEntry
    from trainwarden.ledger._files import read_records, resolve_layout

    layout = resolve_layout(path)
    files, _ = layout.writer_files()
    entries, problems = [], []
    for file in files:
        records = read_records(file)
        if records.error is not None:
            problems.append(f"{file}: {records.error}")
        for lineno, _, record in records.records:
            if isinstance(record, MalformedEntry):
                problems.append(f"{file}:{lineno}: {record}")
            else:
                entries.append(record)
    entries.sort(key=lambda e: (e.time, e.writer, e.seq))
    return entries, problems


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False)


def render_timeline(entries: list[Entry]) -> str:
    """One line per entry: time, who (user, host, pid, key identity), run, event, data."""
    lines = []
    for e in entries:
        who = f"{e.actor.user}({e.actor.uid})@{e.actor.host}:{e.actor.pid}"
        key = f"{e.actor.identity} {e.actor.key[:19]}"
        data = json.dumps(e.data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        if len(data) > 120:
            data = data[:117] + "..."
        lines.append(
            f"{e.time}  {who}  [{key}]  run={e.run or '-'}  {e.event}  {data}  ({e.writer}#{e.seq})"
        )
    return "\n".join(lines) + ("\n" if lines else "")


def render_report(report: LedgerReport) -> str:
    """Human summary of a verification: verdict, issues, writers, seals, warnings."""
    if report.issues:
        verdict = "TAMPERED"
    elif not report.signers_checked:
        verdict = "chains intact, signers NOT checked (no --key)"
    else:
        verdict = "intact"
    writers = [w for w in report.writers if w.role == "writer"]
    trusted_seals = [s for s in report.seals if s.trusted]
    out = [
        f"ledger {report.ledger}: {verdict}",
        f"  {len(writers)} writer(s), {len(report.entries)} entries, "
        f"{len(trusted_seals)} trusted seal(s) of {len(report.seals)}",
    ]
    if report.issues:
        first = report.issues[0]
        out.append(f"first issue: {first.describe()}")
        if len(report.issues) > 1:
            out.append(f"all issues ({len(report.issues)}):")
            out.extend(f"  {i.describe()}" for i in report.issues)
    out.append("writers:")
    for w in report.writers:
        checked = report.signers_checked if w.role == "writer" else report.seals_checked
        trust = "trusted" if w.trusted else ("UNTRUSTED" if checked else "unchecked")
        sealed = f", sealed {w.sealed}" if w.role == "writer" else ""
        out.append(
            f"  {w.role} {w.writer}: {w.entries} entries{sealed}, key {w.key} "
            f"({w.identity}, {trust})"
        )
    if trusted_seals:
        last = trusted_seals[-1]
        out.append(f"last trusted seal: {last.name} at {last.time} by {last.identity}, {last.root}")
    bad_files = [f for f in report.files if f.status != "ok"]
    if report.files:
        out.append(f"files: {len(report.files)} recorded, {len(bad_files)} not as recorded")
    if report.warnings:
        out.append("notes:")
        out.extend(f"  {w.describe()}" for w in report.warnings)
    return "\n".join(out) + "\n"


def _paths_option(parser: argparse.ArgumentParser, flag: str, metavar: str, text: str) -> None:
    """Add a repeatable path option (keys, receipts) to ``parser``."""
    parser.add_argument(flag, action="append", default=[], type=Path, metavar=metavar, help=text)
