"""Turn the loaders' ``policy=`` / ``allow=`` / ``profiles=`` arguments into one Policy."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

from trainwarden.errors import ConfigError

if TYPE_CHECKING:
    from trainwarden.scan import Policy

__all__ = ["MODES", "check_mode", "resolve_policy"]

MODES = ("enforce", "audit")


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


def check_mode(mode: str) -> str:
    """Validate a protection mode.

    Raises:
        ConfigError: ``mode`` is neither ``"enforce"`` nor ``"audit"``.
    """
    if mode not in MODES:
        raise ConfigError(f"mode must be 'enforce' or 'audit', not {mode!r}")
    return mode
