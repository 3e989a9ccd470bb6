"""A small, real GPT-style training job on CPU, for the drill, the guard's tests and benchmarks.

It runs as one process, or as several ranks under ``torchrun`` with DDP over gloo.

It is an ordinary training script with nothing of trainwarden in it: a causal transformer on a
synthetic token stream, AdamW with weight decay, linear warm-up then cosine decay, gradient
clipping, a ``DistributedSampler`` that reshuffles every epoch, seeded RNGs, and checkpoints
written atomically (``ckpt-<step>.pt``, rank 0) with resume. trainwarden attaches from outside
(``trainwarden run``) or with one line (``Guard(model, optimizer, scheduler=scheduler)``).

Usage::

    python -m trainwarden.examples.tinygpt --steps 40 --out result.json
    torchrun --nproc-per-node 2 -m trainwarden.examples.tinygpt --steps 40 --ckpt-dir ckpt
    python -m trainwarden.examples.tinygpt --guard --guard-telemetry telemetry/  # one line added

``--guard`` is the "one line" a user adds to a training script (``Guard(model, optimizer,
scheduler=scheduler)``); with ``trainwarden run`` the guard is on without it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Config", "build", "main", "make_dataset"]


@dataclass(frozen=True)
class Config:
    """Model and optimisation settings (small enough to train on 2 CPU cores in seconds)."""

    vocab: int = 96
    context: int = 32
    width: int = 64
    heads: int = 4
    layers: int = 2
    batch: int = 8
    lr: float = 3e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    warmup: int = 5
    steps: int = 40
    clip: float = 1.0
    seed: int = 1234
    samples: int = 2048


def make_dataset(cfg: Config) -> Any:
    """A deterministic synthetic corpus: sequences from a fixed sparse Markov chain.

    The chain (and so the loss curve) depends only on ``cfg.seed``, never on global RNG state,
    so two runs with the same seeds see the same data unless someone changes it.
    """
    import torch

    gen = torch.Generator().manual_seed(cfg.seed)
    # Each token has 4 likely successors: enough structure for the loss to fall visibly.
    successors = torch.randint(0, cfg.vocab, (cfg.vocab, 4), generator=gen)
    tokens = torch.empty(cfg.samples, cfg.context + 1, dtype=torch.long)
    tokens[:, 0] = torch.randint(0, cfg.vocab, (cfg.samples,), generator=gen)
    for t in range(1, cfg.context + 1):
        pick = torch.randint(0, 4, (cfg.samples,), generator=gen)
        tokens[:, t] = successors[tokens[:, t - 1], pick]
    return torch.utils.data.TensorDataset(tokens[:, :-1], tokens[:, 1:])


def build(cfg: Config) -> tuple[Any, Any, Any]:
    """Return ``(model, optimizer, scheduler)`` for ``cfg`` (call after seeding)."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1 = nn.LayerNorm(cfg.width)
            self.attn = nn.MultiheadAttention(cfg.width, cfg.heads, batch_first=True)
            self.ln2 = nn.LayerNorm(cfg.width)
            self.mlp = nn.Sequential(
                nn.Linear(cfg.width, 4 * cfg.width), nn.GELU(), nn.Linear(4 * cfg.width, cfg.width)
            )

        def forward(self, x: Any, mask: Any) -> Any:
            h = self.ln1(x)
            x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
            return x + self.mlp(self.ln2(x))

    class TinyGPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok = nn.Embedding(cfg.vocab, cfg.width)
            self.pos = nn.Parameter(torch.zeros(1, cfg.context, cfg.width))
            self.blocks = nn.ModuleList(Block() for _ in range(cfg.layers))
            self.ln = nn.LayerNorm(cfg.width)
            self.head = nn.Linear(cfg.width, cfg.vocab, bias=False)
            mask = torch.triu(torch.ones(cfg.context, cfg.context, dtype=torch.bool), 1)
            self.register_buffer("mask", mask, persistent=False)

        def forward(self, idx: Any) -> Any:
            x = self.tok(idx) + self.pos[:, : idx.shape[1]]
            full: Any = self.mask
            mask = full[: idx.shape[1], : idx.shape[1]]
            for block in self.blocks:
                x = block(x, mask)
            return self.head(self.ln(x))

    model = TinyGPT()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=cfg.betas,
    )
    warmup = torch.optim.lr_scheduler.LinearLR(
        optimizer, start_factor=0.1, total_iters=max(1, cfg.warmup)
    )
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(1, cfg.steps - cfg.warmup), eta_min=cfg.lr * 0.1
    )
    scheduler = torch.optim.lr_scheduler.SequentialLR(
        optimizer, [warmup, cosine], milestones=[max(1, cfg.warmup)]
    )
    return model, optimizer, scheduler


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _atomic_save(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.partial")
    torch.save(obj, tmp)
    with tmp.open("rb+") as fh:
        os.fsync(fh.fileno())
    tmp.replace(path)


def _digest(model: Any) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return "sha256:" + h.hexdigest()


def main(argv: Sequence[str] | None = None) -> int:
    """Train; return 0 on success. Arguments: see ``--help``."""
    parser = argparse.ArgumentParser(prog="tinygpt", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=Config.steps)
    parser.add_argument("--lr", type=float, default=Config.lr)
    parser.add_argument("--seed", type=int, default=Config.seed)
    parser.add_argument("--batch", type=int, default=Config.batch)
    parser.add_argument(
        "--samples",
        type=int,
        default=Config.samples,
        help="sequences in the corpus (fewer: shorter epochs, so the sampler reshuffles sooner)",
    )
    parser.add_argument("--ckpt-dir", type=Path, help="write ckpt-<step>.pt here (rank 0)")
    parser.add_argument("--ckpt-every", type=int, default=10, help="steps between checkpoints")
    parser.add_argument("--resume", type=Path, help="checkpoint to resume from")
    parser.add_argument("--out", type=Path, help="write final loss and weight digest (JSON)")
    parser.add_argument("--step-sleep", type=float, default=0.0, help="pause per step (s)")
    parser.add_argument(
        "--width", type=int, default=Config.width, help="model width (step time grows with it)"
    )
    parser.add_argument("--layers", type=int, default=Config.layers, help="transformer blocks")
    parser.add_argument(
        "--guard", action="store_true", help="attach trainwarden's runtime guard (one line)"
    )
    parser.add_argument("--guard-telemetry", type=Path, help="guard telemetry directory")
    parser.add_argument(
        "--guard-warn", action="store_true", help="record violations and go on (default: halt)"
    )
    args = parser.parse_args(argv)
    if args.samples < 1:
        parser.error("--samples must be at least 1")

    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        dist.init_process_group("gloo")
    torch.set_num_threads(1)
    cfg = Config(
        steps=args.steps,
        lr=args.lr,
        seed=args.seed,
        batch=args.batch,
        samples=args.samples,
        width=args.width,
        layers=args.layers,
    )
    _seed_everything(cfg.seed)
    model, optimizer, scheduler = build(cfg)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    dataset = make_dataset(cfg)
    sampler: Any = torch.utils.data.DistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch, sampler=sampler)

    step = 0
    if args.resume is not None:
        state = torch.load(args.resume, map_location="cpu", weights_only=False)
        (model.module if world > 1 else model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])

    guard: Any = None
    if args.guard:
        from trainwarden.guard import Guard

        guard = Guard(
            model,
            optimizer,
            scheduler=scheduler,
            data=loader,
            telemetry_dir=args.guard_telemetry,
            on_violation="warn" if args.guard_warn else None,
        )

    start = time.monotonic()
    try:
        step, loss_value, step_seconds = _train(
            args, cfg, model, optimizer, scheduler, sampler, loader, step, rank, world
        )
    except Exception as exc:
        from trainwarden.errors import GuardViolation

        if not isinstance(exc, GuardViolation):
            raise
        sys.stderr.write(exc.diagnostics() + "\n")
        if guard is not None:
            guard.close()
        return 1
    findings: list[str] = []
    if guard is not None:
        guard.close()
        findings = sorted({f.rule_id for f in guard.findings})

    plain = model.module if world > 1 else model
    result = {
        "rank": rank,
        "world_size": world,
        "steps": step,
        "loss": loss_value,
        "digest": _digest(plain),
        "seconds": round(time.monotonic() - start, 3),
        "step_seconds": step_seconds,
    }
    if guard is not None:
        result["guard_findings"] = findings
    if args.out is not None and rank == 0:
        args.out.write_text(json.dumps(result, sort_keys=True) + "\n", encoding="utf-8")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    sys.stderr.write(json.dumps(result, sort_keys=True) + "\n")
    return 0


