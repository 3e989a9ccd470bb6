"""What the drill found: frozen results, one per scenario, and their JSON form (schema 1)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SCHEMA_VERSION",
    "STATUSES",
    "Detection",
    "DrillResult",
    "Effect",
    "Person",
    "ScenarioResult",
]

#: Version of the JSON written by :meth:`DrillResult.to_dict` (the interface contract).
SCHEMA_VERSION = 1

#: Every scenario status, with its meaning. Only ``detected`` (attacks) and ``clean`` (the
#: control run) pass.
STATUSES: dict[str, str] = {
    "detected": "a check that covers the technique caught the attack",
    "missed": "the attack ran and no check that covers the technique caught it",
    "unavailable": "the component that would catch it is not installed or not wired in",
    "error": "the drill could not carry out the scenario (see reason)",
    "clean": "control run: no check found anything",
    "findings": "control run: a check reported something on the clean run",
}


@dataclass(frozen=True, slots=True)
class Person:
    """Someone a record points at: a ledger actor, a signal's sender, a file's owner.

    Attributes:
        via: Where the attribution comes from (``ledger`` for the actor of a signed entry,
            ``signal sender``, ``file owner``, ``writer key``).
        identity: Identity of the signing key (for ledger actors and writer keys).
        user: Account name, when known.
        uid: Numeric user id, when known.
        host: Host name, when known.
        pid: Process id, when known.
        key: ``SHA256:`` fingerprint of the signing key, when known.
    """

    via: str
    identity: str | None = None
    user: str | None = None
    uid: int | None = None
    host: str | None = None
    pid: int | None = None
    key: str | None = None

    def describe(self) -> str:
        """Short human form: ``identity (user, uid N) @host pid N``."""
        parts = []
        if self.identity:
            parts.append(self.identity)
        # An account without a passwd entry reads "uid4242" (ledger) or "uid:4242": say it once.
        named = self.user not in (None, f"uid{self.uid}", f"uid:{self.uid}")
        if named and self.uid is not None:
            parts.append(f"({self.user}, uid {self.uid})")
        elif self.uid is not None:
            parts.append(f"(uid {self.uid})")
        elif named:
            parts.append(f"({self.user})")
        if self.host:
            parts.append(f"@{self.host}")
        if self.pid is not None:
            parts.append(f"pid {self.pid}")
        return " ".join(parts) or "unknown"

    def matches(self, other: Person) -> bool:
        """Whether both records point at the same principal (key, or uid, or process)."""
        if self.key is not None and other.key is not None and self.key == other.key:
            return True
        if self.pid is not None and other.pid is not None and self.pid == other.pid:
            return self.host is None or other.host is None or self.host == other.host
        return self.uid is not None and self.uid == other.uid and self.uid != 0

    def to_dict(self) -> dict[str, Any]:
        """JSON form with stable keys."""
        return {
            "via": self.via,
            "identity": self.identity,
            "user": self.user,
            "uid": self.uid,
            "host": self.host,
            "pid": self.pid,
            "key": self.key,
        }


@dataclass(frozen=True, slots=True)
class Detection:
    """One check that reported something about a scenario's run.

    Attributes:
        check: The check, as the table names it (``preflight.env``, ``guard.update``,
            ``trainwarden verify``, ``ledger verify``...).
        rule_id: The finding's rule (``env.lock-modified``, ``lineage.rolled-back``...).
        message: What it said (one sentence, from the check).
        time: When it was recorded (UTC, ``YYYY-MM-DDTHH:MM:SS.ffffffZ``).
        seconds: Seconds after the attack began (the insider's ``drill.scenario`` entry).
        steps: Optimizer steps after the attack's first step; ``0`` when caught before the
            job took a step, ``None`` when steps do not apply (files checked after the run).
        counts: Whether this check is one that covers the scenario's technique.
        source: ``ledger`` (an event in the run's ledger) or ``check`` (a verification the
            drill ran on the run's files afterwards, as an operator would).
        evidence: Whom the finding itself points at (a signal's sender, a file's owner, a
            forged entry's writer), when it does.
    """

    check: str
    rule_id: str | None
    message: str
    time: str | None
    seconds: float | None
    steps: int | None
    counts: bool
    source: str
    evidence: Person | None = None

    def after(self) -> str:
        """How long after the attack began, as the table says it (``3 steps, 1.2 s``)."""
        steps = "-" if self.steps is None else f"{self.steps} step{'' if self.steps == 1 else 's'}"
        seconds = "-" if self.seconds is None else f"{self.seconds:.1f} s"
        return f"{steps}, {seconds}"

    def to_dict(self) -> dict[str, Any]:
        """JSON form with stable keys."""
        return {
            "check": self.check,
            "rule_id": self.rule_id,
            "message": self.message,
            "time": self.time,
            "seconds": self.seconds,
            "steps": self.steps,
            "counts": self.counts,
            "source": self.source,
            "evidence": self.evidence.to_dict() if self.evidence else None,
        }


@dataclass(frozen=True, slots=True)
class Effect:
    """What the attack did to the job, compared with the control run.

    Informational: it shows the attack is real (``observed``) in this drill. Detection does
    not depend on it: with the guard halting a job, an attack may have little effect.
    """

    observed: bool | None
    description: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"observed": self.observed, "description": self.description}


@dataclass(frozen=True, slots=True)
class ScenarioResult:
    """The outcome of one scenario (or of the control run).

    Attributes:
        scenario: Scenario id (``control`` for the control run).
        technique: ``T1``..``T8`` (``-`` for the control run).
        title: What happened, in a few words.
        run: Id of the job run it was part of (the ``run`` of its ledger entries).
        status: One of :data:`STATUSES`.
        reason: Why it is not ``detected`` / ``clean``, or what went wrong.
        detections: Every check that reported something, in time order.
        insider: The actor of the insider's ``drill.scenario`` entry, as the ledger names it.
        attack_started: When the attack began (from that entry).
        attack_step: First step the attack acted on, when it acts during training.
        effect: What the attack changed, compared with the control run.
        checks: The checks that count for this scenario.
    """

    scenario: str
    technique: str
    title: str
    run: str
    status: str
    reason: str | None = None
    detections: tuple[Detection, ...] = ()
    insider: Person | None = None
    attack_started: str | None = None
    attack_step: int | None = None
    effect: Effect | None = None
    checks: tuple[str, ...] = field(default=())

    @property
    def detected(self) -> bool:
        """True when a check covering the technique caught the attack."""
        return self.status == "detected"

    @property
    def passed(self) -> bool:
        """``detected`` for an attack, ``clean`` for the control run."""
        return self.status == ("clean" if self.scenario == "control" else "detected")

    @property
    def first(self) -> Detection | None:
        """The earliest detection by a check that counts (what the table shows)."""
        counting = [d for d in self.detections if d.counts]
        return counting[0] if counting else None

    @property
    def attributed(self) -> bool | None:
        """Whether the first detection's evidence points at the insider.

        ``None`` when no evidence names anyone (the kernel does not report who sent a
        SIGKILL, nobody owns a deleted file).
        """
        first = self.first
        if first is None or first.evidence is None or self.insider is None:
            return None
        return first.evidence.matches(self.insider)

    def to_dict(self) -> dict[str, Any]:
        """JSON form with stable keys."""
        first = self.first
        return {
            "scenario": self.scenario,
            "technique": self.technique,
            "title": self.title,
            "run": self.run,
            "status": self.status,
            "detected": self.detected,
            "reason": self.reason,
            "checks": list(self.checks),
            "first": first.to_dict() if first else None,
            "detections": [d.to_dict() for d in self.detections],
            "insider": self.insider.to_dict() if self.insider else None,
            "attributed": self.attributed,
            "attack_started": self.attack_started,
            "attack_step": self.attack_step,
            "effect": self.effect.to_dict() if self.effect else None,
        }


@dataclass(frozen=True, slots=True)
class DrillResult:
    """Everything one drill found.

    Attributes:
        control: The clean control run.
        scenarios: One result per attack scenario, in table order.
        ranks: Ranks of every job run.
        insider: Who the insider was: uid/gid and key identity.
        insider_mode: ``separate-uid`` (the insider ran as another uid; root only) or
            ``same-uid`` (a second key identity under the caller's uid).
        components: Which detecting components were available (``guard``, ``supervisor``...).
        seconds: Wall-clock duration of the whole drill.
        sandbox: The kept sandbox directory (``--keep``), or ``None`` when it was removed.
        notes: Remarks about how the drill ran (e.g. why the insider shares the uid).
    """

    control: ScenarioResult
    scenarios: tuple[ScenarioResult, ...]
    ranks: int
    insider: Person
    insider_mode: str
    components: dict[str, bool]
    seconds: float
    sandbox: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        """Every attack detected and the control run clean (what exit status 0 means)."""
        return self.control.passed and all(s.passed for s in self.scenarios)

    @property
    def errors(self) -> tuple[ScenarioResult, ...]:
        """Scenarios (control included) the drill could not carry out."""
        return tuple(s for s in (self.control, *self.scenarios) if s.status == "error")

    def to_dict(self) -> dict[str, Any]:
        """Deterministic JSON form (``schema_version`` 1)."""
        detected = sum(1 for s in self.scenarios if s.detected)
        return {
            "schema_version": SCHEMA_VERSION,
            "passed": self.passed,
            "ranks": self.ranks,
            "insider": self.insider.to_dict(),
            "insider_mode": self.insider_mode,
            "components": dict(sorted(self.components.items())),
            "seconds": round(self.seconds, 3),
            "sandbox": self.sandbox,
            "notes": list(self.notes),
            "control": self.control.to_dict(),
            "scenarios": [s.to_dict() for s in self.scenarios],
            "summary": {
                "scenarios": len(self.scenarios),
                "detected": detected,
                "not_detected": len(self.scenarios) - detected,
                "control_clean": self.control.passed,
                "errors": len(self.errors),
            },
        }
