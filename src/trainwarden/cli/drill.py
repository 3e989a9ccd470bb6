"""``trainwarden drill``: replay T1-T8 against a real training job and print what was caught."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainwarden.cli._common import (
    EXIT_ERROR,
    EXIT_FINDINGS,
    EXIT_OK,
    Progress,
    add_output_arguments,
    add_progress_argument,
    check_output,
    dumps,
    path_arg,
    write_output,
)
from trainwarden.errors import ConfigError

if TYPE_CHECKING:
    from trainwarden.drill import DrillProgress, DrillResult, ScenarioResult

_EPILOG = """\
exit status: 0 every technique detected and the control run clean; 1 an attack was not
detected (or its detector is not installed) or the control run had findings; 2 usage or
operational error, or a scenario the drill could not carry out.

Everything happens in a throwaway sandbox (its own Python environment with a mirror of the
installed torch, keys, ledgers and team directories); nothing outside it is modified. Run as
root, the insider is another uid (4242), so file owners and signal senders name it.
"""


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``drill``."""
    from trainwarden.drill import DEFAULT_RANKS

    parser = subparsers.add_parser(
        "drill",
        help="replay the 2024 incident (T1-T8) against a real training job",
        description="Run a small real training job (tinygpt, several ranks over gloo) in a "
        "throwaway sandbox and replay each technique of the 2024 incident as a second, insider "
        "identity: malicious checkpoint (T1), edited torch and a .pth hook (T2), sleeping "
        "optimizer (T3), flipped and perturbed updates (T4), seeds, data order and learning "
        "rate (T5), killed ranks (T6), modified, rolled back and deleted checkpoints (T7), "
        "ledger edits and a forged denial (T8), plus a clean control run. Prints, per attack, "
        "whether it was caught, by which check, how long after it began and whom the ledger "
        "names.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--ranks",
        metavar="N",
        type=int,
        default=DEFAULT_RANKS,
        help=f"ranks of every training job (default: {DEFAULT_RANKS}, at least 2)",
    )
    add_output_arguments(parser, ("text", "json"))
    parser.add_argument(
        "--report",
        metavar="FILE",
        type=path_arg,
        help="also write an HTML report: FILE (the table, linking every run) and one forensic "
        "report per run beside it (FILE's name with -RUN.html), each compared with the control",
    )
    parser.add_argument(
        "--keep",
        metavar="DIR",
        type=path_arg,
        help="build the sandbox in DIR (new or empty) and keep it for inspection",
    )
    parser.add_argument(
        "--only",
        metavar="SCENARIO",
        action="append",
        default=[],
        help="run only this technique (T4) or scenario id (T4-flip-one-rank); repeatable",
    )
    add_progress_argument(parser)
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from trainwarden.drill import run_drill

    # Before minutes of work: an output that cannot be written is a usage error now. The
    # --keep directory may not exist yet (the drill makes it), so an output inside it is
    # named as such before the common checks call its directory missing.
    for flag, path in (("--output", args.output), ("--report", args.report)):
        if path is not None and args.keep is not None and str(path) != "-":
            try:
                Path(path).resolve().relative_to(Path(args.keep).resolve())
            except ValueError:
                continue
            raise ConfigError(f"{flag} {path} lies inside the --keep directory {args.keep}")
    check_output(args.output, [args.keep])
    check_output(args.report, [args.keep], what="--report", streams=False)
    if (
        args.report is not None
        and args.output is not None
        and str(args.output) != "-"
        and Path(args.report).resolve() == Path(args.output).resolve()
    ):
        raise ConfigError("--report and --output name the same file")
    with Progress("drill", enabled=not args.no_progress) as progress:
        result = run_drill(
            ranks=args.ranks,
            only=tuple(args.only),
            keep=args.keep,
            progress=_progress_callback(progress),
            report=args.report,
        )
    text = dumps(result.to_dict()) if args.format == "json" else render_text(result)
    write_output(text, args.output)
    if result.errors:
        return EXIT_ERROR
    return EXIT_OK if result.passed else EXIT_FINDINGS


def _progress_callback(progress: Progress) -> Callable[[DrillProgress], None]:
    """Adapt the drill's progress reports to the common display (results always shown)."""

    def callback(event: DrillProgress) -> None:
        where = f"{event.run}: " if event.run else ""
        progress.update(done=event.done, total=event.total, message=where + event.message)
        if event.result is not None:
            progress.note(
                f"{_status_word(event.result)} {_line(event.result)}",
                style="green" if event.result.passed else "red",
            )

    return callback


def _line(result: ScenarioResult) -> str:
    first = result.first
    if first is not None:
        return f"{result.scenario}: {first.check} ({first.rule_id or first.message[:60]})"
    return f"{result.scenario}: {result.reason or result.status}"


# -- the table (stdout) --------------------------------------------------------------------


def _status_word(result: ScenarioResult) -> str:
    return {
        "detected": "DETECTED",
        "clean": "CLEAN",
        "missed": "NOT DETECTED",
        "unavailable": "NOT DETECTED",
        "findings": "FINDINGS",
        "error": "ERROR",
    }.get(result.status, result.status.upper())


def _after(result: ScenarioResult) -> str:
    return "-" if result.first is None else result.first.after()


def _named(result: ScenarioResult) -> str:
    if result.insider is None:
        return "-"
    text = result.insider.describe()
    first = result.first
    if first is not None and first.evidence is not None:
        mark = "matches" if result.attributed else "does NOT match"
        text += f" ({first.evidence.via} {first.evidence.describe()}: {mark})"
    return text


def _check(result: ScenarioResult) -> str:
    first = result.first
    if first is not None:
        return first.check + (f" [{first.rule_id}]" if first.rule_id else "")
    if result.status == "unavailable" and result.reason:
        return result.reason.split(" (", 1)[0].split(":", 1)[0]
    return "-"


def render_text(result: DrillResult) -> str:
    """The drill's result as a plain-text table (what ``--format text`` prints)."""
    rows = [("TECHNIQUE", "SCENARIO", "RESULT", "CHECK", "AFTER", "NAMED BY THE LEDGER")]
    rows += [
        (row.technique, row.title, _status_word(row), _check(row), _after(row), _named(row))
        for row in (result.control, *result.scenarios)
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        f"trainwarden drill: {result.ranks} ranks, insider {result.insider.describe()} "
        f"({result.insider_mode}), {result.seconds:.1f} s",
        "",
    ]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows
    ]
    lines.append("")
    problems = [s for s in (result.control, *result.scenarios) if not s.passed]
    if problems:
        lines.append("Not passed:")
        lines.extend(f"  {s.scenario}: {s.status}: {s.reason}" for s in problems)
        lines.append("")
    detected = sum(1 for s in result.scenarios if s.detected)
    lines.append(
        f"{len(result.scenarios)} attack(s): {detected} detected, "
        f"{len(result.scenarios) - detected} not; control run "
        f"{'clean' if result.control.passed else 'NOT clean'}."
    )
    lines.extend(f"note: {n}" for n in result.notes)
    if result.sandbox:
        lines.append(f"sandbox kept in {result.sandbox}")
    return "\n".join(lines) + "\n"