def _train(
    args: Any,
    cfg: Config,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    sampler: Any,
    loader: Any,
    step: int,
    rank: int,
    world: int,
) -> tuple[int, float, list[float]]:
    """The training loop; returns the steps done, the last loss and each step's seconds."""
    import torch

    loss_value = math.nan
    epoch = 0
    # Wall time of each step (this rank's view, collective waits included): a straggler on
    # another rank shows up here too, since this rank waits for it in the gradient all-reduce.
    step_seconds: list[float] = []
    last = time.monotonic()
    while step < cfg.steps:
        sampler.set_epoch(epoch)
        for inputs, targets in loader:
            if step >= cfg.steps:
                break
            logits = model(inputs)
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, cfg.vocab), targets.reshape(-1)
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            optimizer.step()
            scheduler.step()
            step += 1
            loss_value = float(loss.detach())
            if args.step_sleep:
                time.sleep(args.step_sleep)
            now = time.monotonic()
            step_seconds.append(round(now - last, 4))
            last = now
            if rank == 0 and args.ckpt_dir is not None and step % args.ckpt_every == 0:
                args.ckpt_dir.mkdir(parents=True, exist_ok=True)
                state = {
                    "model": (model.module if world > 1 else model).state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "step": step,
                }
                _atomic_save(state, args.ckpt_dir / f"ckpt-{step:06d}.pt")
        epoch += 1
    return step, loss_value, step_seconds


if __name__ == "__main__":
    sys.exit(main())
