"""accelerate: attach the guard to an ``Accelerator``'s prepared model, optimizer and scheduler.

``guard = attach(accelerator, model, optimizer, scheduler)`` after ``accelerator.prepare``:
the guard sees through ``AcceleratedOptimizer`` / ``AcceleratedScheduler`` to the torch
objects (with gradient accumulation it checks the real optimizer steps only, and counts the
micro-batches per step), and its model hooks sit on the prepared (possibly DDP-wrapped) model.
"""

from __future__ import annotations

from typing import Any

from trainwarden.guard import Guard
from trainwarden.integrations._common import unwrap_scheduler

__all__ = ["attach"]


def attach(
    accelerator: Any,
    model: Any,
    optimizer: Any,
    scheduler: Any = None,
    *,
    data: Any = None,
    **settings: Any,
) -> Guard:
    """Build a :class:`trainwarden.guard.Guard` for objects prepared by ``accelerator``.

    Args:
        accelerator: The ``accelerate.Accelerator`` (its process state says the rank).
        model: The prepared model.
        optimizer: The prepared optimizer (``AcceleratedOptimizer``).
        scheduler: The prepared scheduler, if any.
        data: The prepared dataloader, to pin its sampler now.
        **settings: Passed on to :class:`~trainwarden.guard.Guard` (sink, secret,
            on_violation, run, config, telemetry_dir).
    """
    del accelerator  # the guard reads rank and world from torch.distributed itself
    return Guard(
        model,
        optimizer,
        scheduler=unwrap_scheduler(scheduler),
        data=data,
        **settings,
    )
