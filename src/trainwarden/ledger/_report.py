"""Results of ledger verification: issues, per-writer state, seals, file checks, the report."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from trainwarden.errors import VerificationError
from trainwarden.findings import FileReport, Finding, Location, Report, Severity, Verdict
from trainwarden.ledger._entry import Entry

__all__ = [
    "SCHEMA_VERSION",
    "TAMPER_KINDS",
    "FileCheck",
    "LedgerIssue",
    "LedgerReport",
    "LedgerTampered",
    "SealState",
    "SealedWriter",
    "WriterState",
]

#: Version of the JSON written by :meth:`LedgerReport.to_dict`.
SCHEMA_VERSION = 1

#: Every issue kind, with what it means. Issues make a ledger "tampered" (exit 1).
TAMPER_KINDS: dict[str, str] = {
    "malformed": "a line is not a well-formed entry",
    "altered": "an entry's bytes or content changed after it was signed",
    "forged": "an entry is signed by a key that is not trusted (or not the writer's key)",
    "misplaced": "an entry sits in a file that is not its writer's (file renamed or copied)",
    "dropped": "entries are missing from the middle or the start of a chain",
    "reordered": "entries of a chain are out of order",
    "duplicated": "an entry appears twice",
    "forked": "two different entries claim the same place in a chain",
    "chain_broken": "an entry does not link to the entry before it (an entry was replaced)",
    "truncated": "a chain ends before the point a trusted seal covered",
    "rewritten": "the entry a trusted seal covered as a chain's head is not in the chain",
    "writer_missing": "a writer file that a trusted seal covered is gone",
    "unreadable": "a ledger file is not a regular file or cannot be read",
    "seal_forged": "a seal is signed by a key that is not a trusted seal key",
    "seal_altered": "a seal's content changed after it was signed",
    "seal_invalid": "a seal's Merkle root does not match the chain heads it lists",
    "seal_rollback": "a seal covers less than an earlier one, or a known seal is gone",
    "seal_missing": "seal keys were given but no seal signed by them is in the ledger",
    "file_missing": "a file the ledger saw written is gone",
    "file_changed": "a file the ledger saw written has a different digest now",
    "file_unchecked": "a file the ledger saw written cannot be read or hashed: not verified",
}


@dataclass(frozen=True, slots=True)
class LedgerIssue:
    """One problem (or, in ``warnings``, one note) about a ledger.

    Attributes:
        kind: Stable identifier (see :data:`TAMPER_KINDS`; warnings use their own kinds).
        message: One sentence.
        file: Ledger file concerned, if any.
        writer: Writer (or sealer) id concerned, if any.
        seq: Sequence number concerned, if any.
        line: 1-based line in ``file``, if any.
        offset: Byte offset of that line in ``file``, if any.
    """

    kind: str
    message: str
    file: str | None = None
    writer: str | None = None
    seq: int | None = None
    line: int | None = None
    offset: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form with stable keys."""
        return {
            "kind": self.kind,
            "message": self.message,
            "file": self.file,
            "writer": self.writer,
            "seq": self.seq,
            "line": self.line,
            "offset": self.offset,
        }

    def to_finding(self, *, ledger: str, tampered: bool) -> Finding:
        """This issue as a shared :class:`~trainwarden.findings.Finding` (for SARIF)."""
        extra: dict[str, str | int] = {}
        if self.writer is not None:
            extra["writer"] = self.writer
        if self.seq is not None:
            extra["seq"] = self.seq
        if self.line is not None:
            extra["line"] = self.line
        return Finding(
            rule_id=f"ledger.{self.kind}",
            severity=Severity.HIGH if tampered else Severity.INFO,
            message=self.message,
            location=Location(path=self.file or ledger, offset=self.offset, extra=extra),
            evidence=f"seq {self.seq}" if self.seq is not None else None,
            verdict=Verdict.UNSAFE if tampered else Verdict.SAFE,
        )

    def describe(self) -> str:
        """``file:line: [kind] seq N: message``."""
        where = self.file or self.writer or "ledger"
        if self.line is not None:
            where += f":{self.line}"
        seq = f" seq {self.seq}:" if self.seq is not None else ""
        return f"{where}: [{self.kind}]{seq} {self.message}"


