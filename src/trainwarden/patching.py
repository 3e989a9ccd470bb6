"""One registry of every patch and hook trainwarden installs in a process.

``protect()`` wraps loaders, the guard wraps seeding functions and registers optimizer and module
hooks, the supervisor's bootstrap registers global optimizer hooks. All of them go through here,
so that:

- every replacement is marked as trainwarden's (``__trainwarden_patch__``, ``__wrapped__``) and
  recorded with its purpose, the original and the owner it was set on;
- removal restores the original, unless somebody patched over us (then their patch stays and the
  fact is logged: restoring would silently drop it);
- :func:`lookup` tells verification code (``trainwarden.env.verify_runtime``, the guard's hook
  audit) whether an object *is* one of our installed replacements. It answers from this registry
  by identity, never from the marker attribute, which anyone can forge;
- modules imported after a patch set was installed are patched right after they execute.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.machinery
import logging
import sys
import threading
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MARKER",
    "Patch",
    "PatchSet",
    "Target",
    "TrackedHook",
    "hooks",
    "import_hooks",
    "installed_patches",
    "installed_sets",
    "lookup",
    "lookup_hook",
    "mark",
    "track_hook",
    "untrack_hook",
]

logger = logging.getLogger("trainwarden.patching")

#: Attribute set on every replacement trainwarden installs (its value is the purpose).
#: Informational only: verification uses :func:`lookup`, which cannot be forged this way.
MARKER = "__trainwarden_patch__"


@dataclass(frozen=True, slots=True)
class Target:
    """One attribute to replace.

    Attributes:
        module: The module that holds the attribute (``"torch.serialization"``).
        attr: The attribute, dotted for class members (``"Optimizer.zero_grad"``).
        factory: Builds the replacement from the current value (the original).
        trigger: The module whose import makes the patch possible; defaults to ``module``.
            A target whose module is not imported yet is patched right after it is.
    """

    module: str
    attr: str
    factory: Callable[[Any], Any]
    trigger: str | None = None

    @property
    def watch(self) -> str:
        """The module name whose import is watched for this target."""
        return self.trigger or self.module


@dataclass(frozen=True, slots=True, eq=False)
class Patch:
    """An installed replacement: where, what it replaced, and why."""

    owner: Any
    owner_name: str
    attr: str
    original: Any
    replacement: Any
    purpose: str

    @property
    def name(self) -> str:
        """``module.attr`` (or ``module.Class.attr``) of the patched attribute."""
        return f"{self.owner_name}.{self.attr}"


@dataclass(frozen=True, slots=True, eq=False)
class TrackedHook:
    """A hook trainwarden registered through a public hook API (torch ``register_*_hook``)."""

    fn: Callable[..., Any]
    handle: Any
    purpose: str
    target: str


def mark(replacement: Any, original: Any, purpose: str) -> Any:
    """Copy ``original``'s metadata onto ``replacement`` and mark it as trainwarden's.

    Use it on wrappers built by a :class:`Target` factory; :class:`PatchSet` marks what the
    factory returns in any case.
    """
    if callable(original) and not isinstance(replacement, type):
        with contextlib.suppress(AttributeError, TypeError):
            functools.update_wrapper(replacement, original)
    with contextlib.suppress(AttributeError, TypeError):
        setattr(replacement, MARKER, purpose)
        if getattr(replacement, "__wrapped__", None) is None:
            replacement.__wrapped__ = original
    return replacement


class PatchSet:
    """A named group of attribute patches, installed and removed together.

    ``install()`` patches every target whose module is imported and watches imports for the
    rest; ``uninstall()`` restores the originals (see the module docstring) and stops
    watching. Installing twice or uninstalling twice is harmless. A target already holding a
    trainwarden replacement for the same purpose is left alone (no double wrapping).
    """

    def __init__(self, purpose: str, targets: Sequence[Target]) -> None:
        if not purpose:
            raise ValueError("a patch set needs a purpose")
        self.purpose = purpose
        self.targets = tuple(targets)
        self._patches: list[Patch] = []
        self._installed = False

    @property
    def installed(self) -> bool:
        """Whether the set is installed (its targets patched or awaited)."""
        return self._installed

    @property
    def patches(self) -> tuple[Patch, ...]:
        """The patches this set has in place now."""
        with _REGISTRY.lock:
            return tuple(self._patches)

    def install(self) -> PatchSet:
        """Patch what can be patched now and watch imports for the rest; return ``self``."""
        with _REGISTRY.lock:
            if self._installed:
                return self
            self._installed = True
            _REGISTRY.sets.append(self)
            _REGISTRY.ensure_hook()
            for target in self.targets:
                if target.watch in sys.modules:
                    self._apply(target)
        return self

    def uninstall(self) -> None:
        """Restore every original this set replaced; idempotent."""
        with _REGISTRY.lock:
            if not self._installed:
                return
            self._installed = False
            with contextlib.suppress(ValueError):
                _REGISTRY.sets.remove(self)
            for patch in reversed(self._patches):
                _restore(patch)
                _REGISTRY.patches.pop(id(patch.replacement), None)
            self._patches.clear()
            _REGISTRY.drop_hook_if_idle()

    def __enter__(self) -> PatchSet:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    def _on_import(self, name: str) -> None:
        for target in self.targets:
            if target.watch == name:
                self._apply(target)

    def _apply(self, target: Target) -> None:
        owner_module = sys.modules.get(target.module)
        if owner_module is None:
            return
        *path, attr = target.attr.split(".")
        owner: Any = owner_module
        for part in path:
            owner = getattr(owner, part, None)
            if owner is None:
                return
        current = getattr(owner, attr, None)
        if current is None:
            return
        existing = _REGISTRY.patches.get(id(current))
        if (
            existing is not None
            and existing.replacement is current
            and (existing.purpose == self.purpose)
        ):
            return  # ours already (another set of the same purpose, or a re-import)
        replacement = target.factory(current)
        mark(replacement, current, self.purpose)
        try:
            setattr(owner, attr, replacement)
        except (AttributeError, TypeError) as exc:  # immutable (C) types
            logger.warning("cannot patch %s.%s: %s", target.module, target.attr, exc)
            return
        owner_name = ".".join([target.module, *path])
        patch = Patch(owner, owner_name, attr, current, replacement, self.purpose)
        self._patches.append(patch)
        _REGISTRY.patches[id(replacement)] = patch


def installed_sets() -> tuple[PatchSet, ...]:
    """The installed patch sets, oldest first."""
    with _REGISTRY.lock:
        return tuple(_REGISTRY.sets)


def installed_patches() -> tuple[Patch, ...]:
    """Every patch trainwarden has in place in this process."""
    with _REGISTRY.lock:
        return tuple(_REGISTRY.patches.values())


def lookup(obj: Any) -> Patch | None:
    """The installed patch whose replacement *is* ``obj`` (by identity), else ``None``."""
    patch = _REGISTRY.patches.get(id(obj))
    if patch is not None and patch.replacement is obj:
        return patch
    return None


def track_hook(handle: Any, fn: Callable[..., Any], *, purpose: str, target: str) -> TrackedHook:
    """Record a hook registered through a public API (its handle and function).

    Args:
        handle: What the registration returned (``torch.utils.hooks.RemovableHandle``).
        fn: The hook function itself, as the hooked object stores it.
        purpose: Which component it belongs to (``"guard"``).
        target: What it is on, for messages (``"optimizer step pre-hook"``).
    """
    hook = TrackedHook(fn, handle, purpose, target)
    with contextlib.suppress(AttributeError, TypeError):
        setattr(fn, MARKER, purpose)
    with _REGISTRY.lock:
        _REGISTRY.hooks[id(fn)] = hook
    return hook


def untrack_hook(hook: TrackedHook, *, remove: bool = True) -> None:
    """Forget ``hook`` and, with ``remove``, remove it through its handle."""
    with _REGISTRY.lock:
        _REGISTRY.hooks.pop(id(hook.fn), None)
    if remove and hook.handle is not None:
        with contextlib.suppress(Exception):
            hook.handle.remove()


def lookup_hook(fn: Any) -> TrackedHook | None:
    """The tracked hook whose function *is* ``fn`` (by identity), else ``None``."""
    hook = _REGISTRY.hooks.get(id(fn))
    if hook is not None and hook.fn is fn:
        return hook
    return None


def hooks() -> tuple[TrackedHook, ...]:
    """Every hook trainwarden has registered and not removed."""
    with _REGISTRY.lock:
        return tuple(_REGISTRY.hooks.values())


def import_hooks() -> tuple[Any, ...]:
    """The ``sys.meta_path`` finders this registry installed (to watch imports), if any.

    Verification code (``trainwarden.env``'s import-hook check) recognises them by identity;
    a finder that merely claims to come from this module is not one of them.
    """
    with _REGISTRY.lock:
        return (_REGISTRY.finder,) if _REGISTRY.finder is not None else ()


def _restore(patch: Patch) -> None:
    if getattr(patch.owner, patch.attr, None) is patch.replacement:
        setattr(patch.owner, patch.attr, patch.original)
    else:
        # Someone patched over us; restoring would drop their patch. Our replacement stays
        # reachable only through theirs (it must then act as a pass-through).
        logger.warning("not restoring %s: replaced by someone else since", patch.name)


# --------------------------------------------------------------------------- registry state


@dataclass
class _Registry:
    lock: threading.RLock = field(default_factory=threading.RLock)
    sets: list[PatchSet] = field(default_factory=list)
    patches: dict[int, Patch] = field(default_factory=dict)
    hooks: dict[int, TrackedHook] = field(default_factory=dict)
    finder: _PatchOnImport | None = None

    def ensure_hook(self) -> None:
        if self.finder is None:
            self.finder = _PatchOnImport()
            sys.meta_path.insert(0, self.finder)

    def drop_hook_if_idle(self) -> None:
        if not self.sets and self.finder is not None:
            with contextlib.suppress(ValueError):
                sys.meta_path.remove(self.finder)
            self.finder = None

    def watched(self, name: str) -> bool:
        return any(t.watch == name for s in self.sets for t in s.targets)

    def on_import(self, name: str) -> None:
        with self.lock:
            for patch_set in list(self.sets):
                patch_set._on_import(name)


_REGISTRY = _Registry()


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patch watched modules right after they are imported, if that happens later."""

    _busy = threading.local()

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if not _REGISTRY.watched(fullname) or getattr(self._busy, "active", False):
            return None
        self._busy.active = True
        try:
            spec = _find_spec_elsewhere(self, fullname, path, target)
        finally:
            self._busy.active = False
        if spec is None or spec.loader is None:
            return None
        spec.loader = _PatchingLoader(spec.loader, fullname)
        return spec


def _find_spec_elsewhere(
    hook: object, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None
) -> importlib.machinery.ModuleSpec | None:
    for finder in sys.meta_path:
        find = getattr(finder, "find_spec", None)
        if finder is hook or find is None:
            continue
        spec: importlib.machinery.ModuleSpec | None = find(fullname, path, target)
        if spec is not None:
            return spec
    return None


class _PatchingLoader(importlib.abc.Loader):
    """Delegates to the real loader; patches the module once it has executed."""

    def __init__(self, loader: Any, name: str) -> None:
        self._tw_loader = loader
        self._tw_name = name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        create: Callable[..., types.ModuleType | None] | None = getattr(
            self._tw_loader, "create_module", None
        )
        return create(spec) if create is not None else None

    def exec_module(self, module: types.ModuleType) -> None:
        self._tw_loader.exec_module(module)
        _REGISTRY.on_import(self._tw_name)

    def __getattr__(self, attr: str) -> Any:
        # get_source, get_resource_reader, is_package...: the real loader answers.
        return getattr(self._tw_loader, attr)
