"""Verdict cards: what the evidence of a run shows was done to it, and how sure that is.

Findings come from the guard (``guard.finding``), from the supervisor's records (signals with
their senders, pre-flight verdicts), and from what the report itself re-checks now: the
ledger's chains and signatures, checkpoint digests, telemetry digests, the provenance
statement. A finding is *established* when the evidence proves it (a digest that no longer
matches what was signed, a signal with its sender); *suspected* when it only points to it (a
statistical anomaly, a death by SIGKILL whose sender the OS does not tell).
"""

from __future__ import annotations

import dataclasses
import shlex
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from trainwarden.events import CONTEXT_RULES
from trainwarden.report._run_ledger import (
    KILL_SIGNALS,
    LedgerView,
    anchor_of,
    as_int,
    as_text,
    describe_actor,
    describe_sender,
    rank_list,
    short_digest,
)
from trainwarden.report._run_model import (
    CheckpointRow,
    DrillRow,
    KillRow,
    LedgerStatus,
    Provenance,
    RunFinding,
)
from trainwarden.report._run_telemetry import Telemetry

if TYPE_CHECKING:
    from trainwarden.ledger import Entry

__all__ = [
    "SEVERITIES",
    "TECHNIQUES",
    "build_drill",
    "build_findings",
    "check_telemetry",
    "headline_of",
    "telemetry_segments",
    "telemetry_sessions",
    "unverified_updates",
    "verdict_of",
]

#: The techniques of DESIGN.md, as the report names them.
TECHNIQUES: Mapping[str, str] = {
    "T1": "checkpoint that runs code when loaded",
    "T2": "tampered code or environment",
    "T3": "sleeping or slowed rank",
    "T4": "perturbed or flipped updates",
    "T5": "seeds, data order or hyperparameters changed",
    "T6": "processes killed",
    "T7": "checkpoints modified or deleted",
    "T8": "evidence tampered with",
}
SEVERITIES = ("critical", "high", "medium", "low", "info")
_RANK_OF_SEVERITY = {s: i for i, s in enumerate(SEVERITIES)}
# Bins where a rank's slowest step is this many times the median rank's slowest step (and at
# least _SLOW_ABS seconds more) count as slow; a rank with _SLOW_BINS such bins is suspected.
_SLOW_RATIO = 3.0
_SLOW_ABS = 0.05
_SLOW_BINS = 3
# A sampled update residual above this is suspected when the guard did not report it (float32
# round-off is ~1e-6; a flipped update is ~2).
_RESIDUAL_SUSPECT = 1e-2


def _opt(value: object) -> str:
    return "?" if value is None else str(value)


def _severity(value: object, default: str = "high") -> str:
    text = as_text(value, 16)
    text = text.lower() if text else default
    return text if text in _RANK_OF_SEVERITY else default


def build_findings(
    *,
    view: LedgerView,
    ledger: LedgerStatus,
    ledger_path: str,
    run_id: str | None,
    kills: Sequence[KillRow],
    checkpoints: Sequence[CheckpointRow],
    telemetry: Telemetry,
    telemetry_checks: Sequence[tuple[int, str, str]],
    provenance: Provenance,
    supervisor_pid: int | None,
    key_args: str,
) -> tuple[RunFinding, ...]:
    """Every finding, worst first (established before suspected, then severity, then time)."""
    show = f"trainwarden ledger show {shlex.quote(ledger_path)}" + (
        f" --run {shlex.quote(run_id)}" if run_id else ""
    )
    findings: list[RunFinding] = []
    # A signal the guard recorded is one card: its guard.signal record (with the sender)
    # is the signal's card, the guard's finding about it only backs that card.
    signal_findings = _guard_signal_findings(view, kills)
    skip = {(e.writer, e.seq) for entries in signal_findings.values() for e in entries}
    findings.extend(_guard_findings(view, show, skip))
    findings.extend(_preflight_findings(view, show))
    findings.extend(_kill_findings(kills, supervisor_pid, show, view, signal_findings))
    findings.extend(_checkpoint_findings(checkpoints, ledger_path, key_args))
    findings.extend(_ledger_findings(view, ledger, ledger_path, key_args))
    findings.extend(_telemetry_integrity_findings(telemetry_checks, show))
    findings.extend(_provenance_findings(provenance, key_args))
    findings.extend(_provenance_output_findings(provenance, checkpoints, key_args))
    findings.extend(_telemetry_suspicions(telemetry, findings))
    findings = [
        dataclasses.replace(f, ranks=(f.rank,)) if f.rank is not None and not f.ranks else f
        for f in findings
    ]
    findings.sort(
        key=lambda f: (
            not f.established,
            _RANK_OF_SEVERITY.get(f.severity, 9),
            f.time or "~",
            f.technique,
            f.rank if f.rank is not None else -1,
        )
    )
    return tuple(findings)


