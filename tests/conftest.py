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


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--update-goldens`` rewrites the expected files under tests/golden/ instead of comparing."""
    parser.addoption(
        "--update-goldens",
        action="store_true",
        default=False,
        help="rewrite tests/golden/* from the current output instead of comparing with it",
    )


class Golden:
    """Compares text with a file under tests/golden/, or rewrites it with --update-goldens."""

    def __init__(self, root: Path, update: bool) -> None:
        self.root = root
        self.update = update

    def check(self, name: str, text: str) -> None:
        """Assert ``text`` equals ``tests/golden/<name>`` exactly (or write it)."""
        path = self.root / name
        if self.update:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return
        assert path.exists(), f"no golden file {path}: run pytest --update-goldens"
        expected = path.read_text(encoding="utf-8")
        assert text == expected, f"output differs from {path} (pytest --update-goldens rewrites it)"


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Golden:
    """The golden-file checker (see :class:`Golden`)."""
    return Golden(
        Path(__file__).parent / "golden", bool(request.config.getoption("--update-goldens"))
    )
