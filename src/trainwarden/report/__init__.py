"""Renderings of a :class:`~trainwarden.findings.Report`: text, JSON and SARIF 2.1.0.

Every renderer is a pure function from a report to a string, so the same report reads the
same everywhere and tests compare exact output (``tests/golden``). :func:`render` picks one
by name from :data:`RENDERERS`; other renderings (HTML, ledger text) add their own entries.
"""

from __future__ import annotations

from collections.abc import Callable

from trainwarden.findings import Report
from trainwarden.report._json import render_json
from trainwarden.report._sarif import render_sarif
from trainwarden.report._text import clean as escape_text
from trainwarden.report._text import render_text

__all__ = [
    "FORMATS",
    "RENDERERS",
    "escape_text",
    "render",
    "render_json",
    "render_sarif",
    "render_text",
]

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