@dataclass(frozen=True, slots=True)
class WriterState:
    """The state of one writer (or sealer) file as verified.

    Attributes:
        writer: Writer id.
        file: Path of the file.
        role: ``writer`` or ``sealer``.
        key: Fingerprint of the key the file's entries are attributed to.
        identity: Identity of that key (the trusted key's, when signers were checked).
        trusted: Whether that key is among the trusted keys.
        entries: Length of the chain (highest sequence number + 1).
        head: Hash of the chain's last entry.
        sealed: Entries covered by the newest trusted seal (0 when none).
        in_progress_bytes: Size of a final incomplete line (an append in progress).
    """

    writer: str
    file: str
    role: str
    key: str | None
    identity: str | None
    trusted: bool
    entries: int
    head: str | None
    sealed: int = 0
    in_progress_bytes: int = 0

    @property
    def unsealed(self) -> int:
        """Entries after the newest trusted seal: their tail truncation cannot be detected."""
        return max(0, self.entries - self.sealed)

    def to_dict(self) -> dict[str, Any]:
        """JSON form with stable keys."""
        return {
            "writer": self.writer,
            "file": self.file,
            "role": self.role,
            "key": self.key,
            "identity": self.identity,
            "trusted": self.trusted,
            "entries": self.entries,
            "head": self.head,
            "sealed": self.sealed,
            "unsealed": self.unsealed,
            "in_progress_bytes": self.in_progress_bytes,
        }


