"""Verify a provenance envelope: its signature, the statement's shape, and the outputs on disk."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainwarden._fs import read_regular
from trainwarden.errors import ConfigError, InputError, VerificationError
from trainwarden.findings import FileReport, Finding, Location, Report, Severity, Verdict
from trainwarden.keys import PublicKey
from trainwarden.provenance._dsse import MAX_ENVELOPE_BYTES, load_json_strict, parse_envelope
from trainwarden.provenance._statement import (
    PAYLOAD_TYPE,
    Statement,
    check_statement,
    parse_statement,
)

__all__ = [
    "ProvenanceMismatch",
    "ProvenanceVerification",
    "SubjectCheck",
    "read_provenance",
    "verify_provenance",
]

_COMMAND = "provenance verify"


@dataclass(frozen=True, slots=True)
class SubjectCheck:
    """One subject compared with what is on disk now.

    Attributes:
        name: The subject's name in the statement.
        path: Where it was looked for.
        expected: The digest the statement records (``sha256:<hex>``).
        actual: The digest on disk now, or ``None`` when it could not be computed.
        status: ``ok``, ``modified``, ``missing``, ``unreadable`` or ``not-checked``.
        reason: Why it is not ``ok``.
    """

    name: str
    path: str
    expected: str
    actual: str | None
    status: str
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "name": self.name,
            "path": self.path,
            "expected": self.expected,
            "actual": self.actual,
            "status": self.status,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class ProvenanceVerification:
    """The outcome of :func:`verify_provenance` (returned only when everything matched).

    Attributes:
        path: The envelope file.
        signer: The trusted key that signed it (``None`` when no signature verified).
        statement: The statement (``None`` when the signature or shape check failed).
        subjects: Each subject compared with the disk.
        report: Findings in the shared report shape (``command="provenance verify"``).
    """

    path: str
    signer: PublicKey | None
    statement: Statement | None
    subjects: tuple[SubjectCheck, ...]
    report: Report

    @property
    def ok(self) -> bool:
        """Whether nothing failed."""
        return not any(f.verdict is not Verdict.SAFE for f in self.report.findings)


class ProvenanceMismatch(VerificationError):
    """The statement's signature, shape or outputs did not verify; ``.result`` says how."""

    def __init__(self, result: ProvenanceVerification) -> None:
        self.result = result
        bad = [f for f in result.report.findings if f.verdict is not Verdict.SAFE]
        first = bad[0].message if bad else "verification failed"
        more = f" (and {len(bad) - 1} more problem(s))" if len(bad) > 1 else ""
        super().__init__(f"{result.path}: {first}{more}")

    @property
    def report(self) -> Report:
        """The findings."""
        return self.result.report

    def diagnostics(self) -> str:
        """Every failed check, one a line."""
        lines = [f"provenance {self.result.path} does not verify:"]
        lines.extend(
            f"  [{f.rule_id}] {f.message}"
            for f in self.result.report.findings
            if f.verdict is not Verdict.SAFE
        )
        return "\n".join(lines)


def _finding(rule: str, message: str, path: str, evidence: str | None = None) -> Finding:
    return Finding(
        rule_id=rule,
        severity=Severity.HIGH,
        message=message,
        location=Location(path=path),
        evidence=evidence,
        verdict=Verdict.UNSAFE,
    )


def read_provenance(path: str | os.PathLike[str]) -> Statement:
    """Parse a provenance envelope's statement **without verifying its signature**.

    For display only (the report shows it as "not verified" until
    :func:`verify_provenance` says otherwise).

    Raises:
        InputError: The file is not a DSSE envelope holding a trainwarden statement.
    """
    envelope = parse_envelope(
        read_regular(path, limit=MAX_ENVELOPE_BYTES, what="provenance statement"),
        what=f"provenance statement {path}",
    )
    doc = load_json_strict(envelope.payload, what=f"the statement in {path}")
    return parse_statement(doc)


