"""``trainwarden report RUN_DIR``: the self-contained HTML forensic report of a run."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from trainwarden.cli._common import EXIT_FINDINGS, EXIT_OK, write_output
from trainwarden.errors import ConfigError, InputError

_EPILOG = (
    "exit status: 0 report written and the run is clean; 1 report written and it shows a\n"
    "finding, tampering, or something it could not verify (e.g. no --key); 2 no report\n"
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
    parser.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="the run directory")
    parser.add_argument(
        "--output",
        "-o",
        metavar="FILE",
        type=Path,
        help="write the report to FILE (default: standard output, never a terminal)",
    )
    parser.add_argument(
        "--against",
        metavar="CLEAN_RUN_DIR",
        type=Path,
        help="also show what differs from a clean run of the same job (differences only)",
    )
    parser.add_argument(
        "--key",
        action="append",
        default=[],
        type=Path,
        metavar="PUB",
        help="public key trusted to write the ledger and sign the provenance (file, or "
        "directory of *.pub); repeatable. Without one, signers are not checked",
    )
    parser.add_argument(
        "--seal-key",
        action="append",
        default=[],
        type=Path,
        metavar="PUB",
        help="public key trusted to seal the ledger; repeatable",
    )
    parser.add_argument(
        "--skip-checkpoint-digests",
        action="store_true",
        help="do not rehash the run's checkpoints (faster; modified checkpoints go unseen)",
    )
    parser.add_argument(
        "--bins",
        type=int,
        default=200,
        metavar="N",
        help="resolution of the plots in step bins (default: 200)",
    )
    parser.add_argument(
        "--jobs",
        "-j",
        type=int,
        default=0,
        metavar="N",
        help="processes reading telemetry (default: one per CPU, for large runs)",
    )
    parser.add_argument("--no-progress", action="store_true", help="never show progress on stderr")
    parser.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    from trainwarden._system import cpu_count
    from trainwarden.report import read_run, render_report_html, write_run_report

    if not 10 <= args.bins <= 2000:
        raise ConfigError(f"--bins must be between 10 and 2000, not {args.bins}")
    if args.jobs < 0:
        raise ConfigError(f"--jobs must be at least 1, not {args.jobs}")
    to_stdout = args.output is None or str(args.output) == "-"
    if to_stdout and sys.stdout.isatty():
        raise InputError(
            "refusing to write an HTML report to a terminal: use -o FILE (or redirect stdout)"
        )
    jobs = args.jobs or cpu_count(cap=8)
    options: dict[str, Any] = {
        "against": args.against,
        "keys": args.key,
        "seal_keys": args.seal_key,
        "check_checkpoints": not args.skip_checkpoint_digests,
        "bins": args.bins,
        "workers": jobs,
    }
    show = not args.no_progress and sys.stderr.isatty()
    with _progress(show) as callback:
        if to_stdout:
            report = read_run(args.run_dir, progress=callback, **options)
            write_output(render_report_html(report), None)
        else:
            report = write_run_report(args.run_dir, args.output, progress=callback, **options)
    where = "standard output" if to_stdout else str(args.output)
    print(
        f"trainwarden: {report.verdict.upper()}: {report.headline} (report: {where})",
        file=sys.stderr,
    )
    return EXIT_OK if report.verdict == "clean" else EXIT_FINDINGS


@contextmanager
def _progress(show: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    """A progress line on stderr (rich) while the run is read."""
    if not show:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn

    progress = Progress(
        TextColumn("reading {task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        console=Console(stderr=True),
        transient=True,
    )
    task = progress.add_task("run", total=None)

    def callback(stage: str, done: int, total: int) -> None:
        progress.update(task, description=stage, completed=done, total=total or None)

    progress.start()
    try:
        yield callback
    finally:
        progress.stop()
