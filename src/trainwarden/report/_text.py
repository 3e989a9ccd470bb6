"""Text rendering for people: one line a file, its findings beneath, a summary at the end."""

from __future__ import annotations

import io

from trainwarden.findings import Report, Severity, Verdict

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
        console.print(f"{label} {escape(file.path)} [dim]({escape(file.format)})[/]")
        for finding in sorted(file.findings, key=lambda f: (-int(f.severity), f.rule_id)):
            if finding.severity < Severity.LOW and not show_info and verdict is Verdict.SAFE:
                continue
            sev = _SEVERITY_STYLE[finding.severity]
            where = finding.location.member or ""
            if finding.location.offset is not None:
                where += f"@{finding.location.offset}"
            evidence = f" [bold]{escape(finding.evidence)}[/]" if finding.evidence else ""
            console.print(
                f"        [{sev}]{finding.severity.label:8}[/] {finding.rule_id}{evidence}: "
                f"{escape(finding.message)}" + (f" [dim]({escape(where)})[/]" if where else "")
            )
    summary = report.summary()
    counts = ", ".join(f"{n} {v}" for v, n in summary["verdicts"].items() if n)
    console.print(f"{summary['files']} file(s): {counts or 'nothing scanned'}")
    return buffer.getvalue()
