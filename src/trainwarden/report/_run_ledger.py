"""The run's ledger, read for a forensic report: status, timeline, kills, checkpoints, egress.

The ledger is verified with ``inspect_ledger`` (never trusted blindly): every timeline row
carries what verification said about its own entry, so an edited entry is shown as edited
and its content is not taken at face value. Payloads were written by processes of the run and
are read defensively: a field of the wrong type reads as absent.
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import json
import math
import os
import re
import stat
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainwarden.report._run_model import (
    CheckpointRow,
    EgressRow,
    KillRow,
    LedgerIssueRow,
    LedgerStatus,
    PreflightRow,
    SealRow,
    TimelineEvent,
    WriterRow,
)

if TYPE_CHECKING:
    from trainwarden.keys import PublicKey
    from trainwarden.ledger import Entry, LedgerReport

__all__ = [
    "MAX_TEXT",
    "MAX_TIMELINE",
    "LedgerView",
    "anchor_of",
    "as_int",
    "as_text",
    "build_checkpoints",
    "build_egress",
    "build_kills",
    "build_preflight",
    "build_timeline",
    "describe_sender",
    "ledger_status",
]

#: Longest string taken from the run for display (the rest is cut with a marker).
MAX_TEXT = 600
#: Most timeline rows; routine entries beyond it are counted, not shown.
MAX_TIMELINE = 4000
# Entries that are routine bookkeeping: shown while the timeline has room.
_ROUTINE = frozenset(
    {
        "guard.rng",
        "guard.attach",
        "guard.telemetry",
        "guard.close",
        "rank.start",
        "egress.endpoint",
        "preflight.inputs",
    }
)
_GOOD = frozenset({"safe", "intact", "ok", "clean", "verified", "proceed", "pass", "passed"})
_BAD = frozenset(
    {"unsafe", "tampered", "modified", "compromised", "refuse", "refused", "fail", "failed"}
)
# Signals that end a process when nobody asked for it; others (SIGSEGV...) are crashes.
KILL_SIGNALS = frozenset(
    {"SIGKILL", "SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGSTOP", "SIGUSR1", "SIGUSR2"}
)


def as_text(value: object, limit: int = MAX_TEXT) -> str | None:
    """A display string for a scalar from the run (``None`` for absent, lists and objects)."""
    if value is None or isinstance(value, (dict, list)):
        return None
    text = value if isinstance(value, str) else json.dumps(value)
    if len(text) > limit:
        text = text[:limit] + f"… [{len(text) - limit} more characters]"
    return text


def as_int(value: object) -> int | None:
    """An int from the run (never a bool, never a float)."""
    return value if type(value) is int else None


def as_json(value: object, limit: int = MAX_TEXT) -> str:
    """Compact JSON of any value from the run, cut to ``limit`` characters."""
    try:
        text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    except (ValueError, RecursionError):
        text = repr(value)
    if len(text) > limit:
        text = text[:limit] + f"… [{len(text) - limit} more characters]"
    return text


def rank_list(ranks: Iterable[int]) -> str:
    """``rank 3``, ``ranks 0–7`` or ``ranks 1, 4, 9``."""
    ordered = sorted(set(ranks))
    if len(ordered) == 1:
        return f"rank {ordered[0]}"
    if ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"ranks {ordered[0]}–{ordered[-1]}"
    shown = ", ".join(str(r) for r in ordered[:12])
    return f"ranks {shown}" + ("…" if len(ordered) > 12 else "")


def anchor_of(writer: str, seq: int) -> str:
    """A stable HTML id for a ledger entry (writer ids are ``[A-Za-z0-9._-]``)."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "-", writer)[:120]
    return f"e-{safe}-{seq}"


def describe_actor(entry: Entry) -> str:
    """``user(uid)@host pid N``: who the entry says wrote it."""
    a = entry.actor
    return f"{a.user}({a.uid})@{a.host} pid {a.pid}"


def describe_sender(sender: object) -> str | None:
    """A signal's sender as recorded (``{"pid", "uid", "user", "cmdline"}``), or ``None``."""
    if not isinstance(sender, Mapping):
        return None
    user = as_text(sender.get("user"), 64)
    uid = as_int(sender.get("uid"))
    pid = as_int(sender.get("pid"))
    cmd = _cmdline(sender.get("cmdline"))
    who = user or "unknown user"
    if uid is not None:
        who += f" (uid {uid})"
    if pid is not None:
        who += f", pid {pid}"
    if cmd:
        who += f": {cmd}"
    return who


