"""Lineage: a run's checkpoints chained by parent digest, checked alone and against the ledger.

A bare signature cannot show rollback, swap or deletion: an old checkpoint keeps a valid old
signature. The ledger remembers every checkpoint signed, so it can.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from trainwarden.errors import ConfigError, InputError
from trainwarden.events import EventSink
from trainwarden.findings import FileReport, Finding, Location, Report, Severity, Verdict
from trainwarden.keys import PrivateKey, PublicKey
from trainwarden.ledger import (
    CheckpointRecord,
    Ledger,
    LedgerTampered,
    checkpoint_records,
    verify_ledger,
)
from trainwarden.sign._results import Lineage, LineageError, Signature, Verification

__all__ = [
    "LedgerTarget",
    "check_against_ledger",
    "open_ledger_target",
    "record_signature",
    "verify_chain",
]


def _finding(rule: str, message: str, path: str, evidence: str | None = None) -> Finding:
    return Finding(
        rule_id=rule,
        severity=Severity.HIGH,
        message=message,
        location=Location(path=path),
        evidence=evidence,
        verdict=Verdict.UNSAFE,
    )


def verify_chain(checkpoints: Sequence[Signature | Verification]) -> Lineage:
    """Check that checkpoints form one unbroken chain of one run.

    Pass verified checkpoints (the results of :func:`verify_path`) in any order; they are
    ordered by step. Each must name the previous one's digest as its parent; the first may
    name any parent (it may continue a chain that started earlier).

    Returns:
        The chain, oldest first.

    Raises:
        ConfigError: No checkpoints given.
        LineageError: Mixed runs, missing run or step, repeated steps, or a broken link.
    """
    items = [c.signature if isinstance(c, Verification) else c for c in checkpoints]
    if not items:
        raise ConfigError("verify_chain needs at least one checkpoint")
    findings: list[tuple[str, Finding]] = []
    runs = {s.run for s in items}
    for sig in items:
        where = str(sig.path)
        if sig.run is None or sig.step is None:
            findings.append(
                (
                    where,
                    _finding(
                        "lineage.unanchored",
                        "signed without a run and step, so it has no place in a lineage",
                        where,
                    ),
                )
            )
    if len(runs) > 1:
        names = ", ".join(sorted(repr(r) for r in runs))
        findings.extend(
            (
                str(sig.path),
                _finding(
                    "lineage.mixed-runs",
                    f"belongs to run {sig.run!r}; the chain mixes runs {names}",
                    str(sig.path),
                    evidence=sig.run,
                ),
            )
            for sig in items
        )
    ordered = sorted(items, key=lambda s: s.step if s.step is not None else -1)
    for prev, cur in itertools.pairwise(ordered):
        where = str(cur.path)
        if cur.step is not None and prev.step == cur.step:
            findings.append(
                (
                    where,
                    _finding(
                        "lineage.fork",
                        f"step {cur.step} appears twice ({prev.path} and {cur.path}): "
                        "the run forked",
                        where,
                        evidence=str(cur.step),
                    ),
                )
            )
        elif cur.parent != prev.digest:
            findings.append(
                (
                    where,
                    _finding(
                        "lineage.broken",
                        f"step {cur.step} names parent {cur.parent}, but the step {prev.step} "
                        f"checkpoint {prev.path} has digest {prev.digest}",
                        where,
                        evidence=cur.parent,
                    ),
                )
            )
    if findings:
        by_path: dict[str, list[Finding]] = {}
        for where, finding in findings:
            by_path.setdefault(where, []).append(finding)
        report = Report(
            files=tuple(
                FileReport(path=p, format="checkpoint", findings=tuple(f))
                for p, f in sorted(by_path.items())
            ),
            command="verify",
        )
        raise LineageError(report)
    run = ordered[0].run
    assert run is not None  # checked above: every item has a run
    return Lineage(
        run=run,
        steps=tuple(s.step for s in ordered if s.step is not None),
        digests=tuple(s.digest for s in ordered),
    )


@dataclass(frozen=True, slots=True)
class LedgerTarget:
    """Where a signature is recorded: an open sink and its name for messages."""

    sink: EventSink
    name: str


@contextlib.contextmanager
def open_ledger_target(
    ledger: str | os.PathLike[str] | EventSink | None, key: PrivateKey
) -> Iterator[LedgerTarget | None]:
    """Open the ledger a signature will be recorded in, before any work is done.

    A path must name an existing ledger (a mistyped path must not start a new one next to
    the real ledger); a writer is opened in it with ``key`` and closed on exit. An event
    sink (the caller's open :class:`~trainwarden.ledger.Ledger`) is used as is.

    Raises:
        InputError: The path is not an existing ledger, or no writer can be opened in it.
    """
    if ledger is None:
        yield None
        return
    if not isinstance(ledger, (str, os.PathLike)):
        if not isinstance(ledger, EventSink):
            raise ConfigError(
                f"ledger must be a ledger directory or an event sink, not {type(ledger).__name__}"
            )
        name = str(getattr(ledger, "root", None) or type(ledger).__name__)
        yield LedgerTarget(ledger, name)
        return
    root = Path(ledger)
    try:
        writer = Ledger(root, key=key, resume=True, create=False)
    except InputError as exc:
        raise InputError(f"cannot record the signature in ledger {root}: {exc}") from exc
    with writer:
        yield LedgerTarget(writer, str(root))


def _ledger_path(path: Path) -> str:
    # Recorded and compared in resolved form, so "ckpt", "./ckpt" and "/abs/ckpt" agree.
    return str(Path(path).resolve())


def record_signature(sink: EventSink, signature: Signature) -> None:
    """Append a ``checkpoint.signed`` event for ``signature`` to ``sink``.

    The data is what :func:`~trainwarden.ledger.checkpoint_records` reads (``path``,
    ``digest``, ``step``, ``parent``) plus ``signature``, ``files``, ``bytes`` and
    ``shard_size`` (see ``docs/events.md``).

    Raises:
        InputError: The sink could not record it.
    """
    sink.append(
        "checkpoint.signed",
        run=signature.run,
        path=_ledger_path(signature.path),
        digest=signature.digest,
        step=signature.step,
        parent=signature.parent,
        signature=_ledger_path(signature.sig_path),
        files=signature.files,
        bytes=signature.size,
        shard_size=signature.manifest.shard_size,
    )


def check_against_ledger(
    ledger: Path, trusted: Sequence[PublicKey], signature: Signature, where: str
) -> list[Finding]:
    """Compare a checkpoint whose signature verified with what the ledger recorded.

    Detects what a bare signature cannot: rollback (an older signed checkpoint of the run
    where the ledger shows a later one), swap (a checkpoint of another run, or one recorded
    elsewhere), deletion (the run's recorded checkpoints that are gone), and checkpoints
    signed outside the ledger.

    Raises:
        InputError: ``ledger`` is not a ledger.
    """
    try:
        report = verify_ledger(ledger, keys=trusted)
    except LedgerTampered as exc:
        # A ledger that does not verify cannot vouch for anything: fail closed.
        return [
            _finding(
                "lineage.ledger-tampered",
                f"the ledger {ledger} does not verify, so lineage cannot be checked: {exc}",
                where,
            )
        ]
    records = checkpoint_records(report.entries)
    here = _ledger_path(signature.path)
    digest, run = signature.digest, signature.run
    findings: list[Finding] = []
    signed = [r for r in records if r.event == "checkpoint.signed"]
    mine = [r for r in signed if r.digest == digest]
    if not mine:
        findings.append(
            _finding(
                "lineage.unrecorded",
                f"checkpoint {digest} was never recorded in the ledger: signed outside the "
                "recorded workflow, or swapped in from elsewhere",
                where,
                evidence=digest,
            )
        )
    elif run is not None and not any(r.run == run for r in mine):
        runs = ", ".join(sorted({str(r.run) for r in mine}))
        findings.append(
            _finding(
                "lineage.swapped",
                f"the signature says run {run!r}, but the ledger recorded this checkpoint "
                f"for run(s) {runs}",
                where,
                evidence=digest,
            )
        )
    at_path = [r for r in records if r.path == here]
    if at_path and at_path[-1].event != "checkpoint.deleted" and at_path[-1].digest != digest:
        findings.append(_path_finding(at_path[-1], signature, mine, where))
    if run is not None:
        findings.extend(_deleted(records, run, where))
        if signature.parent is not None and not any(
            r.digest == signature.parent and r.run == run for r in signed
        ):
            findings.append(
                _finding(
                    "lineage.parent-unknown",
                    f"parent {signature.parent} is not a checkpoint the ledger recorded for "
                    f"run {run!r}: the chain is broken",
                    where,
                    evidence=signature.parent,
                )
            )
    return findings


def _path_finding(
    latest: CheckpointRecord, signature: Signature, mine: Sequence[CheckpointRecord], where: str
) -> Finding:
    who = f"{latest.actor.identity} at {latest.time}"
    recorded = f"step {latest.step}" if latest.step is not None else f"digest {latest.digest}"
    older = [r for r in mine if r.run == latest.run]
    if latest.run == signature.run and older and _before(older[0], latest, signature):
        return _finding(
            "lineage.rolled-back",
            f"rolled back: this is the run's step {signature.step} checkpoint "
            f"({signature.digest}); the ledger shows {recorded} ({latest.digest}) written "
            f"here later by {who}",
            where,
            evidence=latest.digest,
        )
    if latest.run != signature.run:
        return _finding(
            "lineage.swapped",
            f"swapped: this is a checkpoint of run {signature.run!r}; the ledger shows run "
            f"{latest.run!r}'s {recorded} ({latest.digest}) written here by {who}",
            where,
            evidence=latest.digest,
        )
    return _finding(
        "lineage.swapped",
        f"swapped: the ledger shows {recorded} ({latest.digest}) written here by {who}, not "
        f"this checkpoint ({signature.digest}, step {signature.step})",
        where,
        evidence=latest.digest,
    )


def _before(old: CheckpointRecord, new: CheckpointRecord, signature: Signature) -> bool:
    if signature.step is not None and new.step is not None:
        return signature.step < new.step
    return (old.time, old.seq) < (new.time, new.seq)


def _deleted(records: Sequence[CheckpointRecord], run: str, where: str) -> list[Finding]:
    latest: dict[str, CheckpointRecord] = {}
    for r in records:
        if r.run == run:
            latest[r.path] = r
    out = []
    for path, r in sorted(latest.items()):
        if r.event == "checkpoint.deleted":
            continue  # a deletion the ledger recorded (retention policy): not tampering
        if not Path(path).exists() and not Path(path).is_symlink():
            step = f"step {r.step} " if r.step is not None else ""
            out.append(
                _finding(
                    "lineage.deleted",
                    f"run {run!r}'s {step}checkpoint {path} ({r.digest}, recorded by "
                    f"{r.actor.identity} at {r.time}) is gone, and no deletion was recorded",
                    where,
                    evidence=path,
                )
            )
    return out
