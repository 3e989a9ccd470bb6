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
from trainwarden.guard._guard import Guard, StepInfo, first_global_pre_hook
from trainwarden.patching import PatchSet, Target

__all__ = ["GlobalGuard", "install_global"]

logger = logging.getLogger("trainwarden.guard")

PURPOSE = "guard-global"


_SCHEDULER_CLASSES = ("LRScheduler", "SequentialLR", "ChainedScheduler", "ReduceLROnPlateau")


def _driving(schedulers: list[Any], optimizer: Any) -> Any:
    """The scheduler that drives ``optimizer``: the outermost, the last built among equals.

    A composite (``SequentialLR``, ``ChainedScheduler``) holds its children in
    ``_schedulers``; the children step only through it, so following one of them would judge
    the composite's learning rate against a piece of its schedule.
    """
    mine = [s for s in schedulers if getattr(s, "optimizer", None) is optimizer]
    children = {id(c) for s in mine for c in getattr(s, "_schedulers", None) or ()}
    outer = [s for s in mine if id(s) not in children]
    return outer[-1] if outer else None


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
        # optimizer -> the schedulers built for it, in order of construction (weakly held).
        self._schedulers: weakref.WeakKeyDictionary[Any, list[weakref.ReferenceType[Any]]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.RLock()
        self._closed = False
        self._hooks: list[patching.TrackedHook] = []
        # One bound-method object per hook, registered *and* tracked: the registry recognises
        # hooks by identity, and every `self._first_step` access makes a new bound method.
        first_step, seen = self._first_step, self._seen
        # First in line: it also marks where each guarded step starts (PhaseClock).
        handle = first_global_pre_hook(first_step)
        self._hooks.append(
            patching.track_hook(
                handle, first_step, purpose=PURPOSE, target="global optimizer pre-hook"
            )
        )
        self._module_hook: patching.TrackedHook | None = patching.track_hook(
            module_mod.register_module_forward_pre_hook(seen),
            seen,
            purpose=PURPOSE,
            target="global module forward pre-hook",
        )
        # LRScheduler.__init__ alone misses the composites: SequentialLR, ChainedScheduler and
        # ReduceLROnPlateau do not call it, and the composite is what drives the optimizer
        # (its children's schedules are only pieces of the declared one).
        self._patches = PatchSet(
            PURPOSE,
            [
                Target("torch.optim.lr_scheduler", f"{cls}.__init__", self._scheduler_init)
                for cls in _SCHEDULER_CLASSES
            ],
        ).install()

    # ---------------------------------------------------------------------- discovery

    def _seen(self, module: Any, args: Any) -> None:
        self._modules.add(module)

    def _scheduler_init(self, original: Callable[..., Any]) -> Callable[..., Any]:
        owner = self

        def __init__(scheduler: Any, *args: Any, **kwargs: Any) -> None:
            original(scheduler, *args, **kwargs)
            owner._note_scheduler(scheduler)

        return __init__

    def _note_scheduler(self, scheduler: Any) -> None:
        # The scheduler's own `optimizer` (ChainedScheduler takes its schedulers first and the
        # optimizer is optional), not a positional argument.
        optimizer = getattr(scheduler, "optimizer", None)
        if optimizer is None:
            return
        with self._lock, contextlib.suppress(TypeError):  # not weakly referenceable
            built = self._schedulers.setdefault(optimizer, [])
            if not any(ref() is scheduler for ref in built):  # a subclass calling super()
                built.append(weakref.ref(scheduler))

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
        with self._lock:
            built = [s for s in (r() for r in self._schedulers.get(optimizer, ())) if s is not None]
        if not built:
            built = self._schedulers_by_referrers(optimizer)
        return _driving(built, optimizer)

    @staticmethod
    def _schedulers_by_referrers(optimizer: Any) -> list[Any]:
        """Schedulers built before ``install_global``: they refer to the optimizer (once)."""
        import torch

        found: list[Any] = []
        for referrer in gc.get_referrers(optimizer):
            if isinstance(referrer, torch.optim.lr_scheduler.LRScheduler):
                owners = [referrer]
            elif isinstance(referrer, dict):
                owners = [
                    r
                    for r in gc.get_referrers(referrer)
                    if isinstance(r, torch.optim.lr_scheduler.LRScheduler)
                ]
            else:
                owners = []
            found.extend(s for s in owners if all(s is not f for f in found))
        return found

    # -------------------------------------------------------------------------- attach

    def _first_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        guarded = _process.guard_of(optimizer)
        if guarded is not None:
            guarded._step_called(optimizer, args, kwargs)
            return
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