def _cmdline(value: object) -> str | None:
    if isinstance(value, list):
        import shlex

        parts = [str(v) for v in value[:64]]
        return as_text(" ".join(shlex.quote(p) for p in parts))
    return as_text(value)


@dataclass(frozen=True, slots=True)
class LedgerView:
    """The run's entries with what verification said about each."""

    entries: tuple[Entry, ...]
    integrity: Mapping[tuple[str, int], str]
    signers_checked: bool
    trusted: frozenset[str]

    def integrity_of(self, entry: Entry) -> str:
        """``verified``, ``unchecked``, ``untrusted`` or the issue kind about this entry."""
        kind = self.integrity.get((entry.writer, entry.seq))
        if kind is not None:
            return kind
        if not self.signers_checked:
            return "unchecked"
        if entry.actor.key not in self.trusted:
            return "untrusted"
        return "verified"


def ledger_status(
    path: str, report: LedgerReport | None, run_entries: int, error: str | None
) -> LedgerStatus:
    """The report's ledger section from an ``inspect_ledger`` report (or why there is none)."""
    if report is None:
        return LedgerStatus(path=path, error=error or "not read")
    writers = tuple(
        WriterRow(
            writer=w.writer,
            role=w.role,
            identity=w.identity,
            key=w.key,
            trusted=w.trusted,
            entries=w.entries,
            head=w.head,
            sealed=w.sealed,
            unsealed=w.unsealed,
        )
        for w in report.writers
    )
    seals = tuple(
        SealRow(
            name=s.name,
            time=s.time,
            root=s.root,
            writers=len(s.writers),
            identity=s.identity,
            trusted=s.trusted,
        )
        for s in report.seals
    )

    def rows(issues: Iterable[Any], tampering: bool) -> tuple[LedgerIssueRow, ...]:
        return tuple(
            LedgerIssueRow(
                kind=i.kind,
                message=i.message,
                file=i.file,
                line=i.line,
                writer=i.writer,
                seq=i.seq,
                tampering=tampering,
            )
            for i in issues
        )

    return LedgerStatus(
        path=path,
        intact=report.intact,
        signers_checked=report.signers_checked,
        seals_checked=report.seals_checked,
        entries=len(report.entries),
        run_entries=run_entries,
        writers=writers,
        seals=seals,
        issues=rows(report.issues, True),
        notes=rows(report.warnings, False),
    )


# -- timeline ---------------------------------------------------------------------------------


def category_of(event: str, data: Mapping[str, Any]) -> str:
    """The timeline category of an event (see :class:`TimelineEvent`)."""
    if event == "preflight.env":
        return "env"
    if event.startswith("preflight."):
        return "preflight"
    if event in ("rank.signal", "guard.signal", "supervisor.signal"):
        return "kill"
    if event in ("rank.exit", "run.exit"):
        return "exit"
    if event.startswith("checkpoint."):
        return "checkpoint"
    if event.startswith("egress."):
        return "egress"
    if event == "guard.finding":
        return "finding"
    if event in ("guard.reseed",):
        return "env"
    if event.startswith("guard."):
        return "guard"
    if event.startswith("drill."):
        return "drill"
    if event.startswith("rank."):
        return "rank"
    if event.startswith(("run.", "provenance.")):
        return "run"
    return "other"


