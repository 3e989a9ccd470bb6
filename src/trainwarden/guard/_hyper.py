"""Hyperparameters pinned to what was declared: group settings, schedule, clipping, accumulation.

At attach the guard records every setting of every parameter group (lr, betas, eps, weight
decay, momentum, dampening, nesterov, maximize, amsgrad, foreach, fused...) and builds an
independent replica of the declared scheduler (:mod:`trainwarden.guard._schedule`). Before each
step it compares: a setting changed by anyone, or a learning rate that is not the one the
declared schedule gives after the scheduler steps actually taken, is a finding (T5). Gradient
clipping (``clip_grad_norm_``'s ``max_norm`` and norm type) and gradient accumulation (training
forwards per optimizer step) are pinned to what the first steps showed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from trainwarden.findings import Severity
from trainwarden.guard._findings import GuardFinding
from trainwarden.guard._hooks import describe_hook
from trainwarden.guard._schedule import (
    Replica,
    UnsupportedSchedule,
    cycled_momentum,
    replica_for,
)

__all__ = ["ClipRecord", "HyperparamCheck"]

# Keys schedulers add to groups for their own bookkeeping; pinned like the rest once present.
_SCHEDULER_KEYS = frozenset(
    {"initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum", "initial_momentum"}
)


def _freeze(value: Any) -> Any:
    """A comparable, immutable copy of a param-group value (tensors become floats)."""
    if hasattr(value, "item") and getattr(value, "numel", lambda: 2)() == 1:
        return float(value.item())
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value


def _unfollowed(key: str, value: Any) -> Any:
    """What stays pinned of a momentum setting a scheduler cycles (with a replica or not).

    ``momentum`` is the scheduler's entirely; of ``betas`` only the first entry is (beta2
    stays pinned).
    """
    if key == "betas" and isinstance(value, tuple):
        return value[1:]
    return None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return bool(a == b) if type(a) is type(b) else False


@dataclass(frozen=True, slots=True)
class ClipRecord:
    """One call of ``clip_grad_norm_`` as the guard's wrapper saw it."""

    max_norm: float
    norm_type: float
    total_norm: float | None


@dataclass
class _Pins:
    groups: list[dict[str, Any]]
    clip: tuple[float, float] | bool | None = False  # False: not seen yet (first step)
    accumulation: int | None = None
    accumulation_off: int = 0
    fields: dict[str, int] = field(default_factory=dict)


