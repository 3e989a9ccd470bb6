"""The whole exception tree of trainwarden, rooted at :class:`Error`.

Findings are data, not exceptions (see :mod:`trainwarden.findings`); exceptions are for
operations that cannot go on: bad input, a refused load, a failed verification.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainwarden.findings import Report

__all__ = [
    "ConfigError",
    "EnvironmentTampered",
    "Error",
    "GuardViolation",
    "InputError",
    "LimitExceeded",
    "UnsafeModelError",
    "VerificationError",
]


class Error(Exception):
    """Root of every error trainwarden raises on purpose."""

    def diagnostics(self) -> str:
        """Return a human-readable explanation of what went wrong and what to do."""
        return str(self)


class InputError(Error):
    """An input could not be read or is not what it claims to be (operational error)."""


class ConfigError(Error):
    """A configuration value, command-line flag or policy file is invalid."""


class LimitExceeded(InputError):
    """A resource limit on untrusted input was hit; the input was not fully analysed."""

    def __init__(self, limit: str, value: int | float, message: str | None = None) -> None:
        self.limit = limit
        self.value = value
        super().__init__(message or f"limit {limit}={value} exceeded")


class UnsafeModelError(Error):
    """A model file was refused because the policy does not allow what it would run.

    Carries the scan report that explains which global, where and why.
    """

    def __init__(self, report: Report, message: str | None = None) -> None:
        self.report = report
        super().__init__(message or _summarise(report))

    def diagnostics(self) -> str:
        """List every finding at or above ``medium`` severity in the carried report."""
        lines = [str(self)]
        lines.extend(
            f"  {file.path}: [{finding.rule_id}] {finding.message}"
            for file in self.report.files
            for finding in file.findings
        )
        return "\n".join(lines)


class VerificationError(Error):
    """A signature, manifest, lock or ledger did not verify."""


class EnvironmentTampered(VerificationError):
    """The installed environment differs from its record."""


class GuardViolation(Error):
    """A runtime guard check failed inside a training job and the policy is to halt."""


def _summarise(report: Report) -> str:
    bad = [f for f in report.files if f.verdict.name != "SAFE"]
    if not bad:
        return "model refused"
    first = bad[0]
    reason = first.findings[0].message if first.findings else first.verdict.value
    more = f" (and {len(bad) - 1} more file(s))" if len(bad) > 1 else ""
    return f"refused {first.path}: {first.verdict.value}: {reason}{more}"