def summarise(entry: Entry) -> tuple[str, str]:
    """One line about an entry for people, and its level (``info``, ``warn``, ``bad``)."""
    d = entry.data
    e = entry.event
    rank = as_int(d.get("rank"))
    on = f"rank {rank}" if rank is not None else "the job"
    t = as_text
    if e == "run.start":
        cmd = _cmdline(d.get("command")) or "?"
        ws = as_int(d.get("world_size"))
        return (
            f"run started: {cmd} ({t(d.get('launcher')) or '?'}"
            + (f", {ws} ranks" if ws is not None else "")
            + ")",
            "info",
        )
    if e == "run.exit":
        status = d.get("status")
        sig = t(d.get("signal"))
        level = "info" if status == 0 and not sig else "bad"
        text = f"run ended: status {t(status) or '?'}"
        if sig:
            text += f", signal {sig}"
        if isinstance(d.get("seconds"), (int, float)):
            text += f" after {_seconds(d['seconds'])}"
        findings = d.get("findings")
        if isinstance(findings, Mapping) and findings:
            text += " · findings " + ", ".join(
                f"{t(k, 16)}: {t(v, 16)}" for k, v in sorted(findings.items())[:10]
            )
        return text, level
    if e.startswith("preflight."):
        return _summarise_preflight(e, d)
    if e == "rank.start":
        return (
            f"{on} started: pid {t(d.get('pid')) or '?'} "
            f"on {t(d.get('host') or d.get('node')) or '?'}",
            "info",
        )
    if e == "rank.hang":
        return (
            f"{on} hung: no step for {t(d.get('seconds')) or '?'} s after step "
            f"{t(d.get('last_step')) or '?'}",
            "warn",
        )
    if e in ("rank.signal", "guard.signal", "supervisor.signal"):
        sender = describe_sender(d.get("sender")) or "sender unknown"
        target = "the supervisor" if e == "supervisor.signal" else on
        source = t(d.get("source"))
        level = "warn" if source == "supervisor" else "bad"
        return (
            f"{target} got {t(d.get('signal')) or '?'} from {sender}"
            + (f" (seen by {source})" if source else ""),
            level,
        )
    if e == "rank.exit":
        status = d.get("status")
        sig = t(d.get("signal"))
        text = f"{on} exited" + (f" by {sig}" if sig else f" with status {t(status) or '?'}")
        return text, "info" if status == 0 and not sig else "bad"
    if e.startswith("checkpoint."):
        verb = e.split(".", 1)[1]
        step = as_int(d.get("step"))
        text = f"checkpoint {verb}: {t(d.get('path')) or '?'}"
        if step is not None:
            text += f" (step {step})"
        if isinstance(d.get("digest"), str):
            text += f" {short_digest(d['digest'])}"
        return text, "warn" if verb == "deleted" else "info"
    if e == "egress.endpoint":
        port = t(d.get("port"))
        host = t(d.get("host"), 200) or "?"
        scope = scope_of(host, t(d.get("address"), 64))
        return (
            f"{on} contacted {host}{':' + port if port else ''}"
            f" ({t(d.get('address')) or 'no address'}, {scope}, via {t(d.get('via')) or '?'})",
            "warn" if scope in ("external", "unknown") else "info",
        )
    if e == "egress.native-load":
        return f"{on} loaded native library {t(d.get('library')) or '?'}", "info"
    if e == "provenance.signed":
        return (
            f"provenance signed: {t(d.get('path')) or '?'} {short_digest(d.get('digest'))}",
            "info",
        )
    if e == "guard.finding":
        tech = t(d.get("technique"), 8) or "?"
        rule = t(d.get("rule_id") or d.get("check"), 80) or "?"
        step = as_int(d.get("step"))
        where = on + (f" step {step}" if step is not None else "")
        sure = "established" if d.get("established") is True else "suspected"
        return f"[{tech}] {rule} on {where} ({sure}): {t(d.get('message')) or ''}", (
            "bad" if d.get("established") is True else "warn"
        )
    if e == "guard.attach":
        return (
            f"guard attached on {on}: {t(d.get('optimizer')) or '?'}, "
            f"{t(d.get('k')) or '?'} coordinates a sampled step ({t(d.get('sampling')) or '?'})",
            "info",
        )
    if e == "guard.reseed":
        return (
            f"{on} reseeded: {t(d.get('function')) or '?'}({t(d.get('seed')) or ''}) from "
            f"{t(d.get('caller')) or '?'} at step {t(d.get('step')) or '?'}",
            "warn",
        )
    if e == "guard.rng":
        return (
            f"{on} RNG fingerprints ({t(d.get('when')) or '?'}) at step {t(d.get('step')) or '?'}",
            "info",
        )
    if e == "guard.telemetry":
        return (
            f"{on} telemetry closed: {t(d.get('lines')) or '?'} lines, "
            f"{short_digest(d.get('sha256'))}",
            "info",
        )
    if e == "guard.close":
        return (
            f"guard closed on {on}: {t(d.get('steps')) or '?'} steps, "
            f"{t(d.get('verified_steps')) or '?'} verified",
            "info",
        )
    if e == "drill.scenario":
        return (
            f"drill: scenario {t(d.get('scenario')) or '?'} "
            f"({t(d.get('technique')) or '?'}) began: "
            f"{t(d.get('attack')) or ''} (insider {t(d.get('insider')) or '?'})",
            "warn",
        )
    return f"{e}: {as_json(dict(d), 300)}", "info"


