"""The helpers every command shares (``trainwarden.cli._common``): progress, keys, output."""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path

import pytest

from trainwarden.cli import _common
from trainwarden.cli._common import (
    Progress,
    check_output,
    jobs_arg,
    load_private_key,
    load_public_keys,
    path_arg,
    write_output,
)
from trainwarden.errors import ConfigError, InputError
from trainwarden.keys import generate_key


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


# -- progress ---------------------------------------------------------------------------


def test_plain_lines_start_after_a_few_seconds_then_come_every_few_seconds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    clock = [0.0]
    with Progress("scan", enabled=True, unit="files", clock=lambda: clock[0]) as progress:
        for _ in range(40):  # one file every 0.5 s for 20 s
            clock[0] += 0.5
            progress.update(advance=1, message="a.pt")
    lines = capsys.readouterr().err.splitlines()
    # Nothing in the first 5 s, then a line at 5, 10, 15 and 20 s: never one per file.
    assert lines == [
        "trainwarden: scan: 10 files, a.pt, 5 s",
        "trainwarden: scan: 20 files, a.pt, 10 s",
        "trainwarden: scan: 30 files, a.pt, 15 s",
        "trainwarden: scan: 40 files, a.pt, 20 s",
    ]


def test_quick_work_prints_nothing_and_no_progress_prints_nothing_ever(
    capsys: pytest.CaptureFixture[str],
) -> None:
    clock = [0.0]
    with Progress("x", enabled=True, clock=lambda: clock[0]) as quick:
        quick.update(message="done at once")
    with Progress("x", enabled=False, clock=lambda: clock[0]) as off:
        clock[0] += 60
        off.update(done=1, total=2, message="late")
        off.note("a warning nobody asked for")
    assert capsys.readouterr().err == ""


def test_amounts_bytes_counts_and_shares(capsys: pytest.CaptureFixture[str]) -> None:
    clock = [0.0]
    with Progress("", enabled=True, unit="files", clock=lambda: clock[0]) as progress:
        clock[0] += 5
        progress.update(done=3, total=12, message="reading telemetry")
    with Progress("hashing", enabled=True, unit="bytes", clock=lambda: clock[0]) as hashing:
        clock[0] += 10
        hashing.update(done=5 << 20)  # total unknown
    assert capsys.readouterr().err.splitlines() == [
        "trainwarden: 3 of 12 files (25%), reading telemetry, 5 s",
        "trainwarden: hashing: 5.0 MiB at 512.0 KiB/s, 10 s",
    ]


def test_untrusted_names_cannot_forge_lines(capsys: pytest.CaptureFixture[str]) -> None:
    clock = [0.0]
    with Progress("scan", enabled=True, clock=lambda: clock[0]) as progress:
        clock[0] += 10
        progress.update(message="x.pt\nSAFE  other.pt\x1b[2J")
        progress.note("preflight: evil\rname")
    err = capsys.readouterr().err
    assert err.count("\n") == 2
    assert "\x1b" not in err
    assert "\\n" in err
    assert "\\r" in err


def test_notes_always_show_and_a_broken_stderr_never_fails_the_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(sys, "stderr", Broken())
    clock = [0.0]
    with Progress("x", enabled=True, clock=lambda: clock[0]) as progress:
        progress.note("first")  # fails quietly
        clock[0] += 30
        progress.update(message="then nothing more is tried")
        assert not progress.enabled


def test_on_a_terminal_a_live_display_once_the_work_takes_a_moment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setenv("TERM", "xterm")
    clock = [0.0]
    with Progress("signing ckpt", enabled=True, unit="bytes", clock=lambda: clock[0]) as shown:
        assert shown.terminal
        shown.update(done=1, total=10)
        assert shown._live is None  # not yet: quick commands do not flicker
        clock[0] += 2
        shown.update(done=5 << 20, total=10 << 20)
        assert shown._live is not None
        shown.note("a warning", style="yellow")
        shown.stop()  # cleared before another program writes to the terminal
        assert shown._live is None
        shown.update(done=6 << 20)
        assert shown._live is not None
    out = terminal.getvalue()
    assert "a warning" in out
    assert "signing ckpt" in out


