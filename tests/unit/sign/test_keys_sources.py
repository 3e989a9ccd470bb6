"""``trainwarden.keys.load_public_keys``: the trusted keys a user names, files or directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trainwarden.errors import InputError
from trainwarden.keys import generate_key, load_public_key, load_public_keys


def test_files_directories_and_key_objects(tmp_path: Path) -> None:
    team = tmp_path / "team"
    team.mkdir()
    _, bob = generate_key(team / "bob", identity="bob@node")
    _, alice = generate_key(team / "alice", identity="alice@node")
    (team / "README").write_text("not a key, not *.pub: ignored")
    _, carol = generate_key(tmp_path / "carol", identity="carol@node")
    dave = load_public_key(generate_key(tmp_path / "dave", identity="dave@node")[1])
    keys = load_public_keys([team, str(carol), dave])
    # A directory's keys in name order, then the others as given.
    assert [k.identity for k in keys] == ["alice@node", "bob@node", "carol@node", "dave@node"]
    assert keys[0].fingerprint == load_public_key(alice).fingerprint
    assert keys[1].fingerprint == load_public_key(bob).fingerprint
    assert load_public_keys([]) == []


def test_a_bad_key_in_a_directory_is_an_error_not_skipped(tmp_path: Path) -> None:
    team = tmp_path / "team"
    team.mkdir()
    generate_key(team / "alice")
    (team / "planted.pub").write_text("ssh-rsa AAAA not ours")
    with pytest.raises(InputError, match=r"planted\.pub"):
        load_public_keys([team])


def test_empty_directory_private_key_and_fifo_are_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"holds no \*\.pub"):
        load_public_keys([tmp_path / "empty"])
    private, _ = generate_key(tmp_path / "k")
    with pytest.raises(InputError, match="is a private key"):
        load_public_keys([private])
    os.mkfifo(tmp_path / "fifo.pub")
    with pytest.raises(InputError):
        load_public_keys([tmp_path / "fifo.pub"])  # refused at once, never blocks
