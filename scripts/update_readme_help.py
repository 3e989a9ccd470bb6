"""Rewrite the ``--help`` blocks of README.md from the real CLI.

tests/cli/test_readme.py checks that they stay current.

A block is a fenced ``console`` code block whose first line is ``$ trainwarden ... --help``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "cli"))

from readme_blocks import README, help_blocks, help_text


def main() -> int:
    text = README.read_text(encoding="utf-8")
    for block in reversed(help_blocks(text)):
        fresh = f"$ {block.command}\n{help_text(block.argv)}"
        text = text[: block.start] + fresh + text[block.end :]
    README.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
