"""``trainwarden run``: pre-flight, launch, watch and attest a training job (T2, T6, T7, T8).

- :func:`run_job` runs one job under supervision from :class:`RunOptions` and returns a
  :class:`RunResult`: pre-flight checks (environment, input checkpoints, code identity,
  inputs, access audit) decided by a :class:`Policy`; launch with ``protect()``, the guard,
  the egress record, signal recording and stack dumps in every rank (``python``,
  ``torchrun``, multi-node, ``srun``); watch (heartbeats, hangs, every exit and signal);
  checkpoints signed as they are completed; a signed provenance statement at the end.
- :func:`audit_access` names who besides the job's owner can write a path (mode bits,
  owners, POSIX ACLs, parent directories).
- :func:`parse_command` reads a job command the way its launcher would.
- :func:`heartbeat` lets a plain loop without a torch optimizer report progress.
- :func:`set_non_dumpable` keeps same-user processes from reading this process's memory
  (call it before loading a signing key).

The run directory and the ledger events are specified in ``docs/events.md``; the design
(key separation, the control channel, what a same-user job can still do) in ``docs/run.md``.

This package is imported by every rank's bootstrap, so it imports nothing heavy itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainwarden.supervise._access import (
        AccessResult,
        Accounts,
        SystemAccounts,
        Writer,
        audit_access,
        parse_acl,
    )
    from trainwarden.supervise._checkpoints import SignedCheckpoint
    from trainwarden.supervise._command import JobCommand, parse_command
    from trainwarden.supervise._policy import CHECKS, Policy, load_policy
    from trainwarden.supervise._process import ExitStatus, set_non_dumpable
    from trainwarden.supervise._supervisor import (
        SIGKILL_AUDIT_RULE,
        RunOptions,
        RunResult,
        run_job,
    )

__all__ = [
    "CHECKS",
    "SIGKILL_AUDIT_RULE",
    "AccessResult",
    "Accounts",
    "ExitStatus",
    "JobCommand",
    "Policy",
    "RunOptions",
    "RunResult",
    "SignedCheckpoint",
    "SystemAccounts",
    "Writer",
    "audit_access",
    "heartbeat",
    "load_policy",
    "parse_acl",
    "parse_command",
    "run_job",
    "set_non_dumpable",
]

_LAZY = {
    "AccessResult": "_access",
    "Accounts": "_access",
    "SystemAccounts": "_access",
    "Writer": "_access",
    "audit_access": "_access",
    "parse_acl": "_access",
    "SignedCheckpoint": "_checkpoints",
    "JobCommand": "_command",
    "parse_command": "_command",
    "CHECKS": "_policy",
    "Policy": "_policy",
    "load_policy": "_policy",
    "ExitStatus": "_process",
    "set_non_dumpable": "_process",
    "SIGKILL_AUDIT_RULE": "_supervisor",
    "RunOptions": "_supervisor",
    "RunResult": "_supervisor",
    "run_job": "_supervisor",
}


def heartbeat(step: int | None = None) -> None:
    """Report progress to the run's supervisor (for loops without a torch optimizer).

    A no-op when the process is not running under ``trainwarden run``. Rate-limited, so it
    may be called every step.
    """
    from trainwarden.supervise._rank import current_runtime

    runtime = current_runtime()
    if runtime is not None:
        runtime.heartbeat(step)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"trainwarden.supervise.{module}"), name)
    globals()[name] = value
    return value
