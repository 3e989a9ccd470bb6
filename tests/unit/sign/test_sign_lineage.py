"""Lineage: chains of a run's checkpoints, and rollback, swap and deletion through the ledger."""

from __future__ import annotations

import shutil
import zlib
from pathlib import Path

import pytest
from sign_helpers import KeyPair, flip_byte, make_checkpoint

from trainwarden.errors import ConfigError
from trainwarden.findings import Verdict
from trainwarden.sign import (
    LineageError,
    SignatureMismatch,
    sign_path,
    verify_chain,
    verify_path,
)


def lineage_rules(exc: SignatureMismatch) -> set[str]:
    return {f.rule_id for f in exc.report.findings if f.verdict is not Verdict.SAFE}


def train(root: Path, key: KeyPair, run: str, steps: list[int], ledger: Path | None) -> list[Path]:
    """Write and sign a run's checkpoints, each naming its parent."""
    paths, parent = [], None
    for step in steps:
        path = make_checkpoint(
            root / run / f"step-{step}", seed=zlib.crc32(f"{run}/{step}".encode()) % 1000
        )
        sig = sign_path(path, key.private, run=run, step=step, parent=parent, ledger=ledger)
        parent = sig.digest
        paths.append(path)
    return paths


def test_chain_verifies(tmp_path: Path, alice: KeyPair) -> None:
    paths = train(tmp_path, alice, "run-a", [100, 200, 300], None)
    results = [verify_path(p, [alice.public]) for p in reversed(paths)]
    chain = verify_chain(results)
    assert chain.run == "run-a"
    assert chain.steps == (100, 200, 300)
    assert chain.head == results[0].digest


def test_chain_with_a_checkpoint_of_another_run(tmp_path: Path, alice: KeyPair) -> None:
    a = train(tmp_path, alice, "run-a", [100, 200], None)
    b = train(tmp_path, alice, "run-b", [300], None)
    with pytest.raises(LineageError) as info:
        verify_chain([verify_path(p, [alice.public]) for p in [*a, *b]])
    assert "lineage.mixed-runs" in lineage_rules(info.value)


def test_chain_with_a_missing_link(tmp_path: Path, alice: KeyPair) -> None:
    paths = train(tmp_path, alice, "run-a", [100, 200, 300], None)
    with pytest.raises(LineageError) as info:
        verify_chain([verify_path(p, [alice.public]) for p in (paths[0], paths[2])])
    (finding,) = info.value.report.findings
    assert finding.rule_id == "lineage.broken"
    assert "step 300" in finding.message


def test_chain_fork_and_unanchored(tmp_path: Path, alice: KeyPair) -> None:
    a = make_checkpoint(tmp_path / "x", seed=1)
    b = make_checkpoint(tmp_path / "y", seed=2)
    c = make_checkpoint(tmp_path / "z", seed=3)
    s1 = sign_path(a, alice.private, run="r", step=1)
    s2 = sign_path(b, alice.private, run="r", step=1, parent=s1.digest)
    s3 = sign_path(c, alice.private)
    with pytest.raises(LineageError) as info:
        verify_chain([s1, s2])
    assert lineage_rules(info.value) == {"lineage.fork"}
    with pytest.raises(LineageError) as info:
        verify_chain([s3])
    assert "lineage.unanchored" in lineage_rules(info.value)
    with pytest.raises(ConfigError):
        verify_chain([])


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    from trainwarden.ledger import init_ledger

    return init_ledger(tmp_path / "ledger")


def test_sign_records_in_ledger_and_verify_passes(
    tmp_path: Path, alice: KeyPair, ledger: Path
) -> None:
    from trainwarden.ledger import checkpoint_records, verify_ledger

    paths = train(tmp_path, alice, "run-a", [100, 200], ledger)
    records = checkpoint_records(verify_ledger(ledger, keys=[alice.public]).entries)
    assert [(r.event, r.run, r.step) for r in records] == [
        ("checkpoint.signed", "run-a", 100),
        ("checkpoint.signed", "run-a", 200),
    ]
    assert records[1].parent == records[0].digest
    assert records[0].path == str(paths[0].resolve())
    for p in paths:
        verify_path(p, [alice.public], ledger=ledger)


def test_rollback_in_place_is_detected(tmp_path: Path, alice: KeyPair, ledger: Path) -> None:
    """`latest/` is overwritten at each save; the attacker restores an older one and its sig."""
    latest = tmp_path / "run-a" / "latest"
    saved = tmp_path / "attacker-copy"
    make_checkpoint(latest, seed=1)
    first = sign_path(latest, alice.private, run="run-a", step=100, ledger=ledger)
    shutil.copytree(latest, saved / "latest")
    shutil.copy(first.sig_path, saved / "latest.sig")
    shutil.rmtree(latest)
    make_checkpoint(latest, seed=2)
    sign_path(latest, alice.private, run="run-a", step=200, parent=first.digest, ledger=ledger)
    verify_path(latest, [alice.public], ledger=ledger)
    # Roll back: the old files with their old, perfectly valid signature.
    shutil.rmtree(latest)
    shutil.copytree(saved / "latest", latest)
    shutil.copy(saved / "latest.sig", first.sig_path)
    verify_path(latest, [alice.public])  # a bare signature cannot tell
    with pytest.raises(SignatureMismatch) as info:
        verify_path(latest, [alice.public], ledger=ledger)
    assert lineage_rules(info.value) == {"lineage.rolled-back"}
    message = info.value.report.findings[0].message
    assert "step 200" in message
    assert "alice@cluster" in message