#: Titles of the guard's checks (``rule_id`` values of docs/events.md).
GUARD_TITLES: Mapping[str, str] = {
    "guard.hyperparam": "Hyperparameter off the declared schedule",
    "guard.update": "Optimizer update differs from the reference",
    "guard.weights": "Weights changed outside the optimizer",
    "guard.hooks": "Hook planted on the model or optimizer",
    "guard.detached": "Guard detached from the training loop",
    "guard.cross-rank": "Parameters diverged between ranks",
    "guard.peer-lost": "A rank was lost: the guard could not reach it",
    "guard.reseed": "Random generator reseeded during training",
    "guard.data-order": "Data order changed",
    "guard.code": "Training code replaced at run time",
    "guard.timing": "Rank slow in its own work",
    "guard.signal": "Signal sent to a rank",
    "guard.anomaly": "Anomaly in training",
}


def _guard_signal_findings(
    view: LedgerView, kills: Sequence[KillRow]
) -> dict[tuple[int | None, int | None], list[Entry]]:
    """The guard's ``guard.signal`` findings about signals that have a record of their own.

    In a rank with the guard, one signal leaves a ``guard.signal`` record (signal, sender)
    and a ``guard.finding`` with ``rule_id: guard.signal``: keyed by ``(rank, pid)`` of the
    receiving process, so the signal's card can cite the finding instead of repeating it.
    """
    recorded = {(k.rank, k.pid) for k in kills}
    out: dict[tuple[int | None, int | None], list[Entry]] = defaultdict(list)
    for entry in view.entries:
        if entry.event != "guard.finding" or entry.data.get("rule_id") != "guard.signal":
            continue
        key = (as_int(entry.data.get("rank")), as_int(entry.data.get("pid")))
        if key in recorded:
            out[key].append(entry)
    return dict(out)


def _about(entry: Entry, signal: str) -> bool:
    """Whether the guard's ``guard.signal`` finding is about ``signal`` ("SIGTERM from pid 7")."""
    return any(
        (as_text(entry.data.get(field), 80) or "").startswith(f"{signal} ")
        for field in ("evidence", "message")
    )


def _guard_findings(
    view: LedgerView, show: str, skip: frozenset[tuple[str, int]] | set[tuple[str, int]]
) -> list[RunFinding]:
    # The guard may report the same check at many steps and on many ranks (a learning rate
    # changed for everyone): one card per (rule, technique), naming every rank and the first
    # occurrence, so 64 ranks do not make 64 cards.
    groups: dict[tuple[str, str], list[Entry]] = defaultdict(list)
    for entry in view.entries:
        if entry.event != "guard.finding" or (entry.writer, entry.seq) in skip:
            continue
        d = entry.data
        rule = as_text(d.get("rule_id"), 80) or as_text(d.get("check"), 80) or "guard"
        if rule in CONTEXT_RULES:
            continue  # context: the timeline shows it; unverified updates are listed as such
        groups[(rule, as_text(d.get("technique"), 8) or "")].append(entry)
    out = []
    for (rule, technique), entries in groups.items():
        # An entry that no longer verifies cannot speak for the group.
        trusted = [e for e in entries if view.integrity_of(e) in ("verified", "unchecked")]
        first = (trusted or entries)[0]
        d = first.data
        ranks = sorted({r for r in (as_int(e.data.get("rank")) for e in entries) if r is not None})
        steps = [s for s in (as_int(e.data.get("step")) for e in entries) if s is not None]
        message = as_text(d.get("message")) or "the guard reported a violation"
        reports = len(entries)
        if reports > 1:
            message += f" (reported {reports} times"
            if len(ranks) > 1:
                message += f" by {len(ranks)} ranks"
            if steps and max(steps) != min(steps):
                message += f", steps {min(steps):,}–{max(steps):,}"
            message += ")"
        bad = [e for e in entries if view.integrity_of(e) not in ("verified", "unchecked")]
        if bad:
            message += (
                f" [{len(bad)} of these ledger entries are "
                f"{view.integrity_of(bad[0])}: their content cannot be trusted]"
            )
        check = as_text(d.get("check"), 80)
        title = GUARD_TITLES.get(rule) or TECHNIQUES.get(technique, "Guard finding").capitalize()
        if ranks:
            title += f" on {rank_list(ranks)}"
        out.append(
            RunFinding(
                technique=technique if technique in TECHNIQUES else "",
                check=rule + (f" ({check})" if check and check != rule else ""),
                title=title,
                message=message,
                evidence=as_text(d.get("evidence"), 300),
                severity=_severity(d.get("severity")),
                established=d.get("established") is True and not (bad and not trusted),
                rank=ranks[0] if len(ranks) == 1 else None,
                ranks=tuple(ranks),
                step=min(steps) if steps else None,
                time=first.time,
                reported_by=f"{first.actor.identity} — {describe_actor(first)}",
                named=None,
                anchor=anchor_of(first.writer, first.seq),
                reproduce=f"{show} --event guard.finding",
            )
        )
    return out


def unverified_updates(view: LedgerView) -> list[str]:
    """What the guard said it could not verify (an optimizer without a reference), per rank."""
    ranks: dict[str, set[int]] = defaultdict(set)
    for entry in view.entries:
        if entry.event == "guard.finding" and entry.data.get("rule_id") == "guard.not-verified":
            message = as_text(entry.data.get("message"), 200) or "updates are not verified"
            rank = as_int(entry.data.get("rank"))
            ranks[message].update(() if rank is None else (rank,))
    return [(f"{rank_list(sorted(r))}: " if r else "") + message for message, r in ranks.items()]


