"""Helpers for the env tests: the venv handle and a canary type (no conftest imports)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class CanaryLike(Protocol):
    """What the shared ``canary`` fixture provides."""

    path: Path

    @property
    def python_code(self) -> str: ...

    def exists(self) -> bool: ...

    def assert_absent(self) -> None: ...

    def assert_present(self) -> None: ...


@dataclass(frozen=True)
class Venv:
    """A virtual environment made by `python -m venv`, with real wheels installed by pip."""

    root: Path
    python: Path
    site: Path

    def run(self, code: str, **env: str) -> subprocess.CompletedProcess[str]:
        """Run ``code`` with this environment's interpreter (isolated from ours)."""
        environ = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        environ.update(env)
        return subprocess.run(
            [str(self.python), "-c", code],
            capture_output=True,
            text=True,
            env=environ,
            timeout=60,
            check=False,
        )
