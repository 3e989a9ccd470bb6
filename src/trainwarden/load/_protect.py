"""``protect()``: route a process's natural loaders through the policy, and undo it cleanly.

Patches pickle, torch, numpy and joblib loaders; modules imported later are patched on import.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.machinery
import logging
import os
import pickle
import sys
import threading
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trainwarden.errors import ConfigError
from trainwarden.findings import Severity, Verdict
from trainwarden.load._policy import check_mode, resolve_policy
from trainwarden.load._source import source_name
from trainwarden.load._unpickler import (
    ENFORCE,
    checked_import,
    make_unpickler,
    refuse,
)

if TYPE_CHECKING:
    from trainwarden.scan import Policy

__all__ = ["Protection", "active_protection", "protect", "protect_from_environment"]

logger = logging.getLogger("trainwarden.load")

_TRUE = ("1", "y", "yes", "true", "on")


@dataclass(eq=False)
class Protection:
    """A policy applied to the process's loaders while enabled.

    Use it as a context manager (``with protect(): ...``) or switch it on for the rest of the
    process with :meth:`enable` and off with :meth:`disable`. Protections nest; the innermost
    enabled one decides. Patches are process-wide (every thread sees them) and are removed
    when the last protection is disabled.

    Attributes:
        policy: what loaders may import.
        mode: ``"enforce"`` refuses and raises; ``"audit"`` logs what it would refuse and loads.
    """

    policy: Policy
    mode: str = ENFORCE

    @property
    def enabled(self) -> bool:
        """Whether this protection is currently switched on."""
        return _STATE.contains(self)

    def enable(self) -> Protection:
        """Switch the protection on (for the whole process) and return it.

        Raises:
            ConfigError: it is already enabled.
        """
        _STATE.push(self)
        return self

    def disable(self) -> None:
        """Switch the protection off; patches go when no protection is left. Idempotent."""
        _STATE.remove(self)

    def __enter__(self) -> Protection:
        return self.enable()

    def __exit__(self, *exc: object) -> None:
        self.disable()


def protect(
    *,
    allow: Sequence[str] | str = (),
    profiles: Sequence[str] | str = (),
    policy: Policy | None = None,
    mode: str = ENFORCE,
) -> Protection:
    """Make the process's natural loaders refuse what the policy refuses.

    Returns a :class:`Protection`; nothing is patched until it is entered or enabled::

        with trainwarden.protect(profiles=("transformers",)):
            trainer.train(resume_from_checkpoint=True)

        trainwarden.protect(mode="audit").enable()   # for the rest of the process

    Args:
        allow: extra globals to allow, ``"module.name"``.
        profiles: allowlist profiles to enable (``"transformers"``, ``"lightning"``...).
        policy: a ready policy instead of the default one (``allow`` extends it).
        mode: ``"enforce"`` (refuse and raise) or ``"audit"`` (log and load anyway).

    Raises:
        ConfigError: an invalid mode, profile or allow entry.
    """
    return Protection(resolve_policy(policy, allow, profiles), check_mode(mode))


def protect_from_environment(environ: dict[str, str] | None = None) -> Protection | None:
    """Enable protection when ``TRAINWARDEN_PROTECT`` is truthy; return it (else ``None``).

    ``TRAINWARDEN_PROTECT_MODE`` (enforce/audit), ``TRAINWARDEN_PROTECT_ALLOW`` and
    ``TRAINWARDEN_PROTECT_PROFILES`` (comma-separated) configure it.

    Raises:
        ConfigError: a variable has an invalid value.
    """
    env = os.environ if environ is None else environ
    if env.get("TRAINWARDEN_PROTECT", "").strip().lower() not in _TRUE:
        return None
    protection = protect(
        allow=_split(env.get("TRAINWARDEN_PROTECT_ALLOW", "")),
        profiles=_split(env.get("TRAINWARDEN_PROTECT_PROFILES", "")),
        mode=env.get("TRAINWARDEN_PROTECT_MODE", ENFORCE).strip().lower() or ENFORCE,
    )
    return protection.enable()


def active_protection() -> Protection | None:
    """The innermost enabled protection, or ``None``."""
    return _STATE.current()


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


# --------------------------------------------------------------------------- patch state


@dataclass
class _Patch:
    owner: types.ModuleType
    attr: str
    original: Any
    wrapper: Any


class _State:
    """Enabled protections and installed patches, behind one lock."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.stack: list[Protection] = []
        self.patches: list[_Patch] = []
        self.hook: _PatchOnImport | None = None

    def current(self) -> Protection | None:
        # Reading the last element of a list is atomic; wrappers call this on every load.
        stack = self.stack
        return stack[-1] if stack else None

    def contains(self, protection: Protection) -> bool:
        with self.lock:
            return any(p is protection for p in self.stack)

    def push(self, protection: Protection) -> None:
        with self.lock:
            if self.contains(protection):
                raise ConfigError("this protection is already enabled")
            if not self.stack:
                self._install()
            self.stack.append(protection)

    def remove(self, protection: Protection) -> None:
        with self.lock:
            # Out-of-order exits (threads, generators) remove the right entry, not the last.
            self.stack = [p for p in self.stack if p is not protection]
            if not self.stack:
                self._uninstall()

    def on_import(self, name: str) -> None:
        with self.lock:
            if self.stack:
                self._patch_module(name)

    def _install(self) -> None:
        self.hook = _PatchOnImport()
        sys.meta_path.insert(0, self.hook)
        for name in _TARGETS:
            if name in sys.modules:
                self._patch_module(name)

    def _uninstall(self) -> None:
        if self.hook is not None:
            with contextlib.suppress(ValueError):
                sys.meta_path.remove(self.hook)
            self.hook = None
        for patch in reversed(self.patches):
            if getattr(patch.owner, patch.attr, None) is patch.wrapper:
                setattr(patch.owner, patch.attr, patch.original)
            else:
                # Someone patched over us; restoring would drop their patch. Our wrapper
                # stays reachable only through theirs and acts unprotected when disabled.
                logger.warning(
                    "not restoring %s.%s: replaced by someone else while protected",
                    patch.owner.__name__,
                    patch.attr,
                )
        self.patches.clear()

    def _patch_module(self, name: str) -> None:
        for module_name, attr, make in _TARGETS[name]:
            owner = sys.modules.get(module_name)
            current = getattr(owner, attr, None) if owner is not None else None
            if owner is None or current is None:
                continue
            if getattr(current, "__trainwarden_wrapper__", False):
                continue
            wrapper = make(current)
            setattr(owner, attr, wrapper)
            self.patches.append(_Patch(owner, attr, current, wrapper))