class HyperparamCheck:
    """Pins the optimizer's settings and follows the learning rate with a replica.

    Args:
        optimizer: The optimizer.
        scheduler: The declared LR scheduler, if any (its step method is wrapped to count).
        rank: For findings.
        lr_rel: Relative tolerance of the learning-rate comparison.
    """

    def __init__(self, optimizer: Any, scheduler: Any | None, *, rank: int, lr_rel: float) -> None:
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.rank = rank
        self.lr_rel = lr_rel
        self.replica: Replica | None = None
        self.not_followed: str | None = None
        self.momentum_not_followed: str | None = None
        self._late_scheduler = False
        self.steps_taken = 0
        self._offset = 0
        self._wrapped_step: Any = None
        self._wrapped_state: Any = None
        self.cost = 0.0
        self._pins = _Pins([self._settings(g) for g in optimizer.param_groups])
        if scheduler is None:
            self.not_followed = "no scheduler declared: the learning rate is pinned"
        else:
            try:
                self.replica = replica_for(scheduler, optimizer)
            except UnsupportedSchedule as exc:
                self.not_followed = str(exc)
            self._follow_momentum()
            self._offset = int(getattr(scheduler, "last_epoch", 0) or 0)
            self._wrap_scheduler(scheduler)

    def _follow_momentum(self) -> None:
        """Which momentum key the scheduler drives with no replica following it."""
        followed = self.replica is not None and self.replica.momentum is not None
        self.momentum_not_followed = (
            None if followed else cycled_momentum(self.scheduler, self.optimizer)
        )

    # ------------------------------------------------------------------------- scheduler

    def _wrap_scheduler(self, scheduler: Any) -> None:
        original = scheduler.step
        check = self

        def step(*args: Any, **kwargs: Any) -> Any:
            # Count what the job asks of the scheduler; a step with an explicit epoch moves
            # the replica to that epoch (torch's deprecated form).
            result = original(*args, **kwargs)
            epoch = kwargs.get("epoch", args[0] if args else None)
            if epoch is None:
                check.steps_taken += 1
            else:
                check.steps_taken = int(epoch) - check._offset
            return result

        step.__wrapped__ = original  # type: ignore[attr-defined]
        scheduler.step = step
        self._wrapped_step = step
        # torch's LRScheduler.state_dict copies the instance __dict__ whole, so the wrapper
        # would land in the job's checkpoint (a local function: torch.save fails, and a
        # checkpoint must not carry the guard's code). Leave it out.
        original_state = scheduler.state_dict

        def state_dict() -> Any:
            state = original_state()
            if isinstance(state, dict):
                for key, ours in (("step", step), ("state_dict", state_dict)):
                    if state.get(key) is ours:
                        del state[key]
            return state

        state_dict.__wrapped__ = original_state  # type: ignore[attr-defined]
        scheduler.state_dict = state_dict
        self._wrapped_state = state_dict

    def detach(self) -> None:
        """Restore the scheduler's own ``step``."""
        if self.scheduler is not None and self._wrapped_step is not None:
            if self.scheduler.__dict__.get("step") is self._wrapped_step:
                del self.scheduler.step
            if self.scheduler.__dict__.get("state_dict") is self._wrapped_state:
                del self.scheduler.state_dict
            self._wrapped_step = None
            self._wrapped_state = None

    def wrapper_replaced(self) -> str | None:
        """What replaced the wrapper that counts the scheduler's steps (None: still ours).

        The replica follows the steps the wrapper counts: a replacement that steps the
        scheduler less often, or never, freezes the schedule with the replica agreeing.
        """
        if self.scheduler is None or self._wrapped_step is None:
            return None
        current = self.scheduler.__dict__.get("step")
        if current is self._wrapped_step:
            return None
        return describe_hook(current) if current is not None else "removed"

    @property
    def accumulation(self) -> int | None:
        """Training forwards per optimizer step, as pinned at the first step (None before)."""
        return self._pins.accumulation

    @property
    def t(self) -> int:
        """Scheduler steps taken since the scheduler was created (its ``last_epoch``)."""
        return self._offset + self.steps_taken

    # ---------------------------------------------------------------------------- checks

    @staticmethod
    def _settings(group: dict[str, Any]) -> dict[str, Any]:
        return {k: _freeze(v) for k, v in group.items() if k != "params"}

    def before_step(self, step: int) -> list[GuardFinding]:
        """Compare every group's settings with the pins and the replica."""
        start = time.thread_time()
        findings: list[GuardFinding] = []
        groups = self.optimizer.param_groups
        pins = self._pins.groups
        if len(groups) != len(pins):
            findings.append(
                self._finding(
                    step,
                    f"the optimizer has {len(groups)} parameter groups, {len(pins)} at attach",
                    f"groups {len(pins)} -> {len(groups)}",
                    "groups",
                )
            )
        expected_lr = self.replica.lr(self.t) if self.replica is not None else None
        expected_momentum = (
            self.replica.momentum(self.t)
            if self.replica is not None and self.replica.momentum is not None
            else None
        )
        for g, (group, pinned) in enumerate(zip(groups, pins, strict=False)):
            for key, value in group.items():
                if key == "params":
                    continue
                now = _freeze(value)
                if key == "lr":
                    findings.extend(self._check_lr(step, g, now, pinned, expected_lr))
                    continue
                cycled = key == self.momentum_not_followed
                if expected_momentum is not None and self._momentum_key(key):
                    findings.extend(self._check_momentum(step, g, key, now, expected_momentum[g]))
                    cycled = True
                if cycled and key in pinned:
                    findings.extend(self._check_unscheduled(step, g, key, pinned[key], now))
                    continue
                if key not in pinned:
                    if key in _SCHEDULER_KEYS:
                        pinned[key] = now  # a scheduler created after attach
                        self._late_scheduler = True
                        continue
                    findings.append(
                        self._finding(
                            step,
                            f"param group {g} gained the setting {key!r} = {now!r} after attach",
                            f"group {g} {key}: (none) -> {now!r}",
                            f"{g}:{key}:{now!r}",
                        )
                    )
                    pinned[key] = now
                    continue
                if not _same(pinned[key], now):
                    findings.append(
                        self._finding(
                            step,
                            f"{key} of param group {g} changed from {pinned[key]!r} to {now!r} "
                            "outside the declared schedule",
                            f"group {g} {key}: {pinned[key]!r} -> {now!r}",
                            f"{g}:{key}:{now!r}",
                        )
                    )
        self.cost += time.thread_time() - start
        return findings

    def _momentum_key(self, key: str) -> bool:
        return self.replica is not None and key == self.replica.momentum_key

    def _check_lr(
        self,
        step: int,
        g: int,
        lr: Any,
        pinned: dict[str, Any],
        expected: list[float] | None,
    ) -> list[GuardFinding]:
        if expected is None:
            if self.replica is None and self.scheduler is not None:
                return []  # an unsupported scheduler changes lr: not followed (said at attach)
            want = pinned.get("lr")
            if want is None or _same(want, lr):
                return []
            return [
                self._finding(
                    step,
                    f"lr of param group {g} changed from {want!r} to {lr!r} with no scheduler "
                    f"declared{self._remedy()}",
                    f"group {g} lr: {want!r} -> {lr!r}",
                    f"{g}:lr:{lr!r}",
                )
            ]
        if g >= len(expected):
            return []
        want_f = expected[g]
        if abs(float(lr) - want_f) <= self.lr_rel * max(abs(want_f), 1e-300):
            return []
        return [
            self._finding(
                step,
                f"lr of param group {g} is {float(lr):.6g} where the declared schedule "
                f"({self.replica.name if self.replica else '?'}, {self.t} scheduler steps) "
                f"gives {want_f:.6g}",
                f"group {g} lr: expected {want_f:.6g}, found {float(lr):.6g}",
                f"{g}:lr",
            )
        ]

    def _remedy(self) -> str:
        """What a job that changes the lr on purpose does, for the message.

        Undeclared changes stay findings (an insider's lr change looks the same); a user who
        forgot the declaration must learn from the message how to make it.
        """
        late = (
            " (a scheduler was created for this optimizer after the guard attached)"
            if self._late_scheduler
            else ""
        )
        return (
            f"{late}: pass the job's scheduler as Guard(..., scheduler=) (two schedulers: "
            "one ChainedScheduler), or declare a deliberate change with "
            "guard.declare_change(reason)"
        )

    def _check_momentum(
        self, step: int, g: int, key: str, now: Any, want: float
    ) -> list[GuardFinding]:
        """The scheduled momentum (or beta1) against the replica."""
        value = now[0] if key == "betas" and isinstance(now, tuple) else now
        if abs(float(value) - want) <= self.lr_rel * max(abs(want), 1e-300):
            return []
        return [
            self._finding(
                step,
                f"{key} of param group {g} is {value!r} where the declared schedule gives "
                f"{want:.6g}",
                f"group {g} {key}: expected {want:.6g}, found {value!r}",
                f"{g}:{key}",
            )
        ]

    def _check_unscheduled(
        self, step: int, g: int, key: str, pinned: Any, now: Any
    ) -> list[GuardFinding]:
        """The part of a cycled momentum setting the scheduler does not drive (beta2).

        Followed by a replica or not, it stays pinned: one finding per value it is moved to.
        """
        rest, was = _unfollowed(key, now), _unfollowed(key, pinned)
        if _same(was, rest):
            return []
        return [
            self._finding(
                step,
                f"{key} of param group {g} changed from {pinned!r} to {now!r} outside the "
                f"declared schedule ({key}[1:] is not the scheduler's)",
                f"group {g} {key}[1:]: {was!r} -> {rest!r}",
                f"{g}:{key}[1:]:{rest!r}",
            )
        ]

    def check_clipping(self, step: int, calls: list[ClipRecord]) -> list[GuardFinding]:
        """Pin gradient clipping to what the first step did; report changes after."""
        seen: tuple[float, float] | None = (
            (calls[-1].max_norm, calls[-1].norm_type) if calls else None
        )
        pins = self._pins
        if pins.clip is False:
            pins.clip = seen
            return []
        if seen == pins.clip:
            return []
        if seen is None:
            message = f"gradient clipping (max_norm {pins.clip[0]!r}) stopped being applied"  # type: ignore[index]
        elif pins.clip is None:
            message = f"gradient clipping started (max_norm {seen[0]!r}) after a run without it"
        else:
            message = (
                f"gradient clipping changed from max_norm {pins.clip[0]!r} "  # type: ignore[index]
                f"(norm {pins.clip[1]!r}) to max_norm {seen[0]!r} (norm {seen[1]!r})"  # type: ignore[index]
            )
        return [self._finding(step, message, f"clip {pins.clip!r} -> {seen!r}", f"clip:{seen!r}")]

    def check_accumulation(self, step: int, forwards: int | None) -> list[GuardFinding]:
        """Pin training forwards per optimizer step; report a change that persists."""
        if forwards is None or forwards <= 0:
            return []
        pins = self._pins
        if pins.accumulation is None:
            pins.accumulation = forwards
            return []
        if forwards == pins.accumulation:
            pins.accumulation_off = 0
            return []
        pins.accumulation_off += 1
        # The last step of an epoch may legitimately accumulate fewer micro-batches; a change
        # that holds for two steps in a row is a changed setting.
        if pins.accumulation_off < 2:
            return []
        return [
            self._finding(
                step,
                f"gradient accumulation changed from {pins.accumulation} to {forwards} "
                "micro-batches per optimizer step",
                f"accumulation {pins.accumulation} -> {forwards}",
                f"accumulation:{forwards}",
            )
        ]

    def repin(self) -> None:
        """Take the current settings as declared (after a sanctioned change)."""
        self._pins.groups = [self._settings(g) for g in self.optimizer.param_groups]
        if self.scheduler is not None:
            self._offset = int(getattr(self.scheduler, "last_epoch", 0) or 0)
            self.steps_taken = 0
            try:
                self.replica = replica_for(self.scheduler, self.optimizer)
                self.not_followed = None
            except UnsupportedSchedule as exc:
                self.replica, self.not_followed = None, str(exc)
            self._follow_momentum()

    def counter_drift(self, step: int) -> list[GuardFinding]:
        """The scheduler's own counter against the steps the guard saw it take."""
        if self.scheduler is None or self.replica is None:
            return []
        last = getattr(self.scheduler, "last_epoch", None)
        if not isinstance(last, int) or last == self.t:
            return []
        return [
            self._finding(
                step,
                f"the scheduler's step counter (last_epoch) is {last} but it was stepped to "
                f"{self.t}: it was changed outside step()",
                f"last_epoch {self.t} -> {last}",
                f"last_epoch:{last}",
            )
        ]

    def _finding(self, step: int, message: str, evidence: str, subject: str) -> GuardFinding:
        return GuardFinding(
            rule_id="guard.hyperparam",
            severity=Severity.HIGH,
            message=message,
            rank=self.rank,
            step=step,
            evidence=evidence,
            established=True,
            subject=subject,
        )
