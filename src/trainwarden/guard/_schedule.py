"""Independent replicas of torch's learning-rate schedulers, in closed form.

The replica is built from what the scheduler *declared* when the guard attached (its class,
base learning rates, milestones, gammas, horizons) and computes the learning rate after ``t``
scheduler steps directly, never from the optimizer's current ``lr`` as torch's recursive forms
do. A learning rate changed by anyone but the scheduler, or a scheduler whose counter or
attributes were changed, therefore shows as a difference that does not heal on the next step.

Supported: StepLR, MultiStepLR, ExponentialLR, CosineAnnealingLR, CosineAnnealingWarmRestarts
(integer steps), LinearLR, ConstantLR, PolynomialLR, OneCycleLR and CyclicLR (with the
momentum / beta1 they cycle; CyclicLR in its three built-in modes), LambdaLR (transformers'
warm-up schedules recognised and recomputed; other lambdas called as declared),
MultiplicativeLR and SequentialLR of these. Others (ReduceLROnPlateau, ChainedScheduler,
CyclicLR with a custom scale_fn, custom classes) are reported as "lr not followed"; the
momentum such a scheduler cycles with the lr is not followed either (:func:`cycled_momentum`).
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Replica", "UnsupportedSchedule", "cycled_momentum", "replica_for"]


class UnsupportedSchedule(Exception):
    """The scheduler has no replica; the message says which and why."""


def _f(value: Any) -> float:
    return float(value.item()) if hasattr(value, "item") else float(value)


@dataclass(frozen=True)
class Replica:
    """Learning rates (and momenta, for OneCycleLR and CyclicLR) of each group after ``t`` steps."""

    name: str
    lr: Callable[[int], list[float]]
    momentum: Callable[[int], list[float]] | None = None
    momentum_key: str | None = None  # "betas" (first entry) or "momentum"


def replica_for(scheduler: Any, optimizer: Any) -> Replica:
    """Build the replica of ``scheduler`` from its declaration.

    Raises:
        UnsupportedSchedule: No replica exists for this scheduler (or its settings).
    """
    name = type(scheduler).__name__
    owner = getattr(scheduler, "optimizer", optimizer)
    for _ in range(4):  # through wrappers (accelerate's AcceleratedOptimizer)
        if owner is optimizer:
            break
        owner = getattr(owner, "optimizer", owner)
    if owner is not optimizer:
        raise UnsupportedSchedule(f"{name} belongs to another optimizer")
    base = [_f(b) for b in getattr(scheduler, "base_lrs", [])]
    builder = _BUILDERS.get(name)
    if builder is None or not _is_torch_scheduler(scheduler, name):
        raise UnsupportedSchedule(f"{name}: no replica (lr changes are not followed)")
    return builder(scheduler, optimizer, base)


def cycled_momentum(scheduler: Any, optimizer: Any) -> str | None:
    """The group key ``scheduler`` cycles with the learning rate, if any.

    CyclicLR and OneCycleLR (``cycle_momentum``, torch's default) write ``momentum``, or the
    first entry of ``betas``, at every step; so do chains and sequences holding one. Where
    no replica follows that setting, it is not followed either, like the learning rate (a
    pinned value would call every cycle tampering): ``"momentum"``, ``"betas"`` or ``None``.
    """
    pending = [scheduler]
    for _ in range(64):  # nested chains, bounded
        if not pending:
            return None
        s = pending.pop()
        if getattr(s, "cycle_momentum", False) is True:
            if getattr(s, "use_beta1", False):
                return "betas"
            groups = getattr(optimizer, "param_groups", [])
            return "betas" if groups and "betas" in groups[0] else "momentum"
        children = getattr(s, "_schedulers", None)
        if isinstance(children, (list, tuple)):
            pending.extend(children)
    return None


def _is_torch_scheduler(scheduler: Any, name: str) -> bool:
    import torch

    cls = getattr(torch.optim.lr_scheduler, name, None)
    # The class itself must be torch's (a subclass may override get_lr with anything).
    return cls is not None and type(scheduler) is cls


def _step(s: Any, opt: Any, base: list[float]) -> Replica:
    step_size, gamma = int(s.step_size), float(s.gamma)
    return Replica("StepLR", lambda t: [b * gamma ** (t // step_size) for b in base])


def _multistep(s: Any, opt: Any, base: list[float]) -> Replica:
    milestones = sorted(s.milestones.elements())  # a Counter: repeated milestones compound
    gamma = float(s.gamma)
    return Replica(
        "MultiStepLR", lambda t: [b * gamma ** bisect.bisect_right(milestones, t) for b in base]
    )


def _exponential(s: Any, opt: Any, base: list[float]) -> Replica:
    gamma = float(s.gamma)
    return Replica("ExponentialLR", lambda t: [b * gamma**t for b in base])


def _cosine(s: Any, opt: Any, base: list[float]) -> Replica:
    t_max, eta_min = float(s.T_max), float(s.eta_min)

    def lr(t: int) -> list[float]:
        return [eta_min + (b - eta_min) * (1 + math.cos(math.pi * t / t_max)) / 2 for b in base]

    return Replica("CosineAnnealingLR", lr)


def _warm_restarts(s: Any, opt: Any, base: list[float]) -> Replica:
    t0, t_mult, eta_min = int(s.T_0), int(s.T_mult), float(s.eta_min)

    def lr(t: int) -> list[float]:
        if t_mult == 1:
            t_cur, t_i = t % t0, t0
        else:
            n = int(math.log(t / t0 * (t_mult - 1) + 1, t_mult)) if t >= t0 else 0
            t_cur = t - t0 * (t_mult**n - 1) // (t_mult - 1)
            t_i = t0 * t_mult**n
        return [eta_min + (b - eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2 for b in base]

    return Replica("CosineAnnealingWarmRestarts", lr)


def _linear(s: Any, opt: Any, base: list[float]) -> Replica:
    start, end, total = float(s.start_factor), float(s.end_factor), int(s.total_iters)

    def lr(t: int) -> list[float]:
        return [b * (start + (end - start) * min(total, t) / total) for b in base]

    return Replica("LinearLR", lr)


def _constant(s: Any, opt: Any, base: list[float]) -> Replica:
    factor, total = float(s.factor), int(s.total_iters)
    return Replica("ConstantLR", lambda t: [b * (factor if t < total else 1.0) for b in base])


def _polynomial(s: Any, opt: Any, base: list[float]) -> Replica:
    total, power = int(s.total_iters), float(s.power)
    return Replica(
        "PolynomialLR", lambda t: [b * (1.0 - min(total, t) / total) ** power for b in base]
    )


def _lambda(s: Any, opt: Any, base: list[float]) -> Replica:
    lambdas = [_known_lambda(fn) or fn for fn in s.lr_lambdas]
    return Replica(
        "LambdaLR", lambda t: [b * float(fn(t)) for b, fn in zip(base, lambdas, strict=True)]
    )


def _multiplicative(s: Any, opt: Any, base: list[float]) -> Replica:
    lambdas = list(s.lr_lambdas)

    @functools.lru_cache(maxsize=4)
    def factors(t: int) -> tuple[float, ...]:
        if t <= 0:
            return tuple(1.0 for _ in lambdas)
        before = factors(t - 1)
        return tuple(f * float(fn(t)) for f, fn in zip(before, lambdas, strict=True))

    def lr(t: int) -> list[float]:
        # Iteratively, so that long runs do not recurse deeply.
        for i in range(max(0, t - 2), t + 1):
            factors(i)
        return [b * f for b, f in zip(base, factors(t), strict=True)]

    return Replica("MultiplicativeLR", lr)


def _one_cycle(s: Any, opt: Any, base: list[float]) -> Replica:
    phases = [dict(p) for p in s._schedule_phases]
    total = int(s.total_steps)
    cos = getattr(s, "_anneal_func_type", "cos") == "cos"
    groups = [dict(g) for g in opt.param_groups]  # the declared bounds, pinned now

    def anneal(start: float, end: float, pct: float) -> float:
        if cos:
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def at(t: int, start_key: str, end_key: str) -> list[float]:
        out = []
        t = min(t, total)
        for group in groups:
            start_step = 0.0
            for i, phase in enumerate(phases):
                end_step = phase["end_step"]
                if t <= end_step or i == len(phases) - 1:
                    pct = (t - start_step) / (end_step - start_step)
                    out.append(anneal(_f(group[phase[start_key]]), _f(group[phase[end_key]]), pct))
                    break
                start_step = end_step
        return out

    momentum = None
    key = None
    if getattr(s, "cycle_momentum", False):
        momentum = functools.partial(at, start_key="start_momentum", end_key="end_momentum")
        key = "betas" if getattr(s, "use_beta1", False) else "momentum"
    return Replica(
        "OneCycleLR",
        functools.partial(at, start_key="start_lr", end_key="end_lr"),
        momentum,
        key,
    )


def _cyclic(s: Any, opt: Any, base: list[float]) -> Replica:
    """CyclicLR's triangular, triangular2 and exp_range cycles, and the momentum it cycles.

    A custom ``scale_fn`` is code of the job's: no replica (not followed, as before).
    """
    if getattr(s, "_scale_fn_custom", None) is not None:
        raise UnsupportedSchedule("CyclicLR with a custom scale_fn: no replica")
    mode, gamma = str(s.mode), float(s.gamma)
    if mode not in ("triangular", "triangular2", "exp_range"):
        raise UnsupportedSchedule(f"CyclicLR mode {mode!r}: no replica")
    total, ratio = float(s.total_size), float(s.step_ratio)
    low, high = [_f(b) for b in s.base_lrs], [_f(m) for m in s.max_lrs]

    def shape(t: int) -> tuple[float, float]:
        """(scale factor within the cycle, the mode's scale) after ``t`` steps, as torch."""
        cycle = math.floor(1 + t / total)
        x = 1.0 + t / total - cycle
        factor = x / ratio if x <= ratio else (x - 1) / (ratio - 1)
        if mode == "triangular":
            return factor, 1.0
        if mode == "triangular2":
            return factor, 1 / (2.0 ** (cycle - 1))
        return factor, gamma**t

    def lr(t: int) -> list[float]:
        factor, scale = shape(t)
        return [b + (m - b) * factor * scale for b, m in zip(low, high, strict=True)]

    momentum = key = None
    if getattr(s, "cycle_momentum", False):
        m_low = [_f(b) for b in s.base_momentums]
        m_high = [_f(m) for m in s.max_momentums]

        def cycled(t: int) -> list[float]:
            factor, scale = shape(t)
            return [m - (m - b) * factor * scale for b, m in zip(m_low, m_high, strict=True)]

        momentum = cycled
        key = "betas" if getattr(s, "use_beta1", False) else "momentum"
    return Replica(f"CyclicLR({mode})", lr, momentum, key)


def _sequential(s: Any, opt: Any, base: list[float]) -> Replica:
    children = [replica_for(child, opt) for child in s._schedulers]
    milestones = list(s._milestones)

    def lr(t: int) -> list[float]:
        idx = bisect.bisect_right(milestones, t)
        local = t - milestones[idx - 1] if idx > 0 else t
        return children[idx].lr(local)

    return Replica("SequentialLR(" + ", ".join(c.name for c in children) + ")", lr)


_BUILDERS: dict[str, Callable[[Any, Any, list[float]], Replica]] = {
    "StepLR": _step,
    "MultiStepLR": _multistep,
    "ExponentialLR": _exponential,
    "CosineAnnealingLR": _cosine,
    "CosineAnnealingWarmRestarts": _warm_restarts,
    "LinearLR": _linear,
    "ConstantLR": _constant,
    "PolynomialLR": _polynomial,
    "LambdaLR": _lambda,
    "MultiplicativeLR": _multiplicative,
    "OneCycleLR": _one_cycle,
    "CyclicLR": _cyclic,
    "SequentialLR": _sequential,
}


# ----------------------------------------------------------- transformers' warm-up schedules


def _known_lambda(fn: Any) -> Callable[[int], float] | None:
    """An independent formula for transformers' schedule lambdas (a ``functools.partial``)."""
    if not isinstance(fn, functools.partial):
        return None
    name = getattr(fn.func, "__name__", "")
    module = getattr(fn.func, "__module__", "") or ""
    if not module.startswith("transformers."):
        return None
    kw = dict(fn.keywords)
    formula = _HF.get(name)
    if formula is None or fn.args:
        return None
    try:
        return functools.partial(formula, **kw)
    except TypeError:
        return None


def _hf_cosine(
    current_step: int,
    *,
    num_warmup_steps: int,
    num_training_steps: int,
    num_cycles: float = 0.5,
    min_lr_rate: float = 0.0,
) -> float:
    if current_step < num_warmup_steps:
        return float(current_step) / float(max(1, num_warmup_steps))
    progress = float(current_step - num_warmup_steps) / float(
        max(1, num_training_steps - num_warmup_steps)
    )
    factor = 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress))
    return max(0.0, factor * (1 - min_lr_rate) + min_lr_rate)