def _summarise_preflight(e: str, d: Mapping[str, Any]) -> tuple[str, str]:
    t = as_text
    verdict = t(d.get("verdict") or d.get("decision"), 40) or "?"
    level = _level_of_verdict(verdict)
    check = e.split(".", 1)[1]
    if check == "env":
        summary = d.get("summary")
        extra = as_json(summary, 200) if summary is not None else ""
        return f"environment check: {verdict} {extra}".rstrip(), level
    if check == "scan":
        files = d.get("files")
        n = len(files) if isinstance(files, list) else "?"
        return f"checkpoint scan of {n} file(s): {verdict}", level
    if check == "code":
        dirty = " (uncommitted changes)" if d.get("dirty") is True else ""
        return f"code {t(d.get('root')) or '?'} at {t(d.get('commit'), 40) or '?'}{dirty}", (
            "warn" if dirty else "info"
        )
    if check == "inputs":
        files = d.get("files")
        n = len(files) if isinstance(files, list) else "?"
        return f"{n} input file(s) fingerprinted ({t(d.get('kind')) or '?'})", "info"
    if check == "access":
        writers = d.get("writers")
        names: list[str] = []
        if isinstance(writers, list):
            names.extend(
                f"{t(w.get('kind'), 8) or '?'} {t(w.get('name'), 64) or '?'}"
                for w in writers[:8]
                if isinstance(w, Mapping)
            )
        who = ", ".join(names) or "nobody else"
        return (
            f"access audit: {t(d.get('role')) or '?'} {t(d.get('path')) or '?'} writable by "
            f"{who}: {verdict}",
            "warn" if verdict == "warn" else level,
        )
    if check == "decision":
        reasons = d.get("reasons")
        why = "; ".join(t(r, 200) or "" for r in reasons[:5]) if isinstance(reasons, list) else ""
        return f"pre-flight decision: {verdict}" + (f" ({why})" if why else ""), level
    return f"{e}: {as_json(dict(d), 300)}", level


def _level_of_verdict(verdict: str) -> str:
    v = verdict.lower()
    if v in _GOOD:
        return "info"
    if v in _BAD:
        return "bad"
    return "warn"


def short_digest(value: object) -> str:
    """``sha256:1234abcd…`` for display."""
    if not isinstance(value, str):
        return ""
    if ":" in value:
        alg, _, hexpart = value.partition(":")
        return f"{alg[:12]}:{hexpart[:12]}…" if len(hexpart) > 12 else value[:40]
    return value[:12] + ("…" if len(value) > 12 else "")


def _seconds(value: float) -> str:
    value = float(value)
    if value >= 3600:
        return f"{value / 3600:.1f} h"
    if value >= 60:
        return f"{value / 60:.1f} min"
    return f"{value:.1f} s"


_RANK_RE = re.compile(r"\brank \d+")
_PID_RE = re.compile(r"\bpid \d+")
# Entries of one kind that several ranks write at about the same time are one row.
_MERGE_SECONDS = 10.0
_MAX_INPUT = 200_000