def skipped_preflight(view: LedgerView) -> list[str]:
    """Pre-flight checks the run was told to skip (``--env-check off``): not verified.

    A skipped check suggests nothing about tampering; calling the run suspicious for it
    (as a finding did) cried wolf on every run started with the check off.
    """
    out = []
    for entry in view.entries:
        if entry.event not in ("preflight.scan", "preflight.env"):
            continue
        if _preflight_verdict(entry.data) != "skipped":
            continue
        what = "checkpoint scan" if entry.event == "preflight.scan" else "environment check"
        text = f"the pre-flight {what} was skipped"
        if text not in out:
            out.append(text)
    return out


def _preflight_verdict(data: Mapping[str, Any]) -> str:
    """A pre-flight entry's verdict, lower case (empty when it has none)."""
    return (as_text(data.get("verdict"), 40) or "").lower()


def _preflight_findings(view: LedgerView, show: str) -> list[RunFinding]:
    out = []
    for entry in view.entries:
        d = entry.data
        if entry.event not in ("preflight.scan", "preflight.env"):
            continue
        verdict = _preflight_verdict(d)
        if verdict in ("safe", "intact", "ok", "clean", "verified", "skipped"):
            continue  # skipped: not a finding, listed as not verified (skipped_preflight)
        scan = entry.event == "preflight.scan"
        established = verdict in ("unsafe", "tampered", "modified", "compromised")
        messages = []
        findings = d.get("findings")
        if isinstance(findings, list):
            for f in findings[:3]:
                if isinstance(f, Mapping):
                    where = f.get("location")
                    path = where.get("path") if isinstance(where, Mapping) else f.get("path")
                    text = as_text(f.get("message"), 200) or as_text(f.get("rule_id"), 80) or ""
                    messages.append(f"{as_text(path, 200) or ''}: {text}".strip(": "))
        what = "checkpoint scan" if scan else "environment check"
        message = f"the pre-flight {what} returned {verdict or 'no verdict'}"
        if messages:
            message += ": " + "; ".join(messages)
        out.append(
            RunFinding(
                technique="T1" if scan else "T2",
                check=entry.event,
                title=_preflight_title(scan=scan, established=established),
                message=message,
                evidence=as_text(d.get("summary"), 200)
                if not isinstance(d.get("summary"), (dict, list))
                else None,
                severity="critical" if established else "medium",
                established=established,
                time=entry.time,
                reported_by=f"{describe_actor(entry)} [{entry.actor.identity}]",
                anchor=anchor_of(entry.writer, entry.seq),
                reproduce=f"{show} --event {entry.event}",
            )
        )
    return out


def _preflight_title(*, scan: bool, established: bool) -> str:
    """The card's title: what was shown (tampered, unsafe) or only not verified.

    An editable install or a framework class without its profile is ``unknown``: calling it
    "tampered" would send people hunting for an attack nobody made.
    """
    if established:
        return TECHNIQUES["T1" if scan else "T2"].capitalize() + " (pre-flight)"
    what = "Checkpoint not proven safe" if scan else "Code or environment not verifiable"
    return f"{what} (pre-flight)"


def _sender_of(k: KillRow) -> str | None:
    if k.sender_pid is None and k.sender_uid is None and not k.sender_user:
        return None
    return describe_sender(
        {
            "pid": k.sender_pid,
            "uid": k.sender_uid,
            "user": k.sender_user,
            "cmdline": k.sender_cmdline,
        }
    )