@dataclass(frozen=True, slots=True)
class SealedWriter:
    """One leaf of a seal: a writer's chain length and head hash at sealing time."""

    writer: str
    count: int
    head: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form (also the leaf's content, see ``docs/ledger.md``)."""
        return {"count": self.count, "head": self.head, "writer": self.writer}


@dataclass(frozen=True, slots=True)
class SealState:
    """A seal found in the ledger (or given as a receipt).

    Attributes:
        sealer: Sealer id (its file in ``seals/``).
        seq: The seal entry's sequence number in that file.
        time: When it was made (sealer's clock).
        root: RFC 6962 Merkle root over ``writers``.
        writers: The writers' states it covers.
        key: Fingerprint of the sealing key.
        identity: Identity of the sealing key.
        trusted: Whether the sealing key is trusted and the signature verified.
        hash: Hash of the seal entry.
    """

    sealer: str
    seq: int
    time: str
    root: str
    writers: tuple[SealedWriter, ...]
    key: str
    identity: str
    trusted: bool
    hash: str

    @property
    def name(self) -> str:
        """``sealer#seq``."""
        return f"{self.sealer}#{self.seq}"

    def to_dict(self) -> dict[str, Any]:
        """JSON form with stable keys."""
        return {
            "sealer": self.sealer,
            "seq": self.seq,
            "time": self.time,
            "root": self.root,
            "size": len(self.writers),
            "key": self.key,
            "identity": self.identity,
            "trusted": self.trusted,
            "hash": self.hash,
            "writers": [w.to_dict() for w in self.writers],
        }


@dataclass(frozen=True, slots=True)
class FileCheck:
    """What ``check_files`` found for one file the ledger saw written.

    ``status`` is ``ok``, ``missing``, ``changed`` or ``unchecked`` (with ``reason``).
    """

    path: str
    digest: str
    status: str
    actual: str | None
    event: str
    run: str | None
    writer: str
    seq: int
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form with stable keys."""
        return {
            "path": self.path,
            "digest": self.digest,
            "status": self.status,
            "actual": self.actual,
            "event": self.event,
            "run": self.run,
            "writer": self.writer,
            "seq": self.seq,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class LedgerReport:
    """Everything verification learnt about a ledger.

    Attributes:
        ledger: The ledger directory (or the one writer file verified).
        writers: Per writer state, sorted by writer id.
        seals: Seals found (trusted or not), oldest first.
        issues: Evidence of tampering, in file order; empty when intact.
        warnings: Notes that are not tampering (append in progress, untrusted seals...).
        entries: Writer entries (seals excluded) in timeline order: time, writer, seq.
        files: Results of ``check_files`` (empty when not asked).
        signers_checked: Whether entry signatures were checked against trusted keys.
        seals_checked: Whether seals were checked against trusted seal keys.
    """

    ledger: str
    writers: tuple[WriterState, ...]
    seals: tuple[SealState, ...]
    issues: tuple[LedgerIssue, ...]
    warnings: tuple[LedgerIssue, ...]
    entries: tuple[Entry, ...]
    files: tuple[FileCheck, ...] = ()
    signers_checked: bool = True
    seals_checked: bool = False

    @property
    def intact(self) -> bool:
        """True when no issue was found (signer trust aside: see ``signers_checked``)."""
        return not self.issues

    @property
    def first_issue(self) -> LedgerIssue | None:
        """The first issue in file order, or ``None``."""
        return self.issues[0] if self.issues else None

    def entries_for_run(self, run: str, events: Iterable[str] | None = None) -> tuple[Entry, ...]:
        """Entries about ``run`` (optionally only of the given event types), timeline order."""
        wanted = None if events is None else frozenset(events)
        return tuple(
            e for e in self.entries if e.run == run and (wanted is None or e.event in wanted)
        )

    def to_findings(self) -> Report:
        """The report in the shared findings shape (one file per ledger file), for SARIF.

        Issues are ``unsafe`` findings; notes are informational. Signers that were not
        checked make the ledger ``unknown``, never ``safe``.
        """
        by_file: dict[str, list[Finding]] = {w.file: [] for w in self.writers}
        for issue in self.issues:
            finding = issue.to_finding(ledger=self.ledger, tampered=True)
            by_file.setdefault(finding.location.path, []).append(finding)
        for note in self.warnings:
            finding = note.to_finding(ledger=self.ledger, tampered=False)
            by_file.setdefault(finding.location.path, []).append(finding)
        if not self.signers_checked:
            by_file.setdefault(self.ledger, []).append(
                Finding(
                    rule_id="ledger.signers_unchecked",
                    severity=Severity.MEDIUM,
                    message="chains were checked but not who signed them (no trusted key)",
                    location=Location(path=self.ledger),
                    verdict=Verdict.UNKNOWN,
                )
            )
        files = tuple(
            FileReport(path=path, format="trainwarden-ledger", findings=tuple(findings))
            for path, findings in sorted(by_file.items())
        )
        return Report(files=files, command="ledger verify")

    def to_dict(self) -> dict[str, Any]:
        """Deterministic JSON form (``schema_version`` 1); entries are not included."""
        return {
            "schema_version": SCHEMA_VERSION,
            "ledger": self.ledger,
            "intact": self.intact,
            "first_issue": self.first_issue.to_dict() if self.first_issue else None,
            "signers_checked": self.signers_checked,
            "seals_checked": self.seals_checked,
            "entries": len(self.entries),
            "writers": [w.to_dict() for w in self.writers],
            "seals": [s.to_dict() for s in self.seals],
            "issues": [i.to_dict() for i in self.issues],
            "warnings": [w.to_dict() for w in self.warnings],
            "files": [f.to_dict() for f in self.files],
        }


class LedgerTampered(VerificationError):
    """A ledger did not verify; ``report`` holds every issue found."""

    def __init__(self, report: LedgerReport) -> None:
        self.report = report
        first = report.first_issue
        more = len(report.issues) - 1
        text = first.describe() if first else "ledger did not verify"
        if more > 0:
            text += f" (and {more} more issue(s))"
        super().__init__(f"ledger tampered: {text}")

    def diagnostics(self) -> str:
        """Every issue, one a line."""
        lines = [f"ledger {self.report.ledger} did not verify:"]
        lines.extend(f"  {issue.describe()}" for issue in self.report.issues)
        return "\n".join(lines)
