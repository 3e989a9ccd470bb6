"""T5: results made irreproducible: data order and RNG changed, learning rate off its schedule.

Data order: ``torch/utils/data/distributed.py`` is edited so ``DistributedSampler`` shuffles
with another seed than the one the job passed, and reseeds torch's global RNG on the way, so
the run no longer matches its declared seed and nothing in the job's code changed. Learning
rate: ``torch/optim/lr_scheduler.py`` gains a global post-step hook that multiplies every
group's learning rate once, mid-run; the chained schedulers then carry the change forward, so
the job logs a plausible but wrong schedule.
"""

from __future__ import annotations

from pathlib import Path

from trainwarden.drill._attacks import AttackContext, AttackOutcome
from trainwarden.drill._attacks.torch_source import edit_torch_file

__all__ = [
    "SAMPLER_FILE",
    "SCHEDULER_FILE",
    "attack_data_order",
    "attack_lr",
    "data_order_payload",
    "lr_payload",
]

#: The torch file the data-order attack edits.
SAMPLER_FILE = "torch/utils/data/distributed.py"
#: The torch file the learning-rate attack edits.
SCHEDULER_FILE = "torch/optim/lr_scheduler.py"


def data_order_payload(*, offset: int) -> str:
    """Source appended to ``torch/utils/data/distributed.py``."""
    return f"""

# Decorrelate shuffles across concurrent jobs on the shared nodes (local change).
def _decorrelate_shuffles():
    import functools

    _iter = DistributedSampler.__iter__

    @functools.wraps(_iter)
    def __iter__(self):
        import torch

        declared = self.seed
        self.seed = declared + {offset!r}
        try:
            indices = list(_iter(self))
        finally:
            self.seed = declared
        torch.manual_seed(declared + {offset!r} + self.epoch)
        return iter(indices)

    DistributedSampler.__iter__ = __iter__


_decorrelate_shuffles()
del _decorrelate_shuffles
"""


def lr_payload(*, start: int, factor: float) -> str:
    """Source appended to ``torch/optim/lr_scheduler.py``."""
    return f"""

# Warm-restart boost for long runs (local change).
def _warm_restart_boost():
    from torch.optim.optimizer import register_optimizer_step_post_hook

    state = {{"step": 0}}

    def _post_step(optimizer, args, kwargs):
        state["step"] += 1
        if state["step"] == {start!r}:
            for group in optimizer.param_groups:
                group["lr"] = group["lr"] * {factor!r}

    register_optimizer_step_post_hook(_post_step)


_warm_restart_boost()
del _warm_restart_boost
"""


def attack_data_order(ctx: AttackContext) -> AttackOutcome:
    """Change the sampler's shuffle seed and reseed torch's RNG (acts from the first step)."""
    params = ctx.params
    ctx.begin(step=1)
    source = data_order_payload(offset=int(params.get("offset", 104729)))
    touched = edit_torch_file(Path(params["site"]), SAMPLER_FILE, source)
    return AttackOutcome(touched=touched, details={"file": SAMPLER_FILE})


def attack_lr(ctx: AttackContext) -> AttackOutcome:
    """Multiply the learning rate once at step ``start``; the schedule carries it on."""
    params = ctx.params
    start = int(params["start"])
    # The hook multiplies the rate after optimizer step ``start``: step ``start + 1`` is the
    # first whose update uses it.
    ctx.begin(step=start + 1)
    source = lr_payload(start=start, factor=float(params.get("factor", 4.0)))
    touched = edit_torch_file(Path(params["site"]), SCHEDULER_FILE, source)
    return AttackOutcome(touched=touched, details={"file": SCHEDULER_FILE})