def verify_provenance(
    path: str | os.PathLike[str],
    keys: PublicKey | Iterable[PublicKey],
    *,
    against: str | os.PathLike[str] | None = None,
    check_outputs: bool = True,
    workers: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> ProvenanceVerification:
    """Verify a provenance envelope and, by default, that its outputs are unchanged on disk.

    The signature is checked over the exact payload bytes before anything in them is read;
    the statement must be a trainwarden training-run statement; each subject's digest is
    recomputed the way ``trainwarden sign`` computes it and compared.

    Args:
        path: The envelope (``RUN_DIR/provenance.intoto.json``).
        keys: Trusted public keys (the supervisor's).
        against: Resolve relative subject names against this directory (default: the run's
            working directory as recorded in the statement).
        check_outputs: Compare the subjects with the disk (``False``: signature and shape).
        workers: Hashing threads.
        progress: Called with each subject name before it is hashed.

    Returns:
        The verification, when the signature, the shape and every output match.

    Raises:
        ProvenanceMismatch: The signature, the shape or an output does not match.
        InputError: The file cannot be read or is not a DSSE envelope.
        ConfigError: No trusted key was given.
    """
    trusted = [keys] if isinstance(keys, PublicKey) else list(keys)
    if not trusted:
        raise ConfigError("no trusted key given: verification needs the supervisor's public key")
    where = str(path)
    data = read_regular(path, limit=MAX_ENVELOPE_BYTES, what="provenance statement")
    envelope = parse_envelope(data, what=f"provenance statement {where}")
    findings: list[Finding] = []
    if envelope.payload_type != PAYLOAD_TYPE:
        findings.append(
            _finding(
                "provenance.payload-type",
                f"payload type is {envelope.payload_type!r}, not {PAYLOAD_TYPE!r}",
                where,
                evidence=envelope.payload_type,
            )
        )
        raise _mismatch(where, None, None, (), findings)
    try:
        signer = envelope.verify(trusted)
    except VerificationError as exc:
        findings.append(_finding("provenance.signature", str(exc), where))
        raise _mismatch(where, None, None, (), findings) from exc
    try:
        doc = load_json_strict(envelope.payload, what="the signed statement")
    except InputError as exc:
        findings.append(_finding("provenance.shape", str(exc), where))
        raise _mismatch(where, signer, None, (), findings) from exc
    problems = check_statement(doc)
    if problems:
        findings.extend(_finding("provenance.shape", p, where) for p in problems)
        raise _mismatch(where, signer, None, (), findings)
    statement = parse_statement(doc)
    details = {
        "signer": signer.identity,
        "fingerprint": signer.fingerprint,
        "run": statement.run_id,
        "build_type": statement.build_type,
        "subjects": len(statement.subjects),
        "started": statement.started,
        "finished": statement.finished,
    }
    checks: tuple[SubjectCheck, ...] = ()
    subject_reports: list[FileReport] = []
    if check_outputs:
        base = _base_dir(statement, against)
        checks = tuple(
            _check_subject(s.name or "", s.digest.get("sha256", ""), base, workers, progress)
            for s in statement.subjects
        )
        subject_reports = [_subject_report(c) for c in checks]
    else:
        checks = tuple(
            SubjectCheck(
                s.name or "",
                s.name or "",
                "sha256:" + s.digest.get("sha256", ""),
                None,
                "not-checked",
            )
            for s in statement.subjects
        )
    report = Report(
        files=(
            FileReport(path=where, format="provenance", findings=tuple(findings), details=details),
            *subject_reports,
        ),
        command=_COMMAND,
    )
    result = ProvenanceVerification(where, signer, statement, checks, report)
    if not result.ok:
        raise ProvenanceMismatch(result)
    return result


def _mismatch(
    where: str,
    signer: PublicKey | None,
    statement: Statement | None,
    checks: tuple[SubjectCheck, ...],
    findings: list[Finding],
) -> ProvenanceMismatch:
    report = Report(
        files=(FileReport(path=where, format="provenance", findings=tuple(findings)),),
        command=_COMMAND,
    )
    return ProvenanceMismatch(ProvenanceVerification(where, signer, statement, checks, report))


def _base_dir(statement: Statement, against: str | os.PathLike[str] | None) -> Path:
    if against is not None:
        base = Path(against)
        if not base.is_dir():
            raise InputError(f"--against {base}: not a directory")
        return base
    cwd = statement.internal_parameters.get("cwd")
    return Path(cwd) if isinstance(cwd, str) and cwd else Path.cwd()


def _check_subject(
    name: str,
    expected_hex: str,
    base: Path,
    workers: int | None,
    progress: Callable[[str], None] | None,
) -> SubjectCheck:
    from trainwarden.sign import checkpoint_digest

    expected = f"sha256:{expected_hex}"
    relative = Path(name)
    # A name must stay inside the base directory unless it is absolute: "../../etc/x" in a
    # statement (signed or not) must not make us hash whatever it points at.
    if not relative.is_absolute() and ".." in relative.parts:
        return SubjectCheck(name, name, expected, None, "unreadable", "name leaves the run")
    path = relative if relative.is_absolute() else base / relative
    if progress is not None:
        progress(name)
    if not path.exists() and not path.is_symlink():
        return SubjectCheck(name, str(path), expected, None, "missing", "no such file")
    try:
        actual = checkpoint_digest(path, workers=workers)
    except InputError as exc:
        return SubjectCheck(name, str(path), expected, None, "unreadable", exc.diagnostics())
    status = "ok" if actual == expected else "modified"
    return SubjectCheck(name, str(path), expected, actual, status, None)


def _subject_report(check: SubjectCheck) -> FileReport:
    findings: tuple[Finding, ...] = ()
    if check.status == "missing":
        findings = (
            _finding(
                "provenance.output-missing",
                f"output {check.name} is gone (deleted or moved since the run)",
                check.path,
                evidence=check.expected,
            ),
        )
    elif check.status == "modified":
        findings = (
            _finding(
                "provenance.output-modified",
                f"output {check.name} changed since the run: the statement records "
                f"{check.expected}, the disk holds {check.actual}",
                check.path,
                evidence=check.actual,
            ),
        )
    elif check.status == "unreadable":
        findings = (
            _finding(
                "provenance.output-unverified",
                f"output {check.name} could not be checked: {check.reason}",
                check.path,
            ),
        )
    return FileReport(
        path=check.path,
        format="checkpoint",
        findings=findings,
        details={"name": check.name, "expected": check.expected, "actual": check.actual},
    )