def _kill_findings(
    kills: Sequence[KillRow],
    supervisor_pid: int | None,
    show: str,
    view: LedgerView,
    guard_signals: Mapping[tuple[int | None, int | None], Sequence[Entry]],
) -> list[RunFinding]:
    out = []
    # Several witnesses may record one signal (the supervisor's sigwaitinfo, the guard in the
    # rank): one card per (rank, signal), the sender taken from a record that still verifies.
    groups: dict[tuple[int | None, str], list[KillRow]] = defaultdict(list)
    for k in kills:
        if k.machinery:
            continue  # the job's machinery stopping its own ranks (halt, teardown): no attack
        if (
            k.sender_pid is not None
            and supervisor_pid is not None
            and k.sender_pid == supervisor_pid
        ):
            continue
        groups[(k.rank, k.signal)].append(k)
    for (rank, signal), rows in groups.items():
        good = [k for k in rows if k.integrity in ("verified", "unchecked")]
        bad = [k for k in rows if k.integrity not in ("verified", "unchecked")]
        named_rows = [k for k in good if _sender_of(k)] or [k for k in rows if _sender_of(k)]
        k = named_rows[0] if named_rows else (good or rows)[0]
        target = f"rank {rank}" if rank is not None else "the supervisor"
        sender = _sender_of(k)
        backing = [
            e
            for r in rows
            for e in guard_signals.get((r.rank, r.pid), ())
            if view.integrity_of(e) in ("verified", "unchecked") and _about(e, signal)
        ]
        witnesses = ", ".join(sorted({r.source for r in rows}))
        if sender is not None:
            message = (
                f"{target} (pid {k.pid if k.pid is not None else '?'}) received {signal}; the OS "
                f"named the sender (seen by {witnesses})"
            )
            trusted_sender = k.integrity in ("verified", "unchecked")
            for other in bad:
                claim = _sender_of(other)
                if claim and claim != sender:
                    message += (
                        f". Another record of this signal ({other.source}) now names {claim}, "
                        f"but that ledger entry is {other.integrity}: it was changed after it "
                        "was signed"
                    )
            if not trusted_sender:
                message += f" [the only record naming the sender is {k.integrity}]"
            if backing:
                guard_says = as_text(backing[0].data.get("message"), 300)
                message += f". The guard's finding about this signal verifies: {guard_says}"
            out.append(
                RunFinding(
                    technique="T6",
                    check=f"signal.sender ({k.source})",
                    title=f"{signal} sent to {target} by another process",
                    message=message,
                    evidence=sender,
                    severity="high",
                    established=trusted_sender or bool(backing),
                    rank=rank,
                    ranks=() if rank is None else (rank,),
                    time=k.time,
                    reported_by=f"recorded via {witnesses}",
                    named=sender if trusted_sender else None,
                    anchor=k.anchor,
                    reproduce=f"{show} --event rank.signal --event guard.signal",
                )
            )
            continue
        if backing:
            # The record with the sender is gone; the guard's finding about the signal
            # verifies and says what the OS told it.
            d = backing[0].data
            out.append(
                RunFinding(
                    technique="T6",
                    check="guard.signal",
                    title=f"{signal} sent to {target} by another process",
                    message=(
                        f"{target} (pid {_opt(k.pid)}) ended by {signal}; the guard's finding "
                        f"about it verifies: {as_text(d.get('message'), 300)}"
                    ),
                    evidence=as_text(d.get("evidence"), 300),
                    severity="high",
                    established=True,
                    rank=rank,
                    ranks=() if rank is None else (rank,),
                    time=backing[0].time,
                    reported_by=f"recorded via {witnesses}, guard",
                    anchor=anchor_of(backing[0].writer, backing[0].seq),
                    reproduce=f"{show} --event guard.finding --event rank.exit",
                )
            )
            continue
        if signal not in KILL_SIGNALS and signal not in ("SIGSEGV", "SIGBUS", "SIGABRT"):
            continue
        crash = signal not in KILL_SIGNALS
        why = (
            "a crash, or a signal sent on purpose: the exit status does not tell"
            if crash
            else (
                "SIGKILL cannot be intercepted, so the sender is not known (the kernel's OOM "
                "killer also sends it: check the kernel log of the host)"
                if signal == "SIGKILL"
                else "the sender was not recorded"
            )
        )
        out.append(
            RunFinding(
                technique="T6",
                check=f"exit.signal ({k.source})",
                title=f"{target.capitalize()} died of {signal}",
                message=f"{target} (pid {_opt(k.pid)}) ended by {signal}: {why}",
                evidence=k.note,
                severity="medium" if crash else "high",
                established=False,
                rank=rank,
                ranks=() if rank is None else (rank,),
                time=k.time,
                reported_by=f"recorded via {witnesses}",
                anchor=k.anchor,
                reproduce=f"{show} --event rank.exit --event rank.signal",
            )
        )
    return out


def _checkpoint_findings(
    checkpoints: Sequence[CheckpointRow], ledger_path: str, key_args: str
) -> list[RunFinding]:
    out = []
    for c in checkpoints:
        verify = (
            f"trainwarden verify {shlex.quote(c.path)} {key_args} "
            f"--ledger {shlex.quote(ledger_path)}"
        )
        if c.status == "changed":
            out.append(
                RunFinding(
                    technique="T7",
                    check="checkpoint.changed",
                    title="Checkpoint modified after it was signed",
                    message=(
                        f"{c.path} (step {_opt(c.step)}) no longer has the "
                        f"digest signed into the ledger" + (f": {c.reason}" if c.reason else "")
                    ),
                    evidence=(
                        f"signed {short_digest(c.digest)}, "
                        f"now {short_digest(c.current) or 'not a file'}"
                    ),
                    severity="critical",
                    established=True,
                    step=c.step,
                    time=c.modified_now,
                    reported_by=f"signed by {c.signer}",
                    named=f"{c.owner_now} owns the file now" if c.owner_now else None,
                    anchor=c.anchor,
                    reproduce=verify,
                )
            )
        elif c.status == "missing":
            out.append(
                RunFinding(
                    technique="T7",
                    check="checkpoint.missing",
                    title="Checkpoint deleted",
                    message=(
                        f"{c.path} (step {_opt(c.step)}) was signed into the "
                        "ledger and is gone, and no deletion was recorded"
                    ),
                    evidence=f"signed {short_digest(c.digest)}",
                    severity="critical",
                    established=True,
                    step=c.step,
                    reported_by=f"signed by {c.signer}",
                    anchor=c.anchor,
                    reproduce=verify,
                )
            )
        if c.status == "ok" and c.signature in ("missing", "altered"):
            what = "deleted" if c.signature == "missing" else "replaced or edited"
            out.append(
                RunFinding(
                    technique="T7",
                    check=f"checkpoint.signature-{c.signature}",
                    title=f"Checkpoint's signature {what}",
                    message=(
                        f"{c.path} (step {_opt(c.step)}) still holds the bytes signed into the "
                        f"ledger, but its signature {c.signature_path} was {what} after "
                        "signing: trainwarden verify now refuses it"
                        + (f" ({c.signature_reason})" if c.signature_reason else "")
                    ),
                    evidence=f"signed {short_digest(c.digest)}",
                    severity="high",
                    established=True,
                    step=c.step,
                    reported_by=f"signed by {c.signer}",
                    anchor=c.anchor,
                    reproduce=verify,
                )
            )
        if c.lineage:
            out.append(
                RunFinding(
                    technique="T7",
                    check="checkpoint.lineage",
                    title="Checkpoint lineage broken (rollback or swap?)",
                    message=f"{c.path} {c.lineage}",
                    evidence=short_digest(c.parent),
                    severity="medium",
                    established=False,
                    step=c.step,
                    time=c.time,
                    reported_by=f"signed by {c.signer}",
                    anchor=c.anchor,
                    reproduce=verify,
                )
            )
    return out


