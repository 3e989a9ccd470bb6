"""Text renderings of a ledger: the verification summary and the timeline of events.

Pure functions from ledger results to strings. Everything in a ledger entry is written by
whoever held a key (user, host, identity, run, data, file names), so every such value is
escaped: a newline or a terminal escape sequence in it can never forge a line of the output.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING

from trainwarden.report._text import clean

if TYPE_CHECKING:
    from trainwarden.ledger import Entry, LedgerReport

__all__ = ["render_ledger_report", "render_ledger_timeline", "text_safe"]

# Longest data shown per timeline line; the JSON form has everything.
_MAX_DATA = 120


def text_safe(value: object) -> str:
    """``str(value)`` with every control, format or separator character escaped.

    Untrusted text (event data, identities, paths) stays on its line and shows what it really
    holds; the same escaping as every other text rendering (:func:`trainwarden.report._text.clean`).
    """
    return clean(str(value))


def render_ledger_timeline(entries: Iterable[Entry]) -> str:
    """One line per entry: time, who (user, uid, host, pid, key identity), run, event, data.

    The data is compact JSON, cut to 120 characters.
    """
    lines = []
    for e in entries:
        who = text_safe(f"{e.actor.user}({e.actor.uid})@{e.actor.host}:{e.actor.pid}")
        key = text_safe(f"{e.actor.identity} {e.actor.key[:19]}")
        data = text_safe(
            json.dumps(e.data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        )
        if len(data) > _MAX_DATA:
            data = data[: _MAX_DATA - 3] + "..."
        run = text_safe(e.run) if e.run else "-"
        lines.append(
            f"{e.time}  {who}  [{key}]  run={run}  {text_safe(e.event)}  {data}  "
            f"({text_safe(e.writer)}#{e.seq})"
        )
    return "\n".join(lines) + ("\n" if lines else "")


def render_ledger_report(report: LedgerReport) -> str:
    """Human summary of a verification: verdict, issues, writers, seals, files, notes."""
    if report.issues:
        verdict = "TAMPERED"
    elif not report.signers_checked:
        verdict = "chains intact, signers NOT checked (no trusted key)"
    else:
        verdict = "intact"
    writers = [w for w in report.writers if w.role == "writer"]
    trusted_seals = [s for s in report.seals if s.trusted]
    out = [
        f"ledger {text_safe(report.ledger)}: {verdict}",
        f"  {len(writers)} writer(s), {len(report.entries)} entries, "
        f"{len(trusted_seals)} trusted seal(s) of {len(report.seals)}",
    ]
    if report.issues:
        first = report.issues[0]
        out.append(f"first issue: {text_safe(first.describe())}")
        if len(report.issues) > 1:
            out.append(f"all issues ({len(report.issues)}):")
            out.extend(f"  {text_safe(i.describe())}" for i in report.issues)
    out.append("writers:")
    for w in report.writers:
        checked = report.signers_checked if w.role == "writer" else report.seals_checked
        trust = "trusted" if w.trusted else ("UNTRUSTED" if checked else "unchecked")
        sealed = f", sealed {w.sealed}" if w.role == "writer" else ""
        out.append(
            f"  {w.role} {text_safe(w.writer)}: {w.entries} entries{sealed}, "
            f"key {text_safe(w.key)} ({text_safe(w.identity)}, {trust})"
        )
    if trusted_seals:
        last = trusted_seals[-1]
        out.append(
            f"last trusted seal: {text_safe(last.name)} at {last.time} by "
            f"{text_safe(last.identity)}, {text_safe(last.root)}"
        )
    bad_files = [f for f in report.files if f.status != "ok"]
    if report.files:
        out.append(f"files: {len(report.files)} recorded, {len(bad_files)} not as recorded")
    if report.warnings:
        out.append("notes:")
        out.extend(f"  {text_safe(w.describe())}" for w in report.warnings)
    return "\n".join(out) + "\n"