def test_a_dumb_terminal_gets_plain_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", _Terminal())
    monkeypatch.setenv("TERM", "dumb")
    assert not Progress("x", enabled=True).terminal


# -- argument types --------------------------------------------------------------------


@pytest.mark.parametrize("text", ["0", "-1", "1025", "two", "1.5", ""])
def test_jobs_is_a_worker_count(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        jobs_arg(text)


def test_jobs_and_paths_accepted() -> None:
    assert jobs_arg("1") == 1
    assert jobs_arg("1024") == 1024
    assert path_arg("-") == Path("-")
    with pytest.raises(argparse.ArgumentTypeError, match="empty path"):
        path_arg("")


# -- output -------------------------------------------------------------------------------


def test_output_over_an_input_or_inside_one_or_on_a_directory_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "m.pt"
    model.write_bytes(b"x")
    for output in (model, tmp_path / "report.txt", tmp_path):
        with pytest.raises(InputError):
            check_output(output, [tmp_path if output != model else model, None])
    elsewhere = tmp_path / "out"
    elsewhere.mkdir()
    with pytest.raises(InputError, match="is a directory"):
        check_output(elsewhere, [model])
    check_output(elsewhere / "r.txt", [model, None])
    check_output(None, [model])
    check_output("-", [model])


def test_names_that_are_not_utf8_keep_json_valid(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    # A file name with byte 0xff reaches Python as the lone surrogate U+DCFF: written as an
    # escape, not a crash, whatever the locale, and the JSON still parses.
    name = os.fsdecode(b"model-\xff.pt")
    text = _common.dumps({"path": name})
    write_output(text, None)
    assert json.loads(capsysbinary.readouterr().out)["path"] == name
    out = tmp_path / "r.json"
    write_output(text, out)
    assert json.loads(out.read_text(encoding="utf-8"))["path"] == name


# -- keys ---------------------------------------------------------------------------------


def test_a_public_key_given_for_a_private_one_is_named(tmp_path: Path) -> None:
    private, public = generate_key(tmp_path / "alice")
    assert load_private_key(private).public.fingerprint
    with pytest.raises(InputError) as caught:
        load_private_key(public, flag="--key")
    message = str(caught.value)
    assert message.startswith("--key: ")
    assert "is a public key" in message
    assert "chmod" not in message


def test_public_keys_from_files_and_directories_with_the_flag_named(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    generate_key(keys / "alice")
    generate_key(keys / "bob")
    _, carol = generate_key(tmp_path / "carol")
    loaded = load_public_keys([keys, carol])
    assert len(loaded) == 3
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"^--seal-pubkey: key directory .* holds no \*\.pub"):
        load_public_keys([empty], flag="--seal-pubkey")
    with pytest.raises(InputError, match=r"^--pubkey: .*is a private key"):
        load_public_keys([keys / "alice"])


def test_a_fifo_for_a_key_fails_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "key"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match=r"FIFO|not a regular file"):
        load_private_key(fifo)
    with pytest.raises(InputError, match=r"FIFO|not a regular file"):
        load_public_keys([fifo])


def test_key_from_a_descriptor_is_read_then_closed(tmp_path: Path) -> None:
    private, _ = generate_key(tmp_path / "platform")
    fd = os.open(private, os.O_RDONLY)
    key = _common.load_private_key_fd(fd)
    assert key.public.fingerprint
    with pytest.raises(OSError):
        os.fstat(fd)  # closed: a job launched next cannot inherit it
    with pytest.raises(ConfigError, match="standard streams"):
        _common.load_private_key_fd(2)
    with pytest.raises(InputError, match="--key-fd 987"):
        _common.load_private_key_fd(987)
