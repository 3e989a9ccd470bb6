"""Nothing lost, nothing half-done: full disks, failed receipts, explicit creation, FIFOs.

A full disk is tested twice: on a real, tiny tmpfs (we are root in CI; skipped where mount
is not permitted) and with a fault-injecting ``os.write`` that fails after half a batch.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainwarden.errors import InputError
from trainwarden.ledger import (
    Ledger,
    SealReceiptNotWritten,
    init_ledger,
    inspect_ledger,
    is_ledger,
    read_entries,
    seal_ledger,
    verify_ledger,
)
from trainwarden.ledger import _seal as seal_module


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


# -- a real full filesystem --------------------------------------------------------------------


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs mounted for this test only."""
    mount = shutil.which("mount")
    if os.geteuid() != 0 or mount is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    point = tmp_path / "mnt"
    point.mkdir()
    proc = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=512k,mode=0755", "tmpfs", str(point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"mount not permitted here: {proc.stderr.strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


def _fill(directory: Path, leave: int) -> Path:
    """Fill the filesystem of ``directory``, then free ``leave`` bytes."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    chunk = b"\0" * 4096
    try:
        while True:
            os.write(fd, chunk)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def test_batch_on_a_full_disk_leaves_nothing_acknowledged_looking(tiny_fs, keys):
    root = init_ledger(tiny_fs / "ledger")
    writer = Ledger(root, key=keys["alice"].private, fsync="batch")
    acknowledged = [writer.append("train.step", step=i) for i in range(3)]
    size_before = writer.path.stat().st_size
    filler = _fill(tiny_fs, leave=16384)
    batch = [("guard.finding", None, {"step": i, "padding": "x" * 200}) for i in range(1000)]
    with pytest.raises(InputError, match="were not recorded") as info:
        writer.append_many(batch)  # ~400 KB of entries into 16 KB of space
    assert "No space left" in str(info.value)
    # The file holds exactly what was acknowledged: no complete line of the failed batch.
    assert writer.path.stat().st_size == size_before
    report = verify_ledger(root, keys=[keys["alice"].public])
    assert [e.data for e in report.entries if e.event == "train.step"] == [
        e.data for e in acknowledged
    ]
    assert not [w for w in report.warnings if w.kind == "in_progress"]
    # Space back: the same writer continues its chain where the file ends.
    filler.unlink()
    after = writer.append("train.step", step=3)
    writer.close()
    assert after.seq == acknowledged[-1].seq + 1
    assert after.prev == acknowledged[-1].hash
    assert len(verify_ledger(root, keys=[keys["alice"].public]).entries) == 5


def test_new_writer_on_a_full_disk_leaves_no_empty_file(tiny_fs, keys):
    root = init_ledger(tiny_fs / "ledger")
    _fill(tiny_fs, leave=0)
    with pytest.raises(InputError):
        Ledger(root, key=keys["alice"].private)
    assert list((root / "writers").iterdir()) == []


def test_signature_on_a_full_disk_is_an_error_and_leaves_nothing(tiny_fs, tmp_path, keys):
    from trainwarden.sign import sign_path

    ckpt = tmp_path / "ckpt.bin"
    ckpt.write_bytes(os.urandom(4096))
    _fill(tiny_fs, leave=0)
    sig = tiny_fs / "ckpt.sig"
    with pytest.raises(InputError, match="signature"):
        sign_path(ckpt, keys["alice"].private, sig_path=sig)
    assert not sig.exists()
    assert [p.name for p in tiny_fs.iterdir()] == ["filler"]


# -- injected faults ---------------------------------------------------------------------------


class _FaultyWrites:
    """Fails writes to one file after letting ``allow`` bytes through (a disk filling up)."""

    def __init__(self, path: Path, allow: int, *, truncate_fails: bool = False) -> None:
        self.ino = path.stat().st_ino
        self.allow = allow
        self.truncate_fails = truncate_fails
        self.real_write = os.write
        self.real_ftruncate = os.ftruncate

    def _ours(self, fd: int) -> bool:
        try:
            return os.fstat(fd).st_ino == self.ino
        except OSError:
            return False

    def write(self, fd: int, data: bytes | memoryview) -> int:
        if not self._ours(fd):
            return self.real_write(fd, data)
        if self.allow <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = self.real_write(fd, bytes(data[: self.allow]))
        self.allow -= n
        return n

    def ftruncate(self, fd: int, length: int) -> None:
        if self.truncate_fails and self._ours(fd):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        self.real_ftruncate(fd, length)


def test_failed_batch_is_cut_back_and_the_chain_continues(tmp_path, keys, monkeypatch):
    writer = Ledger(tmp_path / "l", key=keys["alice"].private)
    kept = writer.append("a")
    good = writer.path.read_bytes()
    faults = _FaultyWrites(writer.path, allow=700)  # one and a half lines of the batch
    monkeypatch.setattr(os, "write", faults.write)
    with pytest.raises(InputError, match=r"entries seq 2\.\.11 were not recorded"):
        writer.append_many([("b", None, {"i": i}) for i in range(10)])
    monkeypatch.undo()
    assert writer.path.read_bytes() == good
    later = writer.append("c")
    writer.close()
    assert (later.seq, later.prev) == (kept.seq + 1, kept.hash)
    report = verify_ledger(tmp_path / "l", keys=[keys["alice"].public])
    assert [e.event for e in report.entries] == ["ledger.open", "a", "c"]


def test_single_append_failure_is_cut_back(tmp_path, keys, monkeypatch):
    writer = Ledger(tmp_path / "l", key=keys["alice"].private)
    good = writer.path.read_bytes()
    faults = _FaultyWrites(writer.path, allow=100)
    monkeypatch.setattr(os, "write", faults.write)
    with pytest.raises(InputError, match="entries seq 1 were not recorded"):
        writer.append("a", payload="x" * 300)
    monkeypatch.undo()
    assert writer.path.read_bytes() == good
    writer.close()


def test_when_the_cut_back_fails_the_writer_stops_and_says_what_may_remain(
    tmp_path, keys, monkeypatch
):
    writer = Ledger(tmp_path / "l", key=keys["alice"].private)
    size = writer.path.stat().st_size
    faults = _FaultyWrites(writer.path, allow=700, truncate_fails=True)
    monkeypatch.setattr(os, "write", faults.write)
    monkeypatch.setattr(os, "ftruncate", faults.ftruncate)
    with pytest.raises(InputError, match="may be partly on disk") as info:
        writer.append_many([("b", None, {"i": i}) for i in range(10)])
    assert f"after byte {size}" in str(info.value)
    monkeypatch.undo()
    with pytest.raises(InputError, match="failed earlier"):
        writer.append("c")
    writer.close()
    # The torn line left behind is reported as a torn write of a writer that is gone.
    report = inspect_ledger(tmp_path / "l", keys=[keys["alice"].public])
    notes = [w.message for w in report.warnings if w.kind == "in_progress"]
    assert len(notes) == 1
    assert "no writer holds the file" in notes[0]


# -- explicit creation -------------------------------------------------------------------------


def test_ledger_creation_is_explicit(tmp_path, keys):
    missing = tmp_path / "no" / "such" / "ledger"
    with pytest.raises(InputError, match=r"does not exist.*ledger init"):
        Ledger(missing, key=keys["alice"].private, create=False)
    assert not (tmp_path / "no").exists()
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="is not a ledger"):
        Ledger(plain, key=keys["alice"].private, create=False)
    with pytest.raises(InputError, match="holds other files but no ledger"):
        init_ledger(plain)
    with pytest.raises(InputError, match="not a directory"):
        init_ledger(plain / "notes.txt")
    root = init_ledger(tmp_path / "new")
    assert is_ledger(root)
    assert init_ledger(root) == root  # idempotent
    assert (root / "writers").stat().st_mode & 0o1000  # sticky, like /tmp
    with Ledger(root, key=keys["alice"].private, create=False) as writer:
        writer.append("e")
    # The Python API keeps creating by default (documented; the CLI never does).
    with Ledger(tmp_path / "default", key=keys["alice"].private) as writer:
        writer.append("e")
    assert is_ledger(tmp_path / "default")


# -- seal receipts: checked before sealing, reported exactly after -------------------------------


def _seals(root: Path) -> int:
    return sum(
        1
        for path in (root / "seals").glob("*.jsonl")
        for line in _lines(path)
        if b'"ledger.seal"' in line
    )


@pytest.mark.parametrize("where", ["missing-dir", "a-directory", "inside-ledger", "fifo"])
def test_unusable_receipt_path_seals_nothing(ledger_dir, keys, tmp_path, where):
    receipt = {
        "missing-dir": tmp_path / "no" / "such" / "receipt",
        "a-directory": tmp_path,
        "inside-ledger": ledger_dir / "receipt.json",
        "fifo": tmp_path / "fifo",
    }[where]
    if where == "fifo":
        os.mkfifo(receipt)
    with pytest.raises(InputError, match="receipt"):
        seal_ledger(ledger_dir, key=keys["sealer"].private, receipt=receipt)
    assert _seals(ledger_dir) == 0


def test_receipt_failure_after_sealing_says_what_was_done(ledger_dir, keys, tmp_path, monkeypatch):
    def fail(path, data, **kwargs):
        raise InputError(f"cannot write seal receipt {path}: No space left on device")

    monkeypatch.setattr(seal_module, "atomic_write", fail)
    receipt = tmp_path / "receipt"
    with pytest.raises(SealReceiptNotWritten) as info:
        seal_ledger(ledger_dir, key=keys["sealer"].private, receipt=receipt)
    monkeypatch.undo()
    err = info.value
    assert f"appended to ledger {ledger_dir}" in str(err)
    assert "No space left" in str(err)
    assert _seals(ledger_dir) == 1
    # The diagnostics carry the seal entry itself: saved by hand, it works as the receipt.
    assert err.line.decode().strip() in err.diagnostics()
    receipt.write_bytes(err.line)
    verify_ledger(
        ledger_dir,
        keys=[keys["alice"].public, keys["bob"].public],
        seal_keys=[keys["sealer"].public],
        seal_receipts=[receipt],
    )


# -- special files never block ---------------------------------------------------------------


def _no_hang(fn, fifo: Path, timeout: float = 30.0):
    """Run ``fn`` in a thread; if it blocks on ``fifo``, release it and fail the test."""
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # unblock the reader, then fail
        os.close(fd)
        thread.join(5)
        pytest.fail(f"blocked on the FIFO {fifo}")
    return result


def test_fifo_in_place_of_a_writer_file_is_unreadable_not_a_hang(ledger_dir, keys):
    fifo = ledger_dir / "writers" / "host_1_0123456789abcdef_0123456789abcdef.jsonl"
    os.mkfifo(fifo)
    result = _no_hang(
        lambda: inspect_ledger(ledger_dir, keys=[keys["alice"].public, keys["bob"].public]), fifo
    )
    report = result["value"]
    assert [(i.kind, Path(str(i.file)).name) for i in report.issues] == [("unreadable", fifo.name)]
    assert "FIFO" in report.issues[0].message
    contents = _no_hang(lambda: read_entries(ledger_dir), fifo)["value"]
    assert any("FIFO" in p for p in contents.problems)
    assert len(contents.entries) == 10


def test_fifo_receipt_and_fifo_ledger_are_errors(ledger_dir, keys, tmp_path):
    fifo = tmp_path / "receipt"
    os.mkfifo(fifo)
    result = _no_hang(
        lambda: verify_ledger(
            ledger_dir,
            keys=[keys["alice"].public, keys["bob"].public],
            seal_keys=[keys["sealer"].public],
            seal_receipts=[fifo],
        ),
        fifo,
    )
    assert isinstance(result["error"], InputError)
    assert "FIFO" in str(result["error"])
    with pytest.raises(InputError, match="FIFO, not a ledger"):
        verify_ledger(fifo, keys=[keys["alice"].public])


def test_checked_file_replaced_by_a_fifo_is_changed_not_a_hang(tmp_path, keys):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights")
    root = tmp_path / "l"
    with Ledger(root, key=keys["alice"].private) as writer:
        writer.append(
            "checkpoint.saved",
            run="r",
            path=str(ckpt),
            digest="sha256:" + __import__("hashlib").sha256(b"weights").hexdigest(),
        )
    ckpt.unlink()
    os.mkfifo(ckpt)
    result = _no_hang(
        lambda: inspect_ledger(root, keys=[keys["alice"].public], check_files=True), ckpt
    )
    report = result["value"]
    assert [(f.status, f.reason) for f in report.files] == [("changed", "no longer a regular file")]


def test_verify_progress_and_automatic_workers(ledger_dir, keys):
    calls: list[tuple[int, int, int]] = []
    report = verify_ledger(
        ledger_dir,
        keys=[keys["alice"].public, keys["bob"].public],
        workers=None,
        progress=lambda *args: calls.append(args),
    )
    assert calls == [(1, 2, calls[0][2]), (2, 2, len(report.entries))]
    with pytest.raises(Exception, match="workers"):
        verify_ledger(ledger_dir, keys=[keys["alice"].public], workers=0)


def test_canonical_json_is_the_shared_one_with_the_same_bytes(tmp_path, keys):
    from trainwarden._canonical import canonical_json as shared
    from trainwarden.ledger._format import canonical_json

    value = {"b": [1, 2.5, 1e-05, 1e16], "a": "héllo\n\u2028", "c": None, "p": tmp_path}
    assert canonical_json(value) == shared(value)
    assert canonical_json(value) == json.dumps(
        {**value, "p": str(tmp_path)},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
