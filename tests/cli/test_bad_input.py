"""Every command, on every kind of bad input: a clear message and exit 1 or 2, never a traceback.

The input kinds are what a mistyped or hostile path can be: missing, empty, a directory, a FIFO
(must not block), a symlink loop, random bytes. Each command group's own tests go deeper; this
one walks the whole CLI so that a command added later is covered too (the table must name it).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cli_world import COMMAND_ARGV, FAST_RUN, PY, World, make_world

from trainwarden.cli import build_parser, main

KINDS = ("missing", "empty", "directory", "fifo", "loop", "garbage")


def _make(kind: str, base: Path) -> Path:
    path = base / f"bad-{kind}.pt"  # named like a model: scan may not call it plain data
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "directory":
        path.mkdir()
        (path / "junk").write_bytes(os.urandom(64))
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "loop":
        path.symlink_to(path)
    elif kind == "garbage":
        path.write_bytes(os.urandom(4096))
    return path


# Command -> builder of argv from a bad path and a scratch dir. Keys are the command paths the
# parser knows; a command missing here fails test_table_covers_every_command.
Builder = Callable[[Path, Path], list[str]]
COMMANDS: dict[tuple[str, ...], Builder | None] = {
    ("drill",): None,  # takes no input path; tests/unit/drill runs it
    ("demo",): None,  # takes no input; runs the bundled examples
    ("scan",): lambda bad, tmp: ["scan", str(bad)],
    ("convert",): lambda bad, tmp: ["convert", str(bad), str(tmp / "out.safetensors")],
    ("env", "verify"): lambda bad, tmp: ["env", "verify", "--lock", str(bad)],
    ("env", "snapshot"): lambda bad, tmp: [
        "env",
        "snapshot",
        "--key",
        str(bad),
        "--lock",
        str(tmp / "env.lock"),
    ],
    ("env", "diff"): lambda bad, tmp: ["env", "diff", str(bad), str(bad)],
    ("keygen",): lambda bad, tmp: ["keygen", str(bad)],
    ("sign",): lambda bad, tmp: ["sign", str(bad), "--key", str(bad)],
    ("verify",): lambda bad, tmp: ["verify", str(bad), "--key", str(bad)],
    ("ledger", "init"): lambda bad, tmp: ["ledger", "init", str(bad)],
    ("ledger", "append"): lambda bad, tmp: [
        "ledger",
        "append",
        str(bad),
        "--key",
        str(bad),
        "--event",
        "x.y",
    ],
    ("ledger", "seal"): lambda bad, tmp: ["ledger", "seal", str(bad), "--key", str(bad)],
    ("ledger", "verify"): lambda bad, tmp: ["ledger", "verify", str(bad)],
    ("ledger", "show"): lambda bad, tmp: ["ledger", "show", str(bad)],
    ("run",): lambda bad, tmp: [
        "run",
        "--key",
        str(bad),
        "--run-dir",
        str(tmp / "rd"),
        "--",
        "python3",
        "-c",
        "pass",
    ],
    ("provenance", "verify"): lambda bad, tmp: [
        "provenance",
        "verify",
        str(bad),
        "--key",
        str(bad),
    ],
    ("provenance", "show"): lambda bad, tmp: ["provenance", "show", str(bad)],
    ("report",): lambda bad, tmp: ["report", str(bad), "-o", str(tmp / "r.html")],
}
# (command, kind) pairs where the "bad" path is a fine input: a new key or ledger may be
# created at a path that does not exist yet; a directory of plain data files scans safe.
ACCEPTABLE_SUCCESS = {
    (("keygen",), "missing"),
    (("ledger", "init"), "missing"),
    (("scan",), "directory"),
}


def _commands(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[str, ...]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix
        return
    for name, sub in subs[0].choices.items():
        yield from _commands(sub, (*prefix, name))


def test_table_covers_every_command() -> None:
    assert sorted(_commands(build_parser())) == sorted(COMMANDS)


@contextlib.contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"command blocked for {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", [c for c, b in COMMANDS.items() if b is not None], ids=" ".join)
def test_bad_input_is_a_clear_error(
    command: tuple[str, ...],
    kind: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NO_COLOR", "1")
    bad = _make(kind, tmp_path)
    builder = COMMANDS[command]
    assert builder is not None
    argv = builder(bad, tmp_path)
    with _deadline(60):
        code = main([*argv, *(["--no-progress"] if command == ("scan",) else [])])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    if (command, kind) in ACCEPTABLE_SUCCESS:
        assert code == 0
        return
    assert code in (1, 2), (argv, code, out, err)
    assert err.strip() or out.strip(), "a failure must say why"


def test_output_over_a_device_is_written_into_not_replaced(tmp_path: Path) -> None:
    # As root, renaming a report over a device node would replace the node for everybody.
    null = tmp_path / "null"
    os.mknod(null, 0o666 | 0o020000, os.makedev(1, 3))  # a private /dev/null
    model = tmp_path / "model.json"
    model.write_text("{}")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["scan", str(model), "-o", str(null), "--format", "json"]) == 0
    assert null.is_char_device()


# -- every option that names a key, on every kind of bad path --------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("bad-input-world"))


WorldArgv = Callable[[Path, World], list[str]]
# (command, option) -> argv with the option given the bad path and every other input good.
# Options named in COMMANDS above (sign --key, ledger append --key...) are covered there.
KEY_OPTIONS: dict[tuple[tuple[str, ...], str], WorldArgv] = {
    (("verify",), "--pubkey"): lambda bad, w: ["verify", str(w["ckpt"]), "--pubkey", str(bad)],
    (("verify",), "--ledger-pubkey"): lambda bad, w: [
        *("verify", str(w["ckpt"]), "--pubkey", str(w["pub"]), "--ledger", str(w["ledger"])),
        *("--ledger-pubkey", str(bad)),
    ],
    (("env", "verify"), "--pubkey"): lambda bad, w: [
        *("env", "verify", "--path", str(w["site"]), "--lock", str(w["lock"])),
        *("--pubkey", str(bad)),
    ],
    (("env", "diff"), "--pubkey"): lambda bad, w: [
        *("env", "diff", str(w["lock"]), str(w["lock"]), "--pubkey", str(bad)),
    ],
    (("ledger", "seal"), "--pubkey"): lambda bad, w: [
        *("ledger", "seal", str(w["ledger"]), "--key", str(w["key"]), "--pubkey", str(bad)),
    ],
    (("ledger", "seal"), "--seal-pubkey"): lambda bad, w: [
        *("ledger", "seal", str(w["ledger"]), "--key", str(w["key"])),
        *("--pubkey", str(w["pub"]), "--seal-pubkey", str(bad)),
    ],
    (("ledger", "verify"), "--pubkey"): lambda bad, w: [
        *("ledger", "verify", str(w["ledger"]), "--pubkey", str(bad)),
    ],
    (("ledger", "verify"), "--seal-pubkey"): lambda bad, w: [
        *("ledger", "verify", str(w["ledger"]), "--pubkey", str(w["pub"])),
        *("--seal-pubkey", str(bad)),
    ],
    (("provenance", "verify"), "--pubkey"): lambda bad, w: [
        *("provenance", "verify", str(w["provenance"]), "--pubkey", str(bad)),
    ],
    (("report",), "--pubkey"): lambda bad, w: [
        *("report", str(w["run_dir"]), "-o", str(w["root"] / "r.html"), "--pubkey", str(bad)),
    ],
    (("report",), "--seal-pubkey"): lambda bad, w: [
        *("report", str(w["run_dir"]), "-o", str(w["root"] / "r.html")),
        *("--seal-pubkey", str(bad)),
    ],
    (("run",), "--lock-pubkey"): lambda bad, w: [
        *("run", *FAST_RUN, "--run-dir", str(w["root"] / "rd"), "--lock", str(w["lock"])),
        *("--lock-pubkey", str(bad), "--", PY, "-c", "pass"),
    ],
}


def test_key_table_covers_every_public_key_option() -> None:
    options = {
        (path, flag)
        for path in _commands(build_parser())
        for flag, action in _flags(build_parser(), path).items()
        if flag.endswith("pubkey") and action.help != argparse.SUPPRESS
    }
    assert options == set(KEY_OPTIONS)


def _flags(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> dict[str, argparse.Action]:
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return {flag: a for a in parser._actions for flag in a.option_strings}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("option", list(KEY_OPTIONS), ids=lambda o: f"{' '.join(o[0])} {o[1]}")
def test_a_bad_key_is_a_clear_error_naming_the_option(
    option: tuple[tuple[str, ...], str],
    kind: str,
    world: World,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = _make(kind, tmp_path)
    with _deadline(60):
        code = main(KEY_OPTIONS[option](bad, world))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert code == 2, (option, kind, out, err)
    assert f"trainwarden: error: {option[1]}: " in err, err
    assert not (world["root"] / "rd").exists()  # never launched


# -- every report written over something that is not a file ---------------------------------

OUTPUT_COMMANDS = [c for c, argv in COMMAND_ARGV.items() if argv is not None]


@pytest.mark.parametrize("kind", ["directory", "fifo"])
@pytest.mark.parametrize("command", OUTPUT_COMMANDS, ids=" ".join)
def test_output_that_is_no_file_is_a_clear_error(
    command: tuple[str, ...],
    kind: str,
    world: World,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = _make(kind, tmp_path)  # a FIFO nobody reads: an error, not a hang
    build = COMMAND_ARGV[command]
    assert build is not None
    with _deadline(60):
        code = main([*build(world, tmp_path), "-o", str(bad)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert code == 2, (command, kind, out, err)
    assert "trainwarden: error: " in err
    if kind == "directory":
        assert sorted(p.name for p in bad.iterdir()) == ["junk"]  # nothing written into it
        assert "is a directory" in err


@pytest.mark.parametrize("command", [*OUTPUT_COMMANDS, ("drill",)], ids=" ".join)
def test_output_in_a_missing_directory_is_refused_before_any_work(
    command: tuple[str, ...],
    world: World,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A long command (a drill, the report of a large run) must not do all its work and only
    # then find it cannot write: the missing directory is named up front.
    bad = tmp_path / "no-such-dir" / "out"
    build = COMMAND_ARGV.get(command)
    argv = [*build(world, tmp_path)] if build is not None else list(command)
    flags = ["-o", str(bad)] if command != ("drill",) else ["--report", str(bad)]
    with _deadline(60):
        code = main([*argv, *flags])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert code == 2, (command, out, err)
    assert "no directory" in err, err
    assert not bad.parent.exists()
    assert not (world["root"] / "rd").exists()  # a run is never launched
