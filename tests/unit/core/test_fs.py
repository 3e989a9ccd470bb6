"""The shared file primitives: one atomic write, safe opens, output-over-input refusal."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from trainwarden._fs import atomic_write, check_output_path, open_regular, read_regular
from trainwarden.errors import InputError


def test_atomic_write_replaces_whole_file_with_mode(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")
    atomic_write(target, "new", mode=0o600)
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_write_replaces_a_planted_symlink_instead_of_following_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = tmp_path / "report"
    link.symlink_to(victim)
    atomic_write(link, "report")
    assert victim.read_text() == "precious"
    assert not link.is_symlink()
    assert link.read_text() == "report"


def test_atomic_write_exclusive_refuses_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "key"
    target.write_text("first")
    with pytest.raises(InputError, match="File exists"):
        atomic_write(target, "second", exclusive=True, what="key")
    assert target.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["key"]


def test_atomic_write_to_a_directory_fails_cleanly(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(InputError, match="cannot write report"):
        atomic_write(tmp_path / "d", "x", what="report")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_atomic_write_into_missing_directory_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="No such file"):
        atomic_write(tmp_path / "missing" / "f", b"x")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_open_regular_refuses_devices_and_fifos(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="a FIFO"):
        open_regular(fifo, what="signature")  # must not block waiting for a writer
    with pytest.raises(InputError, match="a device"):
        read_regular("/dev/full")
    with pytest.raises(InputError, match="a directory"):
        read_regular(tmp_path)


def test_open_regular_names_a_symlink_loop(tmp_path: Path) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(InputError, match="symlink loop"):
        read_regular(loop)


def test_read_regular_enforces_a_limit(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x" * 100)
    assert read_regular(f, limit=100) == b"x" * 100
    with pytest.raises(InputError, match="limit"):
        read_regular(f, limit=99)


def test_check_output_path_refuses_inputs_and_their_insides(tmp_path: Path) -> None:
    model = tmp_path / "model.pt"
    model.write_bytes(b"m")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (tmp_path / "alias.pt").hardlink_to(model)
    for bad in (model, tmp_path / "." / "model.pt", ckpt / "report.json", tmp_path / "alias.pt"):
        with pytest.raises(InputError, match="refusing"):
            check_output_path(bad, [model, ckpt])
    check_output_path(tmp_path / "report.json", [model, ckpt])
    check_output_path(None, [model])