_STATE = _State()


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patch torch / numpy / joblib right after they are imported, if that happens later."""

    _busy = threading.local()

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _TARGETS or getattr(self._busy, "active", False):
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
        _STATE.on_import(self._tw_name)

    def __getattr__(self, attr: str) -> Any:
        # get_source, get_resource_reader, is_package...: the real loader answers.
        return getattr(self._tw_loader, attr)


# --------------------------------------------------------------------------- wrappers


def _mark(wrapper: Any, original: Any) -> Any:
    functools.update_wrapper(wrapper, original)
    wrapper.__trainwarden_wrapper__ = True
    return wrapper


def _wrap_torch_load(original: Callable[..., Any]) -> Callable[..., Any]:
    def load(
        f: Any,
        map_location: Any = None,
        pickle_module: Any = None,
        *,
        weights_only: bool | None = None,
        mmap: bool | None = None,
        **pickle_load_args: Any,
    ) -> Any:
        protection = _STATE.current()
        if protection is None:
            return original(
                f,
                map_location,
                pickle_module,
                weights_only=weights_only,
                mmap=mmap,
                **pickle_load_args,
            )
        if pickle_module is not None and pickle_module is not pickle:
            refuse(
                source=source_name(f),
                sha256=None,
                rule_id="load.custom-pickle-module",
                message="torch.load with a custom pickle_module cannot be checked",
                evidence=getattr(pickle_module, "__name__", type(pickle_module).__name__),
                severity=Severity.HIGH,
                verdict=Verdict.UNKNOWN,
                mode=protection.mode,
            )
            return original(
                f,
                map_location,
                pickle_module,
                weights_only=weights_only,
                mmap=mmap,
                **pickle_load_args,
            )
        from trainwarden.load._torch import load_with_report

        obj, _ = load_with_report(
            f,
            map_location,
            None,
            weights_only=weights_only,
            mmap=mmap,
            policy=protection.policy,
            mode=protection.mode,
            **pickle_load_args,
        )
        return obj

    return _mark(load, original)  # type: ignore[no-any-return]


def _wrap_pickle_load(original: Callable[..., Any]) -> Callable[..., Any]:
    def load(file: Any, **kwargs: Any) -> Any:
        protection = _STATE.current()
        if protection is None:
            return original(file, **kwargs)
        unpickler = make_unpickler(
            protection.policy, source=source_name(file), mode=protection.mode
        )
        return unpickler(file, **kwargs).load()

    return _mark(load, original)  # type: ignore[no-any-return]


def _wrap_pickle_loads(original: Callable[..., Any]) -> Callable[..., Any]:
    def loads(data: Any, /, **kwargs: Any) -> Any:
        protection = _STATE.current()
        if protection is None:
            return original(data, **kwargs)
        from trainwarden.load._pickle import safe_pickle_loads

        return safe_pickle_loads(data, policy=protection.policy, mode=protection.mode, **kwargs)

    return _mark(loads, original)  # type: ignore[no-any-return]


def _wrap_unpickler(original: type[Any]) -> type[Any]:
    # A subclass, so code that subclasses pickle.Unpickler while protected (torch's
    # UnpicklerWrapper when given pickle_module=pickle) keeps working and keeps the check.
    class Unpickler(original):  # type: ignore[misc]
        def __init__(self, file: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__(file, *args, **kwargs)
            self._tw_stream = file

        def find_class(self, module: str, name: str) -> Any:
            protection = _STATE.current()
            if protection is None or not isinstance(module, str) or not isinstance(name, str):
                return super().find_class(module, name)
            return checked_import(
                protection.policy,
                module,
                name,
                source=source_name(getattr(self, "_tw_stream", None)),
                digest=lambda: None,
                mode=protection.mode,
            )

    Unpickler.__module__ = original.__module__
    Unpickler.__qualname__ = original.__qualname__
    Unpickler.__trainwarden_wrapper__ = True
    Unpickler.__wrapped__ = original
    return Unpickler


def _wrap_numpy_load(original: Callable[..., Any]) -> Callable[..., Any]:
    def load(
        file: Any,
        mmap_mode: str | None = None,
        allow_pickle: bool = False,
        fix_imports: bool = True,
        encoding: str = "ASCII",
        **kwargs: Any,
    ) -> Any:
        protection = _STATE.current()
        if protection is None or not allow_pickle:
            return original(file, mmap_mode, allow_pickle, fix_imports, encoding, **kwargs)
        from trainwarden.load._numpy import safe_numpy_load

        return safe_numpy_load(
            file,
            mmap_mode,
            allow_pickle,
            fix_imports,
            encoding,
            policy=protection.policy,
            mode=protection.mode,
            **kwargs,
        )

    return _mark(load, original)  # type: ignore[no-any-return]


def _wrap_joblib_load(original: Callable[..., Any]) -> Callable[..., Any]:
    def load(filename: Any, mmap_mode: str | None = None, **kwargs: Any) -> Any:
        protection = _STATE.current()
        if protection is None:
            return original(filename, mmap_mode, **kwargs)
        from trainwarden.load._joblib import safe_joblib_load

        return safe_joblib_load(
            filename, mmap_mode, policy=protection.policy, mode=protection.mode, **kwargs
        )

    return _mark(load, original)  # type: ignore[no-any-return]


# Top-level module -> (module holding the attribute, attribute, wrapper factory).
_TARGETS: dict[str, tuple[tuple[str, str, Callable[[Any], Any]], ...]] = {
    "pickle": (
        ("pickle", "load", _wrap_pickle_load),
        ("pickle", "loads", _wrap_pickle_loads),
        ("pickle", "Unpickler", _wrap_unpickler),
    ),
    "torch": (
        ("torch", "load", _wrap_torch_load),
        ("torch.serialization", "load", _wrap_torch_load),
    ),
    "numpy": (("numpy", "load", _wrap_numpy_load),),
    "joblib": (
        ("joblib", "load", _wrap_joblib_load),
        ("joblib.numpy_pickle", "load", _wrap_joblib_load),
    ),
}
