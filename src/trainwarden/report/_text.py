"""Text rendering for people: one line a file, its findings beneath, a summary at the end."""

from __future__ import annotations

import io
import unicodedata
from collections.abc import Mapping
from typing import Any

from trainwarden.findings import Report, Severity, Verdict

__all__ = ["clean", "render_text"]

_VERDICT_STYLE = {
    Verdict.SAFE: "green",
    Verdict.UNKNOWN: "yellow",
    Verdict.UNSAFE: "bold red",
    Verdict.ERROR: "magenta",
}
_SEVERITY_STYLE = {
    Severity.INFO: "dim",
    Severity.LOW: "cyan",
    Severity.MEDIUM: "yellow",
    Severity.HIGH: "red",
    Severity.CRITICAL: "bold red",
}


def clean(text: str) -> str:
    """``text`` with every control and format character escaped (newline, ESC...).

    File names, archive member names and evidence come from the files scanned: a name with a
    newline or an escape sequence must not forge a line (``SAFE  other.pt``) or recolour the
    terminal. Printable text, non-ASCII letters included, is kept as it is.
    """
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable() and unicodedata.category(ch) != "Cf":
            out.append(ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    return "".join(out)


def _config_lines(config: Mapping[str, Any]) -> list[str]:
    lines = []
    profiles = config.get("profiles") or []
    if profiles:
        parts = [f"{clean(str(p['name']))} ({clean(str(p['source']))})" for p in profiles]
        lines.append("config: profiles " + ", ".join(parts))
    for entry in config.get("allow") or []:
        danger = " [dangerous, allowed explicitly]" if entry.get("dangerous") else ""
        lines.append(
            f"config: allow {clean(str(entry['entry']))} ({clean(str(entry['source']))}){danger}"
        )
    limits = config.get("limits") or {}
    if limits:
        parts = [
            f"{clean(str(name))}={clean(str(spec['value']))} ({clean(str(spec['source']))})"
            for name, spec in sorted(limits.items())
        ]
        lines.append("config: limits " + ", ".join(parts))
    else:
        lines.append("config: limits default")
    if config.get("pyproject"):
        lines.append(f"config: read {clean(str(config['pyproject']))}")
    return lines


def render_text(report: Report, *, color: bool = False, show_info: bool = False) -> str:
    """Render ``report`` as text; ANSI colour only when ``color`` is true."""
    # rich is imported here, not at module level: JSON and SARIF output (CI) should not pay
    # for it at start-up.
    from rich.console import Console
    from rich.markup import escape

    buffer = io.StringIO()
    console = Console(
        file=buffer,
        force_terminal=color,
        no_color=not color,
        width=120,
        soft_wrap=True,
        highlight=False,
    )
    for file in sorted(report.files, key=lambda f: f.path):
        verdict = file.verdict
        style = _VERDICT_STYLE[verdict]
        label = f"[{style}]{verdict.value.upper():7}[/]"
        console.print(f"{label} {escape(clean(file.path))} [dim]({escape(clean(file.format))})[/]")
        for finding in sorted(file.findings, key=lambda f: (-int(f.severity), f.rule_id)):
            if finding.severity < Severity.LOW and not show_info and verdict is Verdict.SAFE:
                continue
            sev = _SEVERITY_STYLE[finding.severity]
            where = clean(finding.location.member or "")
            if finding.location.offset is not None:
                where += f"@{finding.location.offset}"
            evidence = f" [bold]{escape(clean(finding.evidence))}[/]" if finding.evidence else ""
            console.print(
                f"        [{sev}]{finding.severity.label:8}[/] {escape(clean(finding.rule_id))}"
                f"{evidence}: {escape(clean(finding.message))}"
                + (f" [dim]({escape(where)})[/]" if where else "")
            )
    summary = report.summary()
    counts = ", ".join(f"{n} {v}" for v, n in summary["verdicts"].items() if n)
    console.print(f"{summary['files']} file(s): {counts or 'nothing scanned'}")
    if report.config:
        for line in _config_lines(report.config):
            console.print(f"[dim]{escape(line)}[/]")
    return buffer.getvalue()