_LEDGER_TITLES = {
    "altered": "Ledger entry edited after it was signed",
    "forged": "Ledger entry signed by an untrusted key",
    "dropped": "Ledger entries removed",
    "reordered": "Ledger entries reordered",
    "duplicated": "Ledger entry duplicated",
    "forked": "Ledger chain forked",
    "chain_broken": "Ledger entry replaced",
    "truncated": "Ledger truncated after a seal",
    "rewritten": "Sealed ledger entries rewritten",
    "writer_missing": "Ledger writer file deleted",
    "malformed": "Ledger line malformed",
    "misplaced": "Ledger entry moved to another writer's file",
}


def _ledger_findings(
    view: LedgerView, ledger: LedgerStatus, ledger_path: str, key_args: str
) -> list[RunFinding]:
    out: list[RunFinding] = []
    by_key = {(e.writer, e.seq): e for e in view.entries}
    issues = [i for i in ledger.issues if not i.kind.startswith("file_")]
    verify = f"trainwarden ledger verify {shlex.quote(ledger_path)} {key_args}".rstrip()
    for issue in issues[:20]:
        entry = by_key.get((issue.writer or "", issue.seq if issue.seq is not None else -1))
        named = None
        where = f"writer {issue.writer or issue.file or '?'}"
        if issue.seq is not None:
            where += f", seq {issue.seq}"
        if entry is not None:
            where = (
                f"the {entry.event} entry written by {entry.actor.identity} "
                f"({describe_actor(entry)}; {where})"
            )
            if issue.kind == "forged":
                named = f"key {entry.actor.key} ({entry.actor.identity}), not a trusted key"
        if issue.kind == "forged" and named is None:
            writer = next((w for w in ledger.writers if w.writer == issue.writer), None)
            if writer is not None and writer.key:
                named = f"key {writer.key} ({writer.identity or '?'}), not a trusted key"
        tail = "; what it says now cannot be trusted" if issue.kind in ("altered", "forged") else ""
        # No seal by a trusted seal key: its seals were deleted, or it was never sealed. The
        # ledger cannot tell which, so evidence tampering is suspected, not established.
        unsealed = issue.kind == "seal_missing"
        if unsealed:
            tail = "; seals deleted and a ledger never sealed look the same"
        out.append(
            RunFinding(
                technique="T8",
                check=f"ledger.{issue.kind}",
                title=_LEDGER_TITLES.get(issue.kind, f"Ledger {issue.kind.replace('_', ' ')}"),
                message=f"{where}: {issue.message}{tail}",
                evidence=f"{issue.file}:{issue.line}" if issue.file and issue.line else issue.file,
                severity="high" if unsealed else "critical",
                established=not unsealed,
                time=entry.time if entry is not None else None,
                # The rank an edited or forged entry names is whatever its author wrote.
                rank=as_int(entry.data.get("rank"))
                if entry is not None and issue.kind not in ("altered", "forged")
                else None,
                reported_by="ledger verification (now)",
                named=named,
                anchor=anchor_of(entry.writer, entry.seq) if entry is not None else None,
                reproduce=verify,
            )
        )
    if len(issues) > 20:
        out.append(
            RunFinding(
                technique="T8",
                check="ledger.issues",
                title=f"{len(issues) - 20} more ledger issues",
                message="see the ledger section for every issue",
                severity="critical",
                established=True,
                reported_by="ledger verification (now)",
                reproduce=verify,
            )
        )
    return out