def build_timeline(
    view: LedgerView, *, limit: int = MAX_TIMELINE
) -> tuple[tuple[TimelineEvent, ...], dict[str, int]]:
    """Timeline rows of the run's entries, in time order.

    The same event from many ranks at the same step (RNG fingerprints, a learning rate
    change seen everywhere) becomes one row naming the ranks; routine rows beyond ``limit``
    are counted by event type instead of shown.
    """
    important = [e for e in view.entries if e.event not in _ROUTINE]
    routine = [e for e in view.entries if e.event in _ROUTINE]
    omitted: Counter[str] = Counter()
    omitted.update(e.event for e in important[_MAX_INPUT:])
    omitted.update(e.event for e in routine[_MAX_INPUT:])
    chosen = sorted(
        important[:_MAX_INPUT] + routine[:_MAX_INPUT], key=lambda e: (e.time, e.writer, e.seq)
    )
    groups: list[list[Any]] = []
    open_groups: dict[tuple[Any, ...], list[Any]] = {}
    for entry in chosen:
        summary, level = summarise(entry)
        integrity = view.integrity_of(entry)
        if integrity not in ("verified", "unchecked"):
            level = "bad"
        d = entry.data
        rank = as_int(d.get("rank"))
        step = as_int(d.get("step") if entry.event != "rank.hang" else d.get("last_step"))
        item = (entry, summary, level, integrity, rank, step)
        if rank is None or integrity not in ("verified", "unchecked"):
            groups.append([item])
            continue
        key = (
            entry.event,
            _PID_RE.sub("pid *", _RANK_RE.sub("rank *", summary)),
            step,
            level,
            integrity,
            entry.actor.identity,
        )
        group = open_groups.get(key)
        if group is not None and _seconds_between(group[0][0].time, entry.time) <= _MERGE_SECONDS:
            group.append(item)
            continue
        group = [item]
        open_groups[key] = group
        groups.append(group)
    rows = []
    for group in groups:
        entry, summary, level, integrity, rank, step = group[0]
        ranks = tuple(sorted({g[4] for g in group if g[4] is not None}))
        if len(group) > 1:
            masked = _PID_RE.sub("pid *", _RANK_RE.sub("rank *", summary))
            summary = masked.replace("rank *", rank_list(ranks), 1).replace("rank *", "each rank")
            summary = summary.replace("pid *", "their pids")
        rows.append(
            TimelineEvent(
                time=entry.time,
                event=entry.event,
                category=category_of(entry.event, entry.data),
                summary=summary,
                actor=describe_actor(entry)
                + (f" (+{len(group) - 1} more)" if len(group) > 1 else ""),
                identity=entry.actor.identity,
                writer=entry.writer,
                seq=entry.seq,
                anchor=anchor_of(entry.writer, entry.seq),
                rank=rank if len(ranks) <= 1 else None,
                ranks=ranks,
                step=step,
                level=level,
                integrity=integrity,
                aliases=tuple(anchor_of(g[0].writer, g[0].seq) for g in group[1:]),
            )
        )
    if len(rows) > limit:
        keep_routine = max(0, limit - sum(1 for r in rows if r.event not in _ROUTINE))
        kept = []
        for row in rows:
            if row.event in _ROUTINE:
                if keep_routine <= 0:
                    omitted[row.event] += 1 + len(row.aliases)
                    continue
                keep_routine -= 1
            kept.append(row)
        rows = kept[:limit]
    return tuple(rows), dict(sorted(omitted.items()))


def _seconds_between(a: str, b: str) -> float:
    try:
        ta = datetime.strptime(a[:26].rstrip("Z"), "%Y-%m-%dT%H:%M:%S.%f")
        tb = datetime.strptime(b[:26].rstrip("Z"), "%Y-%m-%dT%H:%M:%S.%f")
    except ValueError:
        return math.inf
    return abs((tb - ta).total_seconds())


# -- kills --------------------------------------------------------------------------------------


def build_kills(view: LedgerView) -> tuple[KillRow, ...]:
    """Signals received and deaths by signal, in time order."""
    rows: list[KillRow] = []
    signalled: set[tuple[int | None, str]] = set()
    launchers = _launcher_pids(view)
    for entry in view.entries:
        d = entry.data
        if entry.event in ("rank.signal", "guard.signal", "supervisor.signal"):
            sender = d.get("sender") if isinstance(d.get("sender"), Mapping) else None
            rank = as_int(d.get("rank"))
            signal = as_text(d.get("signal"), 32) or as_text(d.get("signo"), 8) or "?"
            source = as_text(d.get("source"), 32) or (
                "guard" if entry.event == "guard.signal" else "?"
            )
            signalled.add((rank, signal))
            sender_pid = as_int(sender.get("pid")) if sender else None
            rows.append(
                KillRow(
                    time=entry.time,
                    rank=rank,
                    pid=as_int(d.get("pid")),
                    signal=signal,
                    source=source,
                    sender_pid=sender_pid,
                    sender_uid=as_int(sender.get("uid")) if sender else None,
                    sender_user=as_text(sender.get("user"), 64) if sender else None,
                    sender_cmdline=_cmdline(sender.get("cmdline")) if sender else None,
                    note=as_text(d.get("note")),
                    anchor=anchor_of(entry.writer, entry.seq),
                    integrity=view.integrity_of(entry),
                    machinery=_from_machinery(view, entry, source, sender_pid, launchers),
                )
            )
    for entry in view.entries:
        d = entry.data
        if entry.event != "rank.exit":
            continue
        died_of = as_text(d.get("signal"), 32)
        rank = as_int(d.get("rank"))
        if not died_of or (rank, died_of) in signalled:
            continue
        rows.append(
            KillRow(
                time=entry.time,
                rank=rank,
                pid=as_int(d.get("pid")),
                signal=died_of,
                source="exit-status",
                note="death by signal seen in the exit status; the sender was not recorded",
                anchor=anchor_of(entry.writer, entry.seq),
                integrity=view.integrity_of(entry),
            )
        )
    rows.sort(key=lambda r: r.time)
    return tuple(rows)


