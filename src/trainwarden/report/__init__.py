"""Renderings of a :class:`~trainwarden.findings.Report`: text, JSON and SARIF 2.1.0.

Ledger results have their own text renderings: :func:`render_ledger_report` (a verification)
and :func:`render_ledger_timeline` (the events, as ``ledger show`` prints them).

Every renderer is a pure function from a report to a string, so the same report reads the
same everywhere and tests compare exact output (``tests/golden``). :func:`render` picks one
by name from :data:`RENDERERS`; other renderings (HTML, ledger text) add their own entries.

The forensic report of a run directory (``trainwarden report``): :func:`read_run` reads a
run directory (``docs/events.md``) into a :class:`RunReport` (findings, timeline, kills,
checkpoints, egress, provenance, ledger status, telemetry); :func:`render_report_html` renders
it as one self-contained HTML page; :func:`render_run_html` and :func:`write_run_report` do
both (the latter atomically to a file, refusing to write over the evidence). Those names are
loaded on first use, so the scan renderers stay quick to import.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from trainwarden.findings import Report
from trainwarden.report._json import render_json
from trainwarden.report._ledger import render_ledger_report, render_ledger_timeline, text_safe
from trainwarden.report._sarif import render_sarif
from trainwarden.report._text import clean as escape_text
from trainwarden.report._text import render_text

if TYPE_CHECKING:
    from trainwarden.report._html import render_report_html, render_run_html, write_run_report
    from trainwarden.report._run import read_run
    from trainwarden.report._run_model import (
        VERDICTS,
        CheckpointRow,
        KillRow,
        LedgerStatus,
        Provenance,
        RunComparison,
        RunFinding,
        RunReport,
        TimelineEvent,
    )
    from trainwarden.report._run_telemetry import RankTelemetry, Telemetry

__all__ = [
    "FORMATS",
    "RENDERERS",
    "VERDICTS",
    "CheckpointRow",
    "KillRow",
    "LedgerStatus",
    "Provenance",
    "RankTelemetry",
    "RunComparison",
    "RunFinding",
    "RunReport",
    "Telemetry",
    "TimelineEvent",
    "escape_text",
    "read_run",
    "render",
    "render_json",
    "render_ledger_report",
    "render_ledger_timeline",
    "render_report_html",
    "render_run_html",
    "render_sarif",
    "render_text",
    "text_safe",
    "write_run_report",
]

# The run report's public names and the private modules that define them (loaded lazily).
_LAZY = {
    "render_report_html": "_html",
    "render_run_html": "_html",
    "write_run_report": "_html",
    "read_run": "_run",
    "VERDICTS": "_run_model",
    "CheckpointRow": "_run_model",
    "KillRow": "_run_model",
    "LedgerStatus": "_run_model",
    "Provenance": "_run_model",
    "RunComparison": "_run_model",
    "RunFinding": "_run_model",
    "RunReport": "_run_model",
    "TimelineEvent": "_run_model",
    "RankTelemetry": "_run_telemetry",
    "Telemetry": "_run_telemetry",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


#: Output formats every reporting command accepts.
FORMATS = ("text", "json", "sarif")


def _text(report: Report, color: bool) -> str:
    return render_text(report, color=color)


#: Format name -> renderer of a Report (``color`` only matters to terminal text).
RENDERERS: dict[str, Callable[[Report, bool], str]] = {
    "json": lambda report, _color: render_json(report),
    "sarif": lambda report, _color: render_sarif(report),
    "text": _text,
}


def render(report: object, fmt: str, *, color: bool = False) -> str:
    """Render ``report`` in ``fmt`` (one of :data:`RENDERERS`)."""
    if not isinstance(report, Report):
        raise TypeError(f"expected a Report, got {type(report).__name__}")
    renderer = RENDERERS.get(fmt)
    if renderer is None:
        raise ValueError(f"unknown format {fmt!r} (expected one of {', '.join(RENDERERS)})")
    return renderer(report, color)
