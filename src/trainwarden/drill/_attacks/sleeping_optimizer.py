"""T3: the optimizer sleeps at random on one rank, and only in jobs above a world-size threshold.

The incident's saboteur made the optimizer sleep only on jobs above 256 GPUs, so small
reproductions never showed it and the team chased "hardware faults". Scaled down: the payload
sleeps on the last rank of any job with more than ``threshold`` ranks (1 by default), from step
``start`` on, with probability ``prob`` a step. It rides in ``torch/optim/optimizer.py`` as a
global optimizer-step pre-hook, so it acts inside ``optimizer.step()`` of every optimizer the
job builds, without touching the job's code. The other ranks then wait in the next collective:
the whole job slows down and no rank looks broken.
"""

from __future__ import annotations

import random
from pathlib import Path

from trainwarden.drill._attacks import AttackContext, AttackOutcome
from trainwarden.drill._attacks.torch_source import edit_torch_file

__all__ = ["OPTIMIZER_FILE", "attack", "payload", "planned_sleeps"]

#: The torch file the optimizer attacks (T3, T4) edit.
OPTIMIZER_FILE = "torch/optim/optimizer.py"


def payload(*, start: int, prob: float, delay: float, threshold: int, seed: int) -> str:
    """Source appended to ``torch/optim/optimizer.py``."""
    return f"""

# Straggler emulation for the fault-tolerance study on large jobs (local change).
def _emulate_straggler():
    import random
    import time

    state = {{"step": 0}}
    draw = random.Random({seed!r}).random

    def _pre_step(optimizer, args, kwargs):
        state["step"] += 1
        try:
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized()):
                return None
            world = dist.get_world_size()
            if world <= {threshold!r} or dist.get_rank() != world - 1:
                return None
        except Exception:
            return None
        if state["step"] >= {start!r} and draw() < {prob!r}:
            time.sleep({delay!r})
        return None

    register_optimizer_step_pre_hook(_pre_step)


_emulate_straggler()
del _emulate_straggler
"""


def planned_sleeps(*, start: int, prob: float, seed: int, steps: int) -> list[int]:
    """The optimizer steps (1-based) at which the payload sleeps in a job of ``steps`` steps."""
    draw = random.Random(seed).random  # noqa: S311  # replays the payload's own draws
    return [step for step in range(start, steps + 1) if draw() < prob]


def attack(ctx: AttackContext) -> AttackOutcome:
    """Plant the sleeping optimizer in the sandbox's torch."""
    params = ctx.params
    start = int(params["start"])
    ctx.begin(step=start)
    source = payload(
        start=start,
        prob=float(params["prob"]),
        delay=float(params["delay"]),
        threshold=int(params["threshold"]),
        seed=int(params["seed"]),
    )
    touched = edit_torch_file(Path(params["site"]), OPTIMIZER_FILE, source)
    return AttackOutcome(
        touched=touched,
        details={"file": OPTIMIZER_FILE, "rank": "last", "threshold": int(params["threshold"])},
    )
