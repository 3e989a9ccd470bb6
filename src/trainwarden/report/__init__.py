"""Renderings of a :class:`~trainwarden.findings.Report`: text, JSON and SARIF 2.1.0.

Ledger results have their own text renderings: :func:`render_ledger_report` (a verification)
and :func:`render_ledger_timeline` (the events, as ``ledger show`` prints them).

Every renderer is a pure function from a report to a string, so the same report reads the
same everywhere and tests compare exact output.
"""

from __future__ import annotations

from trainwarden.report._json import render_json
from trainwarden.report._ledger import render_ledger_report, render_ledger_timeline, text_safe
from trainwarden.report._sarif import render_sarif
from trainwarden.report._text import render_text

__all__ = [
    "FORMATS",
    "render",
    "render_json",
    "render_ledger_report",
    "render_ledger_timeline",
    "render_sarif",
    "render_text",
    "text_safe",
]

#: Output formats every reporting command accepts.
FORMATS = ("text", "json", "sarif")


def render(report: object, fmt: str, *, color: bool = False) -> str:
    """Render ``report`` in ``fmt`` (one of :data:`FORMATS`)."""
    from trainwarden.findings import Report

    if not isinstance(report, Report):
        raise TypeError(f"expected a Report, got {type(report).__name__}")
    if fmt == "json":
        return render_json(report)
    if fmt == "sarif":
        return render_sarif(report)
    if fmt == "text":
        return render_text(report, color=color)
    raise ValueError(f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
