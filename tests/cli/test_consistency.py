"""One CLI: the same flag means the same in every command, every JSON output has a version, and
parsing one command pays for that command only.

The tables walk the real parser, so a command or option added later is checked too (or the
table must name it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_world import COMMAND_ARGV, World, make_world

from trainwarden.cli import _COMMANDS, build_parser, main
from trainwarden.cli._common import jobs_arg, path_arg


def _commands(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
        return
    for name, sub in subs[0].choices.items():
        yield from _commands(sub, (*prefix, name))


COMMAND_PARSERS = dict(_commands(build_parser()))


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {flag: a for a in parser._actions for flag in a.option_strings}


# -- parsing one command imports one command group --------------------------------------


def test_the_command_table_names_the_module_of_every_command() -> None:
    assert {path[0] for path in COMMAND_PARSERS} == set(_COMMANDS)
    for name in _COMMANDS:
        sub = next(
            a for a in build_parser(name)._actions if isinstance(a, argparse._SubParsersAction)
        )
        assert name in sub.choices, f"build_parser({name!r}) does not register it"


def _imported_after(code: str) -> set[str]:
    probe = (
        "import contextlib, io, sys\n"
        f"{code}\n"
        "print(' '.join(sorted(sys.modules)), file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    return set(proc.stderr.split())


HEAVY = {"rich", "cryptography", "torch", "numpy"}


def test_parsing_scan_imports_neither_other_commands_nor_heavy_libraries() -> None:
    modules = _imported_after(
        "from trainwarden.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['scan', '--help']) == 0"
    )
    assert "trainwarden.cli.scan" in modules
    others = {f"trainwarden.cli.{m}" for m in set(_COMMANDS.values()) - {"scan"}}
    assert not modules & (HEAVY | others | {"trainwarden.drill", "trainwarden.scan"})


def test_building_every_command_imports_no_heavy_library() -> None:
    modules = _imported_after("from trainwarden.cli import build_parser\nbuild_parser()")
    assert not modules & HEAVY


# -- the same flag, the same meaning -------------------------------------------------------


def test_common_flags_are_defined_once() -> None:
    _check_common_flags(COMMAND_PARSERS)


def _check_common_flags(parsers: dict[tuple[str, ...], argparse.ArgumentParser]) -> None:
    for path, parser in parsers.items():
        where = " ".join(path)
        options = _options(parser)
        visible = {f: a for f, a in options.items() if a.help != argparse.SUPPRESS}
        if "--output" in visible and path != ("run",):
            output = visible["--output"]
            assert output.option_strings == ["--output", "-o"], where
            assert (output.type, output.metavar) == (path_arg, "FILE"), where
        if "--format" in visible:
            choices = list(visible["--format"].choices or ())
            assert choices[0] == "text", where
            assert set(choices) <= {"text", "json", "sarif"}, where
            assert "--output" in visible, f"{where}: --format without --output"
        if "--jobs" in options:
            assert options["--jobs"].option_strings == ["--jobs", "-j"], where
            assert options["--jobs"].type is jobs_arg, where
        if "--no-progress" in options:
            assert isinstance(options["--no-progress"], argparse._StoreTrueAction), where
        for flag, action in options.items():
            if flag.endswith("pubkey"):
                # Trusted public keys: a path (file or directory of *.pub), repeatable except
                # where exactly one key can sign (an env lock given to `run`).
                assert action.type is path_arg, (where, flag)
                assert action.metavar == "PUB", (where, flag)
            if flag == "--key" and action.help != argparse.SUPPRESS:
                assert action.metavar == "KEY", f"{where}: a visible --key is a private key"
            if flag == "--key" and action.help == argparse.SUPPRESS:
                assert action.dest == "pubkey", f"{where}: a hidden --key is --pubkey's alias"


# (command, its other arguments, old spelling, new spelling): the old one still works, is
# hidden from --help, and fills the same option as the new one.
ALIASES = [
    (("verify",), ["x"], "--key", "--pubkey"),
    (("verify",), ["x"], "--ledger-key", "--ledger-pubkey"),
    (("ledger", "verify"), ["x"], "--key", "--pubkey"),
    (("ledger", "verify"), ["x"], "--seal-key", "--seal-pubkey"),
    (("ledger", "seal"), ["x", "--key", "k"], "--writer-key", "--pubkey"),
    (("ledger", "seal"), ["x", "--key", "k"], "--seal-key", "--seal-pubkey"),
    (("provenance", "verify"), ["x"], "--key", "--pubkey"),
    (("report",), ["x"], "--key", "--pubkey"),
    (("report",), ["x"], "--seal-key", "--seal-pubkey"),
    (("env", "verify"), [], "--key", "--pubkey"),
    (("env", "diff"), ["a", "b"], "--key", "--pubkey"),
]


@pytest.mark.parametrize(
    ("command", "rest", "old", "new"), ALIASES, ids=[f"{' '.join(c)} {o}" for c, _, o, _ in ALIASES]
)
def test_old_key_spellings_are_hidden_aliases(
    command: tuple[str, ...],
    rest: list[str],
    old: str,
    new: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dest = new.lstrip("-").replace("-", "_")
    args = build_parser(command[0]).parse_args([*command, *rest, old, "a.pub", new, "b.pub"])
    assert getattr(args, dest) == [Path("a.pub"), Path("b.pub")]
    assert main([*command, "--help"]) == 0
    help_text = capsys.readouterr().out
    assert f"{new} PUB" in help_text
    assert f"{old} " not in help_text
    assert f"{old}," not in help_text


def test_run_renamed_flags_keep_their_old_spelling() -> None:
    parser = build_parser("run")
    args = parser.parse_args(
        ["run", "--lock-key", "l.pub", "--output", "a.json", "--job-output", "b.json", "--", "x"]
    )
    assert args.lock_pubkey_alias == Path("l.pub")
    assert args.job_output == [Path("a.json"), Path("b.json")]


# -- every JSON output carries schema_version -----------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("cli-world"))


def _has_json(parser: argparse.ArgumentParser) -> bool:
    fmt = _options(parser).get("--format")
    return fmt is not None and "json" in (fmt.choices or ())


def test_the_command_table_names_every_command_with_an_output() -> None:
    with_output = {p for p, parser in COMMAND_PARSERS.items() if "--output" in _options(parser)}
    assert with_output - {("run",)} == set(COMMAND_ARGV)  # run's --output is a hidden alias


JSON_COMMANDS = [
    c for c, argv in COMMAND_ARGV.items() if argv is not None and _has_json(COMMAND_PARSERS[c])
]


@pytest.mark.parametrize("command", JSON_COMMANDS, ids=" ".join)
def test_every_json_output_carries_schema_version(
    command: tuple[str, ...],
    world: World,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    build = COMMAND_ARGV[command]
    assert build is not None
    capsys.readouterr()
    code = main([*build(world, tmp_path), "--format", "json"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert json.loads(out)["schema_version"] == 1
