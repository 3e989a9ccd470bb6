"""Results shared by every capability: severities, verdicts, locations, findings and reports.

Results are plain frozen data. A file's verdict is derived from its findings, never stored
beside them, so a report cannot say ``safe`` while listing a finding that says otherwise.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SCHEMA_VERSION",
    "FileReport",
    "Finding",
    "Location",
    "Report",
    "Severity",
    "Verdict",
]

#: Version of the JSON shape written by :meth:`Report.to_dict` (the interface contract).
SCHEMA_VERSION = 1


class Severity(enum.IntEnum):
    """How much a finding matters; ordered so that ``max()`` picks the worst."""

    INFO = 10
    LOW = 20
    MEDIUM = 30
    HIGH = 40
    CRITICAL = 50

    @property
    def label(self) -> str:
        """Lower-case name used in JSON and text output."""
        return self.name.lower()

    @property
    def sarif_level(self) -> str:
        """SARIF 2.1.0 ``level`` for this severity."""
        if self >= Severity.HIGH:
            return "error"
        if self >= Severity.MEDIUM:
            return "warning"
        return "note"

    @classmethod
    def parse(cls, text: str) -> Severity:
        """Parse a severity name, case-insensitively."""
        try:
            return cls[text.upper()]
        except KeyError:
            names = ", ".join(s.label for s in cls)
            raise ValueError(f"unknown severity {text!r} (expected one of {names})") from None


class Verdict(enum.Enum):
    """What a file's findings add up to.

    ``unknown`` means "not provably safe"; ``error`` means "could not be analysed".
    Neither is ever reported as ``safe``.
    """

    SAFE = "safe"
    UNKNOWN = "unknown"
    UNSAFE = "unsafe"
    ERROR = "error"

    @property
    def rank(self) -> int:
        """Order used to combine verdicts: safe < unknown < unsafe < error."""
        return _VERDICT_RANK[self]

    @classmethod
    def worst(cls, verdicts: Iterable[Verdict]) -> Verdict:
        """Return the most severe verdict, ``safe`` for none."""
        return max(verdicts, key=lambda v: v.rank, default=cls.SAFE)


_VERDICT_RANK = {Verdict.SAFE: 0, Verdict.UNKNOWN: 1, Verdict.UNSAFE: 2, Verdict.ERROR: 3}


@dataclass(frozen=True, slots=True)
class Location:
    """Where a finding is: a path, an optional archive member chain and a byte offset.

    ``member`` names the path inside archives, nested members joined with ``!``
    (``outer.tar!inner.zip!archive/data.pkl``). ``offset`` is relative to the member
    (or to the file when there is no member).
    """

    path: str
    member: str | None = None
    offset: int | None = None
    extra: Mapping[str, str | int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form with stable keys."""
        out: dict[str, Any] = {"path": self.path, "member": self.member, "offset": self.offset}
        out.update(sorted(self.extra.items()))
        return out

    def describe(self) -> str:
        """Short human form: ``path!member@offset``."""
        text = self.path
        if self.member:
            text += f"!{self.member}"
        if self.offset is not None:
            text += f"@{self.offset}"
        return text


@dataclass(frozen=True, slots=True)
class Finding:
    """One observation about one input.

    ``rule_id`` is stable (it is also the SARIF ``ruleId``); ``message`` is one sentence;
    ``evidence`` is short (``posix.system``), never the raw payload; ``verdict`` is what
    this finding forces on its file (``safe`` for purely informational findings).
    """

    rule_id: str
    severity: Severity
    message: str
    location: Location
    evidence: str | None = None
    verdict: Verdict = Verdict.SAFE

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form with stable keys."""
        return {
            "rule_id": self.rule_id,
            "severity": self.severity.label,
            "message": self.message,
            "evidence": self.evidence,
            "location": self.location.to_dict(),
            "verdict": self.verdict.value,
        }


@dataclass(frozen=True, slots=True)
class FileReport:
    """Everything learnt about one input file (or one archive given as a path)."""

    path: str
    format: str
    findings: tuple[Finding, ...] = ()
    size: int | None = None
    sha256: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> Verdict:
        """The worst verdict any finding forces; ``safe`` when none does."""
        return Verdict.worst(f.verdict for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form with stable keys (findings in a stable order)."""
        findings = sorted(self.findings, key=_finding_sort_key)
        out: dict[str, Any] = {
            "path": self.path,
            "format": self.format,
            "verdict": self.verdict.value,
            "findings": [f.to_dict() for f in findings],
            "size": self.size,
            "sha256": self.sha256,
        }
        if self.details:
            out["details"] = {k: self.details[k] for k in sorted(self.details)}
        return out


def _finding_sort_key(f: Finding) -> tuple[int, int, str, str, int, str]:
    loc = f.location
    return (
        -f.verdict.rank,
        -int(f.severity),
        loc.member or "",
        loc.path,
        loc.offset if loc.offset is not None else -1,
        f.rule_id + (f.evidence or ""),
    )


@dataclass(frozen=True, slots=True)
class Report:
    """The result of one run over one or more inputs.

    ``config`` is the configuration that was applied (for ``scan``: profiles and allow
    entries with where each came from, limits that differ from the defaults), listed in
    every rendering so a report says what it was judged against.
    """

    files: tuple[FileReport, ...]
    tool: str = "trainwarden"
    command: str = "scan"
    config: Mapping[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> Verdict:
        """The worst verdict over all files; ``safe`` for an empty report."""
        return Verdict.worst(f.verdict for f in self.files)

    @property
    def findings(self) -> tuple[Finding, ...]:
        """Every finding of every file, in file order."""
        return tuple(f for file in self.files for f in file.findings)

    def summary(self) -> dict[str, Any]:
        """Counts by verdict and by severity."""
        verdicts = Counter(f.verdict.value for f in self.files)
        severities = Counter(f.severity.label for f in self.findings)
        return {
            "files": len(self.files),
            "verdicts": {v.value: verdicts.get(v.value, 0) for v in Verdict},
            "findings": {s.label: severities.get(s.label, 0) for s in Severity},
            "verdict": self.verdict.value,
        }

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of the interface contract (``schema_version`` 1)."""
        from trainwarden import __version__

        out: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": self.tool, "version": __version__, "command": self.command},
            "files": [f.to_dict() for f in sorted(self.files, key=lambda f: f.path)],
            "summary": self.summary(),
        }
        if self.config:
            out["config"] = dict(self.config)
        return out

    def fails(self, fail_on: Verdict) -> bool:
        """True when any file is at or above ``fail_on``, or could not be analysed."""
        return any(
            f.verdict is Verdict.ERROR or f.verdict.rank >= fail_on.rank
            for f in self.files
            if f.verdict is not Verdict.SAFE
        )
