"""Checkpoints are signed once complete, chained to the previous one, and deletions recorded."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from trainwarden.keys import PrivateKey
from trainwarden.sign import checkpoint_digest, verify_path
from trainwarden.supervise._checkpoints import CheckpointWatcher, infer_step


class Events:
    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        self.items.append((event, data))

    def named(self, event: str) -> list[dict[str, Any]]:
        return [d for e, d in self.items if e == event]


@pytest.fixture
def key() -> PrivateKey:
    return PrivateKey.generate("supervisor@test")


def _watcher(tmp_path: Path, key: PrivateKey, events: Events, **kw: Any) -> CheckpointWatcher:
    return CheckpointWatcher([tmp_path / "ckpt"], key=key, run_id="run-1", record=events, **kw)


@pytest.mark.parametrize(
    ("name", "step"),
    [
        ("ckpt-000010.pt", 10),
        ("checkpoint-500", 500),
        ("epoch=0-step=120.ckpt", 120),
        ("global_step300", 300),
        ("model_42.safetensors", 42),
        ("last.ckpt", None),
    ],
)
def test_steps_from_names(name: str, step: int | None) -> None:
    assert infer_step(name) == step


def test_completed_checkpoints_are_signed_and_chained(tmp_path: Path, key: PrivateKey) -> None:
    events = Events()
    watcher = _watcher(tmp_path, key, events, settle=0.0)
    assert watcher.baseline() == []
    (tmp_path / "ckpt").mkdir()
    first = tmp_path / "ckpt" / "ckpt-000010.pt"
    first.write_bytes(b"a" * 1000)
    (tmp_path / "ckpt" / ".ckpt-000020.pt.partial").write_bytes(b"in progress")
    directory = tmp_path / "ckpt" / "checkpoint-20"
    directory.mkdir()
    (directory / "model.bin").write_bytes(b"b" * 1000)
    signed = watcher.finish(timeout=30)
    assert [Path(s.path).name for s in signed] == ["checkpoint-20", "ckpt-000010.pt"]
    assert signed[0].parent is None
    assert signed[1].parent == signed[0].digest
    records = events.named("checkpoint.signed")
    assert [r["step"] for r in records] == [20, 10]
    assert records[1]["parent"] == records[0]["digest"]
    assert records[0]["path"] == str(directory.resolve())
    for item in signed:
        assert item.digest == checkpoint_digest(Path(item.path))
        verification = verify_path(Path(item.path), key.public)
        assert verification.signature.run == "run-1"


def test_entries_still_changing_wait_for_the_settle_time(tmp_path: Path, key: PrivateKey) -> None:
    events = Events()
    watcher = _watcher(tmp_path, key, events, settle=3600.0)
    watcher.baseline()
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "ckpt-1.pt").write_bytes(b"x")
    watcher.poll()
    watcher.poll()
    # A directory with a completion marker is complete at once.
    done = tmp_path / "ckpt" / "checkpoint-2"
    done.mkdir()
    (done / "weights.bin").write_bytes(b"w")
    (done / "COMPLETE").write_text("")
    watcher.poll()
    signed = watcher.finish(timeout=30)  # the job ended: everything left is complete
    assert [Path(s.path).name for s in signed] == ["checkpoint-2", "ckpt-1.pt"]


def test_preexisting_checkpoints_are_inputs_not_outputs(tmp_path: Path, key: PrivateKey) -> None:
    (tmp_path / "ckpt").mkdir()
    old = tmp_path / "ckpt" / "ckpt-5.pt"
    old.write_bytes(b"resumed from")
    events = Events()
    watcher = _watcher(tmp_path, key, events, settle=0.0)
    assert watcher.baseline() == [str(old)]
    assert watcher.finish(timeout=30) == []
    # ...unless the job rewrites one.
    watcher2 = _watcher(tmp_path, key, Events(), settle=0.0)
    watcher2.baseline()
    old.write_bytes(b"overwritten by this run")
    assert [Path(s.path).name for s in watcher2.finish(timeout=30)] == ["ckpt-5.pt"]


def test_rewritten_checkpoint_is_signed_again_as_a_child(tmp_path: Path, key: PrivateKey) -> None:
    events = Events()
    watcher = _watcher(tmp_path, key, events, settle=0.0)
    watcher.baseline()
    (tmp_path / "ckpt").mkdir()
    last = tmp_path / "ckpt" / "last.ckpt"
    last.write_bytes(b"epoch 1")
    watcher.poll()
    _wait_signed(watcher, 1)
    last.write_bytes(b"epoch 2, longer")
    os.utime(last, ns=(1, 2))
    signed = watcher.finish(timeout=30)
    assert len(signed) == 2
    assert signed[1].parent == signed[0].digest
    assert signed[1].digest == checkpoint_digest(last)


def test_a_signed_checkpoint_deleted_during_the_run_is_recorded(
    tmp_path: Path, key: PrivateKey
) -> None:
    events = Events()
    watcher = _watcher(tmp_path, key, events, settle=0.0)
    watcher.baseline()
    (tmp_path / "ckpt").mkdir()
    doomed = tmp_path / "ckpt" / "ckpt-1.pt"
    doomed.write_bytes(b"x")
    watcher.poll()
    _wait_signed(watcher, 1)
    doomed.unlink()
    watcher.poll()
    (deleted,) = events.named("checkpoint.deleted")
    assert deleted["path"] == str(doomed.resolve())
    assert deleted["during_run"] is True
    watcher.finish(timeout=30)


def test_unsignable_checkpoints_are_recorded_not_dropped(tmp_path: Path, key: PrivateKey) -> None:
    events = Events()
    watcher = _watcher(tmp_path, key, events, settle=0.0)
    watcher.baseline()
    bad = tmp_path / "ckpt" / "checkpoint-3"
    bad.mkdir(parents=True)
    (bad / "link").symlink_to("/etc/hostname")
    for _ in range(4):
        watcher.poll(final=True)
        _drain(watcher)
    watcher.finish(timeout=30)
    (unsigned,) = events.named("checkpoint.unsigned")
    assert "symlink" in unsigned["reason"]


def test_signatures_can_be_kept_elsewhere(tmp_path: Path, key: PrivateKey) -> None:
    sigs = tmp_path / "sigs"
    sigs.mkdir()
    watcher = _watcher(tmp_path, key, Events(), settle=0.0, signatures=sigs)
    watcher.baseline()
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "a.pt").write_bytes(b"x")
    (signed,) = watcher.finish(timeout=30)
    assert Path(signed.sig_path).parent == sigs
    assert not (tmp_path / "ckpt" / "a.pt.sig").exists()


def _drain(watcher: CheckpointWatcher) -> None:
    import time

    deadline = time.monotonic() + 30
    while not watcher._queue.empty() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)


def _wait_signed(watcher: CheckpointWatcher, count: int) -> None:
    import time

    deadline = time.monotonic() + 30
    while len(watcher.signed) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(watcher.signed) == count


def test_signed_records_pass_ledger_check_files_and_a_change_fails_it(
    tmp_path: Path, key: PrivateKey
) -> None:
    # The supervisor's `checkpoint.signed` must be checkable by `ledger verify --check-files`
    # (a checkpoint digest is a signing manifest's root, not the file's plain SHA-256).
    from trainwarden.ledger import Ledger, inspect_ledger

    ledger_dir = tmp_path / "ledger"
    with Ledger(ledger_dir, key=key) as ledger:

        def record(event: str, data: dict[str, Any]) -> None:
            ledger.append(event, run="run-1", **data)

        watcher = CheckpointWatcher([tmp_path / "ckpt"], key=key, run_id="run-1", record=record)
        watcher.baseline()
        (tmp_path / "ckpt").mkdir()
        ckpt = tmp_path / "ckpt" / "ckpt-000010.pt"
        ckpt.write_bytes(b"weights" * 1000)
        assert len(watcher.finish(timeout=30)) == 1
    report = inspect_ledger(ledger_dir, keys=[key.public], check_files=True)
    assert [f.status for f in report.files] == ["ok"]
    assert report.issues == ()
    ckpt.write_bytes(b"Weights" * 1000)
    report = inspect_ledger(ledger_dir, keys=[key.public], check_files=True)
    assert [f.status for f in report.files] == ["changed"]
