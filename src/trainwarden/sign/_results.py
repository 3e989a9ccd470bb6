"""Results and errors of signing and verification: frozen data, and errors that carry a report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainwarden.errors import InputError, VerificationError
from trainwarden.findings import Report, Verdict
from trainwarden.manifest import Manifest

__all__ = [
    "Lineage",
    "LineageError",
    "Signature",
    "SignatureMismatch",
    "SignatureNotRecorded",
    "Verification",
]


@dataclass(frozen=True, slots=True)
class Signature:
    """A signed checkpoint: what was signed, by whom, and its place in a run's lineage.

    ``digest`` (``sha256:<hex>``) is the checkpoint's identity: the model-signing root
    digest over every file (shard) digest. A child names it as its ``parent``.
    """

    path: Path
    sig_path: Path
    digest: str
    identity: str | None
    fingerprint: str | None
    signed_at: str | None
    run: str | None
    step: int | None
    parent: str | None
    manifest: Manifest

    @property
    def files(self) -> int:
        """Number of files covered."""
        return len(self.manifest.files)

    @property
    def size(self) -> int:
        """Bytes covered."""
        return self.manifest.total_size


@dataclass(frozen=True, slots=True)
class Verification:
    """A successful verification: the checkpoint as signed, the trusted signer, the report.

    ``identity`` and ``fingerprint`` are those of the *trusted* key that verified the
    signature (from the key file the verifier chose), never the signer's own claim.
    """

    signature: Signature
    identity: str
    fingerprint: str
    report: Report

    @property
    def digest(self) -> str:
        """The verified checkpoint digest."""
        return self.signature.digest

    @property
    def run(self) -> str | None:
        """The signed run name."""
        return self.signature.run

    @property
    def step(self) -> int | None:
        """The signed step."""
        return self.signature.step

    @property
    def parent(self) -> str | None:
        """The signed parent digest."""
        return self.signature.parent


@dataclass(frozen=True, slots=True)
class Lineage:
    """A verified chain of one run's checkpoints, oldest first."""

    run: str
    steps: tuple[int, ...]
    digests: tuple[str, ...]

    @property
    def head(self) -> str:
        """Digest of the newest checkpoint."""
        return self.digests[-1]


class SignatureMismatch(VerificationError):
    """A checkpoint does not match its signature, or its signature is not trusted.

    Carries the report naming each file and what is wrong with it.
    """

    def __init__(self, report: Report, message: str | None = None) -> None:
        self.report = report
        super().__init__(message or _summary(report))

    @property
    def tampered(self) -> bool:
        """True when a finding shows tampering; False when only errors stopped the check."""
        return any(f.verdict is Verdict.UNSAFE for f in self.report.findings)

    def diagnostics(self) -> str:
        """One line per finding."""
        lines = [str(self)]
        lines.extend(
            f"  {f.location.describe()}: [{f.rule_id}] {f.message}"
            for f in self.report.findings
            if f.verdict is not Verdict.SAFE
        )
        return "\n".join(lines)


class LineageError(SignatureMismatch):
    """Checkpoints do not form one unbroken chain of their run."""


class SignatureNotRecorded(InputError):
    """The signature was written, but recording it in the ledger failed afterwards.

    ``signature`` is what was signed and written (valid on its own); only the ledger's
    ``checkpoint.signed`` entry is missing, so lineage checks will call the checkpoint
    unrecorded until it is recorded (sign it again with the ledger).
    """

    def __init__(self, signature: Signature, message: str) -> None:
        self.signature = signature
        super().__init__(message)


def _summary(report: Report) -> str:
    bad = [f for f in report.findings if f.verdict is not Verdict.SAFE]
    if not bad:
        return "verification failed"
    first = bad[0]
    more = f" (and {len(bad) - 1} more finding(s))" if len(bad) > 1 else ""
    return f"verification failed: {first.location.path}: {first.message}{more}"