def test_rollback_of_a_later_step_path(tmp_path: Path, alice: KeyPair, ledger: Path) -> None:
    """step-200/ is replaced by the run's step-100 checkpoint (and signature)."""
    p100, p200 = train(tmp_path, alice, "run-a", [100, 200], ledger)
    shutil.rmtree(p200)
    shutil.copytree(p100, p200)
    shutil.copy(p100.with_name("step-100.sig"), p200.with_name("step-200.sig"))
    with pytest.raises(SignatureMismatch) as info:
        verify_path(p200, [alice.public], ledger=ledger)
    assert lineage_rules(info.value) == {"lineage.rolled-back"}


def test_swap_between_runs_is_detected(tmp_path: Path, alice: KeyPair, ledger: Path) -> None:
    (a,) = train(tmp_path, alice, "run-a", [100], ledger)
    (b,) = train(tmp_path, alice, "run-b", [100], ledger)
    shutil.rmtree(a)
    shutil.copytree(b, a)
    shutil.copy(b.with_name("step-100.sig"), a.with_name("step-100.sig"))
    with pytest.raises(SignatureMismatch) as info:
        verify_path(a, [alice.public], ledger=ledger)
    assert lineage_rules(info.value) == {"lineage.swapped"}
    assert "run-b" in info.value.report.findings[0].message


def test_deletion_is_detected(tmp_path: Path, alice: KeyPair, ledger: Path) -> None:
    _, p200, p300 = train(tmp_path, alice, "run-a", [100, 200, 300], ledger)
    shutil.rmtree(p200)
    p200.with_name("step-200.sig").unlink()
    with pytest.raises(SignatureMismatch) as info:
        verify_path(p300, [alice.public], ledger=ledger)
    assert lineage_rules(info.value) == {"lineage.deleted"}
    assert "step-200" in info.value.report.findings[0].message


def test_recorded_deletion_is_not_tampering(tmp_path: Path, alice: KeyPair, ledger: Path) -> None:
    from trainwarden.ledger import Ledger

    p100, p200 = train(tmp_path, alice, "run-a", [100, 200], ledger)
    shutil.rmtree(p100)
    with Ledger(ledger, key=alice.private) as writer:
        writer.append("checkpoint.deleted", run="run-a", path=str(p100.resolve()))
    verify_path(p200, [alice.public], ledger=ledger)


def test_checkpoint_signed_outside_the_ledger(tmp_path: Path, alice: KeyPair, ledger: Path) -> None:
    (p100,) = train(tmp_path, alice, "run-a", [100], ledger)
    rogue = make_checkpoint(tmp_path / "run-a" / "step-200", seed=99)
    sign_path(rogue, alice.private, run="run-a", step=200, parent="ab" * 32)
    with pytest.raises(SignatureMismatch) as info:
        verify_path(rogue, [alice.public], ledger=ledger)
    assert lineage_rules(info.value) == {"lineage.unrecorded", "lineage.parent-unknown"}
    verify_path(p100, [alice.public], ledger=ledger)


def test_tampered_ledger_fails_closed(tmp_path: Path, alice: KeyPair, ledger: Path) -> None:
    (p100,) = train(tmp_path, alice, "run-a", [100], ledger)
    writer_file = next((ledger / "writers").glob("*.jsonl"))
    text = writer_file.read_text()
    assert '"step":100' in text
    writer_file.write_text(text.replace('"step":100', '"step":101'))
    with pytest.raises(SignatureMismatch) as info:
        verify_path(p100, [alice.public], ledger=ledger)
    assert lineage_rules(info.value) == {"lineage.ledger-tampered"}


def test_ledger_written_by_untrusted_key(
    tmp_path: Path, alice: KeyPair, mallory: KeyPair, ledger: Path
) -> None:
    (p100,) = train(tmp_path, alice, "run-a", [100], ledger)
    with pytest.raises(SignatureMismatch) as info:
        verify_path(p100, [alice.public], ledger=ledger, ledger_keys=[mallory.public])
    assert lineage_rules(info.value) == {"lineage.ledger-tampered"}


def test_modified_file_with_ledger_still_named(
    tmp_path: Path, alice: KeyPair, ledger: Path
) -> None:
    (p100,) = train(tmp_path, alice, "run-a", [100], ledger)
    flip_byte(p100 / "model.safetensors", 0)
    with pytest.raises(SignatureMismatch) as info:
        verify_path(p100, [alice.public], ledger=ledger)
    assert lineage_rules(info.value) == {"sign.modified"}