def telemetry_sessions(view: LedgerView) -> dict[int, list[Entry]]:
    """Per rank, the ``guard.telemetry`` records of the sessions that wrote its file, in order."""
    sessions: dict[int, list[Entry]] = defaultdict(list)
    for entry in view.entries:
        if entry.event == "guard.telemetry":
            rank = as_int(entry.data.get("rank"))
            if rank is not None:
                sessions[rank].append(entry)
    return dict(sessions)


def telemetry_segments(sessions: Mapping[int, Sequence[Entry]]) -> dict[int, list[int]]:
    """Per rank, the bytes each session attested, when every session of the rank says so."""
    out = {}
    for rank, entries in sessions.items():
        sizes = [as_int(e.data.get("bytes")) for e in entries]
        if sizes and all(b is not None and b >= 0 for b in sizes):
            out[rank] = [b for b in sizes if b is not None]
    return out


def check_telemetry(
    sessions: Mapping[int, Sequence[Entry]], telemetry: Telemetry
) -> tuple[tuple[int, str, str], ...]:
    """Each rank's telemetry file against the ``guard.telemetry`` records of its sessions.

    Each guard session hashes what it appended; the file should be those byte ranges, in
    order. Returns ``(rank, status, detail)``: ``ok``; ``changed`` (a range differs, or the
    file is shorter than attested); ``missing`` (attested but gone); ``unattested`` (no
    record, e.g. a killed rank whose guard never closed, or bytes after the attested ranges):
    not verified, which is not the same as tampered.
    """
    segments = telemetry_segments(sessions)
    out = []
    seen = set()
    for r in telemetry.ranks:
        seen.add(r.rank)
        entries = list(sessions.get(r.rank, ()))
        if not entries:
            out.append((r.rank, "unattested", "no guard.telemetry record: not verified"))
            continue
        if r.error is not None:
            out.append((r.rank, "unchecked", r.error))
            continue
        sizes = segments.get(r.rank)
        if sizes is None:
            out.append((r.rank, *_whole_file(r, entries)))
            continue
        out.append((r.rank, *_by_session(r, entries, sizes)))
    for rank, recorded in sorted(sessions.items()):
        if rank not in seen:
            path = as_text(recorded[-1].data.get("path")) or f"rank-{rank}.jsonl"
            out.append((rank, "missing", f"{path} was attested by the guard and is gone"))
    out.sort()
    return tuple(out)


def _whole_file(r: Any, entries: Sequence[Entry]) -> tuple[str, str]:
    # Without byte counts, only a file written by one session can be checked whole.
    entry = entries[-1]
    want = _bare_digest(entry.data.get("sha256"))
    lines = as_int(entry.data.get("lines"))
    if want is None:
        return "unattested", "the guard.telemetry record has no sha256"
    if want == _bare_digest(r.sha256):
        return "ok", f"{r.lines} lines, sha256 matches"
    claimed = short_digest(entry.data.get("sha256"))
    detail = f"sha256 now {short_digest(r.sha256)}, attested {claimed}"
    if lines is not None and lines != r.lines:
        detail += f"; {r.lines} lines now, {lines} attested"
    if len(entries) > 1:
        detail += f" ({len(entries)} guard sessions wrote it and recorded no byte counts)"
        return "unattested", detail
    return "changed", detail


def _by_session(r: Any, entries: Sequence[Entry], sizes: Sequence[int]) -> tuple[str, str]:
    got = r.segment_digests
    start = 0
    for i, (entry, size) in enumerate(zip(entries, sizes, strict=True)):
        end = start + size
        session = f"session {i + 1} of {len(entries)} (pid {entry.actor.pid}, {entry.time[:19]})"
        if i >= len(got):
            return (
                "changed",
                f"the file holds {r.size:,} bytes; the guard attested {sum(sizes):,} "
                f"(cut inside {session})",
            )
        if _bare_digest(got[i]) != _bare_digest(entry.data.get("sha256")):
            return "changed", f"bytes {start:,}-{end:,} differ from what {session} attested"
        start = end
    if r.size > start:
        return (
            "unattested",
            f"{r.size - start:,} bytes after what the guard attested are not attested "
            "(appended later, or by a session that did not close)",
        )
    n = len(entries)
    return "ok", f"{r.lines} lines, sha256 of {n} session{'s' if n > 1 else ''} matches"


def _bare_digest(value: object) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    return value.lower().removeprefix("sha256:")


def _telemetry_integrity_findings(
    checks: Sequence[tuple[int, str, str]], show: str
) -> list[RunFinding]:
    out = []
    for rank, status, detail in checks:
        if status not in ("changed", "missing"):
            continue
        out.append(
            RunFinding(
                technique="T8",
                check=f"telemetry.{status}",
                title=(
                    f"Telemetry of rank {rank} edited after the guard closed it"
                    if status == "changed"
                    else f"Telemetry of rank {rank} deleted"
                ),
                message=(
                    f"the per-step measurements of rank {rank} differ from what the guard "
                    f"attested in the ledger: {detail}"
                    if status == "changed"
                    else detail
                ),
                evidence=detail,
                severity="high",
                established=True,
                rank=rank,
                reported_by="telemetry check against guard.telemetry (now)",
                reproduce=f"{show} --event guard.telemetry",
            )
        )
    return out


