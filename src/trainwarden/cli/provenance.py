"""``trainwarden provenance verify|show``: check a run's signed provenance statement."""

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
    add_output_arguments,
    add_progress_argument,
    add_pubkey_argument,
    check_output,
    dumps,
    load_public_keys,
    path_arg,
    shown,
    write_output,
)
from trainwarden.errors import ConfigError

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
    p.add_argument("file", metavar="FILE", type=path_arg, help="provenance.intoto.json")
    add_pubkey_argument(
        p,
        "--pubkey",
        "trusted public key of the supervisor (file, or directory of *.pub); repeatable (required)",
        aliases=("--key",),
    )
    p.add_argument(
        "--against",
        metavar="DIR",
        type=path_arg,
        help="resolve the outputs' relative names in DIR (default: the run's working "
        "directory as recorded)",
    )
    p.add_argument(
        "--signature-only",
        action="store_true",
        help="check the signature and the statement, not the outputs on disk",
    )
    add_jobs_argument(p, "hashing threads for the outputs (default: the CPUs available)")
    add_progress_argument(p)
    add_output_arguments(p)
    p.set_defaults(handler=_verify)

    p = sub.add_parser(
        "show",
        help="print a statement without verifying it",
        description="Print the statement inside FILE (NOT verified: use `provenance verify`).",
    )
    p.add_argument("file", metavar="FILE", type=path_arg, help="provenance.intoto.json")
    add_output_arguments(p, ("text", "json"))
    p.set_defaults(handler=_show)


def _verify(args: argparse.Namespace) -> int:
    from trainwarden.provenance import ProvenanceMismatch, verify_provenance
    from trainwarden.report import render

    if not args.pubkey:
        raise ConfigError("give the supervisor's trusted public key with --pubkey PUB")
    check_output(args.output, [args.file, args.against, *args.pubkey])
    keys = load_public_keys(args.pubkey)
    label = f"verifying {args.file}"
    try:
        with Progress(label, enabled=not args.no_progress) as progress:
            result = verify_provenance(
                args.file,
                keys,
                against=args.against,
                check_outputs=not args.signature_only,
                workers=args.jobs,
                progress=lambda message: progress.update(message=message),
            )
    except ProvenanceMismatch as exc:
        if args.format == "text":
            write_output(_text(exc.result, verified=False), args.output)
        else:
            write_output(render(exc.report, args.format), args.output)
        print(f"trainwarden: NOT VERIFIED: {shown(str(exc))}", file=sys.stderr)
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
            f"VERIFIED {shown(result.path)}: run {shown(statement.run_id)}, signed by "
            f"{shown(result.signer.identity)} ({result.signer.fingerprint}); {outputs}"
        )
    else:
        lines.append(f"NOT VERIFIED {shown(result.path)}")
        lines.extend(
            f"  [{f.rule_id}] {shown(f.message)}"
            for f in result.report.findings
            if f.verdict is not Verdict.SAFE
        )
    for subject in result.subjects:
        digest = subject.actual or subject.expected
        lines.append(f"  {subject.status:<11} {shown(subject.name)}  {shown(digest)}")
    return "\n".join(lines) + "\n"


def _show(args: argparse.Namespace) -> int:
    from trainwarden.provenance import read_provenance

    check_output(args.output, [args.file])
    statement = read_provenance(args.file)
    if args.format == "json":
        # The statement as signed, inside a document of ours: like every JSON output, it
        # carries schema_version, and says that nothing was verified.
        doc = {
            "schema_version": SCHEMA_VERSION,
            "path": str(args.file),
            "verified": False,
            "statement": dict(statement.raw),
        }
        write_output(dumps(doc), args.output)
        return EXIT_OK
    write_output(_describe(statement), args.output)
    return EXIT_OK


def _describe(statement: Statement) -> str:
    # Nothing here is verified: every value is escaped (a crafted statement cannot forge a
    # line) and shown as it is, whatever its type.
    ext = statement.external_parameters
    command = ext.get("command")
    if isinstance(command, list):
        command = " ".join(str(a) for a in command)
    lines = [
        f"run {shown(statement.run_id)} (NOT verified: use `trainwarden provenance verify`)",
        f"  started  {shown(statement.started)}",
        f"  finished {shown(statement.finished)}",
        f"  command  {shown(command)}",
        f"  seed commitment {shown(ext.get('seedCommitment'))}",
        "  outputs:",
    ]
    lines.extend(
        f"    {shown(s.name)}  sha256:{shown(s.digest.get('sha256'))}" for s in statement.subjects
    )
    if not statement.subjects:
        lines.append("    (none)")
    lines.append("  dependencies:")
    for dep in statement.dependencies:
        digest = ", ".join(f"{k}:{v}" for k, v in dep.digest.items())
        lines.append(f"    {shown(dep.name or dep.uri)}  {shown(digest)}".rstrip())
    lines.append("  byproducts:")
    lines.extend(f"    {shown(b.name or b.uri)}" for b in statement.byproducts)
    return "\n".join(lines) + "\n"