def _launcher_pids(view: LedgerView) -> frozenset[int]:
    """Pids of the job's processes without a rank (``process.start``): its launcher.

    Under torchrun, the agent stops the other ranks when one fails, by signalling each
    rank's shim (its child), which records the signal with ``source: shim``.
    """
    return frozenset(
        pid
        for e in view.entries
        if e.event == "process.start"
        and as_int(e.data.get("rank")) is None
        and (pid := as_int(e.data.get("pid"))) is not None
        and view.integrity_of(e) in ("verified", "unchecked")
    )


def _from_machinery(
    view: LedgerView, entry: Entry, source: str, sender_pid: int | None, launchers: frozenset[int]
) -> bool:
    """Whether the job's own machinery sent this signal, as an entry that verifies says.

    The supervisor stopping its ranks (``source: supervisor``), the guard judging the sender
    to be the rank's ancestor (``trusted: true``: the supervisor, the launcher, the shim), or
    the launcher signalling a rank's shim. An entry that no longer verifies vouches for none.
    A signal the kernel sent (``SI_KERNEL``: a terminal key such as Ctrl-C reaching the whole
    foreground job) is no other process either: a process cannot send that code to another,
    and a user stopping their own job is not an insider's kill.
    """
    if view.integrity_of(entry) not in ("verified", "unchecked"):
        return False
    if source == "supervisor" or entry.data.get("code") == "SI_KERNEL":
        return True
    if entry.event == "guard.signal" and entry.data.get("trusted") is True:
        return True
    return source == "shim" and sender_pid is not None and sender_pid in launchers


# -- checkpoints --------------------------------------------------------------------------------


def build_checkpoints(
    view: LedgerView,
    run_id: str | None,
    *,
    check: bool,
    progress: Any = None,
    keys: Sequence[PublicKey] = (),
) -> tuple[CheckpointRow, ...]:
    """The run's checkpoints from the ledger, each compared with what is on disk now.

    Only the latest record of each path is checked (as ``ledger verify --check-files``
    does), and only this run's, so a report on a shared ledger does not rehash the cluster.
    An intact checkpoint's signature bundle is checked too (signed by one of ``keys``, when
    given, and naming the recorded digest): one deleted or replaced makes
    ``trainwarden verify`` refuse the checkpoint, or accept another.
    """
    from trainwarden.ledger import checkpoint_records

    all_records = checkpoint_records(view.entries, run=run_id) if run_id else ()
    # A record that no longer verifies (edited, forged) is the ledger's tampering, shown as
    # such: it cannot say what a checkpoint should hold, nor that its deletion was recorded
    # (a forged "checkpoint.deleted" must not turn a deletion into a recorded one).
    integrity = {(e.writer, e.seq): view.integrity_of(e) for e in view.entries}
    records = [
        r for r in all_records if integrity.get((r.writer, r.seq)) in ("verified", "unchecked")
    ]
    latest: dict[str, Any] = {}
    for record in records:
        latest[record.path] = record
    for record in all_records:
        if record.path not in latest:
            latest[record.path] = record
    # Lineage: every signed checkpoint names the previous one's digest as its parent.
    signed = sorted(
        (r for r in all_records if r.event != "checkpoint.deleted" and r.step is not None),
        key=lambda r: (r.step, r.time),
    )
    lineage: dict[tuple[str, int], str] = {}
    for before, after in itertools.pairwise(signed):
        if any(
            integrity.get((r.writer, r.seq)) not in ("verified", "unchecked")
            for r in (before, after)
        ):
            continue  # an edited record breaks no lineage: the ledger's tampering shows it
        if after.parent is not None and before.digest is not None and after.parent != before.digest:
            lineage[(after.writer, after.seq)] = (
                f"names parent {short_digest(after.parent)}, but the checkpoint signed before it "
                f"(step {before.step}, {before.path}) is {short_digest(before.digest)}"
            )
    rows = []
    for path, record in sorted(latest.items(), key=lambda kv: (kv[1].step or 0, kv[0])):
        signer = (
            f"{record.actor.identity} — {record.actor.user}({record.actor.uid})@{record.actor.host}"
        )
        untrusted = integrity.get((record.writer, record.seq)) not in ("verified", "unchecked")
        base = {
            "path": path,
            "event": record.event,
            "step": record.step,
            "digest": record.digest,
            "signer": signer,
            "signer_key": record.actor.key,
            "time": record.time,
            "parent": record.parent,
            "lineage": lineage.get((record.writer, record.seq)),
            "anchor": anchor_of(record.writer, record.seq),
        }
        if untrusted:
            kind = integrity.get((record.writer, record.seq))
            rows.append(
                CheckpointRow(
                    status="unchecked",
                    reason=f"its only ledger record is {kind}: what it says cannot be trusted",
                    **base,
                )
            )
            continue
        if record.event == "checkpoint.deleted":
            rows.append(CheckpointRow(status="deleted", **base))
            continue
        if record.digest is None:
            rows.append(CheckpointRow(status="unchecked", reason="no digest recorded", **base))
            continue
        if not check:
            rows.append(CheckpointRow(status="not-checked", **base))
            continue
        shard_size = record.data.get("shard_size")
        status, current, reason = file_status(
            Path(path), record.digest, shard_size if type(shard_size) is int else None
        )
        owner, modified = _owner_now(Path(path))
        sig_path = as_text(record.data.get("signature"), 4096)
        signature = sig_reason = None
        if status == "ok" and sig_path:
            from trainwarden.sign import bundle_status

            signature, sig_reason = bundle_status(sig_path, record.digest, keys)
        rows.append(
            CheckpointRow(
                status=status,
                current=current,
                reason=reason,
                owner_now=owner,
                modified_now=modified,
                signature=signature,
                signature_path=sig_path if signature else None,
                signature_reason=sig_reason,
                **base,
            )
        )
    return tuple(rows)


