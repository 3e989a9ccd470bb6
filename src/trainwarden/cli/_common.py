"""Helpers shared by the command modules: output formats, writing reports, progress."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from trainwarden.errors import InputError
from trainwarden.findings import Report

REPORT_FORMATS = ("text", "json", "sarif")


def add_format_arguments(parser: argparse.ArgumentParser, *, sarif: bool = True) -> None:
    """Add ``--format`` and ``--output`` to ``parser``."""
    choices = REPORT_FORMATS if sarif else ("text", "json")
    parser.add_argument(
        "--format",
        choices=choices,
        default="text",
        help="report format (default: text)",
    )
    parser.add_argument(
        "--output",
        "-o",
        metavar="FILE",
        type=Path,
        help="write the report to FILE instead of stdout",
    )


def emit_report(report: Report, fmt: str, output: Path | None) -> None:
    """Render ``report`` in ``fmt`` and write it to ``output`` or stdout."""
    from trainwarden.report import render

    color = output is None and fmt == "text" and _stdout_is_color_terminal()
    write_output(render(report, fmt, color=color), output)


def write_output(text: str, output: Path | None) -> None:
    """Write ``text`` to ``output`` (atomically) or to stdout."""
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    tmp = output.with_name(f".{output.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(output)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(f"cannot write {output}: {exc.strerror or exc}") from exc


def _stdout_is_color_terminal() -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    return sys.stdout.isatty()
