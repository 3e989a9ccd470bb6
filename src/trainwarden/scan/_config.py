"""``[tool.trainwarden]`` in pyproject.toml: allow entries, profiles and limits, strictly read.

A typo in a security setting must not pass silently (``alow = [...]`` would leave the
allowlist empty and every file ``unknown``, or ``profile = [...]`` would look applied and
not be): unknown keys are a :class:`~trainwarden.errors.ConfigError`. Tables named after the
other commands (``[tool.trainwarden.env]``...) belong to them and are left alone.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainwarden.errors import ConfigError

__all__ = ["FileConfig", "find_pyproject", "read_config"]

#: Keys the scanner reads from ``[tool.trainwarden]``.
SCAN_KEYS = ("allow", "profiles", "limits")
#: Tables other commands own (read by them, never by the scanner).
OTHER_TABLES = ("env", "sign", "verify", "ledger", "guard", "run", "report", "drill", "load")


@dataclass(frozen=True, slots=True)
class FileConfig:
    """What ``[tool.trainwarden]`` of one pyproject.toml says (empty when there is none).

    Attributes:
        path: the file read, or None when no pyproject.toml was found.
        profiles: ``profiles = [...]``.
        allow: ``allow = [...]``.
        limits: ``[tool.trainwarden.limits]``: limit name -> value.
    """

    path: Path | None = None
    profiles: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()
    limits: Mapping[str, int | float] = field(default_factory=dict)


def find_pyproject(start: Path) -> Path | None:
    """``start`` if it is a file, else the nearest pyproject.toml in it or above it."""
    if start.is_file():
        return start
    here = start.resolve()
    for directory in (here, *here.parents):
        candidate = directory / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def read_config(start: Path) -> FileConfig:
    """Read ``[tool.trainwarden]`` of the pyproject.toml found from ``start``.

    Raises:
        ConfigError: the file cannot be read or parsed, or the section is malformed.
    """
    found = find_pyproject(start)
    if found is None:
        return FileConfig()
    section = _read_section(found)
    unknown = sorted(
        key for key in section if key not in SCAN_KEYS and not _other_table(key, section)
    )
    if unknown:
        raise ConfigError(
            f"{found}: unknown key(s) in [tool.trainwarden]: {', '.join(unknown)} (the scanner "
            f"reads {', '.join(SCAN_KEYS)}; tables {', '.join(OTHER_TABLES)} belong to other "
            "commands)"
        )
    limits = section.get("limits", {})
    if not isinstance(limits, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in limits.values()
    ):
        raise ConfigError(
            f"{found}: [tool.trainwarden.limits] must be a table of numbers "
            "(e.g. max_seconds = 120)"
        )
    return FileConfig(
        path=found,
        profiles=tuple(_string_list(section, "profiles", found)),
        allow=tuple(_string_list(section, "allow", found)),
        limits=dict(limits),
    )


def _other_table(key: str, section: Mapping[str, Any]) -> bool:
    return key in OTHER_TABLES and isinstance(section[key], dict)


def _read_section(path: Path) -> Mapping[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on Python 3.10 only
        try:
            import tomli as tomllib
        except ImportError:
            if b"[tool.trainwarden" not in raw:
                return {}
            raise ConfigError(
                f"{path} has a [tool.trainwarden] section but no TOML parser is installed "
                "(pip install tomli)"
            ) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    tool = data.get("tool", {})
    section = tool.get("trainwarden", {}) if isinstance(tool, dict) else {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [tool.trainwarden] must be a table")
    return section


def _string_list(section: Mapping[str, Any], key: str, path: Path) -> list[str]:
    value = section.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{path}: [tool.trainwarden] {key} must be a list of strings")
    return value
