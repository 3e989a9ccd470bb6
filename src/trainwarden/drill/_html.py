"""The drill's HTML index: the result table, linking each run's forensic report (offline)."""

from __future__ import annotations

import html
from collections.abc import Mapping

from trainwarden.drill._results import DrillResult, ScenarioResult

__all__ = ["render_index"]

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#1b1f24}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.35em .6em;
border-bottom:1px solid #d0d7de;vertical-align:top}th{background:#f6f8fa}
.detected,.clean{color:#116329;font-weight:600}.missed,.findings,.error{color:#a40e26;
font-weight:600}.unavailable{color:#9a6700;font-weight:600}small{color:#57606a}
"""


def _row(result: ScenarioResult, link: str | None) -> str:
    first = result.first
    after = "-"
    if first is not None:
        steps = "-" if first.steps is None else str(first.steps)
        seconds = "-" if first.seconds is None else f"{first.seconds:.1f} s"
        after = f"{steps} steps, {seconds}"
    check = first.check if first is not None else (result.reason or "-")
    named = result.insider.describe() if result.insider is not None else "-"
    run = f'<a href="{html.escape(link)}">{html.escape(result.run)}</a>' if link else result.run
    cells = (
        html.escape(result.technique),
        html.escape(result.title),
        f'<span class="{html.escape(result.status)}">{html.escape(result.status)}</span>',
        html.escape(check),
        html.escape(after),
        html.escape(named),
        run if link else html.escape(run),
    )
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def render_index(result: DrillResult, links: Mapping[str, str]) -> str:
    """A self-contained HTML page of ``result``; ``links`` maps run names to report files."""

    def link(row: ScenarioResult) -> str | None:
        name = row.run.rsplit("-", 1)[-1] if row.run else ""
        for run, target in links.items():
            if row.run.endswith(f"-{run}"):
                return target
        return links.get(name)

    rows = [_row(result.control, link(result.control))]
    rows += [_row(s, link(s)) for s in result.scenarios]
    verdict = "passed" if result.passed else "did not pass"
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in result.notes)
    return (
        "<!doctype html><html lang=en><meta charset=utf-8>"
        "<title>trainwarden drill</title>"
        f"<style>{_STYLE}</style>"
        f"<h1>trainwarden drill: {verdict}</h1>"
        f"<p><small>{result.ranks} ranks, insider {html.escape(result.insider.describe())} "
        f"({html.escape(result.insider_mode)}), {result.seconds:.1f} s</small></p>"
        "<table><tr><th>technique</th><th>scenario</th><th>result</th><th>check</th>"
        "<th>after</th><th>named by the ledger</th><th>run</th></tr>"
        + "".join(rows)
        + f"</table><ul>{notes}</ul></html>\n"
    )
