"""Fixtures shared by the whole suite: canaries for harmless attack payloads."""

from __future__ import annotations

from pathlib import Path

import pytest

from canary import Canary
from golden_files import Golden

__all__ = ["Canary", "canary"]


@pytest.fixture
def canary(tmp_path: Path) -> Canary:
    """A fresh canary path under the test's temporary directory."""
    return Canary(tmp_path / "canary-payload-ran")


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--update-goldens`` rewrites the expected files under tests/golden/ instead of comparing."""
    parser.addoption(
        "--update-goldens",
        action="store_true",
        default=False,
        help="rewrite tests/golden/* from the current output instead of comparing with it",
    )


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Golden:
    """The golden-file checker (see :class:`Golden`)."""
    return Golden(
        Path(__file__).parent / "golden", bool(request.config.getoption("--update-goldens"))
    )
