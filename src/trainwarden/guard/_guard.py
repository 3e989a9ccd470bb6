"""The Guard: attaches to a model and an optimizer through public hooks and runs every check.

Per optimizer step: the model's forward pre-hook times the forward, digests the batch and
makes sure the guard is still attached; the optimizer's step pre-hook checks hyperparameters,
hooks, reseeding and the weights against the end of the previous step, and reads the sampled
coordinates; the post-hook verifies the update against the reference, takes the next step's
coordinates, and exchanges flags, digests and timings with the other ranks. A violation on any
rank raises :class:`StepViolation` (a :class:`trainwarden.errors.GuardViolation`) on every rank,
in that step, under ``on_violation="halt"``.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import math
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from trainwarden import patching
from trainwarden.errors import ConfigError, GuardViolation
from trainwarden.findings import Severity
from trainwarden.guard import _process
from trainwarden.guard._anomaly import AnomalyCheck
from trainwarden.guard._code import CodeIntegrity
from trainwarden.guard._config import (
    HALT,
    GuardConfig,
    check_on_violation,
    check_secret,
    current_defaults,
)
from trainwarden.guard._data import BatchDigest, OrderEvent, declare, sampler_problems
from trainwarden.guard._findings import GuardFinding
from trainwarden.guard._hooks import HookAudit, describe_hook
from trainwarden.guard._hyper import ClipRecord, HyperparamCheck
from trainwarden.guard._rng import Reseed, fingerprints, initial_seeds
from trainwarden.guard._sampling import Sampler, commitment
from trainwarden.guard._signals import SignalRecord, active_recorder
from trainwarden.guard._sync import (
    F_BWD,
    F_BWD_CPU,
    F_COMMIT,
    F_FINDINGS,
    F_FLAGS,
    F_FULL,
    F_FWD,
    F_FWD_CPU,
    F_GRAD,
    F_GUARD,
    F_MAGIC,
    F_OPT,
    F_OPT_CPU,
    F_OTHER,
    F_PARAM,
    F_REPLICA,
    F_ROUND_WAIT,
    F_STEP,
    F_STEP_TIME,
    F_WAIT,
    FLAG_CATCH_UP,
    FLAG_FINDING,
    FLAG_HALT,
    MAGIC,
    UNKNOWN,
    WIDTH,
    Exchange,
    ExchangeError,
    micro,
    seconds,
)
from trainwarden.guard._telemetry import TelemetryWriter, release, writer_for
from trainwarden.guard._timing import PHASES, Pacer, PhaseClock, StallDetector, phase_label
from trainwarden.guard._topology import ModelTopology
from trainwarden.guard._update import ParamTable, UpdateCheck, full_digest, local

__all__ = ["Guard", "StepInfo", "StepViolation"]

logger = logging.getLogger("trainwarden.guard")

PURPOSE = "guard"
_counter = 0
_counter_lock = threading.Lock()


class StepViolation(GuardViolation):
    """Tampering was detected in a step and the policy is to halt (raised on every rank).

    Attributes:
        findings: What this rank found in the step (may be empty on a rank that only learnt
            from the exchange that another rank found something).
        step: The guard's step counter.
        ranks: Ranks that flagged a violation in this step.
    """

    def __init__(
        self, message: str, findings: tuple[GuardFinding, ...], step: int, ranks: tuple[int, ...]
    ) -> None:
        super().__init__(message)
        self.findings = findings
        self.step = step
        self.ranks = ranks

    def diagnostics(self) -> str:
        """The findings, one per line."""
        lines = [str(self)]
        lines.extend(f"  {f.describe()}" for f in self.findings)
        return "\n".join(lines)


class DetachedViolation(GuardViolation):
    """Raised asynchronously in the training thread when the guard was detached."""

    def __init__(
        self, message: str = "trainwarden guard: the guard was detached from the job"
    ) -> None:
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class StepInfo:
    """What step listeners receive after each optimizer step.

    Attributes:
        step: The guard's step counter (optimizer steps since attach, from 1).
        rank: Global rank.
        time: UNIX time at the end of the step.
        phases: Seconds per phase (``fwd``, ``bwd``, ``opt``, ``wait``, ``other``, ``step``).
        loss: The loss the guard saw, when it saw one.
        lr: Learning rate of param group 0.
        verified: Coordinates whose update was verified.
        findings: Findings of this step (this rank's).
        optimizer: Index of the guard in the process (0 for the first).
    """

    step: int
    rank: int
    time: float
    phases: Mapping[str, float | None]
    loss: float | None
    lr: float | None
    verified: int
    findings: tuple[GuardFinding, ...]
    optimizer: int = 0


def first_global_pre_hook(hook: Callable[[Any, Any, Any], None]) -> Any:
    """Register ``hook`` as a global optimizer-step pre-hook that runs before every other.

    torch runs the global pre-hooks in registration order, before an optimizer's own: one
    registered earlier (by an edited torch, at import) would otherwise run first, unseen by the
    phase marks. Where the registry is not the ordered dict torch has used since 2.0, the hook
    stays where registration put it (last).
    """
    import torch.optim.optimizer as optim_mod

    handle = optim_mod.register_optimizer_step_pre_hook(hook)
    registry = getattr(optim_mod, "_global_optimizer_pre_hooks", None)
    with contextlib.suppress(AttributeError, KeyError):
        registry.move_to_end(handle.id, last=False)  # type: ignore[union-attr]
    return handle


def _unwrap_optimizer(optimizer: Any) -> Any:
    """The torch optimizer behind wrappers (accelerate, Lightning) holding it in ``.optimizer``.

    accelerate's ``AcceleratedOptimizer`` is itself an ``Optimizer`` subclass without state of
    its own: the hooks must go on the optimizer it wraps.
    """
    import torch

    for _ in range(8):
        inner = getattr(optimizer, "optimizer", None) or getattr(optimizer, "_optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer) or inner is optimizer:
            break
        optimizer = inner
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(f"not a torch optimizer: {type(optimizer).__name__}")
    return optimizer


def _unwrap_model(model: Any) -> Any:
    seen = 0
    while hasattr(model, "module") and seen < 8 and hasattr(model.module, "named_parameters"):
        model = model.module
        seen += 1
    return model


def _is_data_parallel(model: Any) -> bool:
    import torch

    return isinstance(model, torch.nn.parallel.DistributedDataParallel)


def _eager(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` as a hook TorchDynamo calls as it is, never traces (once Dynamo is loaded).

    A ``torch.compile``'d model runs its hooks inside the compiled forward: traced, the
    guard's checks broke the graph at every line and were recompiled for every parameter
    (the recompile limit was hit in the first step). Without Dynamo loaded (no
    ``torch.compile`` before the guard attached) the hook is returned as it is: loading
    Dynamo costs a second; compiling after attaching is documented (docs/guard.md).
    """
    if "torch._dynamo" not in sys.modules:
        return fn
    import torch

    disable = getattr(getattr(torch, "compiler", None), "disable", None)
    return fn if disable is None else cast("Callable[..., Any]", disable(fn))


def _require_extra() -> None:
    """Fail at attach, not hundreds of steps in, when the torch extra's packages are missing."""
    import importlib.util

    missing = [name for name in ("numpy", "blake3") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"the guard needs {' and '.join(missing)}, which this environment lacks: "
            "install trainwarden with its torch extra (pip install 'trainwarden[torch]')"
        )


class Guard:
    """Watches one optimizer (and its model) for tampering, from inside the training process.

    Attaches on construction through public hooks (optimizer step pre/post hooks, the model's
    forward pre/post hooks); ``close()`` (or leaving the ``with`` block) removes every hook and
    patch and restores what was replaced. The training loop stays unchanged. Under
    ``torch.distributed`` constructing a guard is a collective operation: every rank must do it
    at the same point.

    Args:
        model: The model (a DDP/FSDP wrapper is fine), or ``None`` for parameter-level checks only.
        optimizer: A ``torch.optim.Optimizer`` (or a wrapper holding one in ``.optimizer``).
        scheduler: The declared LR scheduler; the learning rate is followed against a replica.
        sink: Where events go (a :class:`trainwarden.ledger.Ledger`); default: configured.
        secret: Sampling secret (>= 16 bytes, the same on every rank); default: configured, else
            generated in memory (``sampling: "local"`` in ``guard.attach``).
        on_violation: ``"halt"`` (raise on every rank in the step) or ``"warn"`` (record and go
            on); default: configured, else ``"halt"``.
        run: Run id for events; default: configured.
        config: Settings (:class:`GuardConfig`).
        data: The ``DataLoader`` (or sampler) whose order to pin now (otherwise pinned when its
            first epoch starts).
        telemetry_dir: Directory for ``rank-<R>.jsonl``; default: configured (none: no file).

    Raises:
        ConfigError: Bad settings, not an optimizer, or the optimizer already has a guard.
    """

    def __init__(
        self,
        model: Any,
        optimizer: Any,
        *,
        scheduler: Any = None,
        sink: Any = None,
        secret: bytes | None = None,
        on_violation: str | None = None,
        run: str | None = None,
        config: GuardConfig | None = None,
        data: Any = None,
        telemetry_dir: str | os.PathLike[str] | None = None,
        _global: bool = False,
    ) -> None:
        import torch.distributed as dist

        _require_extra()
        defaults = current_defaults()
        self.config = config if config is not None else GuardConfig()
        self.sink = sink if sink is not None else defaults.sink
        self.run = run if run is not None else defaults.run
        self.on_violation = check_on_violation(on_violation or defaults.on_violation or HALT)
        directory = telemetry_dir if telemetry_dir is not None else defaults.telemetry_dir
        chosen_secret = secret if secret is not None else defaults.secret
        if chosen_secret is not None:
            chosen_secret = check_secret(chosen_secret)
        self.optimizer = _unwrap_optimizer(optimizer)
        self.model = model
        self.global_guard = _global
        self.active = False
        self._owner_pid = os.getpid()
        self._lock = threading.RLock()
        self._findings: list[GuardFinding] = []
        self._seen: dict[tuple[str, str], int] = {}
        self._pending: list[GuardFinding] = []
        self._listeners: list[Callable[[StepInfo], None]] = []
        self._handles: list[patching.TrackedHook] = []
        self._step_findings: list[GuardFinding] = []
        self.step = 0
        self.rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        global _counter
        with _counter_lock:
            self.index = _counter
            _counter += 1

        previous = _process.claim(self.optimizer, self)
        if previous is not None:
            if previous.global_guard and not _global:
                previous.close()  # the script's own guard takes over from the global one
            else:
                _process.claim(self.optimizer, previous)
                raise ConfigError("this optimizer already has a guard; close it first")

        # Collective from here on (the guard's process group, a shared secret).
        self.exchange = Exchange(timeout=self.config.sync_timeout)
        if chosen_secret is None:
            self.sampling = "local"
            chosen_secret = self.exchange.broadcast_bytes(
                os.urandom(32) if self.exchange.rank == 0 else None
            )
        else:
            self.sampling = "secret"
        self.commitment = commitment(chosen_secret)
        self.sampler = Sampler(
            chosen_secret, k=self.config.k, verify_fraction=self.config.verify_fraction
        )
        del chosen_secret

        checks = self.config.checks
        plain = _unwrap_model(model) if model is not None else None
        names = {id(p): n for n, p in plain.named_parameters()} if plain is not None else {}
        self.table = ParamTable.build(self.optimizer, names)
        self._param_ids = {id(e.param) for e in self.table.entries}
        self.update = UpdateCheck(
            self.optimizer,
            self.table,
            self.sampler,
            self.config,
            rank=self.rank,
            verify_updates="update" in checks,
            check_weights="weights" in checks,
            asynchronous=self.config.verify_async,
        )
        self.update.prepare()
        self.hyper = (
            HyperparamCheck(self.optimizer, scheduler, rank=self.rank, lr_rel=self.config.lr_rel)
            if "hyperparam" in checks
            else None
        )
        self.hooks = HookAudit(self.optimizer, model, rank=self.rank) if "hooks" in checks else None
        # FSDP2 swaps sharded and unsharded parameters in its modules as it runs: not compared.
        self.topology = (
            ModelTopology(plain, {e.name: e.param for e in self.table.entries}, rank=self.rank)
            if plain is not None
            and "weights" in checks
            and not any(e.sharded for e in self.table.entries)
            else None
        )
        self.stalls = StallDetector(self.config)
        self.code = CodeIntegrity(rank=self.rank) if "code" in checks else None
        self.anomaly = (
            AnomalyCheck(rank=self.rank, window=self.config.anomaly_window, z=self.config.anomaly_z)
            if "anomaly" in checks
            else None
        )
        self.replicas: bool | None = (
            True if model is not None and _is_data_parallel(model) else None
        )
        self._step_fn = type(self.optimizer).step
        self._instance_step = self.optimizer.__dict__.get("step")
        #: What replaced the optimizer's step after attach (None while it is the original).
        self._step_replaced: str | None = None
        # Undeclared mid-run loads awaiting their steps' verdicts: (what, after step, until);
        # and the steps done when the last change was declared.
        self._reloads: list[tuple[str, int, int]] = []
        self._declared_at: int | None = None
        self._seeds = initial_seeds()
        self._clip: list[ClipRecord] = []
        self._clip_norm: Any = None
        self._clock = PhaseClock()
        self._prev_end: float | None = None
        self._prev_wall: float | None = None
        self._batch = BatchDigest()
        self._loss: Any = None
        self._loss_value: float | None = None
        self._eval_start: float | None = None
        self._grad_hooks: list[Any] = []
        self._calibrating = False
        self._last_grad_param: int | None = None
        self._expected_full: int | None = None
        self._exchange_off = False
        self._caught_up = False
        self._train_thread: int | None = None
        self._halt_sent = False
        self._lines: dict[int, dict[str, Any]] = {}
        self._verdicts: dict[int, tuple[float | None, int]] = {}
        self._step_base: dict[int, int] | None = None
        self._detached_at = 0
        self._in_step = False
        self._next_code = time.monotonic()
        self._next_package = time.monotonic() + self.config.package_every
        self._next_flush = time.monotonic() + self.config.telemetry_flush
        self._code_started = False
        self.cost: dict[str, float] = {}
        #: CPU seconds the training thread spent in the guard's hooks (every check included).
        #: Costs are thread CPU time, not wall time: on a shared machine, time the thread
        #: spent descheduled is not the guard's cost.
        self.total_cost = 0.0
        self._telemetry: TelemetryWriter | None = None
        if directory is not None and self.config.telemetry:
            self._telemetry = writer_for(directory, self.rank)
        #: The samplers feeding this job: given at attach, or seen starting an epoch.
        self._samplers: weakref.WeakSet[Any] = weakref.WeakSet()
        if data is not None:
            sampler = getattr(data, "sampler", data)
            if declare(sampler):
                self._samplers.add(sampler)
        self._attach(model)

    # --------------------------------------------------------------------------- attach

    def _attach(self, model: Any) -> None:
        import torch.optim.optimizer as optim_mod

        opt = self.optimizer
        self._step_base = self._optimizer_counters()
        # Bound methods are made once: hook containers and the patch registry compare by
        # identity, and every attribute access would create a new bound method.
        pre, post = _eager(self._pre_step), _eager(self._post_step)
        fwd_pre, fwd_post = _eager(self._forward_pre), _eager(self._forward_post)
        opt_reloaded, model_reloaded = self._optimizer_reloaded, _eager(self._model_reloaded)
        self._track(opt.register_step_pre_hook(pre), pre, "optimizer step pre-hook")
        self._track(opt.register_step_post_hook(post), post, "optimizer step post-hook")
        # The step's start (see PhaseClock.step_called). A guard attached by the global guard
        # is attached inside torch's loop over the global pre-hooks, which must not change
        # under it: the global guard's own hook, first in line, marks its steps.
        called = self._step_called
        if not self.global_guard:
            self._track(first_global_pre_hook(called), called, "global optimizer step pre-hook")
        self._track(
            opt.register_load_state_dict_post_hook(opt_reloaded),
            opt_reloaded,
            "optimizer load_state_dict post-hook",
        )
        if model is not None:
            self._track(
                model.register_forward_pre_hook(fwd_pre, with_kwargs=True),
                fwd_pre,
                "model forward pre-hook",
            )
            self._track(
                model.register_forward_hook(fwd_post, with_kwargs=True),
                fwd_post,
                "model forward hook",
            )
            self._track(
                model.register_load_state_dict_post_hook(model_reloaded),
                model_reloaded,
                "model load_state_dict post-hook",
            )
        if self.hooks is not None:
            self.hooks.expect(
                "optimizer step pre-hook",
                lambda: opt.__dict__.get("_optimizer_step_pre_hooks"),
                pre,
            )
            self.hooks.expect(
                "optimizer step post-hook",
                lambda: opt.__dict__.get("_optimizer_step_post_hooks"),
                post,
            )
            if not self.global_guard:
                self.hooks.expect(
                    "global optimizer step pre-hook",
                    lambda: vars(optim_mod).get("_global_optimizer_pre_hooks"),
                    called,
                )
            if model is not None:
                self.hooks.expect(
                    "model forward pre-hook",
                    lambda: model.__dict__.get("_forward_pre_hooks"),
                    fwd_pre,
                )
                self.hooks.expect(
                    "model forward hook",
                    lambda: model.__dict__.get("_forward_hooks"),
                    fwd_post,
                )
            self.hooks.baseline()
        self.active = True
        _process.register(self)
        recorder = active_recorder()
        if recorder is not None:
            self._signal_listener = self.on_signal
            recorder.add_listener(self._signal_listener)
            recorder.before_termination(self._flush_for_exit)
        for finding in self._kernel_findings():
            self._record(finding)
        not_checked = self._not_checked(model)
        self._emit(
            "guard.attach",
            rank=self.rank,
            world_size=self.world,
            optimizer=type(self.optimizer).__name__,
            params=sum(e.numel for e in self.table.entries),
            checks=sorted(self.config.checks),
            k=self.config.k,
            sampling=self.sampling,
            secret_commitment=self.commitment,
            on_violation=self.on_violation,
            reference=self.update.reference.name if self.update.reference else None,
            lr=self._lr_followed(),
            not_checked=not_checked,
            miss_probability=self.config.miss_probability,
            global_guard=self.global_guard,
            pid=os.getpid(),
        )
        if "rng" in self.config.checks:
            self._emit(
                "guard.rng", rank=self.rank, step=0, when="attach", fingerprints=fingerprints()
            )

    def _current_step(self) -> int:
        """The step in progress: the counter inside an optimizer step, the next one between."""
        return self.step if self._in_step else self.step + 1

    def _paced(self, check: Callable[[Pacer], list[GuardFinding] | None]) -> list[GuardFinding]:
        """Run a heavy code check paced, leaving the training thread the interpreter lock.

        Its slices are subtracted from the training thread's phases (see ``_timing.Pacer``),
        so steps it overlaps are judged like any other; it stops early once the guard closes.
        """
        with Pacer(stop=self._closed) as pace:
            return check(pace) or []
        return []

    def _closed(self) -> bool:
        """Whether this guard was closed (its watchdog checks stop at their next rest)."""
        return not self.active

    def _alive(self) -> bool:
        # Read afresh (close() runs in another thread while the watchdog works).
        return bool(self.active)

    def _kernel_findings(self) -> list[GuardFinding]:
        problems = self.update.kernel_problems
        if not problems:
            return []
        code = self.code or CodeIntegrity(rank=self.rank)
        return code.kernel_findings(problems, 0)

    def _lr_followed(self) -> str:
        if self.hyper is None:
            return "not checked"
        if self.hyper.replica is not None:
            return f"replica of {self.hyper.replica.name}"
        return f"not followed: {self.hyper.not_followed}"

    def _not_checked(self, model: Any) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.update.not_verified:
            out["update"] = self.update.not_verified
        for g, reason in self.update.unsupported_groups.items():
            out[f"update.group{g}"] = reason
        if model is None:
            out["model"] = (
                "no model found: module hooks, forward/backward timing, gradient accumulation "
                "and batch digests are not checked"
            )
        if self.hyper is not None and self.hyper.replica is None:
            out["lr"] = self.hyper.not_followed or "not followed"
        if self.world > 1 and self.replicas is None:
            out["cross-rank"] = "decided at the first step (data-parallel replicas or not)"
        for name in sorted(
            {"hyperparam", "update", "weights", "hooks", "rng", "data", "code", "timing"}
            - set(self.config.checks)
        ):
            out[name] = "disabled by configuration"
        if self.update.not_verified:
            self._record(
                GuardFinding(
                    rule_id="guard.not-verified",
                    severity=Severity.INFO,
                    message=f"updates are not verified: {self.update.not_verified}",
                    rank=self.rank,
                    step=0,
                    evidence=type(self.optimizer).__name__,
                    established=False,
                    subject="not-verified",
                )
            )
        if self.hyper is not None and self.hyper.momentum_not_followed:
            out["momentum"] = (
                f"{self.hyper.momentum_not_followed} is cycled by the scheduler with the "
                "learning rate and no replica follows it"
            )
        self._report_unverified(0)
        return out

    def _report_unverified(self, step: int) -> None:
        """Say which param groups are not verified: found so at attach, or while running.

        A group the reference cannot compute (complex parameters, sparse gradients, settings
        that take another arithmetic path) is skipped by the update check; skipped silently,
        its updates would pass as verified.
        """
        fresh = self.update.take_unsupported()
        if step == 0:
            fresh = [*self.update.unsupported_groups.items()]
        for group, reason in fresh:
            self._record(
                GuardFinding(
                    rule_id="guard.not-verified",
                    severity=Severity.INFO,
                    message=f"updates of param group {group} are not verified: {reason}",
                    rank=self.rank,
                    step=step,
                    evidence=f"{type(self.optimizer).__name__} group {group}",
                    established=False,
                    subject=f"not-verified:group{group}",
                )
            )

    def _track(self, handle: Any, fn: Any, target: str) -> None:
        self._handles.append(patching.track_hook(handle, fn, purpose=PURPOSE, target=target))

    # ------------------------------------------------------------------------- public

    @property
    def findings(self) -> tuple[GuardFinding, ...]:
        """Every distinct finding so far (repeats are counted, see ``guard.close``)."""
        with self._lock:
            return tuple(self._findings)

    def add_step_listener(self, fn: Callable[[StepInfo], None]) -> None:
        """Call ``fn(StepInfo)`` after each optimizer step (exceptions are logged)."""
        self._listeners.append(fn)

    def observe_batch(self, batch: Any) -> None:
        """Digest a step's input batch (integrations whose model forward is not hooked)."""
        if "data" in self.config.checks:
            self._batch.add((batch,), {})

    def observe_loss(self, value: Any) -> None:
        """Tell the guard the step's loss (integrations do; else the model's output is used)."""
        self._loss = value

    def declare_change(self, reason: str) -> None:
        """Accept the current hyperparameters, hooks and weights as declared, with a reason.

        For jobs that change settings on purpose (a manual learning-rate change, a hook added
        for profiling): the change is recorded (``guard.declared``) instead of being a finding.
        """
        if self.hyper is not None:
            self.hyper.repin()
        if self.hooks is not None:
            self.hooks.baseline()
        if self.topology is not None:
            self.topology.baseline()
        self.update.rebaseline()
        self._step_fn = type(self.optimizer).step
        self._instance_step = self.optimizer.__dict__.get("step")
        self._step_replaced = None
        self._declared_at = self.step
        # A load since the last step, declared now: what it loaded is the baseline.
        self._reloads = [r for r in self._reloads if r[1] != self.step]
        self._seeds = initial_seeds()
        self._emit("guard.declared", rank=self.rank, step=self.step, reason=str(reason)[:500])

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Detach: remove every hook, flush telemetry, record ``guard.close``. Idempotent."""
        with self._lock:
            if not self.active:
                return
            self.active = False
        for hook in self._handles:
            patching.untrack_hook(hook)
        self._handles.clear()
        self._remove_grad_hooks()
        if self.hyper is not None:
            self.hyper.detach()
        # The last step's verification: recorded (a close does not raise).
        self._collect_verification(self.step)
        self._flush_lines(self.step)
        self.update.close()
        recorder = active_recorder()
        if recorder is not None:
            with contextlib.suppress(ValueError, AttributeError):
                recorder._listeners.remove(self._signal_listener)
        _process.unregister(self)
        if self._telemetry is not None:
            data = release(self._telemetry)
            if data is not None:
                self._emit("guard.telemetry", **data)
        self.exchange.close()
        self._emit(
            "guard.close",
            rank=self.rank,
            steps=self.step,
            verified_steps=self.update.verified_steps,
            checked=self.update.checked,
            cost=self._costs(),
            total_cost=round(self.total_cost, 6),
            findings=len(self._findings),
            repeated={f"{k[0]}:{k[1]}"[:200]: n for k, n in self._seen.items() if n > 1},
        )

    def _costs(self) -> dict[str, float]:
        costs = dict(self.cost)
        costs["update"] = self.update.cost
        if self.hyper is not None:
            costs["hyperparam"] = self.hyper.cost
        if self.hooks is not None:
            costs["hooks"] = self.hooks.cost
        costs["timing"] = costs.get("timing", 0.0) + self.stalls.cost
        if self.code is not None:
            costs["code"] = self.code.cost
        return {k: round(v, 6) for k, v in sorted(costs.items())}

    def _add_cost(self, name: str, start: float) -> None:
        self.cost[name] = self.cost.get(name, 0.0) + time.thread_time() - start

    # --------------------------------------------------------------------- findings

    def _record(self, finding: GuardFinding, *, emit: bool = True) -> bool:
        """Keep, count and send a finding; returns True when it is new."""
        with self._lock:
            count = self._seen.get(finding.key, 0)
            self._seen[finding.key] = count + 1
            self._step_findings.append(finding)
            if count:
                return False
            self._findings.append(finding)
        if emit:
            level = logging.WARNING if finding.severity >= Severity.MEDIUM else logging.INFO
            logger.log(level, "trainwarden guard: %s", finding.describe())
            data = finding.event_data()
            data["observer"] = self.rank
            self._emit("guard.finding", **data)
        return True

    def _emit(self, event: str, **data: Any) -> None:
        if self.sink is None:
            return
        try:
            self.sink.append(event, run=self.run, **data)
        except Exception as exc:  # a failing sink must not kill the run; the failure is logged
            logger.error("trainwarden guard: could not record %s: %s", event, exc)

    def _take_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for finding in pending:
            self._record(finding, emit=False)

    def _defer(self, finding: GuardFinding) -> None:
        """Record a finding seen outside the hooks; it joins the next step's decision."""
        if not self.active:
            return  # a late observation of a guard being closed
        with self._lock:
            self._pending.append(finding)
        # Emit right away: the ledger should not wait for the next step.
        with self._lock:
            count = self._seen.get(finding.key, 0)
            self._seen[finding.key] = count + 1
            new = count == 0
            if new:
                self._findings.append(finding)
        if new:
            logger.warning("trainwarden guard: %s", finding.describe())
            data = finding.event_data()
            data["observer"] = self.rank
            self._emit("guard.finding", **data)

    # ---------------------------------------------------------------- observations

    def on_reseed(self, event: Reseed) -> None:
        """A seeding function was called (from the process's patches)."""
        if not self.active or "rng" not in self.config.checks:
            return
        self._emit(
            "guard.reseed",
            rank=self.rank,
            step=self._current_step(),
            function=event.function,
            caller=event.caller,
            seed=event.seed,
        )
        self._seeds = initial_seeds()
        self._defer(
            GuardFinding(
                rule_id="guard.reseed",
                severity=Severity.MEDIUM if event.restores_state else Severity.HIGH,
                message=(
                    f"{event.function}() "
                    f"{'replaced the RNG state' if event.restores_state else 'reseeded'} "
                    f"after attach, called from {event.caller}"
                ),
                rank=self.rank,
                step=self._current_step(),
                evidence=f"{event.function}({event.seed or ''}) at {event.caller}",
                established=not event.restores_state,
                subject=f"reseed:{event.function}:{event.caller}:{self._current_step()}",
            )
        )

    def on_order(self, event: OrderEvent) -> None:
        """A sampler started an epoch (from the process's patches)."""
        if not self.active or "data" not in self.config.checks:
            return
        sampler = event.source() if event.source is not None else None
        if sampler is not None:
            with contextlib.suppress(TypeError):  # an unhashable sampler is checked per epoch
                self._samplers.add(sampler)
        if event.problem is None:
            return
        self._defer(
            GuardFinding(
                rule_id="guard.data-order",
                severity=Severity.HIGH,
                message=(
                    f"the {event.sampler} order of epoch {event.epoch} is not the declared one: "
                    f"{event.problem}"
                ),
                rank=self.rank,
                step=self._current_step(),
                evidence=f"{event.sampler} epoch {event.epoch}: {event.problem}",
                established=True,
                subject=event.subject,
            )
        )

    def on_clip(self, first_param: Any, record: ClipRecord, total: Any) -> None:
        """``clip_grad_norm_`` ran (from the process's patches)."""
        if self.active and id(first_param) in self._param_ids:
            self._clip.append(record)
            self._clip_norm = total

    def on_checkpoint(self, seconds: float) -> None:
        """``torch.save`` ran: not own work, and an RNG fingerprint point."""
        if not self.active:
            return
        self._clock.excluded += seconds
        if "rng" in self.config.checks:
            self._emit(
                "guard.rng",
                rank=self.rank,
                step=self.step,
                when="checkpoint",
                fingerprints=fingerprints(),
            )

    def on_signal(self, record: SignalRecord) -> None:
        """A signal was collected by :func:`record_signals`."""
        if not self.active:
            return
        sender = record.sender
        self._defer(
            GuardFinding(
                rule_id="guard.signal",
                severity=Severity.MEDIUM,
                message=(
                    f"{record.signal} received from pid {sender.get('pid')} "
                    f"(uid {sender.get('uid')}, {sender.get('cmdline') or 'command unknown'})"
                ),
                rank=self.rank,
                step=self._current_step(),
                evidence=f"{record.signal} from pid {sender.get('pid')}",
                established=True,
                subject=f"signal:{record.signal}:{record.time}",
            )
        )

    def _flush_for_exit(self) -> None:
        if self._telemetry is not None:
            self._telemetry.flush()

    # ------------------------------------------------------------------- model hooks

    def _forward_pre(self, module: Any, args: Any, kwargs: Any) -> None:
        start = time.thread_time()
        try:
            return self._forward_pre_impl(module, args, kwargs)
        finally:
            self.total_cost += time.thread_time() - start

    def _forward_pre_impl(self, module: Any, args: Any, kwargs: Any) -> None:
        if not self.active or os.getpid() != self._owner_pid:
            return
        import torch

        if not module.training or not torch.is_grad_enabled():
            self._eval_start = time.monotonic()
            return
        self._train_thread = threading.get_ident()
        clock = self._clock
        if (
            self.step > 0
            and clock._fwd_start is None
            and (clock.forwards == 0 or self._step_overdue(clock.forwards))
        ):
            self._detached_check()
        start = time.thread_time()
        clock.forward_start()
        if "data" in self.config.checks:
            self._batch.add(tuple(args), dict(kwargs))
        if self._calibrating is False and self.step == 0 and clock.forwards == 0:
            self._calibrate_grad_hooks()
        self._add_cost("forward", start)
        return

    def _forward_post(self, module: Any, args: Any, kwargs: Any, output: Any) -> None:
        start = time.thread_time()
        try:
            return self._forward_post_impl(module, args, kwargs, output)
        finally:
            self.total_cost += time.thread_time() - start

    def _forward_post_impl(self, module: Any, args: Any, kwargs: Any, output: Any) -> None:
        if not self.active or os.getpid() != self._owner_pid:
            return
        if self._eval_start is not None:
            self._clock.excluded += time.monotonic() - self._eval_start
            self._eval_start = None
            return
        self._clock.forward_end()
        loss = output if _is_scalar(output) else _loss_of(output)
        if loss is not None:
            self._loss = loss
        return

    def _calibrate_grad_hooks(self) -> None:
        """On the first step, time every parameter's gradient to find the last one computed."""
        self._calibrating = True
        for index, entry in enumerate(self.table.entries):
            p = entry.param
            if not getattr(p, "requires_grad", False):
                continue
            self._add_grad_hook(p, index)

    def _add_grad_hook(self, p: Any, index: int) -> None:
        clock_ref = self

        def hook(grad: Any) -> None:
            # Cheap by design (one timestamp): it runs inside the backward pass.
            clock_ref._clock.last_gradient()
            if clock_ref._calibrating:
                clock_ref._last_grad_param = index
            return

        hook = _eager(hook)
        try:
            handle = p.register_hook(hook)
        except RuntimeError:
            return
        self._grad_hooks.append(
            patching.track_hook(handle, hook, purpose=PURPOSE, target="gradient timing")
        )

    def _remove_grad_hooks(self) -> None:
        for hook in self._grad_hooks:
            patching.untrack_hook(hook)
        self._grad_hooks.clear()

    def _finish_calibration(self) -> None:
        if not self._calibrating:
            return
        self._calibrating = False
        last = self._last_grad_param
        self._remove_grad_hooks()
        if last is not None:
            self._add_grad_hook(self.table.entries[last].param, last)
        if self.hooks is not None:
            self.hooks.baseline()

    def _model_reloaded(self, module: Any, incompatible: Any) -> None:
        self._reloaded("model")

    def _optimizer_reloaded(self, optimizer: Any) -> None:
        self._reloaded("optimizer")

    def _reloaded(self, what: str) -> None:
        if not self.active:
            return
        # load_state_dict replaces weights (or optimizer state): recorded. Before the first
        # step (the job's resume) or declared (guard.declare_change), the comparisons start
        # again from the loaded values.
        if self.step > 0 and self._declared_at != self.step:
            # Mid-run and not (yet) declared: the comparisons keep what the last step left, so
            # the next one shows whether the load changed anything (a round trip of the same
            # state changes nothing); declare_change() still drops that baseline.
            # Judged with the next step's verdicts (and the one after with verify_async).
            until = self.step + 1 + int(self.config.verify_async)
            self._reloads.append((what, self.step, until))
            self.update.refresh()
        else:
            self.update.rebaseline()
        if what == "optimizer":
            self._step_base = {k: v - self.step for k, v in self._optimizer_counters().items()}
        self._emit("guard.reload", rank=self.rank, step=self.step, what=what)

    # --------------------------------------------------------------- optimizer hooks

    def _step_called(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        """First of the global pre-hooks: the step's own time starts here (PhaseClock)."""
        if optimizer is self.optimizer and self.active:
            self._clock.step_called()

    def _pre_step(self, optimizer: Any, args: Any, kwargs: Any) -> Any:
        start = time.thread_time()
        try:
            return self._pre_step_impl(optimizer, args, kwargs)
        finally:
            self.total_cost += time.thread_time() - start

    def _pre_step_impl(self, optimizer: Any, args: Any, kwargs: Any) -> Any:
        if not self.active or os.getpid() != self._owner_pid:
            return None
        self._train_thread = threading.get_ident()
        self.step += 1
        self._in_step = True
        step = self.step
        closure = kwargs.get("closure", args[0] if args else None)
        if callable(closure):
            # step(closure): forward and backward run inside the step, after this hook (as
            # under Lightning). The checks and the reads of gradients wait for the closure.
            self._clock.in_closure()
            wrapped = self._after_closure(closure, step)
            if "closure" in kwargs:
                return args, {**kwargs, "closure": wrapped}
            return (wrapped, *args[1:]), kwargs
        self._before_update(step)
        return None

    def _after_closure(self, closure: Callable[[], Any], step: int) -> Callable[[], Any]:
        done = False

        def closure_then_checks() -> Any:
            nonlocal done
            result = closure()
            if not done:  # LBFGS calls the closure several times; the checks run once
                done = True
                start = time.thread_time()
                try:
                    self._before_update(step)
                finally:
                    self.total_cost += time.thread_time() - start
            return result

        return closure_then_checks

    def _before_update(self, step: int) -> None:
        """Everything the guard checks and reads once the gradients of ``step`` exist."""
        # The backward ends (and the wait begins) where the job calls step(); the guard's
        # own checks below are not counted in any phase of the job.
        self._clock.backward_end()
        if self._calibrating:
            self._finish_calibration()
        self._take_pending()
        checks = self.config.checks
        start = time.thread_time()
        problems = self.table.identity(self.optimizer)
        if problems and "weights" in checks:
            self._record(
                GuardFinding(
                    rule_id="guard.weights",
                    severity=Severity.CRITICAL,
                    message=self._identity_message(),
                    rank=self.rank,
                    step=step,
                    evidence=(
                        f"{len(problems)} parameter slot(s) replaced, first at group "
                        f"{problems[0][0]}"
                    ),
                    established=True,
                    subject="params-replaced",
                )
            )
        if self.topology is not None:
            for finding in self.topology.check(step):
                self._record(finding)
        self._add_cost("weights", start)
        if self.hyper is not None:
            for finding in self.hyper.before_step(step):
                self._record(finding)
            clip = self._clip
            self._clip = []
            # A guard attached inside its first step (the global guard) missed that step's
            # clipping: what is declared is pinned from the first whole step.
            if not (self.global_guard and step == 1):
                for finding in self.hyper.check_clipping(step, clip):
                    self._record(finding)
            if self.model is not None:
                for finding in self.hyper.check_accumulation(step, self._clock.forwards):
                    self._record(finding)
            for finding in self.hyper.counter_drift(step):
                self._record(finding)
            replaced = self.hyper.wrapper_replaced()
            if replaced is not None:
                self._record(
                    self._detached_finding(
                        step,
                        "the guard's wrapper of the LR scheduler's step was replaced after "
                        f"attach ({replaced}): the steps it counts, which the schedule's replica "
                        "follows, are no longer seen",
                        "scheduler step",
                    )
                )
        for finding in self.update.before_step(step):
            self._record(finding)
        self._report_unverified(step)
        start = time.thread_time()
        if "rng" in checks:
            seeds = initial_seeds()
            if seeds != self._seeds:
                self._record(
                    GuardFinding(
                        rule_id="guard.reseed",
                        severity=Severity.HIGH,
                        message=(
                            "a torch generator was reseeded since the last step through a path "
                            "that cannot be intercepted (Generator.manual_seed)"
                        ),
                        rank=self.rank,
                        step=step,
                        evidence=f"initial_seed {self._seeds[0]} -> {seeds[0]}",
                        established=True,
                        subject=f"reseed:generator:{seeds!r}",
                    )
                )
                self._seeds = seeds
        self._add_cost("rng", start)
        if "data" in checks:
            self._check_samplers(step)
        if self.hooks is not None:
            for finding in self.hooks.check(step):
                self._record(finding)
            self._check_patches(step)
        self._check_step_method(step)
        if self.code is not None and self.code.changed():
            # A critical callable rebound since the last runtime check: judged now, on this
            # thread, so that the step it changes is the step that halts.
            for finding in self.code.verify(step):
                self._record(finding)
        if self._expected_full is not None:
            start = time.thread_time()
            now = full_digest([e.param for e in self.table.entries])
            if now != self._expected_full and "weights" in checks:
                self._record(
                    GuardFinding(
                        rule_id="guard.weights",
                        severity=Severity.CRITICAL,
                        message=(
                            f"the full digest of the weights changed between steps {step - 1} and "
                            f"{step}, outside the optimizer"
                        ),
                        rank=self.rank,
                        step=step,
                        evidence="full parameter digest",
                        established=True,
                        subject=f"full-digest:{step}",
                    )
                )
            self._expected_full = None
            self._add_cost("weights", start)
        self._clock.optimizer_start()
        return

    def _identity_message(self) -> str:
        """What happened to the optimizer's parameter slots: replaced, or moved.

        The same tensors moved between groups take another group's lr and weight decay.
        """
        now = [id(p) for group in self.optimizer.param_groups for p in group["params"]]
        if len(now) == len(self._param_ids) and set(now) == self._param_ids:
            return (
                "the optimizer's parameters were moved between its param groups after attach: "
                "they now take another group's settings (lr, weight decay)"
            )
        return "the optimizer's parameters are no longer the tensors it had at attach"

    def _judge_reloads(self, step: int) -> None:
        """Name an undeclared mid-run ``load_state_dict`` that changed what the guard compares.

        Loading is the sanctioned way to replace every weight or every state tensor at once.
        Mid-run and undeclared (a rollback after a loss spike calls ``declare_change``), the
        comparisons kept the last step's values: a load that changed the sampled weights or
        the state the step started from shows as a weights or update finding of this step,
        named here as the load; a round trip of the same state shows nothing and is only the
        ``guard.reload`` event.
        """
        if not self._reloads:
            return
        changed = any(f.rule_id in ("guard.weights", "guard.update") for f in self._step_findings)
        keep: list[tuple[str, int, int]] = []
        for what, after, until in self._reloads:
            if changed and "weights" in self.config.checks:
                self._record(
                    GuardFinding(
                        rule_id="guard.weights",
                        severity=Severity.HIGH,
                        message=(
                            f"the {what}'s {'weights were' if what == 'model' else 'state was'} "
                            f"replaced through load_state_dict after step {after} with no "
                            "declared change (guard.declare_change), and what was loaded "
                            "differs from what the last step left"
                        ),
                        rank=self.rank,
                        step=step,
                        evidence=f"{what}.load_state_dict after step {after}",
                        established=True,
                        subject=f"reload:{what}:{after}",
                    )
                )
            elif step < until:
                keep.append((what, after, until))
        self._reloads = keep

    def _check_samplers(self, step: int) -> None:
        """Samplers whose class or methods were replaced (their order checks may not run)."""
        start = time.thread_time()
        for subject, problem in sampler_problems(self._samplers):
            self._record(
                GuardFinding(
                    rule_id="guard.data-order",
                    severity=Severity.HIGH,
                    message=f"the data order is no longer checked as declared: {problem}",
                    rank=self.rank,
                    step=step,
                    evidence=problem,
                    established=True,
                    subject=subject,
                )
            )
        self._add_cost("data", start)

    def _check_patches(self, step: int) -> None:
        """The guard's own wrappers (seeding, sampler, clipping, saves) still in place."""
        start = time.thread_time()
        for patch_set in _process.installed_patches():
            for patch in patch_set.patches:
                owner = patch.owner
                current = (
                    owner.__dict__.get(patch.attr)
                    if isinstance(owner, type)
                    else getattr(owner, patch.attr, None)
                )
                if current is patch.replacement or patching.lookup(current) is not None:
                    continue  # ours, or another trainwarden component's on top of ours
                self._record(
                    GuardFinding(
                        rule_id="guard.detached",
                        severity=Severity.CRITICAL,
                        message=(
                            f"the guard's wrapper of {patch.name} was replaced after attach: "
                            "the check it feeds is bypassed"
                        ),
                        rank=self.rank,
                        step=step,
                        evidence=f"{patch.name} is now {describe_hook(current)}",
                        established=True,
                        subject=f"patch:{patch.name}",
                    )
                )
        self._add_cost("hooks", start)

    def _check_step_method(self, step: int) -> None:
        start = time.thread_time()
        current = type(self.optimizer).step
        instance = self.optimizer.__dict__.get("step")
        if current is not self._step_fn:
            self._record(
                GuardFinding(
                    rule_id="guard.code",
                    severity=Severity.CRITICAL,
                    message=(
                        f"{type(self.optimizer).__name__}.step was replaced after the guard "
                        "attached"
                    ),
                    rank=self.rank,
                    step=step,
                    evidence=describe_hook(current),
                    established=True,
                    subject=f"step-method:{id(current)}",
                )
            )
            self._step_fn = current
            self._step_replaced = describe_hook(current)
        if instance is not self._instance_step:
            if not _scheduler_wrapper(instance, self._instance_step, current):
                self._record(
                    GuardFinding(
                        rule_id="guard.code",
                        severity=Severity.CRITICAL,
                        message="the optimizer instance's step method was replaced after attach",
                        rank=self.rank,
                        step=step,
                        evidence=describe_hook(instance) if instance is not None else "removed",
                        established=True,
                        subject=f"instance-step:{id(instance)}",
                    )
                )
                self._step_replaced = (
                    describe_hook(instance) if instance is not None else "instance step removed"
                )
            self._instance_step = instance
        self._add_cost("code", start)

    def _post_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        start = time.thread_time()
        try:
            return self._post_step_impl(optimizer, args, kwargs)
        finally:
            self.total_cost += time.thread_time() - start

    def _post_step_impl(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if not self.active or os.getpid() != self._owner_pid:
            return
        step = self.step
        end = self._clock.optimizer_end()
        result = self.update.after_step(step, next_step=step + 1)
        for finding in result.findings:
            self._record(finding)
        # The update of the last step was judged in the verification thread meanwhile (this
        # step's, at once, in synchronous mode): its findings join this step's decision.
        verified = self._collect_verification(step - 1 if self.config.verify_async else step)
        self._judge_reloads(step)
        self._check_step_method(step)
        start = time.thread_time()
        full = 0
        if step % self.config.full_digest_every == 0:
            full = full_digest([e.param for e in self.table.entries])
            if "weights" in self.config.checks:
                self._expected_full = full
        self._add_cost("weights", start)
        wall = time.time()
        clock = self._clock
        other = clock.other(self._prev_end)
        step_time = (end - self._prev_end) if self._prev_end is not None else None
        phases = {
            "fwd": clock.fwd if clock.forwards else None,
            "bwd": clock.bwd if clock.forwards else None,
            "opt": clock.opt,
            "wait": clock.wait,
            "other": other,
            "step": step_time,
        }
        for name, seconds_on_cpu in clock.computing.items():
            phases[name + "_cpu"] = seconds_on_cpu if phases[name] is not None else None
        if "rng" in self.config.checks and step % self.config.rng_every == 0:
            self._emit(
                "guard.rng", rank=self.rank, step=step, when="periodic", fingerprints=fingerprints()
            )
        loss = self._read_loss()
        grad_norm, estimated = self._grad_norm(result)
        if self.anomaly is not None:
            for name, value in (("loss", loss), ("grad_norm", grad_norm)):
                for finding in self.anomaly.observe(step, name, value):
                    self._record(finding)
        if result.grad_finite is False and self.anomaly is not None:
            for finding in self.anomaly.observe(step, "grad_norm", math.nan):
                self._record(finding)
        self._take_pending()
        own = list(self._step_findings)
        self._step_findings = []
        rows = self._exchange(step, result, full, phases, own)
        decided = self._decide(step, rows, phases, own)
        self._write_telemetry(step, wall, phases, loss, grad_norm, estimated)
        info = StepInfo(
            step=step,
            rank=self.rank,
            time=wall,
            phases=phases,
            loss=loss,
            lr=_lr(self.optimizer),
            verified=verified,
            findings=tuple(own + decided),
            optimizer=self.index,
        )
        for fn in list(self._listeners):
            try:
                fn(info)
            except Exception:  # noqa: PERF203  # a listener's failure must not stop training
                logger.exception("trainwarden guard: step listener failed")
        self._clock = PhaseClock()
        self._prev_end = time.monotonic()
        self._prev_wall = wall
        self._batch = BatchDigest()
        self._in_step = False
        self._flush_lines(step - 1 if self.config.verify_async else step)
        self._maybe_halt(step, own + decided, rows)
        return

    # -------------------------------------------------------------------- exchange

    def _row(
        self,
        step: int,
        flags: int,
        result: Any,
        full: int,
        phases: Mapping[str, float | None],
        count: int,
    ) -> list[int]:
        row = [UNKNOWN] * WIDTH
        row[F_MAGIC] = MAGIC
        row[F_GUARD] = self.index
        row[F_STEP] = step
        row[F_FLAGS] = flags
        row[F_PARAM] = result.param_digest if result is not None else 0
        row[F_GRAD] = result.grad_digest if result is not None else 0
        row[F_FULL] = full
        row[F_COMMIT] = int(self.commitment[:15], 16)
        row[F_FWD] = micro(phases.get("fwd"))
        row[F_BWD] = micro(phases.get("bwd"))
        row[F_OPT] = micro(phases.get("opt"))
        row[F_OTHER] = micro(phases.get("other"))
        row[F_WAIT] = micro(phases.get("wait"))
        row[F_STEP_TIME] = micro(phases.get("step"))
        row[F_FINDINGS] = count
        row[F_ROUND_WAIT] = micro(self.exchange.last_wait)
        row[F_REPLICA] = 1 if self.replicas else 0
        row[F_FWD_CPU] = micro(phases.get("fwd_cpu"))
        row[F_BWD_CPU] = micro(phases.get("bwd_cpu"))
        row[F_OPT_CPU] = micro(phases.get("opt_cpu"))
        return row

    def _exchange(
        self,
        step: int,
        result: Any,
        full: int,
        phases: Mapping[str, float | None],
        own: list[GuardFinding],
    ) -> list[list[int]]:
        flags = (FLAG_HALT if any(f.halts for f in own) else 0) | (FLAG_FINDING if own else 0)
        row = self._row(step, flags, result, full, phases, len(own))
        if self._exchange_off or not self.exchange.distributed:
            return [row]
        start = time.thread_time()
        try:
            rows = self.exchange.gather(row)
        except ExchangeError as exc:
            self._exchange_off = True
            # The other ranks cannot be reached: one is gone (killed, crashed, hung past the
            # group's timeout) or the group was torn down. T6's consequence, not divergence.
            finding = GuardFinding(
                rule_id="guard.peer-lost",
                severity=Severity.HIGH,
                message=(
                    f"the guard lost contact with the other ranks at step {step}: a rank is "
                    "gone (killed, crashed or hung) or the process group was torn down"
                ),
                rank=self.rank,
                step=step,
                evidence=str(exc.__cause__ or exc)[:200],
                established=False,
                subject="exchange-failed",
            )
            self._record(finding)
            own.append(finding)
            return [row]
        self._add_cost("exchange", start)
        if self.exchange.last_wait:
            phases_wait = phases.get("wait") or 0.0
            if isinstance(phases, dict):
                phases["wait"] = phases_wait + self.exchange.last_wait
        return rows

    def _decide(
        self,
        step: int,
        rows: list[list[int]],
        phases: Mapping[str, float | None],
        own: list[GuardFinding],
    ) -> list[GuardFinding]:
        """Decisions every rank takes from the same gathered rows."""
        out: list[GuardFinding] = []
        start = time.thread_time()
        if len(rows) > 1:
            catch_up = [r for r, row in enumerate(rows) if row[F_FLAGS] & FLAG_CATCH_UP]
            if catch_up:
                finding = GuardFinding(
                    rule_id="guard.detached",
                    severity=Severity.CRITICAL,
                    message=(
                        f"the guard of rank(s) {catch_up} was detached or bypassed; cross-rank "
                        "checks stop"
                    ),
                    rank=catch_up[0],
                    step=step,
                    evidence=f"ranks {catch_up}",
                    established=True,
                    subject=f"detached-peer:{catch_up}",
                )
                if self._record(finding):
                    out.append(finding)
                self._exchange_off = True
            if "cross-rank" in self.config.checks:
                out.extend(self._cross_rank(step, rows))
        if "timing" in self.config.checks:
            matrix = [
                [
                    seconds(row[F_FWD]),
                    seconds(row[F_BWD]),
                    seconds(row[F_OPT]),
                    seconds(row[F_OTHER]),
                ]
                for row in rows
            ]
            computing = [
                [seconds(row[F_FWD_CPU]), seconds(row[F_BWD_CPU]), seconds(row[F_OPT_CPU]), None]
                for row in rows
            ]
            if len(rows) == 1:
                matrix = [[phases.get(name) for name in PHASES]]
                computing = [[phases.get(name + "_cpu") for name in PHASES]]
            waits = [seconds(row[F_ROUND_WAIT]) for row in rows]
            for finding in self.stalls.observe(
                step, matrix, waits, reporter=self.rank, computing=computing
            ):
                # Every rank reaches the same verdict; the stalled rank and rank 0 record it.
                if finding.rank == self.rank or self.rank == 0:
                    if self._record(finding):
                        out.append(finding)
                else:
                    out.append(finding)
        self._add_cost("cross-rank", start)
        return out

    def _cross_rank(self, step: int, rows: list[list[int]]) -> list[GuardFinding]:
        out: list[GuardFinding] = []
        commits = {row[F_COMMIT] for row in rows}
        if len(commits) > 1:
            finding = GuardFinding(
                rule_id="guard.cross-rank",
                severity=Severity.HIGH,
                message="ranks sample with different secrets: sampled digests cannot be compared",
                rank=self.rank,
                step=step,
                evidence=f"{len(commits)} distinct secret commitments",
                established=True,
                subject="secrets-differ",
            )
            if self._record(finding):
                out.append(finding)
            return out
        if self.replicas is None:
            # First exchange: replicas of one model (data parallel) have identical samples.
            self.replicas = len({row[F_PARAM] for row in rows}) == 1 or all(
                row[F_REPLICA] for row in rows
            )
            return out
        if not self.replicas:
            return out
        for field_index, what in (
            (F_PARAM, "sampled weights"),
            (F_GRAD, "sampled gradients after all-reduce"),
            (F_FULL, "full weight digest"),
        ):
            values = [row[field_index] for row in rows]
            if field_index == F_FULL and not any(values):
                continue
            if field_index == F_GRAD and not all(values):
                continue
            counts: dict[int, int] = {}
            for value in values:
                counts[value] = counts.get(value, 0) + 1
            if len(counts) == 1:
                continue
            top = max(counts.values())
            majority = [v for v, n in counts.items() if n == top]
            if len(majority) == 1:
                odd = [r for r, v in enumerate(values) if v != majority[0]]
            else:
                odd = list(range(len(values)))
            shown = ", ".join(str(r) for r in odd)
            finding = GuardFinding(
                rule_id="guard.cross-rank",
                severity=Severity.CRITICAL,
                message=(
                    f"the {what} of data-parallel replicas diverge at step {step}: rank(s) {shown} "
                    + ("differ from the others" if len(majority) == 1 else "disagree (no majority)")
                ),
                rank=odd[0] if len(odd) == 1 else self.rank,
                step=step,
                evidence=f"{what}: {len(counts)} distinct digests over {len(values)} ranks",
                established=True,
                subject=f"cross-rank:{what}:{shown}",
            )
            if self._record(finding):
                out.append(finding)
            # Once replicas diverge every later digest differs too: report, then stop comparing.
            self.replicas = False
            break
        return out

    # ------------------------------------------------------------------------ halting

    def _maybe_halt(self, step: int, findings: list[GuardFinding], rows: list[list[int]]) -> None:
        if self.on_violation != HALT:
            return
        flagged = tuple(
            r for r, row in enumerate(rows) if row[F_FLAGS] & (FLAG_HALT | FLAG_CATCH_UP)
        )
        halting = [f for f in findings if f.halts]
        if not halting and not flagged:
            return
        if self.world > 1 and rows and len(rows) == 1:
            flagged = (self.rank,) if halting else flagged
        ranks = flagged or (self.rank,)
        shown = "; ".join(f.describe() for f in halting[:3])
        where = f"rank(s) {', '.join(map(str, ranks))}"
        message = f"trainwarden guard halted step {step}: tampering detected on {where}"
        if shown:
            message += f": {shown}"
        raise StepViolation(message, tuple(halting), step, ranks)

    def _step_overdue(self, forwards: int) -> bool:
        """Whether a whole step's training forwards ran since the last step the guard saw.

        A step method replaced by code that skips the guard's hooks leaves no other trace in
        the hooks: the forwards of the next step pile up on those of the last. Not a finding
        by itself (a mixed-precision scaler skips steps with non-finite gradients), it makes
        the forward pre-hook look at the optimizer side again.
        """
        pinned = self.hyper.accumulation if self.hyper is not None else None
        return forwards >= (pinned or 1)

    def _detached_check(self) -> None:
        """From the forward pre-hook: is the optimizer side of the guard still attached?"""
        if self.hooks is None:
            return
        overdue = self._clock.forwards > 0
        self._check_step_method(self.step + 1)
        missing = self.hooks.own_present()
        bypassed = self._bypassed()
        if bypassed is None and overdue and self._step_replaced is not None:
            bypassed = (
                f"the optimizer's step was replaced ({self._step_replaced}) and a step's "
                "forwards ran without the guard's hooks: its step skips them"
            )
        if not missing and not bypassed:
            return
        step = self.step + 1
        findings = [
            self._detached_finding(step, f"the guard's {label} was removed", label)
            for label in missing
        ]
        if bypassed:
            findings.append(self._detached_finding(step, bypassed, "bypassed"))
        for finding in findings:
            self._record(finding)
        if any(m.startswith("optimizer step") for m in missing) or bypassed:
            self._detached_at = self._detached_at or step
            if not self.exchange.distributed and self.on_violation == HALT:
                # Alone, halt right here. With other ranks, this thread must not block before
                # the job's own collectives of this step (they wait for it there); the
                # watchdog tells them instead (see tick()).
                raise StepViolation(
                    f"trainwarden guard halted at step {step}: the guard was detached",
                    tuple(findings),
                    step,
                    (self.rank,),
                )

    def _bypassed(self) -> str | None:
        """A step the optimizer took without the guard's hooks (its own counter moved on)."""
        for entry in self.table.entries[:4]:
            state = self.optimizer.state.get(entry.param)
            if not state or "step" not in state:
                continue
            value = state["step"]
            count = float(local(value).item()) if hasattr(value, "item") else float(value)
            if count > self._opt_steps_seen(entry.param):
                return (
                    f"the optimizer stepped {int(count)} times but the guard saw "
                    f"{self._opt_steps_seen(entry.param)}: its step ran without the guard's hooks"
                )
            return None
        return None

    def _opt_steps_seen(self, param: Any) -> int:
        # The optimizer's own counter at attach plus the steps the guard saw.
        base = self._step_base or {}
        return int(base.get(id(param), 0)) + self.step

    def _optimizer_counters(self) -> dict[int, int]:
        base: dict[int, int] = {}
        for entry in self.table.entries[:4]:
            state = self.optimizer.state.get(entry.param)
            value = state.get("step") if state else None
            if value is None:
                base[id(entry.param)] = 0
            else:
                base[id(entry.param)] = int(
                    float(local(value).item()) if hasattr(value, "item") else float(value)
                )
        return base

    def _detached_finding(self, step: int, message: str, subject: str) -> GuardFinding:
        return GuardFinding(
            rule_id="guard.detached",
            severity=Severity.CRITICAL,
            message=message,
            rank=self.rank,
            step=step,
            evidence=subject,
            established=True,
            subject=f"detached:{subject}",
        )

    def _catch_up(self, step: int, findings: list[GuardFinding]) -> None:
        """From the watchdog: take this rank's place in the exchange its post-hook would run.

        The other ranks wait for this rank in their next exchange; the watchdog thread joins
        it with the halt flag set (it never blocks the training thread, which may be inside
        the job's own collectives), then the training thread is interrupted.
        """
        with self._lock:
            if self._caught_up or not self.active:
                return
            self._caught_up = True
        if self.exchange.distributed and not self._exchange_off:
            row = self._row(
                step, FLAG_HALT | FLAG_CATCH_UP | FLAG_FINDING, None, 0, {}, len(findings)
            )
            try:
                self.exchange.gather(row)
            except ExchangeError as exc:
                logger.error("trainwarden guard: catch-up exchange failed: %s", exc)
            self._exchange_off = True
        if self.on_violation == HALT:
            self._interrupt_training()

    def _interrupt_training(self) -> None:
        """Raise in the training thread from the watchdog (asynchronously, at its next bytecode)."""
        target = self._train_thread or threading.main_thread().ident
        if target is None or self._halt_sent or not self.active:
            return
        self._halt_sent = True
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(target), ctypes.py_object(DetachedViolation)
        )

    # ------------------------------------------------------------------------- watchdog

    def tick(self) -> None:
        """One watchdog pass (called from the watchdog thread)."""
        if not self.active:
            return
        now = time.monotonic()
        if self.code is not None and not self._code_started:
            self._code_started = True
            self._paced(self.code.start)
        if self.hooks is not None and self.step > 0:
            missing = self.hooks.own_present()
            # Without its post-hook this rank no longer joins the exchanges: take its place.
            optimizer_side = [m for m in missing if m == "optimizer step post-hook"]
            # close() marks the guard inactive before it removes its hooks: hooks missing
            # from an active guard were removed by someone else.
            if missing and self.active:
                findings = [
                    self._detached_finding(
                        self._current_step(), f"the guard's {label} was removed", label
                    )
                    for label in missing
                ]
                for finding in findings:
                    self._defer(finding)
                if optimizer_side or self._detached_at:
                    self._catch_up(self._current_step(), findings)
            elif self._detached_at and self.active:
                self._catch_up(self._detached_at, [])
        clock = self._clock
        if (
            clock.current is not None
            and "timing" in self.config.checks
            and self.step > self.config.timing_warmup
        ):
            running = clock.running(now)
            if self.stalls.overrun(clock.current, running, self.rank):
                median = self.stalls.median(self.rank, clock.current)
                shown_median = f"{median:.3g} s" if median is not None else "unknown"
                # Alone, or in a data-parallel optimizer step (no collective inside), a phase
                # that runs on is this rank's own doing; elsewhere it may be waiting for a
                # slower rank inside the job's collectives: suspected at a lower level until
                # the exchange, which compares every rank's own work, names the culprit.
                own = self.world == 1 or (
                    clock.current == "opt" and not any(e.sharded for e in self.table.entries)
                )
                waiting = "" if own else " (it may be waiting for another rank)"
                self._defer(
                    GuardFinding(
                        rule_id="guard.timing",
                        severity=Severity.HIGH if own else Severity.MEDIUM,
                        message=(
                            f"rank {self.rank} has been in the {phase_label(clock.current)} of "
                            f"step {self.step + (0 if clock.current == 'opt' else 1)} for "
                            f"{running:.1f} s (median {shown_median}){waiting}"
                        ),
                        rank=self.rank,
                        step=self.step,
                        evidence=f"rank {self.rank} phase {clock.current} running {running:.1f} s",
                        established=False,
                        subject=f"overrun:{clock.current}:{self.step}",
                    )
                )
        if not self._alive():
            return
        if self.code is not None and now >= self._next_code:
            self._next_code = now + self.config.code_every
            for finding in self._paced(functools.partial(self.code.verify, self.step)):
                self._defer(finding)
        if self.code is not None and now >= self._next_package:
            self._next_package = now + self.config.package_every
            for finding in self._paced(functools.partial(self.code.verify_package, self.step)):
                self._defer(finding)
        if self._telemetry is not None and now >= self._next_flush:
            self._next_flush = now + self.config.telemetry_flush
            self._telemetry.flush()

    # ------------------------------------------------------------------------ helpers

    def _read_loss(self) -> float | None:
        loss = self._loss
        self._loss = None
        if loss is None:
            return None
        try:
            return float(loss.detach().float().item()) if hasattr(loss, "detach") else float(loss)
        except (RuntimeError, ValueError, TypeError):
            return None

    def _grad_norm(self, result: Any) -> tuple[float | None, bool]:
        norm = self._clip_norm
        self._clip_norm = None
        if norm is not None:
            try:
                return float(norm), False
            except (RuntimeError, ValueError, TypeError):
                pass
        if result.sampled and result.grad_sq_sum:
            total = sum(e.numel for e in self.table.entries)
            return math.sqrt(result.grad_sq_sum * total / result.sampled), True
        return None, False

    def _collect_verification(self, through: int) -> int:
        """Record the verifications judged for steps up to ``through``; coordinates verified."""
        verified = 0
        try:
            done = self.update.collect(through)
        except RuntimeError as exc:
            self._record(
                GuardFinding(
                    rule_id="guard.update",
                    severity=Severity.MEDIUM,
                    message=f"the update check failed and did not verify: {exc}",
                    rank=self.rank,
                    step=self.step,
                    evidence=type(exc.__cause__ or exc).__name__,
                    established=False,
                    subject="update-check-failed",
                )
            )
            return 0
        for result in done:
            for finding in result.findings:
                self._record(finding)
            verified += result.verified
            line = self._lines.get(result.step)
            if line is not None:
                line["residual"] = _finite(result.residual)
                line["checked"] = result.verified
            else:
                self._verdicts[result.step] = (_finite(result.residual), result.verified)
        return verified

    def _flush_lines(self, through: int) -> None:
        if self._telemetry is None:
            self._lines.clear()
            return
        for step in sorted(s for s in self._lines if s <= through):
            self._telemetry.write(self._lines.pop(step))

    def _write_telemetry(
        self,
        step: int,
        wall: float,
        phases: Mapping[str, float | None],
        loss: float | None,
        grad_norm: float | None,
        estimated: bool,
    ) -> None:
        if self._telemetry is None:
            return
        start = time.thread_time()
        record = {
            "step": step,
            "rank": self.rank,
            "t": round(wall, 6),
            "fwd": _r(phases.get("fwd")),
            "bwd": _r(phases.get("bwd")),
            "opt": _r(phases.get("opt")),
            "wait": _r(phases.get("wait")),
            "other": _r(phases.get("other")),
            "step_time": _r(phases.get("step")),
            "loss": _finite(loss),
            "grad_norm": _finite(grad_norm),
            "grad_norm_estimated": estimated,
            # Filled in when the step's verification is collected (one step later by default).
            "residual": self._verdicts.get(step, (None, 0))[0],
            "checked": self._verdicts.pop(step, (None, 0))[1],
            "data": self._batch.hexdigest(),
            "lr": _finite(_lr(self.optimizer)),
            "opt_index": self.index,
        }
        self._lines[step] = record
        self._add_cost("telemetry", start)


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _lr(optimizer: Any) -> float | None:
    try:
        value = optimizer.param_groups[0]["lr"]
        return float(value.item()) if hasattr(value, "item") else float(value)
    except (IndexError, KeyError, TypeError, ValueError):
        return None


def _is_scalar(value: Any) -> bool:
    return hasattr(value, "dim") and hasattr(value, "requires_grad") and value.dim() == 0


def _loss_of(output: Any) -> Any:
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, Mapping):
        loss = output.get("loss")
    return loss if loss is not None and _is_scalar(loss) else None


def _scheduler_wrapper(instance: Any, before: Any, class_step: Any) -> bool:
    """Whether a new instance ``step`` is torch's LR-scheduler step counter around the original.

    ``LRScheduler.__init__`` wraps ``optimizer.step`` per instance to count calls; the wrapper
    is torch's own code and calls the class's (hooked) step.
    """
    if instance is None or not getattr(instance, "_wrapped_by_lr_sched", False):
        return False
    code = getattr(instance, "__code__", None)
    filename = getattr(code, "co_filename", "") if code is not None else ""
    import torch.optim.lr_scheduler as sched

    if os.path.normpath(filename) != os.path.normpath(sched.__file__ or ""):
        return False
    wrapped = getattr(instance, "__wrapped__", None)
    target = getattr(class_step, "__func__", class_step)
    inner = getattr(before, "__wrapped__", None) if before is not None else None
    return wrapped is target or (inner is not None and wrapped is inner)
