"""The drill's HTML index: the result table, each attack's evidence, links to every run's report.

One self-contained page (no script, no external resource), so it opens offline and can be
attached to a ticket. Every value shown comes from the drill's result, and every one is
escaped: file names and messages in it were chosen by the insider.
"""

from __future__ import annotations

import html
from collections.abc import Mapping

from trainwarden.drill._results import Detection, DrillResult, ScenarioResult

__all__ = ["render_index"]

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:80em;color:#1b1f24;
padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:2em}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.35em .6em;
border-bottom:1px solid #d0d7de;vertical-align:top}th{background:#f6f8fa}
.detected,.clean,.passed{color:#116329;font-weight:600}
.missed,.findings,.error,.failed{color:#a40e26;font-weight:600}
.unavailable{color:#9a6700;font-weight:600}small,.dim{color:#57606a}
details{margin:.4em 0 .8em}summary{cursor:pointer;font-weight:600}
code{font:12px ui-monospace,monospace;background:#f6f8fa;padding:0 .2em;word-break:break-all}
ul{margin:.3em 0}
"""


def _e(value: object) -> str:
    return html.escape(str(value))


def _after(first: Detection | None) -> str:
    return "-" if first is None else first.after()


def _check(result: ScenarioResult) -> str:
    first = result.first
    if first is None:
        return _e(result.reason or "-")
    # Guard findings are named by their rule: say it once.
    rule = f" <code>{_e(first.rule_id)}</code>" if first.rule_id not in (None, first.check) else ""
    return _e(first.check) + rule


def _named(result: ScenarioResult) -> str:
    if result.insider is None:
        return "-"
    text = _e(result.insider.describe())
    first = result.first
    if first is not None and first.evidence is not None:
        mark = "matches" if result.attributed else "does NOT match"
        text += f"<br><small>{_e(first.evidence.via)} {_e(first.evidence.describe())}: "
        text += f"{mark}</small>"
    return text


def _run_cell(result: ScenarioResult, link: str | None) -> str:
    # "drill-<token>-t6-term" -> "t6-term"; the full id is the link's title.
    parts = result.run.split("-", 2)
    short = parts[2] if len(parts) == 3 and parts[0] == "drill" else result.run
    if link is None:
        return f'<span title="{_e(result.run)}">{_e(short)}</span>'
    return f'<a href="{_e(link)}" title="{_e(result.run)}">{_e(short)}</a>'


def _row(result: ScenarioResult, link: str | None) -> str:
    cells = (
        _e(result.technique),
        f'<a href="#{_e(result.scenario)}">{_e(result.title)}</a>',
        f'<span class="{_e(result.status)}">{_e(result.status)}</span>',
        _check(result),
        _e(_after(result.first)),
        _named(result),
        _run_cell(result, link),
    )
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _detection(d: Detection) -> str:
    counts = "" if d.counts else ' <small class="dim">(listed, does not count)</small>'
    evidence = f"; points at {_e(d.evidence.describe())}" if d.evidence is not None else ""
    return (
        f"<li><b>{_e(d.check)}</b>"
        + (f" <code>{_e(d.rule_id)}</code>" if d.rule_id not in (None, d.check) else "")
        + f"{counts}: {_e(d.message)} <small>({_e(_after(d))}{evidence})</small></li>"
    )


def _section(result: ScenarioResult, link: str | None) -> str:
    parts = [
        f'<details id="{_e(result.scenario)}"'
        + (" open" if not result.passed else "")
        + "><summary>"
        + (f"{_e(result.technique)} " if result.technique != "-" else "")
        + f"{_e(result.scenario)}: "
        f'<span class="{_e(result.status)}">{_e(result.status)}</span></summary>',
        "<ul>",
    ]
    if result.reason:
        parts.append(f"<li>{_e(result.reason)}</li>")
    if result.checks:
        parts.append(
            "<li>counts as caught by: " + ", ".join(f"<code>{_e(c)}</code>" for c in result.checks)
        )
    if result.effect is not None:
        observed = {True: "yes", False: "no", None: "unknown"}[result.effect.observed]
        parts.append(
            f"<li>what it changed (compared with the control run): {_e(observed)}: "
            f"{_e(result.effect.description)}</li>"
        )
    if link is not None:
        parts.append(f'<li>forensic report of the run: <a href="{_e(link)}">{_e(link)}</a></li>')
    parts.append("</ul>")
    if result.detections:
        parts.append("<p>Observations about this attack, first first:</p><ul>")
        parts.extend(_detection(d) for d in result.detections)
        parts.append("</ul>")
    parts.append("</details>")
    return "".join(parts)


def render_index(
    result: DrillResult, links: Mapping[str, str], problems: Mapping[str, str] | None = None
) -> str:
    """A self-contained HTML page of ``result``.

    Args:
        result: The drill's result.
        links: Run id -> the file name of that run's forensic report (beside the index).
        problems: Run id -> why its report could not be written.
    """
    problems = problems or {}
    rows = [_row(result.control, links.get(result.control.run))]
    rows += [_row(s, links.get(s.run)) for s in result.scenarios]
    verdict = "passed" if result.passed else "failed"
    summary = (
        f"{sum(1 for s in result.scenarios if s.detected)} of {len(result.scenarios)} attacks "
        f"detected; control run {'clean' if result.control.passed else 'NOT clean'}"
    )
    components = ", ".join(
        f"{_e(name)}: {'yes' if on else 'no'}" for name, on in sorted(result.components.items())
    )
    notes = "".join(f"<li>{_e(n)}</li>" for n in result.notes)
    notes += "".join(
        f"<li>the report of run {_e(run)} could not be written: {_e(why)}</li>"
        for run, why in sorted(problems.items())
    )
    sections = "".join(_section(s, links.get(s.run)) for s in (result.control, *result.scenarios))
    return (
        "<!doctype html><html lang=en><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>trainwarden drill</title>"
        f"<style>{_STYLE}</style>"
        f'<h1>trainwarden drill: <span class="{verdict}">{verdict}</span></h1>'
        f"<p>{_e(summary)}.<br><small>{result.ranks} ranks; insider "
        f"{_e(result.insider.describe())} ({_e(result.insider_mode)}); "
        f"{result.seconds:.1f} s; components: {components}</small></p>"
        "<table><tr><th>technique</th><th>scenario</th><th>result</th><th>caught by</th>"
        "<th>after</th><th>named by the ledger</th><th>run (report)</th></tr>"
        + "".join(rows)
        + "</table><h2>Each attack</h2>"
        + sections
        + f"<h2>Notes</h2><ul>{notes}</ul></html>\n"
    )
