"""Text rendering for people: one line a file, its findings beneath, a summary at the end."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trainwarden.findings import Report, Severity, Verdict

__all__ = ["clean", "render_text"]

# ANSI SGR codes: the renderer writes them itself (rich costs ~0.1 s to import, and a scan
# of a folder takes about that long in all).
_VERDICT_STYLE = {
    Verdict.SAFE: "32",
    Verdict.UNKNOWN: "33",
    Verdict.UNSAFE: "1;31",
    Verdict.ERROR: "35",
}
_SEVERITY_STYLE = {
    Severity.INFO: "2",
    Severity.LOW: "36",
    Severity.MEDIUM: "33",
    Severity.HIGH: "31",
    Severity.CRITICAL: "1;31",
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
        if ch.isprintable():  # False for every control, format and separator but space
            out.append(ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        else:
            code = ord(ch)
            if code < 0x100:
                out.append(f"\\x{code:02x}")
            elif code < 0x10000:
                out.append(f"\\u{code:04x}")
            else:
                out.append(f"\\U{code:08x}")
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

    def paint(text: str, style: str) -> str:
        return f"\x1b[{style}m{text}\x1b[0m" if color else text

    lines: list[str] = []
    for file in sorted(report.files, key=lambda f: f.path):
        verdict = file.verdict
        label = paint(f"{verdict.value.upper():7}", _VERDICT_STYLE[verdict])
        lines.append(f"{label} {clean(file.path)} {paint(f'({clean(file.format)})', '2')}")
        for finding in sorted(file.findings, key=lambda f: (-int(f.severity), f.rule_id)):
            if finding.severity < Severity.LOW and not show_info and verdict is Verdict.SAFE:
                continue
            where = clean(finding.location.member or "")
            if finding.location.offset is not None:
                where += f"@{finding.location.offset}"
            evidence = f" {paint(clean(finding.evidence), '1')}" if finding.evidence else ""
            sev = paint(f"{finding.severity.label:8}", _SEVERITY_STYLE[finding.severity])
            lines.append(
                f"        {sev} {clean(finding.rule_id)}{evidence}: {clean(finding.message)}"
                + (f" {paint(f'({where})', '2')}" if where else "")
            )
    summary = report.summary()
    counts = ", ".join(f"{n} {v}" for v, n in summary["verdicts"].items() if n)
    lines.append(f"{summary['files']} file(s): {counts or 'nothing scanned'}")
    if report.config:
        lines.extend(paint(line, "2") for line in _config_lines(report.config))
    return "\n".join(lines) + "\n"