def _provenance_findings(provenance: Provenance, key_args: str) -> list[RunFinding]:
    out = []
    verify = f"trainwarden provenance verify {shlex.quote(provenance.path)} {key_args}".rstrip()
    if provenance.verified is False:
        out.append(
            RunFinding(
                technique="T8",
                check="provenance.signature",
                title="Provenance statement does not verify",
                message=provenance.verification,
                severity="critical",
                established=True,
                reported_by="provenance verification (now)",
                reproduce=verify,
            )
        )
    if provenance.ledger_digest is not None:
        if not provenance.present:
            out.append(
                RunFinding(
                    technique="T8",
                    check="provenance.missing",
                    title="Provenance statement deleted",
                    message=(
                        f"the ledger records a signed provenance statement "
                        f"({short_digest(provenance.ledger_digest)}) but {provenance.path} is gone"
                    ),
                    severity="high",
                    established=True,
                    reported_by="provenance check against provenance.signed (now)",
                    reproduce=verify,
                )
            )
        elif provenance.digest is not None and _bare_digest(provenance.digest) != _bare_digest(
            provenance.ledger_digest
        ):
            out.append(
                RunFinding(
                    technique="T8",
                    check="provenance.changed",
                    title="Provenance statement changed after it was signed",
                    message=(
                        f"{provenance.path} has digest {short_digest(provenance.digest)}; the "
                        f"ledger recorded {short_digest(provenance.ledger_digest)}"
                    ),
                    evidence=short_digest(provenance.digest),
                    severity="high",
                    established=True,
                    reported_by="provenance check against provenance.signed (now)",
                    reproduce=verify,
                )
            )
    return out


def _provenance_output_findings(
    provenance: Provenance, checkpoints: Sequence[CheckpointRow], key_args: str
) -> list[RunFinding]:
    """Outputs changed or deleted after a statement that still verifies named them: T7.

    The statement is intact (its signature verifies), so nothing about the evidence was
    tampered with; what changed is the checkpoint. A checkpoint the ledger's records
    already show as changed or missing has its card: only outputs no card covers get one.
    """
    covered = {c.path for c in checkpoints if c.status in ("changed", "missing")}
    verify = f"trainwarden provenance verify {shlex.quote(provenance.path)} {key_args}".rstrip()
    out = []
    for path, status, detail in provenance.outputs:
        if status == "unreadable" or path in covered:
            continue
        deleted = status == "missing"
        out.append(
            RunFinding(
                technique="T7",
                check=f"provenance.output-{status}",
                title="Checkpoint deleted" if deleted else "Checkpoint modified after the run",
                message=(
                    f"{path} is named by the run's signed provenance statement (which verifies) "
                    + ("and is gone" if deleted else f"and changed since: {detail}")
                ),
                evidence=None if deleted else detail,
                severity="critical",
                established=True,
                reported_by="provenance outputs rehashed (now)",
                reproduce=verify,
            )
        )
    return out


