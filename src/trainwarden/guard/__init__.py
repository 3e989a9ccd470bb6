"""The runtime guard: catches tampering inside a running training job within one step (T2-T6).

- :class:`Guard` ``(model, optimizer, *, scheduler=None, sink=None, secret=None,
  on_violation="halt")`` attaches through public hooks; ``close()`` (or ``with``) detaches.
  Findings are :class:`GuardFinding` records (``guard.findings``), also sent to the sink as
  ``guard.finding`` events (docs/events.md). Under ``"halt"`` the step in which tampering is
  detected raises :class:`StepViolation` (a :class:`trainwarden.errors.GuardViolation`) on every
  rank.
- :func:`install_global` guards every optimizer of the process from its first step, with no
  change to the training script; :func:`configure_defaults` sets what guards use for arguments
  left as ``None`` (the supervisor's bootstrap calls both).
- :func:`record_signals` records who sent the process a termination signal before it acts.
- :class:`GuardConfig` holds every setting; :func:`required_k` the sampling arithmetic.

Checks (docs/guard.md): hyperparameters and the learning-rate schedule, update verification
against trainwarden's own SGD/Adam/AdamW on secretly sampled coordinates, out-of-band weight
edits, hooks injected or removed, cross-rank consistency, reseeding and data order, code
integrity, per-rank timing, signals, and loss/gradient anomalies as context.
"""

from __future__ import annotations

from trainwarden.guard._config import (
    ALL_CHECKS,
    GuardConfig,
    configure_defaults,
    current_defaults,
    required_k,
)
from trainwarden.guard._findings import RULES, Check, GuardFinding, Technique
from trainwarden.guard._global import GlobalGuard, install_global
from trainwarden.guard._guard import Guard, StepInfo, StepViolation
from trainwarden.guard._signals import SignalRecord, SignalRecorder, record_signals

__all__ = [
    "ALL_CHECKS",
    "RULES",
    "Check",
    "GlobalGuard",
    "Guard",
    "GuardConfig",
    "GuardFinding",
    "SignalRecord",
    "SignalRecorder",
    "StepInfo",
    "StepViolation",
    "Technique",
    "configure_defaults",
    "current_defaults",
    "install_global",
    "record_signals",
    "required_k",
]
