"""What the guard finds: one frozen record per observation, convertible to a shared Finding.

A guard finding names the rule, the technique of the incident it belongs to (T2-T6), the check
that saw it, the rank and step, and whether the evidence *establishes* tampering (a recomputed
update that differs, a hook that is not ours) or only makes it *suspected* (a rank that is slow,
a loss that spikes). Rule ids are the ones listed in ``docs/events.md``.
"""

from __future__ import annotations

import enum
import os
import time
from dataclasses import dataclass, field
from typing import Any

from trainwarden._system import host_name
from trainwarden.events import CONTEXT_RULES
from trainwarden.findings import Finding, Location, Severity, Verdict

__all__ = ["RULES", "Check", "GuardFinding", "Technique"]


class Technique(str, enum.Enum):
    """The incident's techniques the guard covers (see DESIGN.md)."""

    T2 = "T2"  # edits to the shared PyTorch install, seen live
    T3 = "T3"  # a rank made to sleep
    T4 = "T4"  # updates flipped or perturbed
    T5 = "T5"  # seeds, data order and hyperparameters changed
    T6 = "T6"  # processes killed


class Check(str, enum.Enum):
    """The guard's checks, one module each; the value is the name used in events."""

    HYPERPARAM = "hyperparam"
    UPDATE = "update"
    WEIGHTS = "weights"
    HOOKS = "hooks"
    CROSS_RANK = "cross-rank"
    RNG = "rng"
    DATA = "data"
    CODE = "code"
    TIMING = "timing"
    SIGNALS = "signals"
    ANOMALY = "anomaly"


#: rule id -> (technique, check) for every rule the guard emits.
RULES: dict[str, tuple[Technique, Check]] = {
    "guard.hyperparam": (Technique.T5, Check.HYPERPARAM),
    "guard.update": (Technique.T4, Check.UPDATE),
    "guard.weights": (Technique.T4, Check.WEIGHTS),
    "guard.hooks": (Technique.T4, Check.HOOKS),
    "guard.detached": (Technique.T4, Check.HOOKS),
    "guard.cross-rank": (Technique.T4, Check.CROSS_RANK),
    "guard.peer-lost": (Technique.T6, Check.CROSS_RANK),
    "guard.reseed": (Technique.T5, Check.RNG),
    "guard.data-order": (Technique.T5, Check.DATA),
    "guard.code": (Technique.T2, Check.CODE),
    "guard.timing": (Technique.T3, Check.TIMING),
    "guard.signal": (Technique.T6, Check.SIGNALS),
    "guard.anomaly": (Technique.T4, Check.ANOMALY),
    "guard.not-verified": (Technique.T4, Check.UPDATE),
}


@dataclass(frozen=True, slots=True)
class GuardFinding:
    """One observation of the runtime guard.

    Attributes:
        rule_id: Stable rule (``guard.update``...), see :data:`RULES`.
        severity: How much it matters; :attr:`halts` decides whether it stops the job.
        message: One sentence.
        rank: Global rank that saw it (0 without ``torch.distributed``).
        step: The guard's step counter when it was seen (0 before the first step).
        evidence: Short evidence (``residual 2.0 at fc.weight[17]``), never raw tensors.
        established: True when the evidence proves the change (a recomputation, an identity
            check); False when it is only suspected (timing, anomalies).
        technique: T2-T6, from the rule unless given.
        check: The check that saw it, from the rule unless given.
        time: UNIX time of the observation.
        subject: Optional name of what it is about (a parameter, a hook, a rank); findings
            with the same rule and subject are reported once per guard, later ones counted.
    """

    rule_id: str
    severity: Severity
    message: str
    rank: int
    step: int
    evidence: str | None = None
    established: bool = True
    technique: Technique | None = None
    check: Check | None = None
    time: float = field(default_factory=time.time)
    subject: str | None = None

    def __post_init__(self) -> None:
        if self.rule_id not in RULES:
            raise ValueError(f"unknown guard rule {self.rule_id!r}")
        technique, check = RULES[self.rule_id]
        if self.technique is None:
            object.__setattr__(self, "technique", technique)
        if self.check is None:
            object.__setattr__(self, "check", check)

    @property
    def halts(self) -> bool:
        """Whether ``on_violation="halt"`` stops the job for this finding.

        Anomalies and "not verified" notes are context, never proof; everything at ``high``
        or above halts, established or suspected (a rank that sleeps is only ever suspected).
        """
        return self.rule_id not in (*CONTEXT_RULES, "guard.signal") and (
            self.severity >= Severity.HIGH
        )

    @property
    def key(self) -> tuple[str, str]:
        """What makes two findings "the same" for de-duplication."""
        return (self.rule_id, self.subject or self.evidence or self.message)

    def event_data(self) -> dict[str, Any]:
        """The ``guard.finding`` event's data (docs/events.md)."""
        return {
            "rule_id": self.rule_id,
            "technique": self.technique.value if self.technique else None,
            "check": self.check.value if self.check else None,
            "severity": self.severity.label,
            "message": self.message,
            "evidence": self.evidence,
            "rank": self.rank,
            "step": self.step,
            "established": self.established,
            "pid": os.getpid(),
            "host": host_name(),
        }

    def to_finding(self) -> Finding:
        """The shared :class:`trainwarden.findings.Finding` form (reports, SARIF)."""
        if self.rule_id in CONTEXT_RULES:
            verdict = Verdict.SAFE if self.rule_id == "guard.anomaly" else Verdict.UNKNOWN
        else:
            verdict = Verdict.UNSAFE if self.established else Verdict.UNKNOWN
        extra: dict[str, str | int] = {
            "rank": self.rank,
            "step": self.step,
            "technique": self.technique.value if self.technique else "",
            "check": self.check.value if self.check else "",
            "established": "true" if self.established else "false",
        }
        return Finding(
            rule_id=self.rule_id,
            severity=self.severity,
            message=self.message,
            location=Location(path=f"rank:{self.rank}", extra=extra),
            evidence=self.evidence,
            verdict=verdict,
        )

    def describe(self) -> str:
        """One line for logs and exception messages."""
        kind = "established" if self.established else "suspected"
        evidence = f" ({self.evidence})" if self.evidence else ""
        return (
            f"[{self.rule_id}] rank {self.rank} step {self.step}, {kind}: {self.message}{evidence}"
        )
