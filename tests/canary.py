"""The canary a harmless attack payload creates when (and only when) it runs.

A plain module (not conftest) so tests import it as `from canary import Canary` without
clashing with the conftest.py files of sub-directories.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Canary:
    """A file that a harmless attack payload creates when (and only when) it runs."""

    path: Path

    @property
    def shell_command(self) -> str:
        """A shell command that creates the canary."""
        return f"touch {self.path}"

    @property
    def python_code(self) -> str:
        """Python source that creates the canary."""
        return f"open({str(self.path)!r}, 'w').close()"

    def exists(self) -> bool:
        """Whether the payload has run."""
        return self.path.exists()

    def assert_absent(self) -> None:
        """Fail if the payload ran."""
        assert not self.path.exists(), f"payload executed: canary {self.path} exists"

    def assert_present(self) -> None:
        """Fail if the payload did not run (the attack is not real)."""
        assert self.path.exists(), f"payload did not execute: canary {self.path} is missing"

    def reset(self) -> None:
        """Remove the canary so a sample can be tried again."""
        self.path.unlink(missing_ok=True)
