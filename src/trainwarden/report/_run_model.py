"""What a forensic report knows about one run: frozen data, built by ``read_run``.

Everything here was read from a run directory that the people under suspicion could write:
strings are kept as found (the HTML renderer escapes them) and every value that could not be
read or verified says so instead of defaulting to something reassuring.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trainwarden.report._run_telemetry import Telemetry

__all__ = [
    "VERDICTS",
    "CheckpointRow",
    "DiffRow",
    "DrillRow",
    "EgressRow",
    "KillRow",
    "LedgerIssueRow",
    "LedgerStatus",
    "PreflightRow",
    "Provenance",
    "RunComparison",
    "RunFinding",
    "RunInfo",
    "RunReport",
    "SealRow",
    "TimelineEvent",
    "WriterRow",
]

#: Verdicts of a run, worst first: ``compromised`` (at least one finding established by
#: evidence), ``suspicious`` (only suspected findings), ``not-verified`` (no finding, but
#: something could not be verified: signers, files, telemetry), ``clean``.
VERDICTS = ("compromised", "suspicious", "not-verified", "clean")


@dataclass(frozen=True, slots=True)
class RunInfo:
    """``run.json`` as read (every field ``None`` or empty when absent or malformed)."""

    run_id: str | None = None
    command: tuple[str, ...] = ()
    launcher: str | None = None
    cwd: str | None = None
    ledger: str | None = None
    world_size: int | None = None
    nodes: tuple[str, ...] = ()
    started: str | None = None
    ended: str | None = None
    exit_status: int | None = None
    exit_signal: str | None = None
    supervisor: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RunFinding:
    """One verdict card: something the evidence shows (or suggests) was done to the run.

    Attributes:
        technique: ``T1``..``T8`` (see DESIGN.md), or ``""`` when none applies.
        check: The check that found it (a guard ``rule_id``, ``ledger.altered``,
            ``checkpoint.changed``, ``rank.signal``...).
        title: One line for people.
        message: What was found, in a sentence or two.
        evidence: The short evidence (a digest, a sender, a residual), or ``None``.
        severity: ``critical``, ``high``, ``medium``, ``low`` or ``info``.
        established: True when proved by evidence (a signature that no longer matches, a
            signal with its sender); False when suspected (a statistical anomaly).
        rank: Global rank concerned, if exactly one.
        ranks: Every rank concerned (a check that fired on many ranks is one finding).
        step: Step at which it was first found, if known.
        time: When (UTC, the ledger's clock), if known.
        reported_by: Who the ledger names as having recorded it (user, host, pid, key).
        named: Who the evidence names as the actor (a signal's sender, a file's owner, a
            drill's insider), if anyone; ``None`` when the evidence names nobody.
        anchor: Id of the related timeline row, if any.
        reproduce: A command that re-checks it, if there is one.
    """

    technique: str
    check: str
    title: str
    message: str
    evidence: str | None = None
    severity: str = "high"
    established: bool = True
    rank: int | None = None
    ranks: tuple[int, ...] = ()
    step: int | None = None
    time: str | None = None
    reported_by: str | None = None
    named: str | None = None
    anchor: str | None = None
    reproduce: str | None = None


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    """One ledger entry of the run, as the timeline shows it.

    ``category`` is one of ``preflight``, ``run``, ``rank``, ``checkpoint``, ``finding``,
    ``kill``, ``exit``, ``egress``, ``env``, ``guard``, ``drill``, ``other``. ``integrity`` is
    ``verified``, ``unchecked`` (signers not checked) or the ledger issue kind that concerns
    this entry (``altered``, ``forged``...): its content cannot be trusted. One row may stand
    for the same event from several ranks (``ranks``; the other entries' anchors are
    ``aliases``).
    """

    time: str
    event: str
    category: str
    summary: str
    actor: str
    identity: str
    writer: str
    seq: int
    anchor: str
    rank: int | None = None
    step: int | None = None
    level: str = "info"
    integrity: str = "verified"
    ranks: tuple[int, ...] = ()
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class KillRow:
    """A signal or a death by signal: ``rank.signal``, ``guard.signal``, ``rank.exit``...

    ``machinery`` is true for a signal the job's own machinery sent to its ranks (the
    supervisor, torchrun's agent stopping the other ranks after one failed, a sender the
    guard judged to be the rank's ancestor, the kernel delivering a terminal key such as
    Ctrl-C): shown in the table, never a finding.
    """

    time: str
    rank: int | None
    pid: int | None
    signal: str
    source: str
    sender_pid: int | None = None
    sender_uid: int | None = None
    sender_user: str | None = None
    sender_cmdline: str | None = None
    note: str | None = None
    anchor: str = ""
    integrity: str = "verified"
    machinery: bool = False


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    """A checkpoint the ledger saw signed (or saved, or deleted), and what is on disk now.

    ``status``: ``ok`` (digest matches), ``changed``, ``missing``, ``unchecked`` (could not
    be hashed: not verified), ``deleted`` (a deletion was recorded), ``not-checked`` (the
    report was asked not to hash checkpoints).
    """

    path: str
    event: str
    step: int | None
    digest: str | None
    status: str
    current: str | None = None
    reason: str | None = None
    signer: str = ""
    signer_key: str = ""
    time: str = ""
    parent: str | None = None
    lineage: str | None = None
    owner_now: str | None = None
    modified_now: str | None = None
    anchor: str = ""
    #: Its signature bundle, for a checkpoint whose bytes are intact: ``ok``, ``missing``,
    #: ``altered``, ``unchecked``; ``None`` when no bundle was recorded or it was not looked at.
    signature: str | None = None
    signature_path: str | None = None
    signature_reason: str | None = None


@dataclass(frozen=True, slots=True)
class EgressRow:
    """One external endpoint the job contacted (``egress.endpoint``), merged over ranks."""

    host: str
    port: int | None
    address: str | None
    via: tuple[str, ...]
    ranks: tuple[int, ...]
    pids: tuple[int, ...]
    count: int
    first_time: str
    scope: str
    anchor: str = ""
    library: str | None = None


@dataclass(frozen=True, slots=True)
class PreflightRow:
    """One pre-flight check and its verdict."""

    check: str
    verdict: str
    detail: str
    time: str
    anchor: str = ""


@dataclass(frozen=True, slots=True)
class DrillRow:
    """A drill scenario: when the attack began (``drill.scenario``) and when it was caught."""

    scenario: str
    technique: str
    started: str
    insider: str
    attack: str
    detected_by: str | None = None
    detected_at: str | None = None
    seconds_to_detection: float | None = None
    anchor: str = ""


@dataclass(frozen=True, slots=True)
class WriterRow:
    """One ledger writer (or sealer) file and its chain."""

    writer: str
    role: str
    identity: str | None
    key: str | None
    trusted: bool
    entries: int
    head: str | None
    sealed: int
    unsealed: int


@dataclass(frozen=True, slots=True)
class SealRow:
    """One seal found in the ledger."""

    name: str
    time: str
    root: str
    writers: int
    identity: str
    trusted: bool


@dataclass(frozen=True, slots=True)
class LedgerIssueRow:
    """One ledger issue (tampering) or note."""

    kind: str
    message: str
    file: str | None
    line: int | None
    writer: str | None
    seq: int | None
    tampering: bool


@dataclass(frozen=True, slots=True)
class LedgerStatus:
    """The run's ledger as ``inspect_ledger`` found it.

    ``error`` is set (and everything else empty) when it could not be read at all.
    """

    path: str
    intact: bool = False
    signers_checked: bool = False
    seals_checked: bool = False
    entries: int = 0
    run_entries: int = 0
    writers: tuple[WriterRow, ...] = ()
    seals: tuple[SealRow, ...] = ()
    issues: tuple[LedgerIssueRow, ...] = ()
    notes: tuple[LedgerIssueRow, ...] = ()
    error: str | None = None

    @property
    def first_break(self) -> LedgerIssueRow | None:
        """The first issue that is not about a recorded file (those are checkpoint rows)."""
        for issue in self.issues:
            if not issue.kind.startswith("file_"):
                return issue
        return None


@dataclass(frozen=True, slots=True)
class Provenance:
    """The provenance statement (DSSE envelope, in-toto Statement v1, SLSA Provenance v1).

    Parsed defensively for display; ``verification`` says whether its signature was
    verified, and if not, why not. ``outputs`` lists the outputs (subjects) that no longer
    match a statement whose signature verified, as ``(path, status, detail)`` with status
    ``modified``, ``missing`` or ``unreadable``: the checkpoints changed (T7), not the
    statement (T8).
    """

    path: str
    present: bool
    error: str | None = None
    payload_type: str | None = None
    statement_type: str | None = None
    predicate_type: str | None = None
    subjects: tuple[tuple[str, str], ...] = ()
    builder: str | None = None
    build_type: str | None = None
    invocation: str | None = None
    started_on: str | None = None
    finished_on: str | None = None
    external_parameters: tuple[tuple[str, str], ...] = ()
    internal_parameters: tuple[tuple[str, str], ...] = ()
    dependencies: tuple[tuple[str, str], ...] = ()
    byproducts: tuple[tuple[str, str], ...] = ()
    signatures: tuple[str, ...] = ()
    verified: bool | None = None
    verification: str = "not verified"
    ledger_digest: str | None = None
    digest: str | None = None
    outputs: tuple[tuple[str, str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class DiffRow:
    """One difference between this run and the clean run."""

    area: str
    item: str
    this_run: str
    clean_run: str


@dataclass(frozen=True, slots=True)
class RunComparison:
    """``--against``: what differs from a clean run (differences only)."""

    clean_dir: str
    clean_run_id: str | None
    rows: tuple[DiffRow, ...]
    same: Mapping[str, int]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RunReport:
    """Everything the forensic report shows about one run.

    Attributes:
        run_dir: The run directory.
        run_id: The run's id (from ``run.json``, else the ledger).
        info: ``run.json`` as read.
        verdict: One of :data:`VERDICTS`.
        headline: One sentence: what happened, to which rank, who.
        findings: Verdict cards, worst first.
        timeline: The run's ledger entries, in time order (routine ones may be cut, see
            ``timeline_omitted``).
        timeline_omitted: Routine entries left out of ``timeline`` (by event type).
        kills: Signals and deaths by signal.
        checkpoints: Checkpoints the ledger saw and what is on disk now.
        egress: External endpoints contacted.
        preflight: Pre-flight checks.
        drill: Drill scenarios (empty unless the ledger has ``drill.scenario`` events).
        ledger: Ledger verification status.
        telemetry: Per-rank telemetry summaries.
        telemetry_checks: Per rank, the telemetry file against its ``guard.telemetry``
            record: ``(rank, status, detail)`` with status ``ok``, ``changed``,
            ``missing`` or ``unattested``.
        provenance: The provenance statement.
        comparison: The comparison with a clean run, when asked.
        stacks: Stack dumps of hung ranks: ``(name, text)`` (text cut to a bound).
        notes: What could not be read or verified, one sentence each.
        reproduce: Commands that re-check what the report shows: ``(what, command)``.
        generated: When the report was made (UTC).
        unverified: What could not be verified, one sentence each (why the verdict is
            ``not-verified`` when there is no finding).
        facts: Comparable facts by area (code, environment, seeds, data order,
            hyperparameters), for comparisons between runs.
    """

    run_dir: str
    run_id: str | None
    info: RunInfo | None
    verdict: str
    headline: str
    findings: tuple[RunFinding, ...]
    timeline: tuple[TimelineEvent, ...]
    timeline_omitted: Mapping[str, int]
    kills: tuple[KillRow, ...]
    checkpoints: tuple[CheckpointRow, ...]
    egress: tuple[EgressRow, ...]
    preflight: tuple[PreflightRow, ...]
    drill: tuple[DrillRow, ...]
    ledger: LedgerStatus
    telemetry: Telemetry
    telemetry_checks: tuple[tuple[int, str, str], ...]
    provenance: Provenance
    comparison: RunComparison | None
    stacks: tuple[tuple[str, str], ...]
    notes: tuple[str, ...]
    reproduce: tuple[tuple[str, str], ...]
    generated: str
    unverified: tuple[str, ...] = ()
    facts: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @property
    def established(self) -> tuple[RunFinding, ...]:
        """Findings proved by evidence."""
        return tuple(f for f in self.findings if f.established)

    @property
    def techniques(self) -> tuple[str, ...]:
        """Techniques with at least one finding, sorted."""
        return tuple(sorted({f.technique for f in self.findings if f.technique}))
