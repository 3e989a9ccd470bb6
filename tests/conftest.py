"""Fixtures shared by the whole suite: canaries for harmless attack payloads."""

from __future__ import annotations

from pathlib import Path

import pytest

from canary import Canary

__all__ = ["Canary", "canary"]


@pytest.fixture
def canary(tmp_path: Path) -> Canary:
    """A fresh canary path under the test's temporary directory."""
    return Canary(tmp_path / "canary-payload-ran")
