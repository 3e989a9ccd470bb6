"""What the adapters share: unwrapping framework wrappers and building guards from settings."""

from __future__ import annotations

from typing import Any

__all__ = ["GuardSettings", "unwrap_scheduler"]


def unwrap_scheduler(scheduler: Any) -> Any:
    """The torch LR scheduler behind accelerate's ``AcceleratedScheduler`` (``.scheduler``)."""
    seen = 0
    while scheduler is not None and seen < 4:
        import torch

        if isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler):
            return scheduler
        inner = getattr(scheduler, "scheduler", None)
        if inner is None:
            return scheduler
        scheduler = inner
        seen += 1
    return scheduler


class GuardSettings:
    """The keyword arguments every adapter passes on to :class:`trainwarden.guard.Guard`."""

    def __init__(
        self,
        *,
        sink: Any = None,
        secret: bytes | None = None,
        on_violation: str | None = None,
        run: str | None = None,
        config: Any = None,
        telemetry_dir: Any = None,
    ) -> None:
        self.kwargs: dict[str, Any] = {
            "sink": sink,
            "secret": secret,
            "on_violation": on_violation,
            "run": run,
            "config": config,
            "telemetry_dir": telemetry_dir,
        }
