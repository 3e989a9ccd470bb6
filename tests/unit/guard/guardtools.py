"""A real training loop (tinygpt) with hook points where tests tamper, as an insider would.

Every tampering here acts through the job's natural code path (param_groups, a patched
optimizer step, a torch.library kernel, a hook, the sampler...), on a real model trained on
CPU; tests check that the guard names it within one step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from trainwarden.examples.tinygpt import Config, build, make_dataset

Tamper = Callable[["Job", int], None]

# One intra-op thread, as tinygpt runs: on a shared 2-core machine a second OpenMP thread
# descheduled by other processes makes the main thread wait at every barrier.
torch.set_num_threads(1)


@dataclass
class Job:
    """A tinygpt training job: model, optimizer, scheduler, sampler and loader."""

    cfg: Config
    model: Any
    optimizer: Any
    scheduler: Any
    sampler: Any
    loader: Any
    world: int = 1
    rank: int = 0
    losses: list[float] = field(default_factory=list)

    @property
    def plain(self) -> Any:
        return getattr(self.model, "module", self.model)


def make_job(
    *,
    steps: int = 30,
    samples: int = 256,
    seed: int = 1234,
    optimizer: Callable[[Any], Any] | None = None,
    world: int = 1,
    rank: int = 0,
    ddp: bool = False,
    width: int = 32,
    layers: int = 1,
) -> Job:
    """Build a small job (``optimizer(params)`` replaces tinygpt's AdamW when given)."""
    import random

    import numpy as np

    cfg = Config(steps=steps, samples=samples, seed=seed, width=width, layers=layers, heads=4)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model, opt, sched = build(cfg)
    if optimizer is not None:
        opt = optimizer(model.parameters())
        sched = None
    if ddp:
        model = torch.nn.parallel.DistributedDataParallel(model)
    dataset = make_dataset(cfg)
    sampler = torch.utils.data.DistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch, sampler=sampler)
    return Job(cfg, model, opt, sched, sampler, loader, world, rank)


def train(
    job: Job,
    steps: int,
    *,
    tamper: dict[int, Tamper] | None = None,
    between: dict[int, Tamper] | None = None,
    clip: bool = True,
    forward: Callable[[Any], Any] | None = None,
    after_forward: Callable[[int], None] | None = None,
) -> int:
    """Train ``steps`` optimizer steps; returns the steps done.

    ``tamper[s]`` runs right before step ``s``'s forward (steps count from 1); ``between[s]``
    right after step ``s``'s ``optimizer.step()`` and scheduler step. ``forward`` runs the
    batch (``job.model`` by default; a compiled model, say); ``after_forward(s)`` is the job's
    own work between step ``s``'s forward and backward.
    """
    run = job.model if forward is None else forward
    tamper = tamper or {}
    between = between or {}
    step = 0
    epoch = 0
    while step < steps:
        job.sampler.set_epoch(epoch)
        for inputs, targets in job.loader:
            if step >= steps:
                break
            if step + 1 in tamper:
                tamper[step + 1](job, step + 1)
            logits = run(inputs)
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, job.cfg.vocab), targets.reshape(-1)
            )
            if after_forward is not None:
                after_forward(step + 1)
            job.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(job.model.parameters(), job.cfg.clip)
            job.optimizer.step()
            if job.scheduler is not None:
                job.scheduler.step()
            step += 1
            job.losses.append(float(loss.detach()))
            if step in between:
                between[step](job, step)
        epoch += 1
    return step


def snapshot(params: list[Any]) -> list[Any]:
    """Copies of ``params`` (what an update is later flipped against)."""
    return [p.detach().clone() for p in params]


def flip(params: list[Any], before: list[Any]) -> None:
    """Reverse the update ``params`` received since ``before`` (an insider's edit)."""
    with torch.no_grad():
        for p, b in zip(params, before, strict=True):
            p.copy_(2 * b - p)


def flipping(params: list[Any], step: Callable[[], Any]) -> Any:
    """Run ``step`` and flip the update it made to ``params`` (an insider's tampered step)."""
    before = snapshot(params)
    result = step()
    flip(params, before)
    return result


@contextlib.contextmanager
def patched(owner: Any, name: str, value: Any) -> Iterator[None]:
    """Set ``owner.name`` for the duration (an insider's monkeypatch, undone after the test)."""
    missing = object()
    before = (
        owner.__dict__.get(name, missing)
        if isinstance(owner, type)
        else getattr(owner, name, missing)
    )
    setattr(owner, name, value)
    try:
        yield
    finally:
        if before is missing:
            delattr(owner, name)
        else:
            setattr(owner, name, before)


def rules(findings: Any) -> set[str]:
    return {f.rule_id for f in findings}
