"""Queries for lineage checks, recorded-file checks, and the RFC 6962 tree hash."""

from __future__ import annotations

import hashlib

import pytest

from trainwarden.ledger import (
    Ledger,
    LedgerTampered,
    checkpoint_records,
    entries_for_run,
    merkle_root,
    verify_ledger,
)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_entries_for_run_and_checkpoint_records(tmp_path, keys):
    root = tmp_path / "l"
    with Ledger(root, key=keys["alice"].private) as ledger:
        ledger.append("checkpoint.signed", run="r1", path="/c/1", digest=_digest(b"1"), step=1)
        ledger.append("guard.finding", run="r1", rule="lr")
        ledger.append(
            "checkpoint.signed",
            run="r1",
            path="/c/2",
            digest=_digest(b"2"),
            step=2,
            parent=_digest(b"1"),
        )
        ledger.append("checkpoint.signed", run="r2", path="/c/9", digest=_digest(b"9"), step=1)
    entries = entries_for_run(root, "r1", keys=[keys["alice"].public])
    assert [e.event for e in entries] == ["checkpoint.signed", "guard.finding", "checkpoint.signed"]
    records = checkpoint_records(entries)
    assert [(r.path, r.step, r.parent) for r in records] == [
        ("/c/1", 1, None),
        ("/c/2", 2, _digest(b"1")),
    ]
    assert records[0].actor.identity == "alice@cluster"
    only = entries_for_run(root, "r1", keys=[keys["alice"].public], events=["guard.finding"])
    assert len(only) == 1
    with pytest.raises(LedgerTampered):
        entries_for_run(root, "r1", keys=[keys["bob"].public])


def test_check_files_reports_missing_and_changed(tmp_path, keys):
    root = tmp_path / "l"
    kept, changed, gone, deleted = (tmp_path / n for n in ("kept", "changed", "gone", "deleted"))
    for path in (kept, changed, gone, deleted):
        path.write_bytes(path.name.encode())
    with Ledger(root, key=keys["alice"].private) as ledger:
        for path in (kept, changed, gone, deleted):
            ledger.append(
                "checkpoint.saved", run="r", path=str(path), digest=_digest(path.name.encode())
            )
        ledger.append("checkpoint.deleted", run="r", path=str(deleted))
    changed.write_bytes(b"poisoned")
    gone.unlink()
    deleted.unlink()
    with pytest.raises(LedgerTampered) as info:
        verify_ledger(root, keys=[keys["alice"].public], check_files=True)
    report = info.value.report
    assert {(f.path, f.status) for f in report.files} == {
        (str(kept), "ok"),
        (str(changed), "changed"),
        (str(gone), "missing"),
    }
    assert sorted(i.kind for i in report.issues) == ["file_changed", "file_missing"]
    # Without --check-files the ledger itself is intact.
    assert verify_ledger(root, keys=[keys["alice"].public]).intact


def test_merkle_root_matches_rfc6962_test_vectors():
    # Leaves and roots of the Certificate Transparency reference tests (RFC 6962).
    leaves = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        bytes(range(0x60, 0x70)),
    ]
    assert merkle_root([]) == "sha256:" + hashlib.sha256(b"").hexdigest()
    assert merkle_root(leaves[:1]) == (
        "sha256:6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    )
    assert merkle_root(leaves) == (
        "sha256:5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
    )


def test_check_files_recomputes_the_digests_sign_records(tmp_path, keys):
    from trainwarden.ledger import init_ledger
    from trainwarden.sign import sign_path

    root = init_ledger(tmp_path / "l")
    ckpt_dir = tmp_path / "ckpt-1"
    ckpt_dir.mkdir()
    (ckpt_dir / "model.safetensors").write_bytes(b"w" * 3000)
    (ckpt_dir / "optim.pt").write_bytes(b"o" * 100)
    single = tmp_path / "ckpt-2.bin"
    single.write_bytes(b"x" * 5000)
    for step, path in enumerate((ckpt_dir, single)):
        sign_path(path, keys["alice"].private, run="r", step=step, ledger=root, shard_size=1 << 20)
    report = verify_ledger(root, keys=[keys["alice"].public], check_files=True)
    assert {f.status for f in report.files} == {"ok"}
    assert len(report.files) == 2
    (ckpt_dir / "optim.pt").write_bytes(b"O" * 100)
    (ckpt_dir / "extra.py").write_text("print('planted')")
    with pytest.raises(LedgerTampered) as info:
        verify_ledger(root, keys=[keys["alice"].public], check_files=True)
    assert [(i.kind, i.file) for i in info.value.report.issues] == [
        ("file_changed", str(ckpt_dir.resolve()))
    ]


def test_parallel_signature_checks_find_the_same_forgery(tmp_path, keys, monkeypatch):
    import json

    from trainwarden.ledger import _sigcheck

    root = tmp_path / "l"
    with Ledger(root, key=keys["alice"].private) as ledger, ledger.batch():
        for i in range(300):
            ledger.append("step", i=i)
    path = ledger.path
    lines = path.read_bytes().splitlines(keepends=True)
    obj = json.loads(lines[250])
    obj["data"]["i"] = -1
    lines[250] = (json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n").encode()
    path.write_bytes(b"".join(lines))
    monkeypatch.setattr(_sigcheck, "PARALLEL_THRESHOLD", 10)
    monkeypatch.setattr(_sigcheck, "_CHUNK", 64)
    with pytest.raises(LedgerTampered) as info:
        verify_ledger(root, keys=[keys["alice"].public], workers=2)
    assert [(i.kind, i.seq) for i in info.value.report.issues] == [("altered", 250)]


def test_unreadable_recorded_file_is_not_verified(tmp_path, keys):
    import os

    if os.geteuid() == 0:
        # root reads through chmod 000; use a digest format nobody can check instead.
        target = tmp_path / "f"
        target.write_bytes(b"x")
        digest = "md5:9dd4e461268c8034f5c8564e155c67a6"
    else:
        target = tmp_path / "f"
        target.write_bytes(b"x")
        digest = _digest(b"x")
    root = tmp_path / "l"
    with Ledger(root, key=keys["alice"].private) as ledger:
        ledger.append("checkpoint.saved", run="r", path=str(target), digest=digest)
    if os.geteuid() != 0:
        target.write_bytes(b"changed")
        target.chmod(0)
    with pytest.raises(LedgerTampered) as info:
        verify_ledger(root, keys=[keys["alice"].public], check_files=True)
    assert [i.kind for i in info.value.report.issues] == ["file_unchecked"]
