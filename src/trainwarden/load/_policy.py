"""Turn the loaders' ``policy=`` / ``allow=`` / ``profiles=`` arguments into one Policy."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

from trainwarden.errors import ConfigError

if TYPE_CHECKING:
    from trainwarden.scan import Policy

__all__ = ["DEPRECATED_AUDIT", "MODES", "check_mode", "resolve_policy"]

#: ``"enforce"`` refuses; ``"unsafe-audit"`` logs a refusal and loads anyway (the refused code
#: runs: the name says so).
MODES = ("enforce", "unsafe-audit")
#: The old name of ``"unsafe-audit"``, still accepted with a DeprecationWarning.
DEPRECATED_AUDIT = "audit"


def resolve_policy(
    policy: Policy | None, allow: Sequence[str] | str, profiles: Sequence[str] | str
) -> Policy:
    """Return ``policy`` extended with ``allow``, or the default policy with both lists.

    Raises:
        ConfigError: ``profiles`` given together with a ready-made policy, or a bad name.
    """
    from trainwarden.scan import Policy

    # A single string is one name, not a sequence of one-letter names.
    allow_names = (allow,) if isinstance(allow, str) else tuple(allow)
    profile_names = (profiles,) if isinstance(profiles, str) else tuple(profiles)
    if policy is None:
        if all(isinstance(n, str) for n in (*allow_names, *profile_names)):
            # Policies are immutable: every load with the same lists can share one.
            return _default_policy(allow_names, profile_names)
        return Policy.default(profiles=profile_names, allow=allow_names)
    if profile_names:
        raise ConfigError("give profiles either inside policy= or as profiles=, not both")
    return policy.with_allowed(allow_names) if allow_names else policy


@functools.lru_cache(maxsize=64)
def _default_policy(allow: tuple[str, ...], profiles: tuple[str, ...]) -> Policy:
    # Invalid names raise ConfigError, which lru_cache does not cache: they raise every time.
    from trainwarden.scan import Policy

    return Policy.default(profiles=profiles, allow=allow)


def check_mode(mode: str, *, stacklevel: int = 3) -> str:
    """Validate a protection mode and return its current name.

    ``"audit"`` (the old name of ``"unsafe-audit"``) is accepted with a DeprecationWarning:
    a mode that lets refused pickles run must say so where it is chosen.

    Raises:
        ConfigError: ``mode`` is neither ``"enforce"`` nor ``"unsafe-audit"``.
    """
    if mode == DEPRECATED_AUDIT:
        warnings.warn(
            "protection mode 'audit' is deprecated: it loads (and runs) what the policy "
            "refuses; call it 'unsafe-audit'",
            DeprecationWarning,
            stacklevel=stacklevel,
        )
        return MODES[1]
    if not isinstance(mode, str) or mode not in MODES:
        raise ConfigError(f"mode must be 'enforce' or 'unsafe-audit', not {mode!r}")
    return mode
