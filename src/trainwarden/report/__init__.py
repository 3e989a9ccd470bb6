"""Renderings of a :class:`~trainwarden.findings.Report`: text, JSON and SARIF 2.1.0.

Every renderer is a pure function from a report to a string, so the same report reads the
same everywhere and tests compare exact output.
"""

from __future__ import annotations

from trainwarden.report._json import render_json
from trainwarden.report._sarif import render_sarif
from trainwarden.report._text import render_text

__all__ = ["FORMATS", "render", "render_json", "render_sarif", "render_text"]

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
