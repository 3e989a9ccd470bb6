"""``trainwarden provenance verify|show``: check a run's signed provenance statement."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainwarden.cli._common import EXIT_FINDINGS, EXIT_OK, write_output

if TYPE_CHECKING:
    from trainwarden.provenance import ProvenanceVerification, Statement


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``provenance`` and its sub-commands."""
    parser = subparsers.add_parser(
        "provenance",
        help="verify or show the signed provenance statement of a run",
        description="A run's provenance (RUN_DIR/provenance.intoto.json) is an in-toto "
        "Statement v1 with a SLSA Provenance v1 predicate in a DSSE envelope signed by the "
        "supervisor's key. See docs/provenance.md.",
    )
    sub = parser.add_subparsers(dest="provenance_command", metavar="ACTION")
    sub.required = True

    p = sub.add_parser(
        "verify",
        help="check the signature, the statement and that the outputs are unchanged",
        description="Exit 0 when FILE is signed by a trusted key, is a trainwarden "
        "training-run statement and every output (subject) on disk still has the recorded "
        "digest; 1 when the signature, the statement or an output does not match (modified, "
        "deleted); 2 on errors.",
    )
    p.add_argument("file", metavar="FILE", type=Path, help="provenance.intoto.json")
    p.add_argument(
        "--key",
        metavar="PUB",
        type=Path,
        action="append",
        required=True,
        help="trusted public key of the supervisor; repeat for several",
    )
    p.add_argument(
        "--against",
        metavar="DIR",
        type=Path,
        help="resolve the outputs' relative names in DIR (default: the run's working "
        "directory as recorded)",
    )
    p.add_argument(
        "--signature-only",
        action="store_true",
        help="check the signature and the statement, not the outputs on disk",
    )
    p.add_argument(
        "--format",
        choices=("text", "json", "sarif"),
        default="text",
        help="report format (default: text)",
    )
    p.add_argument("--output", "-o", metavar="FILE", type=Path, help="write the report to FILE")
    p.set_defaults(handler=_verify)

    p = sub.add_parser(
        "show",
        help="print a statement without verifying it",
        description="Print the statement inside FILE (NOT verified: use `provenance verify`).",
    )
    p.add_argument("file", metavar="FILE", type=Path, help="provenance.intoto.json")
    p.add_argument(
        "--format", choices=("text", "json"), default="text", help="output (default: text)"
    )
    p.set_defaults(handler=_show)


def _verify(args: argparse.Namespace) -> int:
    from trainwarden.keys import load_public_key
    from trainwarden.provenance import ProvenanceMismatch, verify_provenance
    from trainwarden.report import render

    keys = [load_public_key(p) for p in args.key]
    try:
        result = verify_provenance(
            args.file, keys, against=args.against, check_outputs=not args.signature_only
        )
    except ProvenanceMismatch as exc:
        if args.format == "text":
            write_output(_text(exc.result, verified=False), args.output)
        else:
            write_output(render(exc.report, args.format), args.output)
        print(f"trainwarden: NOT VERIFIED: {exc}", file=sys.stderr)
        return EXIT_FINDINGS
    if args.format == "text":
        write_output(_text(result, verified=True), args.output)
    else:
        write_output(render(result.report, args.format), args.output)
    return EXIT_OK


def _text(result: ProvenanceVerification, *, verified: bool) -> str:
    from trainwarden.findings import Verdict

    lines = []
    statement = result.statement
    if verified and statement is not None and result.signer is not None:
        checked = [s for s in result.subjects if s.status != "not-checked"]
        outputs = (
            f"{len(checked)} output(s) unchanged on disk"
            if checked or not result.subjects
            else f"{len(result.subjects)} output(s) not checked (--signature-only)"
        )
        lines.append(
            f"VERIFIED {result.path}: run {statement.run_id}, signed by "
            f"{result.signer.identity} ({result.signer.fingerprint}); {outputs}"
        )
    else:
        lines.append(f"NOT VERIFIED {result.path}")
        lines.extend(
            f"  [{f.rule_id}] {f.message}"
            for f in result.report.findings
            if f.verdict is not Verdict.SAFE
        )
    for subject in result.subjects:
        digest = subject.actual or subject.expected
        lines.append(f"  {subject.status:<11} {subject.name}  {digest}")
    return "\n".join(lines) + "\n"


def _show(args: argparse.Namespace) -> int:
    from trainwarden.provenance import read_provenance

    statement = read_provenance(args.file)
    if args.format == "json":
        write_output(json.dumps(dict(statement.raw), indent=2, sort_keys=True) + "\n", None)
        return EXIT_OK
    write_output(_describe(statement), None)
    return EXIT_OK


def _describe(statement: Statement) -> str:
    ext = statement.external_parameters
    lines = [
        f"run {statement.run_id} (NOT verified: use `trainwarden provenance verify`)",
        f"  started  {statement.started}",
        f"  finished {statement.finished}",
        f"  command  {' '.join(str(a) for a in ext.get('command', []))}",
        f"  seed commitment {ext.get('seedCommitment')}",
        "  outputs:",
    ]
    lines.extend(f"    {s.name}  sha256:{s.digest.get('sha256')}" for s in statement.subjects)
    if not statement.subjects:
        lines.append("    (none)")
    lines.append("  dependencies:")
    for dep in statement.dependencies:
        digest = ", ".join(f"{k}:{v}" for k, v in dep.digest.items())
        lines.append(f"    {dep.name or dep.uri}  {digest}".rstrip())
    lines.append("  byproducts:")
    lines.extend(f"    {b.name or b.uri}" for b in statement.byproducts)
    return "\n".join(lines) + "\n"
