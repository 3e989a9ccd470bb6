"""Hugging Face ``transformers``: a ``TrainerCallback`` that guards the Trainer's optimizer.

``Trainer(..., callbacks=[GuardCallback()])``: the guard attaches when training begins (to the
model, the optimizer and the LR scheduler the Trainer built, through accelerate's wrappers),
pins the train dataloader's sampler, and detaches when training ends. Under
``on_violation="halt"`` a violation raises out of ``trainer.train()`` on every rank.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from trainwarden.guard import Guard
from trainwarden.integrations._common import GuardSettings, unwrap_scheduler

__all__ = ["GuardCallback"]


class GuardCallback(TrainerCallback):
    """Attach a :class:`trainwarden.guard.Guard` to a ``transformers.Trainer``.

    Args:
        sink: Where events go (default: configured by the supervisor, else none).
        secret: Sampling secret (default: configured, else generated in memory).
        on_violation: ``"halt"`` or ``"warn"`` (default: configured, else ``"halt"``).
        run: Run id for events.
        config: :class:`trainwarden.guard.GuardConfig`.
        telemetry_dir: Directory for ``rank-<R>.jsonl``.
    """

    def __init__(self, **settings: Any) -> None:
        self._settings = GuardSettings(**settings)
        self.guard: Guard | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Attach to the Trainer's model, optimizer and scheduler."""
        if self.guard is not None:
            self.guard.close()
        model = kwargs.get("model")
        optimizer = kwargs.get("optimizer")
        if optimizer is None:
            return
        self.guard = Guard(
            model,
            optimizer,
            scheduler=unwrap_scheduler(kwargs.get("lr_scheduler")),
            data=kwargs.get("train_dataloader"),
            **self._settings.kwargs,
        )

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Detach (also records ``guard.close`` and the telemetry digest)."""
        if self.guard is not None:
            self.guard.close()