def _hf_linear(current_step: int, *, num_warmup_steps: int, num_training_steps: int) -> float:
    if current_step < num_warmup_steps:
        return float(current_step) / float(max(1, num_warmup_steps))
    return max(
        0.0,
        float(num_training_steps - current_step)
        / float(max(1, num_training_steps - num_warmup_steps)),
    )


def _hf_constant_warmup(current_step: int, *, num_warmup_steps: int) -> float:
    if current_step < num_warmup_steps:
        return float(current_step) / float(max(1.0, num_warmup_steps))
    return 1.0


_HF: dict[str, Callable[..., float]] = {
    "_get_cosine_schedule_with_warmup_lr_lambda": _hf_cosine,
    "_get_linear_schedule_with_warmup_lr_lambda": _hf_linear,
    "_get_constant_schedule_with_warmup_lr_lambda": _hf_constant_warmup,
}


def describe(replica: Replica | None, reason: str | None) -> str:
    """How the learning rate is followed, for ``guard.attach``."""
    return f"replica of {replica.name}" if replica is not None else f"not followed: {reason}"


def sequence_equal(a: Sequence[float], b: Sequence[float], rel: float) -> bool:
    """Element-wise equality within relative tolerance ``rel``."""
    return len(a) == len(b) and all(
        abs(x - y) <= rel * max(abs(x), abs(y), 1e-300) for x, y in zip(a, b, strict=True)
    )
