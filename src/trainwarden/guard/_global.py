"""The global guard: every optimizer of a process guarded with no change to the training script.

``install_global()`` registers torch's global optimizer step pre-hook
(``torch.optim.optimizer.register_optimizer_step_pre_hook``). The first time any optimizer
steps, a :class:`~trainwarden.guard.Guard` is attached to it, with the model found among the
modules the process ran forward through (the outermost one holding the optimizer's
parameters) and the LR scheduler created for it (LR schedulers are noticed as they are built;
one built before ``install_global`` is looked up among the optimizer's referrers). What cannot be
found is listed in ``guard.attach`` as not checked. A script that builds its own ``Guard`` for an
optimizer takes it over from the global guard.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

from trainwarden import patching
from trainwarden.guard import _process
from trainwarden.guard._config import GuardConfig
from trainwarden.guard._findings import GuardFinding
from trainwarden.guard._guard import Guard, StepInfo
from trainwarden.patching import PatchSet, Target

__all__ = ["GlobalGuard", "install_global"]

logger = logging.getLogger("trainwarden.guard")

PURPOSE = "guard-global"


class GlobalGuard:
    """Handle of :func:`install_global`: the guards it attached, their findings, ``close()``."""

    def __init__(
        self,
        *,
        sink: Any,
        run: str | None,
        secret: bytes | None,
        on_violation: str | None,
        config: GuardConfig | None,
        telemetry_dir: str | None = None,
    ) -> None:
        import torch.nn.modules.module as module_mod
        import torch.optim.optimizer as optim_mod

        self._kwargs: dict[str, Any] = {
            "sink": sink,
            "run": run,
            "secret": secret,
            "on_violation": on_violation,
            "config": config,
            "telemetry_dir": telemetry_dir,
        }
        self._guards: list[Guard] = []
        self._listeners: list[Callable[[StepInfo], None]] = []
        self._modules: weakref.WeakSet[Any] = weakref.WeakSet()
        self._schedulers: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._lock = threading.RLock()
        self._closed = False
        self._hooks: list[patching.TrackedHook] = []
        handle = optim_mod.register_optimizer_step_pre_hook(self._first_step)
        self._hooks.append(
            patching.track_hook(
                handle, self._first_step, purpose=PURPOSE, target="global optimizer pre-hook"
            )
        )
        self._module_hook: patching.TrackedHook | None = patching.track_hook(
            module_mod.register_module_forward_pre_hook(self._seen),
            self._seen,
            purpose=PURPOSE,
            target="global module forward pre-hook",
        )
        self._patches = PatchSet(
            PURPOSE,
            [Target("torch.optim.lr_scheduler", "LRScheduler.__init__", self._scheduler_init)],
        ).install()

    # ---------------------------------------------------------------------- discovery

    def _seen(self, module: Any, args: Any) -> None:
        self._modules.add(module)

    def _scheduler_init(self, original: Callable[..., Any]) -> Callable[..., Any]:
        owner = self

        def __init__(scheduler: Any, optimizer: Any, *args: Any, **kwargs: Any) -> None:
            original(scheduler, optimizer, *args, **kwargs)
            # SequentialLR and friends build children first; the outermost one wins.
            with contextlib.suppress(TypeError):  # an optimizer that cannot be weakly referenced
                owner._schedulers[optimizer] = scheduler

        return __init__

    def _find_model(self, optimizer: Any) -> Any:
        params = {id(p) for g in optimizer.param_groups for p in g["params"]}
        candidates = []
        for module in list(self._modules):
            try:
                ids = {id(p) for p in module.parameters()}
            except (RuntimeError, AttributeError):
                continue
            if ids and params <= ids | params and ids & params:
                candidates.append((module, ids))
        if not candidates:
            return None
        # The outermost: not a submodule of another candidate (a DDP wrapper over its model).
        inner = set()
        for module, _ in candidates:
            for child in module.modules():
                if child is not module:
                    inner.add(id(child))
        outer = [(m, ids) for m, ids in candidates if id(m) not in inner]
        best = max(outer or candidates, key=lambda item: len(item[1] & params))
        return best[0]

    def _find_scheduler(self, optimizer: Any) -> Any:
        found = self._schedulers.get(optimizer)
        if found is not None:
            return found
        import torch

        # Built before install_global: the scheduler refers to the optimizer (once, at attach).
        best = None
        for referrer in gc.get_referrers(optimizer):
            owners = (
                [referrer]
                if isinstance(referrer, torch.optim.lr_scheduler.LRScheduler)
                else [
                    r
                    for r in gc.get_referrers(referrer)
                    if isinstance(r, torch.optim.lr_scheduler.LRScheduler)
                ]
                if isinstance(referrer, dict)
                else []
            )
            for sched in owners:
                # A composite (SequentialLR) holds its children: prefer it.
                if getattr(sched, "optimizer", None) is optimizer and (
                    best is None or hasattr(sched, "_schedulers")
                ):
                    best = sched
        return best

    # -------------------------------------------------------------------------- attach

    def _first_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        with self._lock:
            if self._closed or _process.guard_of(optimizer) is not None:
                return
            if any(g.optimizer is optimizer for g in self._guards if g.active):
                return
            model = self._find_model(optimizer)
            scheduler = self._find_scheduler(optimizer)
            # Discovery ends before the guard takes its baseline of hooks.
            self._stop_discovery()
            guard = Guard(model, optimizer, scheduler=scheduler, _global=True, **self._kwargs)
            for fn in self._listeners:
                guard.add_step_listener(fn)
            self._guards.append(guard)
        return

    def _stop_discovery(self) -> None:
        # Module discovery costs a call per module per forward: only until every optimizer
        # that stepped has its guard.
        if self._module_hook is not None:
            patching.untrack_hook(self._module_hook)
            self._module_hook = None
            self._modules = weakref.WeakSet()

    # -------------------------------------------------------------------------- public

    @property
    def guards(self) -> tuple[Guard, ...]:
        """The guards attached so far (live or closed)."""
        with self._lock:
            return tuple(self._guards)

    @property
    def findings(self) -> tuple[GuardFinding, ...]:
        """Every finding of every guard attached so far."""
        return tuple(f for g in self.guards for f in g.findings)

    def add_step_listener(self, fn: Callable[[StepInfo], None]) -> None:
        """Call ``fn(StepInfo)`` after every step of every guarded optimizer."""
        with self._lock:
            self._listeners.append(fn)
            for guard in self._guards:
                guard.add_step_listener(fn)

    def close(self) -> None:
        """Remove the global hooks and close every guard it attached. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for hook in self._hooks:
                patching.untrack_hook(hook)
            self._hooks.clear()
            self._stop_discovery()
            self._patches.uninstall()
            guards = list(self._guards)
        for guard in guards:
            guard.close()

    def __enter__(self) -> GlobalGuard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def install_global(
    *,
    sink: Any = None,
    run: str | None = None,
    secret: bytes | None = None,
    on_violation: str | None = "halt",
    config: GuardConfig | None = None,
) -> GlobalGuard:
    """Guard every optimizer of the process from its first step, with no code change.

    Arguments left as ``None`` take the values set by
    :func:`~trainwarden.guard.configure_defaults` (the supervisor's per-rank bootstrap sets
    them), as for :class:`~trainwarden.guard.Guard`. Returns a handle with ``close()``,
    ``findings``, ``guards`` and ``add_step_listener(fn)``.
    """
    return GlobalGuard(sink=sink, run=run, secret=secret, on_violation=on_violation, config=config)
