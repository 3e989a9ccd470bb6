"""What every guard of a process shares: the registry, the patches and the watchdog thread.

Patches (seeding, sampler order, gradient clipping, checkpoint saves) are process-wide, so they
are installed once while at least one guard is alive and their observations are routed to the
guards they concern. The watchdog thread runs the checks that must not depend on the job's
training thread or on the guard's hooks: its own hooks still registered, a phase running for
too long, periodic code integrity, telemetry flushes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trainwarden.guard._data import OrderEvent, sampler_patches
from trainwarden.guard._hyper import ClipRecord
from trainwarden.guard._rng import Reseed, reseed_patches
from trainwarden.guard._timing import explicit_collections
from trainwarden.patching import PatchSet, Target

if TYPE_CHECKING:
    from trainwarden.guard._guard import Guard

__all__ = ["guard_of", "register", "unregister"]

logger = logging.getLogger("trainwarden.guard")

PURPOSE = "guard"


@dataclass
class _State:
    lock: threading.RLock
    guards: list[weakref.ReferenceType[Guard]]
    owners: weakref.WeakKeyDictionary[Any, Guard]
    patches: list[PatchSet]
    watchdog: threading.Thread | None = None
    stop: threading.Event | None = None
    pid: int = 0


_state = _State(threading.RLock(), [], weakref.WeakKeyDictionary(), [], pid=os.getpid())
_clip_local = threading.local()


def _live() -> list[Guard]:
    out = []
    for ref in list(_state.guards):
        guard = ref()
        if guard is not None and guard.active:
            out.append(guard)
    return out


def guard_of(optimizer: Any) -> Guard | None:
    """The live guard attached to ``optimizer``, if any."""
    with _state.lock:
        guard = _state.owners.get(optimizer)
    return guard if guard is not None and guard.active else None


def claim(optimizer: Any, guard: Guard) -> Guard | None:
    """Make ``guard`` the optimizer's guard; returns the previous live one (to be closed)."""
    with _state.lock:
        previous = _state.owners.get(optimizer)
        _state.owners[optimizer] = guard
    return previous if previous is not None and previous.active else None


def register(guard: Guard) -> None:
    """Add a guard; install the shared patches and start the watchdog with the first one."""
    with _state.lock:
        if _state.pid != os.getpid():  # a forked child: nothing of the parent's applies
            _state.guards.clear()
            _state.patches.clear()
            _state.watchdog = None
            _state.pid = os.getpid()
        _state.guards = [r for r in _state.guards if r() is not None]
        _state.guards.append(weakref.ref(guard))
        if not _state.patches:
            _state.patches = [
                reseed_patches(_on_reseed).install(),
                sampler_patches(_on_order).install(),
                _clip_and_save_patches().install(),
            ]
        if _state.watchdog is None or not _state.watchdog.is_alive():
            _state.stop = threading.Event()
            _state.watchdog = threading.Thread(
                target=_watch, args=(_state.stop,), name="trainwarden-guard-watchdog", daemon=True
            )
            _state.watchdog.start()


def unregister(guard: Guard) -> None:
    """Remove a guard; the last one takes the patches and the watchdog with it."""
    with _state.lock:
        _state.guards = [r for r in _state.guards if r() is not None and r() is not guard]
        for optimizer, owner in list(_state.owners.items()):
            if owner is guard:
                del _state.owners[optimizer]
        if _live():
            return
        for patch_set in reversed(_state.patches):
            patch_set.uninstall()
        _state.patches = []
        if _state.stop is not None:
            _state.stop.set()
        _state.watchdog = None


def installed_patches() -> list[PatchSet]:
    """The guard's shared patch sets (for the guard's own bypass check)."""
    with _state.lock:
        return list(_state.patches)


# ------------------------------------------------------------------------ observations


def _on_reseed(event: Reseed) -> None:
    for guard in _live():
        guard.on_reseed(event)


def _on_order(event: OrderEvent) -> None:
    for guard in _live():
        guard.on_order(event)


def _clip_and_save_patches() -> PatchSet:
    owner = os.getpid()

    def clip(original: Callable[..., Any]) -> Callable[..., Any]:
        def clip_grad_norm_(*args: Any, **kwargs: Any) -> Any:
            if os.getpid() != owner or int(getattr(_clip_local, "depth", 0)):
                return original(*args, **kwargs)
            import torch

            positional = list(args)
            parameters = positional[0] if positional else kwargs.get("parameters")
            if isinstance(parameters, torch.Tensor):
                parameters = [parameters]
            else:
                parameters = list(parameters) if parameters is not None else []
            if positional:
                positional[0] = parameters
            else:
                kwargs["parameters"] = parameters
            max_norm = positional[1] if len(positional) > 1 else kwargs.get("max_norm")
            norm_type = positional[2] if len(positional) > 2 else kwargs.get("norm_type", 2.0)
            _clip_local.depth = 1
            try:
                total = original(*positional, **kwargs)
            finally:
                _clip_local.depth = 0
            first = parameters[0] if parameters else None
            if first is not None and max_norm is not None:
                record = ClipRecord(float(max_norm), float(norm_type or 2.0), None)
                for guard in _live():
                    guard.on_clip(first, record, total)
            return total

        return clip_grad_norm_

    def save(original: Callable[..., Any]) -> Callable[..., Any]:
        def torch_save(*args: Any, **kwargs: Any) -> Any:
            if os.getpid() != owner:
                return original(*args, **kwargs)
            start = time.monotonic()
            try:
                return original(*args, **kwargs)
            finally:
                spent = time.monotonic() - start
                for guard in _live():
                    guard.on_checkpoint(spent)

        return torch_save

    return PatchSet(
        PURPOSE,
        [
            Target("torch.nn.utils", "clip_grad_norm_", clip),
            Target("torch.nn.utils.clip_grad", "clip_grad_norm_", clip),
            Target("torch", "save", save),
            Target("torch.serialization", "save", save),
            Target("gc", "collect", explicit_collections),
        ],
    )


# ------------------------------------------------------------------------------ watchdog


def _watch(stop: threading.Event) -> None:
    """Tick every live guard; each decides what is due (its intervals differ)."""
    while not stop.is_set():
        guards = _live()
        interval = min((g.config.watchdog_interval for g in guards), default=1.0)
        for guard in guards:
            try:
                guard.tick()
            except Exception:  # noqa: PERF203  # the watchdog must outlive any single failure
                logger.exception("guard: watchdog pass failed")
        stop.wait(min(interval, 1.0) if not guards else interval)
