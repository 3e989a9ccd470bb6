"""T4: the update direction flipped on one rank, or perturbed identically on all ranks.

Both ride in ``torch/optim/optimizer.py`` as global step hooks: the pre-hook keeps each
parameter as it was, the post-hook rewrites what the optimizer did. Flipping on one rank makes
that rank's weights diverge from the others (what cross-rank checksums see). Perturbing every
rank with the same noise (one seed for all) keeps the ranks identical, so only recomputing the
update with an independent reference shows it: the harder case.
"""

from __future__ import annotations

from pathlib import Path

from trainwarden.drill._attacks import AttackContext, AttackOutcome
from trainwarden.drill._attacks.sleeping_optimizer import OPTIMIZER_FILE
from trainwarden.drill._attacks.torch_source import edit_torch_file

__all__ = ["attack_flip", "attack_perturb", "payload"]


def payload(*, start: int, all_ranks: bool, mode: str, scale: float = 0.5, seed: int = 0) -> str:
    """Source appended to ``torch/optim/optimizer.py``.

    Args:
        start: First optimizer step (1-based) the hooks act on.
        all_ranks: Act on every rank; else only on the last rank.
        mode: ``flip`` (apply ``-update``) or ``perturb`` (``update * (1 + scale * noise)``
            with the same noise on every rank).
        scale: Size of the multiplicative noise for ``perturb``.
        seed: Seed of the noise (shared by all ranks).
    """
    if mode == "flip":
        rewrite = "p.copy_(old - (p - old))"
    else:
        rewrite = (
            "noise = torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device)\n"
            f"                    p.copy_(old + (p - old) * (1.0 + {scale!r} * noise))"
        )
    return f"""

# Update sanitiser for mixed-precision experiments (local change).
def _sanitise_updates():
    state = {{"step": 0, "saved": None}}

    def _acting():
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                rank, world = dist.get_rank(), dist.get_world_size()
            else:
                rank, world = 0, 1
        except Exception:
            return False
        return state["step"] >= {start!r} and ({all_ranks!r} or rank == world - 1)

    def _pre_step(optimizer, args, kwargs):
        state["step"] += 1
        if _acting():
            state["saved"] = [
                [p.detach().clone() for p in group["params"]] for group in optimizer.param_groups
            ]
        return None

    def _post_step(optimizer, args, kwargs):
        saved, state["saved"] = state["saved"], None
        if saved is None:
            return
        import torch

        gen = torch.Generator().manual_seed({seed!r} + state["step"])
        with torch.no_grad():
            for group, olds in zip(optimizer.param_groups, saved):
                for p, old in zip(group["params"], olds):
                    {rewrite}

    register_optimizer_step_pre_hook(_pre_step)
    register_optimizer_step_post_hook(_post_step)


_sanitise_updates()
del _sanitise_updates
"""


def _attack(ctx: AttackContext, *, all_ranks: bool, mode: str) -> AttackOutcome:
    params = ctx.params
    start = int(params["start"])
    ctx.begin(step=start)
    source = payload(
        start=start,
        all_ranks=all_ranks,
        mode=mode,
        scale=float(params.get("scale", 0.5)),
        seed=int(params.get("seed", 0)),
    )
    touched = edit_torch_file(Path(params["site"]), OPTIMIZER_FILE, source)
    return AttackOutcome(
        touched=touched,
        details={"file": OPTIMIZER_FILE, "mode": mode, "ranks": "all" if all_ranks else "last"},
    )


def attack_flip(ctx: AttackContext) -> AttackOutcome:
    """Reverse every update of the last rank from step ``start`` on."""
    return _attack(ctx, all_ranks=False, mode="flip")


def attack_perturb(ctx: AttackContext) -> AttackOutcome:
    """Perturb every update of every rank, identically, from step ``start`` on."""
    return _attack(ctx, all_ranks=True, mode="perturb")
