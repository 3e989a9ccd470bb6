"""``protect()``: route a process's natural loaders through the policy, and undo it cleanly.

Patches pickle, torch, numpy and joblib loaders; modules imported later are patched on import.
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trainwarden.errors import ConfigError
from trainwarden.findings import Severity, Verdict
from trainwarden.load._policy import DEPRECATED_AUDIT, check_mode, resolve_policy
from trainwarden.load._source import source_name
from trainwarden.load._unpickler import (
    ENFORCE,
    checked_import,
    make_unpickler,
    refuse,
)
from trainwarden.patching import PatchSet, Target, mark

if TYPE_CHECKING:
    from trainwarden.scan import Policy

__all__ = ["Protection", "active_protection", "protect", "protect_from_environment"]

logger = logging.getLogger("trainwarden.load")

#: The purpose under which protect()'s patches are registered in :mod:`trainwarden.patching`.
PURPOSE = "protect"

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
        mode: ``"enforce"`` refuses and raises; ``"unsafe-audit"`` logs what it would refuse
            and loads it anyway (so the refused code runs).
    """

    policy: Policy
    mode: str = ENFORCE

    def __post_init__(self) -> None:
        # Validated here too, so a Protection built directly cannot carry a mode that the
        # loaders would treat as anything but enforce (they fail closed on unknown modes).
        self.mode = check_mode(self.mode, stacklevel=4)

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

        trainwarden.protect().enable()   # for the rest of the process

    Args:
        allow: extra globals to allow, ``"module.name"``.
        profiles: allowlist profiles to enable (``"transformers"``, ``"lightning"``...).
        policy: a ready policy instead of the default one (``allow`` extends it).
        mode: ``"enforce"`` (refuse and raise) or ``"unsafe-audit"`` (log what would be
            refused and load it anyway: the refused code runs; use it only to learn what a
            trusted job loads). ``"audit"`` is the deprecated name of ``"unsafe-audit"``.

    Raises:
        ConfigError: an invalid mode, profile or allow entry.
    """
    checked = check_mode(mode, stacklevel=3)
    return Protection(resolve_policy(policy, allow, profiles), checked)


def protect_from_environment(environ: dict[str, str] | None = None) -> Protection | None:
    """Enable protection when ``TRAINWARDEN_PROTECT`` is truthy; return it (else ``None``).

    ``TRAINWARDEN_PROTECT_MODE`` (``enforce``, ``unsafe-audit``; ``audit`` is deprecated),
    ``TRAINWARDEN_PROTECT_ALLOW`` and ``TRAINWARDEN_PROTECT_PROFILES`` (comma-separated)
    configure it.

    Raises:
        ConfigError: a variable has an invalid value.
    """
    env = os.environ if environ is None else environ
    if env.get("TRAINWARDEN_PROTECT", "").strip().lower() not in _TRUE:
        return None
    mode = env.get("TRAINWARDEN_PROTECT_MODE", ENFORCE).strip().lower() or ENFORCE
    if mode == DEPRECATED_AUDIT:
        # Set by a person, not by code: a DeprecationWarning alone is hidden by default.
        logger.warning(
            "TRAINWARDEN_PROTECT_MODE=audit is deprecated: it loads (and runs) what the "
            "policy refuses; set TRAINWARDEN_PROTECT_MODE=unsafe-audit"
        )
    try:
        protection = protect(
            allow=_split(env.get("TRAINWARDEN_PROTECT_ALLOW", "")),
            profiles=_split(env.get("TRAINWARDEN_PROTECT_PROFILES", "")),
            mode=mode,
        )
    except ConfigError as exc:
        raise ConfigError(f"TRAINWARDEN_PROTECT_*: {exc}") from exc
    return protection.enable()


def active_protection() -> Protection | None:
    """The innermost enabled protection, or ``None``."""
    return _STATE.current()


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


# --------------------------------------------------------------------------- patch state


class _State:
    """Enabled protections and the loader patches, behind one lock.

    The patches themselves live in :mod:`trainwarden.patching` (one registry for every patch
    trainwarden makes, so ``verify_runtime`` recognises them as ours by identity).
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.stack: list[Protection] = []
        self.patch_set: PatchSet | None = None

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
                self.patch_set = PatchSet(PURPOSE, _TARGETS).install()
            self.stack.append(protection)

    def remove(self, protection: Protection) -> None:
        with self.lock:
            # Out-of-order exits (threads, generators) remove the right entry, not the last.
            self.stack = [p for p in self.stack if p is not protection]
            if not self.stack and self.patch_set is not None:
                self.patch_set.uninstall()
                self.patch_set = None


_STATE = _State()


# --------------------------------------------------------------------------- wrappers


def _mark(wrapper: Any, original: Any) -> Any:
    mark(wrapper, original, PURPOSE)
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


# What protect() replaces. Each is patched once its top-level package has finished importing
# (``trigger``), so a module imported after protection was enabled is covered too.
_TARGETS: tuple[Target, ...] = (
    Target("pickle", "load", _wrap_pickle_load),
    Target("pickle", "loads", _wrap_pickle_loads),
    Target("pickle", "Unpickler", _wrap_unpickler),
    Target("torch", "load", _wrap_torch_load),
    Target("torch.serialization", "load", _wrap_torch_load, trigger="torch"),
    Target("numpy", "load", _wrap_numpy_load),
    Target("joblib", "load", _wrap_joblib_load),
    Target("joblib.numpy_pickle", "load", _wrap_joblib_load, trigger="joblib"),
)