def file_status(
    path: Path, digest: str, shard_size: int | None
) -> tuple[str, str | None, str | None]:
    """``(status, digest now, reason)`` for a recorded file: ok, changed, missing, unchecked.

    The digest is the one ``trainwarden sign`` defines (a manifest root) when the record has
    a shard size or the path is a directory, else the plain SHA-256 of the bytes, exactly as
    ``trainwarden ledger verify --check-files`` compares them.
    """
    from trainwarden.errors import InputError
    from trainwarden.sign import DEFAULT_SHARD_SIZE, checkpoint_digest

    try:
        st = path.lstat()
    except FileNotFoundError:
        return "missing", None, None
    except OSError as exc:
        return "unchecked", None, f"cannot stat: {exc.strerror or exc}"
    except ValueError:  # a recorded "path" with a NUL byte: no file can have that name
        return "unchecked", None, "the recorded path is not a valid file name"
    if stat.S_ISLNK(st.st_mode):
        return "changed", None, "is a symlink now"
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        return "changed", None, "no longer a regular file or directory"
    if not digest.startswith("sha256:"):
        return "unchecked", None, f"unsupported digest format {digest.split(':')[0]!r}"
    if shard_size is not None or stat.S_ISDIR(st.st_mode):
        try:
            actual = checkpoint_digest(path, shard_size=shard_size or DEFAULT_SHARD_SIZE)
        except InputError as exc:
            return "unchecked", None, exc.diagnostics()
        return ("ok" if actual == digest else "changed"), actual, None
    h = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    except OSError as exc:
        return "unchecked", None, f"cannot read: {exc.strerror or exc}"
    actual = "sha256:" + h.hexdigest()
    return ("ok" if actual == digest else "changed"), actual, None


def _owner_now(path: Path) -> tuple[str | None, str | None]:
    """Who owns the file now and when it was last changed (evidence, not proof)."""
    from trainwarden._system import user_name

    try:
        st = path.lstat()
    except (OSError, ValueError):
        return None, None
    name = user_name(st.st_uid)
    owner = (
        f"uid {st.st_uid} (no user name here)"
        if name.startswith("uid:")
        else f"{name} (uid {st.st_uid})"
    )
    changed = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(max(st.st_mtime, st.st_ctime)))
    return owner, changed


# -- egress -----------------------------------------------------------------------------------


