"""The guard's settings (:class:`GuardConfig`) and the process-wide defaults the supervisor sets.

Defaults hold for every check so that a guard attached with no arguments meets the documented
guarantees (a flip of 1 % of the coordinates caught with probability >= 0.9999 per step, a
sleeping rank named within 60 s) at a cost under 1 % of a realistic step.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from trainwarden.errors import ConfigError

if TYPE_CHECKING:
    from trainwarden.events import EventSink

__all__ = [
    "ALL_CHECKS",
    "HALT",
    "WARN",
    "Defaults",
    "GuardConfig",
    "configure_defaults",
    "current_defaults",
    "required_k",
]

HALT = "halt"
WARN = "warn"

#: Every check the guard can run, by the name used in ``guard.attach`` and the docs.
ALL_CHECKS = frozenset(
    {
        "hyperparam",
        "update",
        "weights",
        "hooks",
        "cross-rank",
        "rng",
        "data",
        "code",
        "timing",
        "anomaly",
    }
)


def required_k(fraction: float, confidence: float) -> int:
    """Coordinates to sample so that changing ``fraction`` of them is caught w.p. ``confidence``.

    Each sampled coordinate is drawn uniformly and independently, so all ``k`` miss the
    tampered ones with probability ``(1 - fraction) ** k``; the smallest ``k`` with
    ``(1 - fraction) ** k <= 1 - confidence`` is ``ceil(ln(1 - confidence) / ln(1 - fraction))``
    (917 for 1 % at 0.9999).
    """
    if not 0.0 < fraction < 1.0 or not 0.0 < confidence < 1.0:
        raise ConfigError("fraction and confidence must both be strictly between 0 and 1")
    return math.ceil(math.log1p(-confidence) / math.log1p(-fraction))


@dataclass(frozen=True, slots=True)
class GuardConfig:
    """Settings of a :class:`~trainwarden.guard.Guard` (all optional; defaults are the product).

    Attributes:
        k: Coordinates verified per verified step (default 1024 >= ``required_k(0.01, 0.9999)``).
        verify_fraction: Fraction of steps whose update is verified, chosen by the secret
            (1.0: every step; the weights and hyperparameter checks run every step anyway).
        checks: Names of the checks to run (see :data:`ALL_CHECKS`).
        full_digest_every: Steps between full-parameter digests (cross-rank comparison and
            the full out-of-band check); sampled coordinates are compared every step.
        rng_every: Steps between periodic RNG fingerprints (``guard.rng``).
        code_every: Seconds between runtime code-integrity checks (in the watchdog thread).
        package_every: Seconds between checks of the torch package on disk.
        watchdog_interval: Seconds between watchdog passes (hooks registered, live overruns,
            telemetry flush).
        telemetry_flush: Seconds between telemetry flushes (at most 5 s, per docs/events.md).
        timing_window: Steps of history per rank and phase for the timing statistics.
        timing_warmup: Steps ignored by the timing check at the start.
        timing_z: How many robust standard deviations (1.4826 x MAD) above the median a phase
            must be to count as a stall.
        timing_rel: ...and by how much, relative to its median (0.5: half again as long).
        timing_min_excess: ...and by at least this many seconds.
        timing_cpu_slack: How many times its median a phase may take while on a CPU before
            that time counts toward a stall: other work on the machine (a hyperthread sibling,
            memory bandwidth, a hypervisor) stretches computing without the run queue showing
            it. Time off the CPU (a sleep, a block) always counts.
        timing_overrun: Seconds a phase may run, while still running, before the watchdog
            names it (capped so that a sleeping rank is named within 60 s).
        exact_ulps: Tolerance, in units in the last place of the parameter, for updates
            computed by kernels of the same arithmetic as the reference (CPU single-tensor
            and foreach): covers double rounding in the reference's fused multiply-adds.
        approx_ulps: Same, for kernels with another operation order (fused, CUDA).
        approx_rel: Relative tolerance, in machine epsilons of the parameter's dtype times the
            update's magnitude, for kernels with another operation order.
        lr_rel: Relative tolerance when following the learning rate with the replica
            scheduler (closed forms against torch's recursive ones drift by ~1e-12).
        anomaly_window: Steps of loss / gradient-norm history for anomaly statistics.
        anomaly_z: Robust z-score above which a loss or gradient norm is an anomaly.
        sync_timeout: Seconds a rank waits for the others in the guard's per-step exchange
            (default: the job's own process-group timeout).
        telemetry: Write per-step telemetry when a telemetry directory is configured.
        verify_async: Recompute and judge each step's update in a thread of the guard,
            overlapped with the next step's forward and backward (the training thread only
            gathers the sampled values); its findings then join the next step's decision, so
            an update tampered with in step N halts step N + 1. Off by default: on CPU the
            thread contends for the interpreter lock with the training thread and costs more
            wall time than it saves (benchmarks/RESULTS.md); for GPU jobs, whose training
            thread waits on the device, measure it with benchmarks/gpu_guard.py.
    """

    k: int = 1024
    verify_fraction: float = 1.0
    checks: frozenset[str] = field(default_factory=lambda: ALL_CHECKS)
    full_digest_every: int = 100
    rng_every: int = 100
    code_every: float = 60.0
    package_every: float = 600.0
    watchdog_interval: float = 2.0
    telemetry_flush: float = 5.0
    timing_window: int = 64
    timing_warmup: int = 10
    timing_z: float = 10.0
    timing_rel: float = 0.5
    timing_min_excess: float = 0.1
    timing_cpu_slack: float = 4.0
    timing_overrun: float = 30.0
    exact_ulps: float = 1.0
    approx_ulps: float = 2.0
    approx_rel: float = 8.0
    lr_rel: float = 1e-6
    anomaly_window: int = 50
    anomaly_z: float = 12.0
    sync_timeout: float | None = None
    telemetry: bool = True
    verify_async: bool = False

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ConfigError("k must be at least 1")
        if not 0.0 < self.verify_fraction <= 1.0:
            raise ConfigError("verify_fraction must be in (0, 1]")
        unknown = set(self.checks) - ALL_CHECKS
        if unknown:
            names = ", ".join(sorted(ALL_CHECKS))
            raise ConfigError(f"unknown check(s) {sorted(unknown)} (known: {names})")
        object.__setattr__(self, "checks", frozenset(self.checks))
        positive = {
            "full_digest_every": self.full_digest_every,
            "rng_every": self.rng_every,
            "code_every": self.code_every,
            "package_every": self.package_every,
            "watchdog_interval": self.watchdog_interval,
            "telemetry_flush": self.telemetry_flush,
            "timing_window": self.timing_window,
            "anomaly_window": self.anomaly_window,
            "timing_overrun": self.timing_overrun,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"{name} must be positive, not {value!r}")
        if self.telemetry_flush > 5.0:
            raise ConfigError("telemetry_flush must be at most 5 s (docs/events.md)")
        if self.timing_warmup < 0 or self.timing_min_excess < 0 or self.timing_rel < 0:
            raise ConfigError("timing thresholds must not be negative")
        if not self.timing_cpu_slack >= 1.0:
            raise ConfigError(f"timing_cpu_slack must be at least 1, not {self.timing_cpu_slack!r}")
        if self.sync_timeout is not None and not self.sync_timeout > 0:
            raise ConfigError("sync_timeout must be positive")

    def without(self, *checks: str) -> GuardConfig:
        """A copy with ``checks`` switched off."""
        return replace(self, checks=self.checks - frozenset(checks))

    def only(self, *checks: str) -> GuardConfig:
        """A copy that runs only ``checks``."""
        return replace(self, checks=frozenset(checks))

    @property
    def miss_probability(self) -> float:
        """Chance that a flip of 1 % of the coordinates escapes one verified step."""
        return float(0.99**self.k)


@dataclass(frozen=True, slots=True)
class Defaults:
    """Process-wide defaults for guards (set by :func:`configure_defaults`)."""

    sink: EventSink | None = None
    run: str | None = None
    secret: bytes | None = None
    on_violation: str | None = None
    telemetry_dir: str | None = None
    pid: int = field(default_factory=os.getpid)


_lock = threading.Lock()
_defaults = Defaults()


def configure_defaults(
    *,
    sink: EventSink | None = None,
    run: str | None = None,
    secret: bytes | None = None,
    on_violation: str | None = None,
    telemetry_dir: str | os.PathLike[str] | None = None,
) -> None:
    """Set the process-wide defaults that guards use for arguments left as ``None``.

    The supervisor's per-rank bootstrap calls this before the training script runs, so a
    ``Guard(model, optimizer)`` written in the script (and the global guard) report to the
    run's ledger, use the run's sampling secret and write telemetry into the run directory.
    Calling it again replaces every default. The secret stays in this process's memory only.

    Raises:
        ConfigError: ``on_violation`` is not ``"halt"`` or ``"warn"``, or the secret is
            shorter than 16 bytes.
    """
    global _defaults
    if on_violation is not None:
        check_on_violation(on_violation)
    if secret is not None:
        check_secret(secret)
    with _lock:
        _defaults = Defaults(
            sink=sink,
            run=run,
            secret=bytes(secret) if secret is not None else None,
            on_violation=on_violation,
            telemetry_dir=os.fspath(telemetry_dir) if telemetry_dir is not None else None,
        )


def current_defaults() -> Defaults:
    """The defaults in force (empty in a forked child: they belong to the parent's job)."""
    with _lock:
        current = _defaults
    return current if current.pid == os.getpid() else Defaults()


def check_on_violation(value: str) -> str:
    """Validate an ``on_violation`` policy."""
    if value not in (HALT, WARN):
        raise ConfigError(f"on_violation must be 'halt' or 'warn', not {value!r}")
    return value


def check_secret(secret: bytes) -> bytes:
    """Validate a sampling secret: bytes, at least 16 of them (it must not be guessable)."""
    if not isinstance(secret, (bytes, bytearray, memoryview)):
        raise ConfigError("the sampling secret must be bytes")
    if len(bytes(secret)) < 16:
        raise ConfigError("the sampling secret must be at least 16 bytes (use os.urandom(32))")
    return bytes(secret)
