"""The README's commands and ``--help`` output stay true."""

from __future__ import annotations

import re

import pytest
from readme_blocks import README, help_blocks, help_text

TEXT = README.read_text(encoding="utf-8")
BLOCKS = help_blocks(TEXT)


def test_readme_shows_help_blocks() -> None:
    assert len(BLOCKS) >= 2, "README must show real --help output"


@pytest.mark.parametrize("block", BLOCKS, ids=[b.command for b in BLOCKS])
def test_help_block_is_current(block: object) -> None:
    from readme_blocks import HelpBlock

    assert isinstance(block, HelpBlock)
    assert block.shown == help_text(block.argv), (
        "README --help output is stale: run `python scripts/update_readme_help.py`"
    )


def test_readme_starts_with_the_two_commands() -> None:
    fences = re.findall(r"```(?:sh|bash|console)\n(.*?)```", TEXT, re.DOTALL)
    first, second = fences[0].strip(), fences[1].strip()
    assert "trainwarden drill" in first
    assert "torch==2.13.0" in first
    assert "pytest" in second
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    # CI runs the README's test command.
    assert ".venv/bin/python -m pytest" in second
    assert ".venv/bin/python -m pytest" in ci