def _telemetry_suspicions(telemetry: Telemetry, found: Sequence[RunFinding]) -> list[RunFinding]:
    """Anomalies in the telemetry that no other finding explains (suspected only)."""
    if len(telemetry.ranks) < 2 or telemetry.bins == 0:
        return []
    covered = {(f.technique, f.rank) for f in found}
    # Telemetry edited after the guard closed it is the evidence's tampering (T8): what it
    # now says about its rank (slow, off the reference) is not evidence of T3 or T4.
    edited = {f.rank for f in found if f.check == "telemetry.changed"}
    covered |= {(t, rank) for rank in edited for t in ("T3", "T4")}
    out = []
    work = [(r.rank, r.metric("work")) for r in telemetry.ranks]
    slow_bins: dict[int, list[int]] = defaultdict(list)
    ratios: dict[int, float] = {}
    for index in range(telemetry.bins):
        highs = [(rank, bins.high[index]) for rank, bins in work if bins is not None]
        values = sorted(v for _, v in highs if v is not None)
        if len(values) < 2:
            continue
        median = values[len(values) // 2]
        for rank, value in highs:
            if value is None or median <= 0:
                continue
            if value >= _SLOW_RATIO * median and value - median >= _SLOW_ABS:
                slow_bins[rank].append(index)
                ratios[rank] = max(ratios.get(rank, 0.0), value / median)
    for rank, indexes in sorted(slow_bins.items()):
        if len(indexes) < _SLOW_BINS or ("T3", rank) in covered:
            continue
        first, _ = telemetry.bin_steps(indexes[0])
        out.append(
            RunFinding(
                technique="T3",
                check="report.telemetry-timing",
                title=f"Rank {rank} is slow in its own work",
                message=(
                    f"in {len(indexes)} of {telemetry.bins} step bins, rank {rank}'s slowest step "
                    f"of own work (forward+backward+optimizer, waits excluded) was at least "
                    f"{_SLOW_RATIO:g}x the median rank's, from step {first} on; the guard "
                    "reported nothing for it"
                ),
                evidence=f"up to {ratios[rank]:.1f}x the median rank",
                severity="medium",
                established=False,
                rank=rank,
                step=first,
                reported_by="telemetry analysis (this report)",
            )
        )
    for r in telemetry.ranks:
        bins = r.metric("residual")
        if bins is None or ("T4", r.rank) in covered:
            continue
        worst = bins.overall_high()
        if worst is None or worst < _RESIDUAL_SUSPECT:
            continue
        index = next(i for i, v in enumerate(bins.high) if v is not None and v >= _RESIDUAL_SUSPECT)
        first, _ = telemetry.bin_steps(index)
        out.append(
            RunFinding(
                technique="T4",
                check="report.telemetry-residual",
                title=f"Updates of rank {r.rank} differ from the reference",
                message=(
                    f"the sampled update check of rank {r.rank} measured a relative residual up "
                    f"to {worst:.3g} (from steps {first}..{first + telemetry.width - 1} on); the "
                    "guard reported nothing for it"
                ),
                evidence=f"residual {worst:.3g}",
                severity="medium",
                established=False,
                rank=r.rank,
                step=first,
                reported_by="telemetry analysis (this report)",
            )
        )
    return out


def build_drill(view: LedgerView, findings: Sequence[RunFinding]) -> tuple[DrillRow, ...]:
    """Drill scenarios with the first finding of their technique after each began."""
    rows = []
    for entry in view.entries:
        if entry.event != "drill.scenario":
            continue
        d = entry.data
        technique = as_text(d.get("technique"), 8) or ""
        started = as_text(d.get("started"), 40) or entry.time
        hits = sorted(
            (f for f in findings if f.technique == technique and f.time and f.time >= entry.time),
            key=lambda f: f.time or "",
        )
        hit = hits[0] if hits else None
        delay = None
        if hit is not None and hit.time:
            delay = _delta(entry.time, hit.time)
        rows.append(
            DrillRow(
                scenario=as_text(d.get("scenario"), 120) or "?",
                technique=technique,
                started=started,
                insider=as_text(d.get("insider"), 200) or f"{entry.actor.identity}",
                attack=as_text(d.get("attack"), 400) or "",
                detected_by=hit.check if hit else None,
                detected_at=hit.time if hit else None,
                seconds_to_detection=delay,
                anchor=anchor_of(entry.writer, entry.seq),
            )
        )
    return tuple(rows)


def _delta(start: str, end: str) -> float | None:
    from datetime import datetime

    try:
        a = datetime.strptime(start[:26].rstrip("Z"), "%Y-%m-%dT%H:%M:%S.%f")
        b = datetime.strptime(end[:26].rstrip("Z"), "%Y-%m-%dT%H:%M:%S.%f")
    except ValueError:
        return None
    return (b - a).total_seconds()


def verdict_of(findings: Sequence[RunFinding], unverified: Sequence[str]) -> str:
    """``compromised``, ``suspicious``, ``not-verified`` or ``clean``."""
    if any(f.established and f.severity in ("critical", "high", "medium") for f in findings):
        return "compromised"
    if findings:
        return "suspicious"
    if unverified:
        return "not-verified"
    return "clean"


def headline_of(verdict: str, findings: Sequence[RunFinding], unverified: Sequence[str]) -> str:
    """One sentence for the top of the report: what happened, to which rank, who."""
    if verdict == "clean":
        return "No sign of sabotage: every check ran and passed."
    if verdict == "not-verified":
        return (
            "No finding, but not everything could be verified: "
            + "; ".join(unverified[:3])
            + ("…" if len(unverified) > 3 else "")
            + "."
        )
    established = sorted({f.technique for f in findings if f.technique and f.established})
    suspected = sorted({f.technique for f in findings if f.technique} - set(established))
    parts = []
    if established:
        count = sum(1 for f in findings if f.established)
        parts.append(
            f"{count} finding{'' if count == 1 else 's'} established ({', '.join(established)})"
        )
    if suspected:
        parts.append(f"suspected {', '.join(suspected)}")
    if not parts:
        parts.append(f"{len(findings)} finding{'' if len(findings) == 1 else 's'}")
    text = "; ".join(parts)
    # Ranks singled out: those named by findings that do not concern every rank alike.
    counts: dict[int, int] = defaultdict(int)
    for f in findings:
        if 0 < len(f.ranks) <= 2:
            for r in f.ranks:
                counts[r] += 1
    if counts:
        ranked = sorted(counts, key=lambda r: (-counts[r], r))
        text += (
            "; ranks hit: "
            + ", ".join(str(r) for r in ranked[:6])
            + ("…" if len(ranked) > 6 else "")
        )
    named: list[str] = []
    # People first (a signal's sender, an untrusted key), then file owners.
    for f in sorted(findings, key=lambda f: f.technique != "T6"):
        if f.named and f.established and f.named not in named:
            named.append(f.named)
    if named:
        text += (
            "; the evidence names "
            + named[0]
            + (f" (+{len(named) - 1} more)" if len(named) > 1 else "")
        )
    return text[0].upper() + text[1:] + "."


def first_of(items: Sequence[Any]) -> Any:
    """First item or ``None``."""
    return items[0] if items else None
