"""``trainwarden report RUN_DIR``: the self-contained HTML forensic report of a run."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from trainwarden.cli._common import (
    EXIT_FINDINGS,
    EXIT_OK,
    Progress,
    add_jobs_argument,
    add_output_argument,
    add_progress_argument,
    add_pubkey_argument,
    check_output,
    load_public_keys,
    path_arg,
    shown,
    write_output,
)
from trainwarden.errors import InputError

_EPILOG = (
    "exit status: 0 report written and the run is clean; 1 report written and it shows a\n"
    "finding, tampering, or something it could not verify (e.g. no --pubkey); 2 no report\n"
    "(missing run directory, unreadable key, output over the evidence).\n\n"
    "The page is one file with its styles, script and data inline; it makes no network\n"
    "request and reads without JavaScript. Everything taken from the run is escaped: paths,\n"
    "commands and messages may have been written by the person under suspicion."
)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``report``."""
    parser = subparsers.add_parser(
        "report",
        help="write the self-contained HTML forensic report of a run directory",
        description=(
            "Write one self-contained HTML file about a run directory (trainwarden run\n"
            "--run-dir): a verdict card per finding, one timeline of the ledger with\n"
            "attribution, per-rank plots and heatmaps, kills, checkpoints, egress,\n"
            "provenance, ledger status, and the commands that re-check each of them."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", type=path_arg, help="the run directory")
    add_output_argument(
        parser, text="write the report to FILE (default: standard output, never a terminal)"
    )
    parser.add_argument(
        "--against",
        metavar="CLEAN_RUN_DIR",
        type=path_arg,
        help="also show what differs from a clean run of the same job (differences only)",
    )
    add_pubkey_argument(
        parser,
        "--pubkey",
        "public key trusted to write the ledger and sign the provenance (file, or "
        "directory of *.pub); repeatable. Without one, signers are not checked",
        aliases=("--key",),
    )
    add_pubkey_argument(
        parser,
        "--seal-pubkey",
        "public key trusted to seal the ledger; repeatable",
        aliases=("--seal-key",),
    )
    parser.add_argument(
        "--skip-checkpoint-digests",
        action="store_true",
        help="do not rehash the run's checkpoints (faster; modified checkpoints go unseen)",
    )
    parser.add_argument(
        "--bins",
        type=_bins,
        default=200,
        metavar="N",
        help="resolution of the plots in step bins (default: 200)",
    )
    add_jobs_argument(parser, "processes reading telemetry (default: one per CPU, for large runs)")
    add_progress_argument(parser)
    parser.set_defaults(handler=_report)


def _bins(text: str) -> int:
    """An argparse type: the plots' resolution, 10 to 2000 step bins."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 10 <= value <= 2000:
        raise argparse.ArgumentTypeError(f"must be between 10 and 2000, not {value}")
    return value


def _report(args: argparse.Namespace) -> int:
    from trainwarden._system import cpu_count
    from trainwarden.report import read_run, render_report_html, write_run_report

    to_stdout = args.output is None or str(args.output) == "-"
    if to_stdout and sys.stdout.isatty():
        raise InputError(
            "refusing to write an HTML report to a terminal: use -o FILE (or redirect stdout)"
        )
    # The report must not replace a key it reads; the library refuses an output over any part
    # of the evidence (the run's files, its checkpoints, the clean run) once it knows them, and
    # allows RUN_DIR/report.html.
    check_output(args.output, [*args.pubkey, *args.seal_pubkey], streams=False)
    # Read before anything else, with the option named in the message; the report reads them
    # again from the paths, which it also shows in the commands that re-check the run.
    load_public_keys(args.pubkey)
    load_public_keys(args.seal_pubkey, flag="--seal-pubkey")
    options: dict[str, Any] = {
        "against": args.against,
        "keys": args.pubkey,
        "seal_keys": args.seal_pubkey,
        "check_checkpoints": not args.skip_checkpoint_digests,
        "bins": args.bins,
        "workers": args.jobs or cpu_count(cap=8),
    }
    with Progress("report", enabled=not args.no_progress) as progress:

        def callback(stage: str, done: int, total: int) -> None:
            progress.update(done=done, total=total, message=f"reading {stage}")

        if to_stdout:
            report = read_run(args.run_dir, progress=callback, **options)
            text = render_report_html(report)
        else:
            report = write_run_report(args.run_dir, args.output, progress=callback, **options)
    if to_stdout:
        write_output(text, None)
    where = "standard output" if to_stdout else str(args.output)
    print(
        f"trainwarden: {report.verdict.upper()}: {shown(report.headline)} (report: {shown(where)})",
        file=sys.stderr,
    )
    return EXIT_OK if report.verdict == "clean" else EXIT_FINDINGS
