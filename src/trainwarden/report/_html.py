"""The self-contained HTML forensic report of a run: one file, no network, readable without JS.

Everything in a run directory may have been written by the person under suspicion, so every
string from it is escaped (``html.escape``) where it enters the page, data for the script is
embedded as JSON with ``<``, ``>`` and ``&`` escaped, the script writes with ``textContent``
only, and a Content-Security-Policy allows nothing but the page's own style and script (by
hash) and ``data:`` images: even a string that slipped through could not run or fetch.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

from trainwarden import __version__
from trainwarden._fs import atomic_write, check_output_path
from trainwarden.report._html_svg import (
    Marker,
    Series,
    heatmap_svg,
    legend_html,
    line_chart,
    stacked_chart,
)
from trainwarden.report._run import KeySource, Progress, read_run
from trainwarden.report._run_findings import TECHNIQUES
from trainwarden.report._run_ledger import rank_list, short_digest
from trainwarden.report._run_model import KillRow, RunFinding, RunReport, TimelineEvent
from trainwarden.report._run_telemetry import RankTelemetry, Telemetry

__all__ = ["render_report_html", "render_run_html", "write_run_report"]

_MAX_FLAGGED = 4
_VERDICT_TEXT = {
    "compromised": "Compromised",
    "suspicious": "Suspicious",
    "not-verified": "Not verified",
    "clean": "Clean",
}


def render_run_html(
    run_dir: str | os.PathLike[str],
    *,
    against: str | os.PathLike[str] | None = None,
    keys: Iterable[KeySource] = (),
    seal_keys: Iterable[KeySource] = (),
    check_checkpoints: bool = True,
    bins: int = 200,
    workers: int = 1,
    progress: Progress | None = None,
) -> str:
    """The HTML forensic report of the run in ``run_dir`` (see :func:`read_run` for the options).

    Raises:
        InputError: ``run_dir`` or ``against`` is not a directory, or a key cannot be read.
    """
    report = read_run(
        run_dir,
        keys=keys,
        seal_keys=seal_keys,
        against=against,
        check_checkpoints=check_checkpoints,
        bins=bins,
        workers=workers,
        progress=progress,
    )
    return render_report_html(report)


def write_run_report(
    run_dir: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    against: str | os.PathLike[str] | None = None,
    keys: Iterable[KeySource] = (),
    seal_keys: Iterable[KeySource] = (),
    check_checkpoints: bool = True,
    bins: int = 200,
    workers: int = 1,
    progress: Progress | None = None,
) -> RunReport:
    """Write the HTML report of ``run_dir`` to ``output`` (atomically) and return what it shows.

    The output may not overwrite anything the report reads (``run.json``, the ledger,
    telemetry, stack dumps, the provenance statement, the run's checkpoints, the clean run)
    or lie inside one of those directories; ``RUN_DIR/report.html`` is fine.

    Raises:
        InputError: Bad input, an output over the evidence, or the file cannot be written.
    """
    keys = list(keys)
    seal_keys = list(seal_keys)
    root = Path(run_dir)
    # Checked before reading anything, and again with the checkpoint paths the ledger names
    # once they are known: a report written over the evidence would destroy it.
    check_output_path(output, _evidence_paths(root, against))
    report = read_run(
        run_dir,
        keys=keys,
        seal_keys=seal_keys,
        against=against,
        check_checkpoints=check_checkpoints,
        bins=bins,
        workers=workers,
        progress=progress,
    )
    check_output_path(
        output,
        [
            *_evidence_paths(root, against),
            report.ledger.path,
            *(c.path for c in report.checkpoints),
        ],
    )
    atomic_write(output, render_report_html(report), what="report")
    return report


def _evidence_paths(root: Path, against: str | os.PathLike[str] | None) -> list[Path]:
    paths = [
        root / "run.json",
        root / "ledger",
        root / "telemetry",
        root / "stacks",
        root / "provenance.intoto.json",
        root / "checkpoints",
    ]
    if against is not None:
        paths.append(Path(against))
    return paths


# -- page --------------------------------------------------------------------------------------


def _asset(name: str) -> str:
    return (
        resources.files("trainwarden.report").joinpath("assets", name).read_text(encoding="utf-8")
    )


def _csp_hash(text: str) -> str:
    return (
        "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"
    )


def _json_for_script(value: Any) -> str:
    # Inside <script type="application/json"> only "</script" could end the element; with
    # <, > and & escaped (and every non-ASCII character, U+2028 included) nothing can.
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_report_html(report: RunReport) -> str:
    """Render a :class:`RunReport` as one self-contained HTML page."""
    css = _asset("report.css")
    js = _asset("report.js")
    csp = (
        "default-src 'none'; img-src data:; "
        f"style-src {_csp_hash(css)}; script-src {_csp_hash(js)}; "
        "base-uri 'none'; form-action 'none'"
    )
    flagged = _flagged_ranks(report)
    telemetry_html, data = _telemetry_section(report, flagged)
    sections = [
        _findings_section(report),
        _timeline_section(report),
        telemetry_html,
        _kills_section(report),
        _checkpoints_section(report),
        _egress_section(report),
        _preflight_section(report),
        _drill_section(report),
        _provenance_section(report),
        _comparison_section(report),
        _ledger_section(report),
        _reproduce_section(report),
        _notes_section(report),
    ]
    title = (
        f"trainwarden report: {report.run_id or report.run_dir} ({_VERDICT_TEXT[report.verdict]})"
    )
    return "".join(
        [
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{escape(csp)}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            '<meta name="referrer" content="no-referrer">',
            f'<meta name="generator" content="trainwarden {escape(__version__)}">',
            f"<title>{escape(title)}</title>",
            f"<style>{css}</style></head><body>",
            _header(report),
            "<main>",
            _summary(report),
            _nav(report),
            *sections,
            "</main>",
            f'<footer class="end wrap">Made by trainwarden {escape(__version__)} on '
            f"{escape(report.generated)} from <code>{escape(report.run_dir)}</code>. Everything "
            "in this page was read from the run directory and the ledger, which the people "
            "under suspicion could write: what the report could verify is marked verified, "
            "the rest is marked as not verified. This page makes no network request.</footer>",
            f'<script type="application/json" id="tw-data">{_json_for_script(data)}</script>',
            f"<script>{js}</script>",
            "</body></html>\n",
        ]
    )


def _header(r: RunReport) -> str:
    info = r.info
    meta = [f"<span>run directory <code>{escape(r.run_dir)}</code></span>"]
    if info is not None and info.command:
        meta.append(f"<span>command <code>{escape(_shell(info.command))}</code></span>")
    if info is not None and info.started:
        meta.append(f"<span>started {escape(_when(info.started))}</span>")
    meta.append(f"<span>report made {escape(_when(r.generated))}</span>")
    return (
        '<header class="top"><div class="wrap">'
        '<div class="brand">trainwarden · forensic report</div>'
        f"<h1>Run {escape(r.run_id or '(unknown)')}</h1>"
        f'<div class="meta">{"".join(meta)}</div></div></header>'
    )


def _summary(r: RunReport) -> str:
    stats = _stats(r)
    tq = []
    for tech, name in TECHNIQUES.items():
        hits = [f for f in r.findings if f.technique == tech]
        if any(f.established for f in hits):
            css, state = "est", f"established ({len(hits)})"
        elif hits:
            css, state = "sus", f"suspected ({len(hits)})"
        else:
            css, state = "", "no finding"
        tq.append(
            f'<div class="tq {css}"><div class="id">{tech}</div>'
            f'<div class="name">{escape(name)}</div>'
            f'<div class="st">{state}</div></div>'
        )
    happened = []
    for i, f in enumerate(r.findings[:7]):
        chip = "bad" if f.established else "warn"
        where = []
        if f.rank is not None:
            where.append(f"rank {f.rank}")
        if f.step is not None:
            where.append(f"step {f.step:,}")
        named = f" — <strong>{escape(f.named)}</strong>" if f.named else ""
        happened.append(
            f'<li><span class="chip {chip} t">{escape(f.technique or "–")}</span>'
            f'<span><a href="#f-{i}">{escape(f.title)}</a>'
            f"{' · ' + escape(', '.join(where)) if where else ''}{named}</span></li>"
        )
    if len(r.findings) > 7:
        happened.append(
            f'<li><span class="chip">+{len(r.findings) - 7}</span>'
            '<span><a href="#findings">more findings below</a></span></li>'
        )
    unverified = ""
    if r.unverified:
        items = "".join(f"<li>{escape(u)}</li>" for u in r.unverified)
        unverified = (
            '<div class="unverified"><strong>Not verified:</strong>'
            f'<ul class="notes">{items}</ul></div>'
        )
    return (
        f'<section class="summary wrap v-{r.verdict}" aria-label="summary">'
        f'<span class="verdict">{_VERDICT_TEXT[r.verdict]}</span>'
        f'<p class="headline">{escape(r.headline)}</p>'
        f'<div class="stats">{stats}</div>'
        f'<div class="techniques">{"".join(tq)}</div>'
        + (f'<ul class="happened">{"".join(happened)}</ul>' if happened else "")
        + unverified
        + "</section>"
    )


def _stats(r: RunReport) -> str:
    def stat(k: str, v: str, css: str = "") -> str:
        return (
            f'<div class="stat"><div class="k">{escape(k)}</div>'
            f'<div class="v {css}">{escape(v)}</div></div>'
        )

    info = r.info
    t = r.telemetry
    ranks = info.world_size if info is not None and info.world_size is not None else len(t.ranks)
    last_steps = [x.last_step for x in t.ranks if x.last_step is not None]
    out = [stat("Ranks", str(ranks) if ranks else "unknown")]
    out.append(stat("Steps", f"{max(last_steps):,}" if last_steps else "unknown"))
    duration = _duration(info.started if info else None, info.ended if info else None)
    if duration is None and r.timeline:
        duration = _duration(r.timeline[0].time, r.timeline[-1].time)
    out.append(stat("Duration", duration or "unknown"))
    exit_text, exit_css = "unknown", ""
    if info is not None and info.ended is not None:
        if info.exit_signal:
            exit_text, exit_css = f"signal {info.exit_signal}", "bad"
        elif info.exit_status is not None:
            exit_text = f"status {info.exit_status}"
            exit_css = "ok" if info.exit_status == 0 else "bad"
    elif info is not None and info.started and not info.ended:
        exit_text, exit_css = "still running or lost", "warn"
    out.append(stat("Exit", exit_text, exit_css))
    lg = r.ledger
    if lg.error:
        out.append(stat("Ledger", "unreadable", "bad"))
    elif lg.first_break is not None:
        n = sum(1 for i in lg.issues if not i.kind.startswith("file_"))
        out.append(stat("Ledger", f"tampered ({n} issue{'s' if n != 1 else ''})", "bad"))
    elif not lg.signers_checked:
        out.append(stat("Ledger", "signers not checked", "warn"))
    else:
        sealed = " · sealed" if any(s.trusted for s in lg.seals) else " · no trusted seal"
        out.append(stat("Ledger", "intact" + sealed, "ok" if sealed == " · sealed" else "warn"))
    counts = Counter(c.status for c in r.checkpoints)
    if r.checkpoints:
        bad = counts["changed"] + counts["missing"]
        text = f"{len(r.checkpoints)} signed"
        if bad:
            text += f" · {bad} tampered"
        elif counts["ok"] == len(r.checkpoints):
            text += " · all intact"
        out.append(
            stat(
                "Checkpoints",
                text,
                "bad" if bad else ("ok" if counts["ok"] == len(r.checkpoints) else "warn"),
            )
        )
    else:
        out.append(stat("Checkpoints", "none recorded"))
    changed = sum(1 for _, s, _ in r.telemetry_checks if s in ("changed", "missing"))
    unatt = sum(1 for _, s, _ in r.telemetry_checks if s in ("unattested", "unchecked"))
    if t.ranks:
        text = f"{t.records:,} records"
        css = "ok"
        if changed:
            text += f" · {changed} edited"
            css = "bad"
        elif unatt:
            text += f" · {unatt} unattested"
            css = "warn"
        out.append(stat("Telemetry", text, css))
    else:
        out.append(stat("Telemetry", "none", "warn"))
    return "".join(out)


def _nav(r: RunReport) -> str:
    items: list[tuple[str, str, int | None, bool]] = [
        ("findings", "Findings", len(r.findings), bool(r.established)),
        ("timeline", "Timeline", len(r.timeline), False),
        ("telemetry", "Telemetry", len(r.telemetry.ranks), False),
        (
            "kills",
            "Kills",
            sum(1 for k in r.kills if not k.machinery),
            any(not k.machinery for k in r.kills),
        ),
        (
            "checkpoints",
            "Checkpoints",
            len(r.checkpoints),
            any(c.status in ("changed", "missing") for c in r.checkpoints),
        ),
        ("egress", "Egress", len(r.egress), any(e.scope == "external" for e in r.egress)),
        ("preflight", "Pre-flight", len(r.preflight), False),
    ]
    if r.drill:
        items.append(("drill", "Drill", len(r.drill), False))
    items.append(("provenance", "Provenance", None, r.provenance.verified is False))
    if r.comparison is not None:
        items.append(("comparison", "Against clean run", len(r.comparison.rows), False))
    items.append(("ledger", "Ledger", None, r.ledger.first_break is not None))
    items.append(("reproduce", "Reproduce", None, False))
    if r.notes:
        items.append(("notes", "Could not read", len(r.notes), False))
    links = "".join(
        f'<a href="#{key}" class="{"bad" if bad else ""}">{escape(label)}'
        + (f' <span class="n">{n}</span>' if n is not None else "")
        + "</a>"
        for key, label, n, bad in items
    )
    return f'<nav class="toc" aria-label="sections"><div class="wrap">{links}</div></nav>'


def _section(key: str, title: str, sub: str, body: str) -> str:
    return (
        f'<section class="block wrap" id="{key}"><h2>{escape(title)}</h2>'
        f'<div class="sub">{sub}</div>{body}</section>'
    )


# -- findings ----------------------------------------------------------------------------------


def _findings_section(r: RunReport) -> str:
    if not r.findings:
        body = (
            '<div class="none">No finding. '
            + ("Every check that ran passed." if r.verdict == "clean" else escape(r.headline))
            + "</div>"
        )
        return _section(
            "findings", "Findings", "What the evidence shows was done to the run.", body
        )
    cards = "".join(_card(i, f) for i, f in enumerate(r.findings))
    sub = (
        "One card per finding, established ones first. <strong>Established</strong>: proved by "
        "evidence (a digest or signature that no longer matches, a signal whose sender the OS "
        "named). <strong>Suspected</strong>: the evidence points to it but does not prove it."
    )
    return _section("findings", "Findings", sub, f'<div class="cards">{cards}</div>')


def _card(index: int, f: RunFinding) -> str:
    sure = "est" if f.established else "sus"
    rows = []
    if f.evidence:
        rows.append(("Evidence", f"<code>{escape(f.evidence)}</code>", ""))
    if f.rank is not None:
        rows.append(("Rank", escape(str(f.rank)), ""))
    if f.step is not None:
        rows.append(("Step", f"{f.step:,}", ""))
    if f.time:
        rows.append(("Time", escape(_when(f.time)), ""))
    if f.named:
        rows.append(("Names", escape(f.named), "named"))
    if f.reported_by:
        rows.append(("Recorded by", escape(f.reported_by), ""))
    rows.append(("Check", f"<code>{escape(f.check)}</code>", ""))
    dl = "".join(
        f"<dt>{k}</dt><dd{' class=' + chr(34) + css + chr(34) if css else ''}>{v}</dd>"
        for k, v, css in rows
    )
    foot = []
    if f.anchor:
        foot.append(f'<a href="#{escape(f.anchor)}">show in the timeline</a>')
    if f.reproduce:
        foot.append(
            f'<span class="muted">Re-check:</span><code class="cmd">{escape(f.reproduce)}</code>'
        )
    technique = (
        f'<span class="chip t {"bad" if f.established else "warn"}">{escape(f.technique)}</span>'
        f'<span class="muted small">{escape(TECHNIQUES.get(f.technique, ""))}</span>'
        if f.technique
        else '<span class="chip">no technique</span>'
    )
    return (
        f'<article class="card {sure}" id="f-{index}"><div class="head">{technique}'
        f'<span class="chip {"bad" if f.established else "warn"}">'
        f"{'established' if f.established else 'suspected'}</span>"
        f'<span class="chip">{escape(f.severity)}</span></div>'
        f'<h3>{escape(f.title)}</h3><p class="msg">{escape(f.message)}</p><dl>{dl}</dl>'
        + (f'<div class="foot">{"".join(foot)}</div>' if foot else "")
        + "</article>"
    )


# -- timeline ----------------------------------------------------------------------------------


def _timeline_section(r: RunReport) -> str:
    if not r.timeline:
        return _section(
            "timeline",
            "Timeline",
            "The run's ledger entries.",
            '<div class="none">No ledger entry for this run could be read.</div>',
        )
    rows = []
    day = None
    for ev in r.timeline:
        rows.append(_timeline_row(ev, show_day=ev.time[:10] != day))
        day = ev.time[:10]
    omitted = ""
    if r.timeline_omitted:
        total = sum(r.timeline_omitted.values())
        which = ", ".join(f"{escape(k)} ×{v}" for k, v in r.timeline_omitted.items())
        omitted = (
            f'<p class="omitted">{total} routine entries are not listed ({which}); '
            "<code>trainwarden ledger show</code> lists every entry.</p>"
        )
    sub = (
        "Every ledger entry about the run in time order (the writers' clocks), with who the "
        "entry says wrote it and whether its signature and chain still verify. An entry marked "
        "<strong>altered</strong> or <strong>forged</strong> was changed after signing or "
        "signed by an untrusted key: what it says now cannot be trusted."
    )
    table = (
        '<div class="filters noprint" id="timeline-filters" aria-label="filters"></div>'
        '<div class="tablewrap"><table class="timeline" id="timeline-table"><thead><tr>'
        "<th>Time (UTC)</th><th>Category</th><th>Rank</th><th>Step</th><th>What</th>"
        "<th>Who (as the entry says)</th><th>Signature</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></div>"
        + omitted
    )
    return _section("timeline", "Timeline", sub, table)


def _timeline_row(ev: TimelineEvent, *, show_day: bool) -> str:
    if ev.integrity == "verified":
        integ = '<span class="integ ok">verified</span>'
    elif ev.integrity == "unchecked":
        integ = '<span class="integ na" title="signers were not checked">unchecked</span>'
    else:
        integ = f'<span class="integ bad">{escape(ev.integrity)}</span>'
    chip = {"bad": "bad", "warn": "warn"}.get(ev.level, "")
    day = f'<span class="d">{escape(ev.time[:10])}</span>' if show_day else ""
    ranks = ev.ranks or (() if ev.rank is None else (ev.rank,))
    if len(ranks) > 1:
        shown = rank_list(ranks).removeprefix("ranks ")
        label = shown if len(shown) <= 12 else f"{len(ranks)} ranks"
        rank_cell = f'<span title="{escape(rank_list(ranks))}">{escape(label)}</span>'
    else:
        rank_cell = "" if not ranks else str(ranks[0])
    # Entries merged into this row keep their own anchors, so links to them still land here.
    aliases = "".join(f'<a id="{escape(a)}" class="alias"></a>' for a in ev.aliases[:256])
    return (
        f'<tr id="{escape(ev.anchor)}" class="lv-{escape(ev.level)}" '
        f'data-cat="{escape(ev.category)}" '
        f'data-ranks="{" ".join(str(r) for r in ranks)}">'
        f'<td class="time" title="{escape(ev.time)}">{aliases}{day}{escape(ev.time[11:23])}</td>'
        f'<td><span class="chip {chip}">{escape(ev.category)}</span></td>'
        f'<td class="num">{rank_cell}</td>'
        f'<td class="num">{"" if ev.step is None else f"{ev.step:,}"}</td>'
        f'<td><code class="ev">{escape(ev.event)}</code> {escape(ev.summary)}</td>'
        f'<td class="who"><span class="id">{escape(ev.identity)}</span><br>{escape(ev.actor)}</td>'
        f'<td class="nowrap">{integ}<br><span class="muted small">#{ev.seq}</span></td></tr>'
    )


# -- telemetry ---------------------------------------------------------------------------------


def _flagged_ranks(r: RunReport) -> list[int]:
    """Ranks to draw in colour: those a finding about the training itself singles out."""
    out: list[int] = []
    for f in r.findings:
        # Only findings about what a rank computed or how fast (T2-T4), and only when they
        # single out a few ranks: a change seen by every rank flags none of them.
        if f.technique not in ("T2", "T3", "T4") or not 0 < len(f.ranks) <= 2:
            continue
        for rank in f.ranks:
            if rank not in out:
                out.append(rank)
    known = {t.rank for t in r.telemetry.ranks}
    return [x for x in out if x in known][:_MAX_FLAGGED]


def _round(v: float | None) -> float | None:
    if v is None or not math.isfinite(v):
        return None
    return float(f"{v:.4g}")


def _cross(
    ranks: Sequence[RankTelemetry], metric: str, stat: str, nbins: int
) -> tuple[list[float | None], list[float | None], list[float | None]]:
    """Per bin: median, min and max over ranks of each rank's ``stat`` of ``metric``."""
    med: list[float | None] = []
    lo: list[float | None] = []
    hi: list[float | None] = []
    columns = [getattr(b, stat) for r in ranks if (b := r.metric(metric)) is not None]
    for i in range(nbins):
        vals = sorted(v for c in columns if i < len(c) and (v := c[i]) is not None)
        if not vals:
            med.append(None)
            lo.append(None)
            hi.append(None)
            continue
        med.append(statistics.median(vals))
        lo.append(vals[0])
        hi.append(vals[-1])
    return med, lo, hi


def _telemetry_section(r: RunReport, flagged: list[int]) -> tuple[str, dict[str, Any]]:
    t = r.telemetry
    data: dict[str, Any] = {"bins": t.bins, "width": t.width, "ranks": [x.rank for x in t.ranks]}
    data["flagged"] = flagged
    readable = [x for x in t.ranks if x.error is None and x.records]
    if not readable:
        body = (
            '<div class="none">No telemetry could be read for this run.</div>' + _telemetry_table(r)
        )
        return _section(
            "telemetry", "Telemetry", "Per-step measurements of every rank.", body
        ), data
    markers = _markers(r, t)
    parts = []
    # Heatmaps first: a sleeping or perturbing rank is one red row.
    work_rows, work_vals = _relative_rows(readable, t, "work", "high")
    heat_work = heatmap_svg(
        work_rows,
        labels=[f"rank {x.rank}" for x in readable],
        colour=_ratio_colour,
        bins=t.bins,
        width=t.width,
        title="Slowest step of own work per rank, relative to the median rank",
        css="heat-work",
        flagged=[i for i, x in enumerate(readable) if x.rank in flagged],
        legend=[
            ("≤1.2x", _ratio_colour(1.0)),
            ("2x", _ratio_colour(2.0)),
            ("4x", _ratio_colour(4.0)),
            ("≥8x slower", _ratio_colour(8.0)),
            ("no data", _ratio_colour(None)),
        ],
    ).replace('<svg class="plot heatmap', '<svg data-key="work" class="plot heatmap', 1)
    res_rows = [list(b.high) if (b := x.metric("residual")) else [None] * t.bins for x in readable]
    heat_res = heatmap_svg(
        res_rows,
        labels=[f"rank {x.rank}" for x in readable],
        colour=_residual_colour,
        bins=t.bins,
        width=t.width,
        title="Largest relative residual of the sampled update check per rank",
        css="heat-res",
        flagged=[i for i, x in enumerate(readable) if x.rank in flagged],
        legend=[
            ("≤1e-5", _residual_colour(1e-7)),
            ("1e-3", _residual_colour(1e-3)),
            ("1e-1", _residual_colour(0.1)),
            ("≥1", _residual_colour(1.0)),
            ("not sampled", _residual_colour(None)),
        ],
    ).replace('<svg class="plot heatmap', '<svg data-key="residual" class="plot heatmap', 1)
    data["heat"] = {
        "work": {
            "ranks": [x.rank for x in readable],
            "values": work_vals,
            "unit": "x the median rank",
        },
        "residual": {
            "ranks": [x.rank for x in readable],
            "values": [[_round(v) for v in row] for row in res_rows],
            "unit": "relative residual",
        },
    }
    parts.append(
        _figure(
            "Own work per rank (forward + backward + optimizer, waits excluded)",
            "Each row a rank, each column a step bin: the slowest step of the rank's own work "
            "relative to the median rank's. A rank that sleeps is a red row; ranks that only "
            "wait for it stay neutral.",
            heat_work,
        )
    )
    parts.append(
        _figure(
            "Sampled update check per rank",
            "Largest relative residual between the optimizer's update and an independent "
            "reference on the sampled coordinates. Float round-off is about 1e-6; a perturbed "
            "or flipped update is red.",
            heat_res,
        )
    )
    # Cluster plots: median rank, range over ranks, flagged ranks on top.
    plots = [
        (
            "step_time",
            "median",
            "Step time",
            "seconds",
            False,
            "wall time per step: median per bin, and the slowest step",
        ),
        (
            "work",
            "high",
            "Own work, slowest step per bin",
            "seconds",
            False,
            "a sleeping rank's spikes show here",
        ),
        ("loss", "median", "Loss", "loss", False, "median per bin"),
        (
            "grad_norm",
            "median",
            "Gradient norm",
            "L2 norm",
            True,
            "median per bin, before clipping",
        ),
        (
            "residual",
            "high",
            "Update residual (sampled check)",
            "relative",
            True,
            "largest per bin",
        ),
        ("lr", "median", "Learning rate (param group 0)", "lr", True, "median per bin"),
    ]
    charts = []
    for metric, stat, title, unit, log, note in plots:
        med, lo, hi = _cross(readable, metric, stat, t.bins)
        if all(v is None for v in med):
            continue
        series = [
            Series(f"range over {len(readable)} ranks", lo, "s-range", upper=hi),
            Series("median rank", med, "s-median"),
        ]
        if metric == "step_time":
            # Every rank of a synchronous job has the same step time: what matters is how
            # slow the slowest steps were, not which rank drew them.
            slowest, _, _ = _cross(readable, metric, "high", t.bins)
            series = [
                Series("median step", med, "s-median"),
                Series("slowest step", slowest, "s-slow"),
            ]
        else:
            for i, rank in enumerate(flagged):
                rt = t.rank(rank)
                bins = rt.metric(metric) if rt is not None else None
                if bins is not None:
                    series.append(Series(f"rank {rank}", getattr(bins, stat), f"s-flag{i + 1}"))
        svg = line_chart(
            series,
            bins=t.bins,
            width=t.width,
            y_label=unit,
            title=title,
            log=log,
            markers=markers,
        )
        charts.append(_figure(title, escape(note), legend_html(series) + svg))
    parts.extend(charts)
    # Step time by phase: the median rank and each flagged rank, in Python (JS off) ...
    phase_names = (
        ("fwd", "forward"),
        ("bwd", "backward"),
        ("opt", "optimizer"),
        ("wait", "wait (collectives)"),
    )
    med_layers = [
        Series(label, _cross(readable, m, "mean", t.bins)[0], f"p-{m}") for m, label in phase_names
    ]
    phase_legend = legend_html(med_layers)
    pair = [
        _figure(
            "Median rank: seconds per step by phase",
            "mean per bin",
            phase_legend
            + stacked_chart(
                med_layers,
                bins=t.bins,
                width=t.width,
                title="median rank by phase",
                markers=markers,
            ),
        )
    ]
    for rank in flagged[: 3 if len(flagged) != 2 else 1] if flagged else ():
        rt = t.rank(rank)
        if rt is None:
            continue
        layers = [
            Series(label, b.mean if (b := rt.metric(m)) else [None] * t.bins, f"p-{m}")
            for m, label in phase_names
        ]
        pair.append(
            _figure(
                f"Rank {rank} (flagged): seconds per step by phase",
                "mean per bin",
                phase_legend
                + stacked_chart(
                    layers,
                    bins=t.bins,
                    width=t.width,
                    title=f"rank {rank} by phase",
                    markers=markers,
                ),
            )
        )
    parts.append(f'<div class="pair">{"".join(pair)}</div>')
    # ... and any rank on demand (JS): the picker draws from the embedded bins.
    data["phases"] = {
        str(x.rank): {
            m: [_round(v) for v in b.mean] if (b := x.metric(m)) else None for m, _ in phase_names
        }
        for x in readable
    }
    parts.append(
        '<div class="figure noprint"><div class="picker" id="phase-picker" hidden></div>'
        '<div id="phase-slot"></div></div>'
    )
    parts.append(_telemetry_table(r))
    sub = (
        f"{len(t.ranks)} rank file(s), {t.records:,} step records, {t.bins} bins of {t.width:,} "
        "step(s) each (minimum, median, mean and maximum per bin, read as a stream). Vertical "
        "marks: findings, labelled with their technique. Flagged ranks are drawn in colour "
        "over the range of all ranks."
    )
    return _section(
        "telemetry", "Telemetry", sub, f'<div class="plots">{"".join(parts)}</div>'
    ), data


def _relative_rows(
    ranks: Sequence[RankTelemetry], t: Telemetry, metric: str, stat: str
) -> tuple[list[list[float | None]], list[list[float | None]]]:
    med, _, _ = _cross(ranks, metric, stat, t.bins)
    rows: list[list[float | None]] = []
    for x in ranks:
        b = x.metric(metric)
        values = getattr(b, stat) if b is not None else [None] * t.bins
        row: list[float | None] = []
        for i in range(t.bins):
            v, m = values[i], med[i]
            row.append(v / m if v is not None and m is not None and m != 0 else None)
        rows.append(row)
    return rows, [[_round(v) for v in row] for row in rows]


def _ratio_colour(v: float | None) -> tuple[int, int, int]:
    if v is None:
        return (242, 244, 247)
    if v <= 1.2:
        return (226, 232, 240) if v >= 0.8 else (214, 222, 235)
    # log2 scale from 1.2x (pale) to 8x (deep red)
    f = min(1.0, math.log2(v / 1.2) / math.log2(8 / 1.2))
    return _mix((254, 228, 226), (145, 32, 24), f)


def _residual_colour(v: float | None) -> tuple[int, int, int]:
    if v is None:
        return (249, 250, 251)
    if v <= 1e-5:
        return (226, 232, 240)
    f = min(1.0, max(0.0, (math.log10(v) + 5) / 5))
    return _mix((254, 240, 199), (145, 32, 24), f)


def _mix(a: tuple[int, int, int], b: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    return (
        round(a[0] + (b[0] - a[0]) * f),
        round(a[1] + (b[1] - a[1]) * f),
        round(a[2] + (b[2] - a[2]) * f),
    )


def _markers(r: RunReport, t: Telemetry) -> list[Marker]:
    """Vertical marks for findings that happened at a step of the training (T2-T6)."""
    out = []
    seen = set()
    for f in r.findings:
        # T7 and T8 findings are about files and records, checked after the fact: their
        # "step" is where a checkpoint belonged, not when anything happened.
        if f.step is None or f.technique not in ("T2", "T3", "T4", "T5", "T6"):
            continue
        key = (f.technique, f.step // max(1, t.width))
        if key in seen:
            continue
        seen.add(key)
        out.append(
            Marker(
                step=f.step,
                label=f.technique,
                css="m-bad" if f.established else "m-warn",
                title=f"{f.technique} {f.title} (step {f.step})",
            )
        )
    return out[:24]


def _telemetry_table(r: RunReport) -> str:
    if not r.telemetry.ranks and not r.telemetry_checks:
        return ""
    checks = {rank: (status, detail) for rank, status, detail in r.telemetry_checks}
    rows = []
    ranks = sorted({x.rank for x in r.telemetry.ranks} | set(checks))
    for rank in ranks:
        x = r.telemetry.rank(rank)
        status, detail = checks.get(rank, ("unattested", ""))
        css = {
            "changed": "st-bad",
            "missing": "st-bad",
            "unattested": "st-warn",
            "unchecked": "st-warn",
        }.get(status, "")
        chip = {"ok": "ok", "changed": "bad", "missing": "bad"}.get(status, "warn")
        steps = (
            f"{x.first_step:,}–{x.last_step:,}"
            if x is not None and x.first_step is not None and x.last_step is not None
            else ""
        )
        rows.append(
            f'<tr class="{css}"><td class="num">{rank}</td>'
            f'<td class="num">{"" if x is None else f"{x.records:,}"}</td>'
            f'<td class="num">{"" if x is None else (f"{x.bad:,}" if x.bad else "0")}</td>'
            f'<td class="num">{escape(steps)}</td>'
            f'<td class="num">{"" if x is None else f"{x.sampled_steps:,}"}</td>'
            f'<td>{_chip(status, chip)} <span class="small">{escape(detail)}</span></td>'
            f"<td><code>{escape(short_digest(x.sha256) if x is not None else '')}</code></td></tr>"
        )
    table = (
        '<div class="tablewrap"><table><thead><tr><th>Rank</th><th>Records</th><th>Bad lines</th>'
        "<th>Steps</th><th>Sampled</th><th>Against the guard's record</th><th>SHA-256 now</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )
    if len(ranks) > 16:
        return f"<details><summary>Telemetry files of {len(ranks)} ranks</summary>{table}</details>"
    return f'<h3 class="small muted">Telemetry files</h3>{table}'


def _figure(title: str, note: str, svg: str) -> str:
    return (
        f'<div class="figure"><div class="cap"><h3>{escape(title)}</h3>'
        f'<span class="note">{note}</span></div>{svg}</div>'
    )


# -- tables ------------------------------------------------------------------------------------


def _chip(text: str, kind: str = "") -> str:
    return f'<span class="chip {kind}">{escape(text)}</span>'


def _code(text: str) -> str:
    return f"<code>{escape(text)}</code>"


def _link(anchor: str, inner: str) -> str:
    return f'<a href="#{escape(anchor)}">{inner}</a>' if anchor else inner


def _td(inner: str, css: str = "") -> str:
    return f'<td class="{css}">{inner}</td>' if css else f"<td>{inner}</td>"


def _tr(cells: Iterable[str], css: str = "") -> str:
    return f'<tr class="{css}">{"".join(cells)}</tr>' if css else f"<tr>{''.join(cells)}</tr>"


def _opt(value: object) -> str:
    return "" if value is None else escape(str(value))


def _table(headers: Sequence[str], rows: Sequence[str], empty: str) -> str:
    if not rows:
        return f'<div class="none">{escape(empty)}</div>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(rows)
    return (
        f'<div class="tablewrap"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _details(summary: str, body: str, *, open_: bool = False) -> str:
    return f"<details{' open' if open_ else ''}><summary>{summary}</summary>{body}</details>"


def _kills_section(r: RunReport) -> str:
    rows = []
    # The supervisor stopping many ranks at once is one row, not one per rank.
    teardown: dict[tuple[str, int | None, str | None], list[KillRow]] = {}
    for k in r.kills:
        if k.machinery and k.rank is not None:
            teardown.setdefault((k.signal, k.sender_pid, k.note), []).append(k)
    grouped = {id(group[0]): group for group in teardown.values() if len(group) > 1}
    skip = {id(k) for group in grouped.values() for k in group[1:]}
    for k in r.kills:
        if id(k) in skip:
            continue
        group = grouped.get(id(k), [k])
        outside = not k.machinery
        named = k.sender_pid is not None or k.signal in ("SIGKILL", "SIGTERM")
        integ = ""
        if k.integrity not in ("verified", "unchecked"):
            integ = f' <span class="integ bad">entry {escape(k.integrity)}</span>'
        sender = "—"
        if k.sender_pid is not None or k.sender_uid is not None or k.sender_user:
            uid = "?" if k.sender_uid is None else str(k.sender_uid)
            pid = "?" if k.sender_pid is None else str(k.sender_pid)
            sender = escape(f"{k.sender_user or '?'} (uid {uid}), pid {pid}")
        if len(group) > 1:
            ranks = rank_list([g.rank for g in group if g.rank is not None])
            rank_cell = f'<span title="{escape(ranks)}">{len(group)} ranks</span>'
            pid_cell = ""
        else:
            rank_cell = "supervisor" if k.rank is None else str(k.rank)
            pid_cell = _opt(k.pid)
        cells = [
            _td(_link(k.anchor, escape(_when(k.time))), "nowrap"),
            _td(rank_cell, "num"),
            _td(pid_cell, "num"),
            _td(f"<strong>{escape(k.signal)}</strong>{integ}"),
            _td(sender),
            _td(_code(k.sender_cmdline or "")),
            _td(escape(k.source)),
            _td(escape(k.note or ""), "small"),
        ]
        rows.append(_tr(cells, "st-bad" if outside and named else ""))
    sub = (
        "Every signal a rank or the supervisor received and every death by signal, with the "
        "sender where the OS told it (<code>sigwaitinfo</code>). Unmarked rows "
        "are the job's own machinery stopping its ranks (the supervisor, torchrun's agent "
        "after a rank failed) or a terminal key such as Ctrl-C (sent by the kernel): recorded, "
        "never findings."
    )
    return _section(
        "kills",
        "Kills and signals",
        sub,
        _table(
            ["Time", "Rank", "PID", "Signal", "Sender", "Sender command", "Source", "Note"],
            rows,
            "No signal and no death by signal recorded.",
        ),
    )


_CHECKPOINT_ROW = {"changed": "st-bad", "missing": "st-bad", "unchecked": "st-warn"}
_CHECKPOINT_CHIP = {"ok": "ok", "changed": "bad", "missing": "bad", "deleted": ""}
_CHECKPOINT_NOW = {
    "ok": "same",
    "missing": "missing",
    "deleted": "deleted (recorded)",
    "not-checked": "not checked",
}


def _checkpoints_section(r: RunReport) -> str:
    rows = []
    for c in r.checkpoints:
        now = _CHECKPOINT_NOW.get(c.status, short_digest(c.current) or "—")
        extra = []
        if c.reason:
            extra.append(escape(c.reason))
        if c.status == "changed" and c.owner_now:
            changed = _when(c.modified_now or "")
            extra.append(f"owner now {escape(c.owner_now)}, changed {escape(changed)}")
        if c.lineage:
            extra.append(f"lineage: {escape(c.lineage)}")
        status = _chip(c.status, _CHECKPOINT_CHIP.get(c.status, "warn")) + " " + _code(now)
        if extra:
            status += f'<br><span class="small">{"; ".join(extra)}</span>'
        cells = [
            _td(_link(c.anchor, _code(c.path))),
            _td("" if c.step is None else f"{c.step:,}", "num"),
            _td(_code(short_digest(c.digest))),
            _td(status),
            _td(f"{escape(c.signer)}<br>{_code(c.signer_key)}", "small"),
            _td(escape(_when(c.time)), "nowrap small"),
        ]
        css = _CHECKPOINT_ROW.get(c.status, "st-warn" if c.status == "not-checked" else "")
        rows.append(_tr(cells, css))
    sub = (
        "Each checkpoint of the run the ledger saw signed, its digest as signed, and its digest "
        "now (recomputed the way <code>trainwarden sign</code> defines it)."
    )
    return _section(
        "checkpoints",
        "Checkpoints",
        sub,
        _table(
            ["Path", "Step", "Digest in the ledger", "Now", "Signed by", "Signed at"],
            rows,
            "No checkpoint of this run is recorded in the ledger.",
        ),
    )


_SCOPE_ROW = {"external": "st-bad", "unknown": "st-warn"}
_SCOPE_CHIP = {"external": "bad", "unknown": "warn", "loopback": "ok"}


def _egress_section(r: RunReport) -> str:
    rows = []
    for e in r.egress:
        ranks = ", ".join(str(x) for x in e.ranks[:16]) + ("…" if len(e.ranks) > 16 else "")
        cells = [
            _td(_link(e.anchor, _code(e.host))),
            _td(_opt(e.port), "num"),
            _td(_code(e.address or "")),
            _td(_chip(e.scope, _SCOPE_CHIP.get(e.scope, ""))),
            _td(escape(", ".join(e.via))),
            _td(escape(ranks)),
            _td(str(e.count), "num"),
            _td(escape(_when(e.first_time)), "nowrap small"),
        ]
        rows.append(_tr(cells, _SCOPE_ROW.get(e.scope, "")))
    native = [ev for ev in r.timeline if ev.event == "egress.native-load"]
    extra = ""
    if native:
        items = "".join(f"<li>{_link(ev.anchor, escape(ev.summary))}</li>" for ev in native[:50])
        extra = (
            f'<h3 class="small muted">Native libraries loaded</h3><ul class="notes">{items}</ul>'
        )
    sub = (
        "External endpoints the job contacted, merged over ranks; <strong>external</strong> "
        "addresses first. Host names are shown as recorded and never resolved by this report."
    )
    return _section(
        "egress",
        "Egress",
        sub,
        _table(
            ["Host", "Port", "Address", "Scope", "Via", "Ranks", "Times", "First seen"],
            rows,
            "No egress recorded.",
        )
        + extra,
    )


_GOOD_VERDICTS = ("safe", "intact", "ok", "clean", "verified", "proceed")
_BAD_VERDICTS = ("unsafe", "tampered", "refuse", "modified")


def _preflight_section(r: RunReport) -> str:
    rows = []
    for p in r.preflight:
        v = p.verdict.lower()
        kind = "ok" if v in _GOOD_VERDICTS else ("bad" if v in _BAD_VERDICTS else "warn")
        if v == "recorded":
            kind = ""
        cells = [
            _td(_link(p.anchor, escape(p.check))),
            _td(_chip(p.verdict, kind)),
            _td(escape(p.detail)),
            _td(escape(_when(p.time)), "nowrap small"),
        ]
        rows.append(_tr(cells))
    return _section(
        "preflight",
        "Pre-flight",
        "What <code>trainwarden run</code> checked before launching the job.",
        _table(["Check", "Verdict", "Detail", "Time"], rows, "No pre-flight record."),
    )


def _drill_section(r: RunReport) -> str:
    if not r.drill:
        return ""
    rows = []
    for d in r.drill:
        caught = d.detected_by is not None
        delay = "" if d.seconds_to_detection is None else _seconds_text(d.seconds_to_detection)
        detected = _chip("caught" if caught else "missed", "ok" if caught else "bad")
        cells = [
            _td(_link(d.anchor, escape(d.scenario))),
            _td(_chip(d.technique, "t")),
            _td(escape(d.attack)),
            _td(escape(d.insider)),
            _td(f"{detected} {_code(d.detected_by or '')}"),
            _td(escape(delay), "num"),
        ]
        rows.append(_tr(cells, "" if caught else "st-bad"))
    sub = (
        "Attacks the drill replayed (<code>drill.scenario</code>, signed by the insider's key) "
        "and the first finding of the same technique after each began."
    )
    return _section(
        "drill",
        "Drill",
        sub,
        _table(["Scenario", "Technique", "Attack", "Insider", "Detected by", "After"], rows, ""),
    )


def _pairs(title: str, items: Sequence[tuple[str, str]], *, open_: bool = False) -> str:
    if not items:
        return ""
    rows = "".join(_tr([_td(_code(k)), _td(_code(v))]) for k, v in items)
    table = f'<div class="tablewrap"><table><tbody>{rows}</tbody></table></div>'
    return _details(f"{escape(title)} ({len(items)})", table, open_=open_)


def _provenance_section(r: RunReport) -> str:
    p = r.provenance
    sub = (
        "The in-toto statement with a SLSA provenance predicate that the supervisor signed "
        "after the run, shown as recorded (verified only as stated)."
    )
    if not p.present:
        body = f'<div class="none">No provenance statement at {_code(p.path)}.'
        if p.ledger_digest:
            body += " The ledger records that one was signed: it was deleted."
        body += "</div>"
        return _section("provenance", "Provenance", sub, body)
    if p.verified:
        signature = _chip("verified", "ok")
    elif p.verified is False:
        signature = _chip("failed", "bad")
    else:
        signature = _chip("not verified", "warn")
    kv = [
        ("File", _code(p.path)),
        ("Signature", f"{signature} {escape(p.verification)}"),
        ("Digest now", _code(p.digest or "")),
    ]
    if p.ledger_digest:
        now = (p.digest or "").removeprefix("sha256:")
        same = now == p.ledger_digest.lower().removeprefix("sha256:")
        mark = _chip("same", "ok") if same else _chip("differs", "bad")
        kv.append(("Digest in the ledger", f"{_code(p.ledger_digest)} {mark}"))
    for label, value in (
        ("Envelope", p.payload_type),
        ("Statement", p.statement_type),
        ("Predicate", p.predicate_type),
        ("Build type", p.build_type),
        ("Builder", p.builder),
        ("Invocation", p.invocation),
        ("Started", p.started_on),
        ("Finished", p.finished_on),
        ("Signed by key(s)", ", ".join(p.signatures) if p.signatures else None),
    ):
        if value:
            kv.append((label, _code(value)))
    if p.error:
        kv.append(("Problem", f"{_chip('unreadable', 'bad')} {escape(p.error)}"))
    body = '<dl class="kv">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in kv) + "</dl>"
    body += _pairs("Outputs (subjects)", p.subjects, open_=True)
    body += _pairs("Resolved dependencies: code, environment, data", p.dependencies, open_=True)
    body += _pairs("External parameters", p.external_parameters)
    body += _pairs("Internal parameters", p.internal_parameters)
    body += _pairs("By-products", p.byproducts)
    return _section("provenance", "Provenance", sub, body)


def _comparison_section(r: RunReport) -> str:
    c = r.comparison
    if c is None:
        return ""
    same = ", ".join(f"{k}: {v}" for k, v in c.same.items())
    notes = "".join(f"<li>{escape(n)}</li>" for n in c.notes)
    rows = [
        _tr(
            [
                _td(escape(d.area)),
                _td(_code(d.item)),
                _td(_code(d.this_run)),
                _td(_code(d.clean_run)),
            ]
        )
        for d in c.rows
    ]
    nothing = "No difference: code, environment, seeds, data order and hyperparameters all match."
    body = (
        (f'<ul class="notes">{notes}</ul>' if notes else "")
        + _table(["Area", "Item", "This run", "Clean run"], rows, nothing)
        + f'<p class="small muted">Identical items: {escape(same)}.</p>'
    )
    sub = (
        f"Differences only, against {_code(c.clean_dir)} (run {_code(c.clean_run_id or '?')}): "
        "code, environment, seeds, data order and hyperparameters. Times, pids and hosts "
        "always differ and are left out."
    )
    return _section("comparison", "Against the clean run", sub, body)


def _trust(trusted: bool) -> str:
    return _chip("trusted", "ok") if trusted else _chip("not trusted", "warn")


def _ledger_section(r: RunReport) -> str:
    lg = r.ledger
    sub = (
        "The run's ledger verified now: every writer's hash chain and signatures, and the "
        "seals over them."
    )
    if lg.error:
        body = (
            f'<div class="none">{_chip("unreadable", "bad")} {_code(lg.path)}: '
            f"{escape(lg.error)}</div>"
        )
        return _section("ledger", "Ledger", sub, body)
    first = lg.first_break
    if first is not None:
        status = _chip("tampered", "bad")
    elif lg.signers_checked:
        status = _chip("intact", "ok")
    else:
        status = _chip("intact, signers not checked", "warn")
    kv = [
        ("Ledger", _code(lg.path)),
        ("Status", status),
        ("Entries", f"{lg.entries:,} in the ledger, {lg.run_entries:,} about this run"),
        (
            "Signers",
            "checked against the trusted keys"
            if lg.signers_checked
            else "not checked: no trusted key was given (--pubkey)",
        ),
        (
            "Seals",
            "checked against the trusted seal keys"
            if lg.seals_checked
            else "not checked against a seal key (--seal-pubkey)",
        ),
    ]
    if first is not None:
        where = (first.file or first.writer or "") + (f":{first.line}" if first.line else "")
        seq = "" if first.seq is None else f" seq {first.seq}"
        kv.append(
            (
                "First break",
                f"<strong>{escape(first.kind)}</strong> at {_code(where)}{escape(seq)}: "
                f"{escape(first.message)}",
            )
        )
    body = '<dl class="kv">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in kv) + "</dl>"
    writer_rows = [
        _tr(
            [
                _td(_code(w.writer)),
                _td(escape(w.role)),
                _td(escape(w.identity or "")),
                _td(_trust(w.trusted)),
                _td(f"{w.entries:,}", "num"),
                _td(f"{w.sealed:,}", "num"),
                _td(f"{w.unsealed:,}", "num"),
                _td(_code(short_digest(w.head))),
            ]
        )
        for w in lg.writers
    ]
    writers = _table(
        ["Writer", "Role", "Identity", "Key", "Entries", "Sealed", "Unsealed", "Head"],
        writer_rows,
        "No writer file.",
    )
    body += _details(f"Writers ({len(lg.writers)})", writers, open_=len(lg.writers) <= 12)
    seal_rows = [
        _tr(
            [
                _td(_code(s.name)),
                _td(escape(_when(s.time)), "nowrap"),
                _td(escape(s.identity)),
                _td(_trust(s.trusted)),
                _td(str(s.writers), "num"),
                _td(_code(short_digest(s.root))),
            ]
        )
        for s in lg.seals
    ]
    seals = _table(
        ["Seal", "Time", "Sealer", "Key", "Writers", "Merkle root"],
        seal_rows,
        "No seal: truncating a chain or dropping a writer file would not show.",
    )
    body += _details(f"Seals ({len(lg.seals)})", seals, open_=True)
    issue_rows = [
        _tr(
            [
                _td(f"<strong>{escape(i.kind)}</strong>"),
                _td(_code((i.file or i.writer or "") + (f":{i.line}" if i.line else ""))),
                _td(_opt(i.seq), "num"),
                _td(escape(i.message)),
            ],
            "st-bad" if i.tampering else "",
        )
        for i in (*lg.issues, *lg.notes)
    ]
    if issue_rows:
        issues = _table(["Kind", "Where", "Seq", "What"], issue_rows, "")
        body += _details(f"Issues and notes ({len(issue_rows)})", issues, open_=True)
    return _section("ledger", "Ledger", sub, body)


def _reproduce_section(r: RunReport) -> str:
    items = "".join(
        f'<li><div>{escape(what)}</div><code class="cmd">{escape(cmd)}</code></li>'
        for what, cmd in r.reproduce
    )
    sub = (
        "Commands that re-check what this report shows, from the evidence itself. Replace "
        "<code>WRITER.pub</code> with the writers' public keys you trust."
    )
    return _section("reproduce", "Reproduce the checks", sub, f'<ol class="notes">{items}</ol>')


def _notes_section(r: RunReport) -> str:
    if not r.notes and not r.stacks:
        return ""
    notes = "".join(f"<li>{escape(n)}</li>" for n in r.notes)
    body = f'<ul class="notes">{notes}</ul>' if notes else ""
    for name, text in r.stacks:
        stack = f'<pre class="stack">{escape(text)}</pre>'
        body += _details(f"Stack dump {_code(name)}", stack)
    sub = (
        "Parts of the run directory that were missing or malformed (the rest of the report "
        "stands without them), and stacks dumped when a rank hung."
    )
    return _section("notes", "Could not read, and stack dumps", sub, body)


# -- small helpers -----------------------------------------------------------------------------


def _when(value: str) -> str:
    """``2026-12-03 07:13:25.229`` from an RFC 3339 time (as given if it is not one)."""
    if len(value) >= 19 and value[10] == "T":
        return value[:10] + " " + value[11:23].rstrip("Z")
    return value


def _duration(start: str | None, end: str | None) -> str | None:
    if not start or not end:
        return None
    try:
        a = _parse_time(start)
        b = _parse_time(end)
    except ValueError:
        return None
    seconds = (b - a).total_seconds()
    if seconds < 0:
        return None
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def _seconds_text(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def _parse_time(value: str) -> datetime:
    text = value.rstrip("Z")
    fmt = "%Y-%m-%dT%H:%M:%S.%f" if "." in text else "%Y-%m-%dT%H:%M:%S"
    return datetime.strptime(text[:26], fmt).replace(tzinfo=timezone.utc)


def _shell(command: Sequence[str]) -> str:
    import shlex

    text = " ".join(shlex.quote(c) for c in command)
    return text if len(text) <= 400 else text[:400] + "…"
