"""Lightning: a ``Callback`` that guards every optimizer of a ``LightningModule``.

``Trainer(..., callbacks=[GuardCallback()])``: one guard per optimizer attaches when training
starts (with the scheduler Lightning configured for it), each batch is digested as it starts
and the loss the training step returned is recorded; the guards detach when training ends.
Lightning steps optimizers with a closure (forward and backward run inside ``step``); the guard
waits for the closure before it reads gradients.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback

from trainwarden.guard import Guard
from trainwarden.integrations._common import GuardSettings, unwrap_scheduler

__all__ = ["GuardCallback"]


class GuardCallback(Callback):
    """Attach :class:`trainwarden.guard.Guard` to a Lightning ``Trainer``'s optimizers.

    Keyword arguments are those of :class:`trainwarden.guard.Guard` (sink, secret,
    on_violation, run, config, telemetry_dir).
    """

    def __init__(self, **settings: Any) -> None:
        self._settings = GuardSettings(**settings)
        self.guards: list[Guard] = []

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Attach one guard per optimizer."""
        self._close()
        schedulers: dict[int, Any] = {}
        for config in getattr(trainer, "lr_scheduler_configs", []) or []:
            scheduler = unwrap_scheduler(config.scheduler)
            owner = getattr(scheduler, "optimizer", None)
            if owner is not None and getattr(config, "interval", "epoch") == "step":
                schedulers[id(owner)] = scheduler
        loader = getattr(trainer, "train_dataloader", None)
        for optimizer in trainer.optimizers:
            inner = getattr(optimizer, "optimizer", optimizer)
            # Schedulers stepped per epoch change the learning rate between steps the guard
            # cannot attribute to them: followed only when stepped every step.
            self.guards.append(
                Guard(
                    pl_module,
                    inner,
                    scheduler=schedulers.get(id(inner)),
                    data=loader if loader is not None and not callable(loader) else None,
                    **self._settings.kwargs,
                )
            )

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        """Digest the batch (the module's forward may not be called directly)."""
        for guard in self.guards:
            guard.observe_batch(batch)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Nothing to do: the loss was seen in the step."""

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None:
        """Record the loss the training step returned."""
        for guard in self.guards:
            guard.observe_loss(loss)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """Detach every guard."""
        self._close()

    def _close(self) -> None:
        for guard in self.guards:
            guard.close()
        self.guards = []
