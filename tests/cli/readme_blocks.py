"""Find the ``$ trainwarden ... --help`` blocks of README.md and produce the real help text."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
_BLOCK = re.compile(r"```console\n(\$ (trainwarden [^\n]*--help)\n.*?)```", re.DOTALL)


@dataclass(frozen=True)
class HelpBlock:
    command: str
    argv: list[str]
    shown: str
    start: int
    end: int


def help_blocks(text: str) -> list[HelpBlock]:
    blocks = []
    for match in _BLOCK.finditer(text):
        command = match.group(2)
        body = match.group(1)
        shown = body.split("\n", 1)[1]
        blocks.append(
            HelpBlock(command, shlex.split(command)[1:], shown, match.start(1), match.end(1))
        )
    return blocks


def help_text(argv: list[str]) -> str:
    from trainwarden.cli import main

    out = io.StringIO()
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        with contextlib.redirect_stdout(out):
            code = main(argv)
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old
    assert code == 0, f"{argv} exited {code}"
    return out.getvalue()
