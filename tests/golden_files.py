"""Golden-file comparison (a plain module, like canary.py, so tests import it by name)."""

from __future__ import annotations

from pathlib import Path


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
