"""Pre-flight policy: for each kind of result, ignore it, warn, or refuse to launch.

Defaults refuse what would hand the job to an attacker outright (a checkpoint the scanner
finds unsafe, an environment whose files differ from their record) and warn about what is
merely unproven (unknown verdicts, writable paths). A policy file (TOML) or ``--on
CHECK=ACTION`` changes any of them; an unknown check or action is an error, never ignored.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainwarden._fs import read_regular
from trainwarden.errors import ConfigError

__all__ = ["ACTIONS", "CHECKS", "DEFAULT_ACTIONS", "Policy", "load_policy"]

ACTIONS = ("ignore", "warn", "refuse")
#: Every check and its default action (see docs/run.md, "Policy").
DEFAULT_ACTIONS: Mapping[str, str] = {
    "env-unsafe": "refuse",
    "env-unknown": "warn",
    "env-error": "warn",
    "scan-unsafe": "refuse",
    "scan-unknown": "warn",
    "scan-error": "warn",
    "access": "warn",
    "access-incomplete": "warn",
    "code-dirty": "ignore",
    "code-unknown": "ignore",
}
CHECKS = tuple(DEFAULT_ACTIONS)


@dataclass(frozen=True, slots=True)
class Policy:
    """Actions per check, and the writers the access audit should accept.

    Attributes:
        actions: ``check -> action`` for every check in :data:`CHECKS`.
        trusted_users: Users allowed to write trusted paths (e.g. a deploy account).
        trusted_groups: Groups allowed to write trusted paths.
        source: Where the policy came from (``default``, a file).
    """

    actions: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_ACTIONS))
    trusted_users: tuple[str, ...] = ()
    trusted_groups: tuple[str, ...] = ()
    source: str = "default"

    def action(self, check: str) -> str:
        """The action for ``check``."""
        return self.actions.get(check, "warn")

    def with_overrides(self, overrides: Iterable[str]) -> Policy:
        """Apply ``CHECK=ACTION`` strings (``--on``).

        Raises:
            ConfigError: A malformed override, unknown check or action.
        """
        actions = dict(self.actions)
        for item in overrides:
            check, sep, action = item.partition("=")
            check, action = check.strip(), action.strip()
            if not sep:
                raise ConfigError(f"--on {item!r}: expected CHECK=ACTION, e.g. access=refuse")
            _check_pair(check, action, where="--on")
            actions[check] = action
        return Policy(actions, self.trusted_users, self.trusted_groups, self.source)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (recorded in the provenance's internal parameters)."""
        return {
            "actions": dict(sorted(self.actions.items())),
            "trusted_users": list(self.trusted_users),
            "trusted_groups": list(self.trusted_groups),
            "source": self.source,
        }


def _check_pair(check: str, action: str, *, where: str) -> None:
    if check not in DEFAULT_ACTIONS:
        raise ConfigError(f"{where}: unknown check {check!r}; checks are {', '.join(CHECKS)}")
    if action not in ACTIONS:
        raise ConfigError(
            f"{where}: unknown action {action!r} for {check}; use ignore, warn or refuse"
        )


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read a policy file (TOML).

    For example::

        [policy]
        access = "refuse"
        scan-unknown = "refuse"

        [access]
        trusted-users = ["svc-deploy"]
        trusted-groups = ["ml-platform"]

    Raises:
        ConfigError: The file is not TOML, or names an unknown check, action or key.
        InputError: The file cannot be read.
    """
    tomllib = toml_module()
    data = read_regular(path, limit=1 << 20, what="policy file")
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"policy file {path} is not valid TOML: {exc}") from exc
    unknown = set(doc) - {"policy", "access"}
    if unknown:
        raise ConfigError(f"policy file {path}: unknown table(s) {', '.join(sorted(unknown))}")
    actions = dict(DEFAULT_ACTIONS)
    table = doc.get("policy", {})
    if not isinstance(table, dict):
        raise ConfigError(f"policy file {path}: [policy] must be a table")
    for check, action in table.items():
        if not isinstance(action, str):
            raise ConfigError(f"policy file {path}: {check} must be a string")
        _check_pair(check, action, where=f"policy file {path}")
        actions[check] = action
    access = doc.get("access", {})
    if not isinstance(access, dict) or set(access) - {"trusted-users", "trusted-groups"}:
        raise ConfigError(
            f"policy file {path}: [access] takes only trusted-users and trusted-groups"
        )
    users = _names(access.get("trusted-users", []), path, "trusted-users")
    groups = _names(access.get("trusted-groups", []), path, "trusted-groups")
    return Policy(actions, users, groups, str(Path(path)))


def toml_module() -> Any:
    """``tomllib`` (Python 3.11+) or ``tomli`` (3.10).

    Raises:
        ConfigError: Python 3.10 without ``tomli``.
    """
    import importlib

    name = "tomllib" if sys.version_info >= (3, 11) else "tomli"
    try:
        return importlib.import_module(name)
    except ImportError:  # pragma: no cover - Python 3.10 without tomli
        raise ConfigError("reading TOML on Python 3.10 needs tomli (pip install tomli)") from None


def _names(value: Any, path: str | os.PathLike[str], key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"policy file {path}: {key} must be a list of names")
    return tuple(value)