def build_egress(view: LedgerView) -> tuple[EgressRow, ...]:
    """External endpoints contacted, merged by host and port, external ones first."""
    merged: dict[tuple[str, int | None], dict[str, Any]] = {}
    for entry in view.entries:
        if entry.event != "egress.endpoint":
            continue
        d = entry.data
        host = as_text(d.get("host"), 255) or as_text(d.get("address"), 64) or "?"
        port = as_int(d.get("port"))
        slot = merged.setdefault(
            (host, port),
            {
                "address": as_text(d.get("address"), 64),
                "via": set(),
                "ranks": set(),
                "pids": set(),
                "count": 0,
                "first": entry.time,
                "anchor": anchor_of(entry.writer, entry.seq),
            },
        )
        via = as_text(d.get("via"), 32)
        if via:
            slot["via"].add(via)
        rank = as_int(d.get("rank"))
        if rank is not None:
            slot["ranks"].add(rank)
        pid = as_int(d.get("pid"))
        if pid is not None:
            slot["pids"].add(pid)
        slot["count"] += 1
    rows = [
        EgressRow(
            host=host,
            port=port,
            address=slot["address"],
            via=tuple(sorted(slot["via"])),
            ranks=tuple(sorted(slot["ranks"])),
            pids=tuple(sorted(slot["pids"]))[:32],
            count=slot["count"],
            first_time=slot["first"],
            scope=scope_of(host, slot["address"]),
            anchor=slot["anchor"],
        )
        for (host, port), slot in merged.items()
    ]
    order = {"external": 0, "unknown": 1, "private": 2, "loopback": 3}
    rows.sort(key=lambda r: (order.get(r.scope, 9), r.host, r.port or 0))
    return tuple(rows)


_PRIVATE_NETS = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)


def scope_of(host: str, address: str | None) -> str:
    """``loopback``, ``private``, ``external`` or ``unknown`` (a name never resolved here)."""
    for candidate in (address, host):
        if not candidate:
            continue
        try:
            ip = ipaddress.ip_address(candidate.strip("[]").split("%", 1)[0])
        except ValueError:
            continue
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_loopback or ip.is_unspecified:
            return "loopback"
        # Only the networks a cluster's own machines use count as private: ipaddress's
        # is_private also covers documentation and reserved ranges, which are not.
        if ip.is_link_local or any(ip in net for net in _PRIVATE_NETS if net.version == ip.version):
            return "private"
        return "external"
    if host in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return "loopback"
    # Names are never resolved: the report makes no network request, and a resolver's
    # answer now says nothing about what the name pointed to during the run.
    return "unknown"


# -- pre-flight -------------------------------------------------------------------------------


def build_preflight(view: LedgerView) -> tuple[PreflightRow, ...]:
    """Pre-flight checks in order."""
    rows = []
    for entry in view.entries:
        if not entry.event.startswith("preflight."):
            continue
        summary, _ = summarise(entry)
        d = entry.data
        verdict = as_text(d.get("verdict") or d.get("decision"), 40) or "recorded"
        rows.append(
            PreflightRow(
                check=entry.event.split(".", 1)[1],
                verdict=verdict,
                detail=summary,
                time=entry.time,
                anchor=anchor_of(entry.writer, entry.seq),
            )
        )
    return tuple(rows)


def select_run(entries: Sequence[Entry], run_dir: Path) -> tuple[str | None, str | None]:
    """The run a run directory is about, from the ledger alone: ``(run id, note)``."""
    runs = Counter(e.run for e in entries if e.run is not None)
    if not runs:
        return None, "the ledger has no entry about any run"
    target = os.path.realpath(run_dir)
    for e in entries:
        recorded = e.data.get("run_dir")
        if (
            e.event == "run.start"
            and isinstance(recorded, str)
            and "\x00" not in recorded
            and os.path.realpath(recorded) == target
            and e.run is not None
        ):
            return e.run, None
    if len(runs) == 1:
        return next(iter(runs)), None
    best, _ = runs.most_common(1)[0]
    return best, (
        f"run.json names no run and the ledger holds {len(runs)} runs; showing {best!r}, "
        "the one with the most entries"
    )


def group_by_rank(rows: Iterable[TimelineEvent]) -> dict[int, list[TimelineEvent]]:
    """Timeline rows per rank (for the rank picker)."""
    out: dict[int, list[TimelineEvent]] = defaultdict(list)
    for row in rows:
        if row.rank is not None:
            out[row.rank].append(row)
    return out
