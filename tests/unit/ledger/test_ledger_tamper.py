"""Every kind of tampering with a ledger is detected and named precisely (file, seq, kind)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from trainwarden.errors import ConfigError
from trainwarden.ledger import (
    Ledger,
    LedgerReport,
    LedgerTampered,
    inspect_ledger,
    seal_ledger,
    verify_ledger,
)
from trainwarden.ledger._format import SEAL_EVENT, SEALS_DIR
from trainwarden.ledger._merkle import leaf_bytes, merkle_root


def _trusted(keys):
    return [keys["alice"].public, keys["bob"].public]


def _tampered(root: Path, keys, **kwargs) -> LedgerReport:
    with pytest.raises(LedgerTampered) as info:
        verify_ledger(root, keys=_trusted(keys), **kwargs)
    report = info.value.report
    assert not report.intact
    return report


def _edit(path: Path, index: int, tamper, change) -> None:
    lines = tamper.read_lines(path)
    obj = json.loads(lines[index])
    change(obj)
    lines[index] = (json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n").encode()
    tamper.write_lines(path, lines)


def test_untouched_ledger_verifies(ledger_dir, keys):
    report = verify_ledger(ledger_dir, keys=_trusted(keys))
    assert report.intact
    assert report.signers_checked
    assert len(report.entries) == 10
    assert {w.entries for w in report.writers} == {6, 4}
    assert all(w.trusted for w in report.writers)
    times = [(e.time, e.writer, e.seq) for e in report.entries]
    assert times == sorted(times)


@pytest.mark.parametrize(
    ("what", "change"),
    [
        ("data", lambda o: o["data"].__setitem__("loss", 0.001)),
        ("time", lambda o: o.__setitem__("time", "2020-01-01T00:00:00.000000Z")),
        ("actor user", lambda o: o["actor"].__setitem__("user", "intern2")),
        ("actor host", lambda o: o["actor"].__setitem__("host", "other-node")),
        ("run", lambda o: o.__setitem__("run", "run-x")),
        ("event", lambda o: o.__setitem__("event", "train.skipped")),
    ],
)
def test_edited_entry_is_named(ledger_dir, keys, tamper, what, change):
    path = tamper.writer_file(ledger_dir, keys, "alice")
    _edit(path, 3, tamper, change)
    issues = _tampered(ledger_dir, keys).issues
    assert [(i.kind, i.file, i.seq, i.line) for i in issues] == [("altered", str(path), 3, 4)], what


def test_whitespace_edit_is_detected_even_without_changing_meaning(ledger_dir, keys, tamper):
    path = tamper.writer_file(ledger_dir, keys, "alice")
    lines = tamper.read_lines(path)
    lines[2] = lines[2].replace(b'"event":', b'"event": ')
    tamper.write_lines(path, lines)
    first = _tampered(ledger_dir, keys).first_issue
    assert first is not None
    assert (first.kind, first.line) == ("altered", 3)


def test_removed_entry_is_named(ledger_dir, keys, tamper):
    path = tamper.writer_file(ledger_dir, keys, "alice")
    lines = tamper.read_lines(path)
    del lines[2]
    tamper.write_lines(path, lines)
    issues = _tampered(ledger_dir, keys).issues
    assert [(i.kind, i.seq) for i in issues] == [("dropped", 3)]
    assert "seq 2 missing" in issues[0].message


def test_removed_first_entries_are_named(ledger_dir, keys, tamper):
    path = tamper.writer_file(ledger_dir, keys, "bob")
    tamper.write_lines(path, tamper.read_lines(path)[2:])
    first = _tampered(ledger_dir, keys).first_issue
    assert first is not None
    assert first.kind == "dropped"
    assert "seq 0..1" in first.message


def test_reordered_entries_are_named(ledger_dir, keys, tamper):
    path = tamper.writer_file(ledger_dir, keys, "alice")
    lines = tamper.read_lines(path)
    lines[2], lines[3] = lines[3], lines[2]
    tamper.write_lines(path, lines)
    issues = _tampered(ledger_dir, keys).issues
    assert {i.kind for i in issues} == {"reordered"}
    assert (issues[0].seq, issues[0].line) == (3, 3)
    assert "seq 3 appears before seq 2" in issues[0].message


def test_duplicated_entry_is_named(ledger_dir, keys, tamper):
    path = tamper.writer_file(ledger_dir, keys, "alice")
    lines = tamper.read_lines(path)
    lines.insert(4, lines[2])
    tamper.write_lines(path, lines)
    issues = _tampered(ledger_dir, keys).issues
    assert [(i.kind, i.seq, i.line) for i in issues] == [("duplicated", 2, 5)]


def test_entry_from_untrusted_key_is_forged(ledger_dir, keys):
    with Ledger(ledger_dir, key=keys["mallory"].private) as mallory:
        mallory.append("checkpoint.deleted", run="run-a", path="/ckpt/alice-7")
    issues = _tampered(ledger_dir, keys).issues
    assert len(issues) == 1
    assert issues[0].kind == "forged"
    assert keys["mallory"].public.fingerprint in issues[0].message


def test_chain_resigned_with_attacker_key_keeping_victims_name(ledger_dir, keys, tamper):
    # Mallory rewrites alice's history and signs it with her own key, keeping the
    # attribution to alice: every signature fails under alice's trusted key.
    path = tamper.writer_file(ledger_dir, keys, "alice")
    lines = tamper.read_lines(path)
    prev = None
    out = []
    for line in lines:
        obj = json.loads(line)
        obj["prev"] = prev
        if obj["seq"] == 2:
            obj["data"]["loss"] = 99.0
        new = tamper.resign(obj, keys["mallory"].private)
        prev = tamper.entry_hash_of(new)
        out.append(new)
    tamper.write_lines(path, out)
    issues = _tampered(ledger_dir, keys).issues
    assert issues[0].kind == "altered"
    assert issues[0].seq == 0
    assert {i.kind for i in issues} == {"altered"}


def test_chain_resigned_as_attacker_is_forged_but_self_consistent(ledger_dir, keys, tamper):
    # Mallory replaces alice's file with a chain fully re-attributed to her key: the chain
    # itself is consistent, so only trust in the signer tells it apart.
    path = tamper.writer_file(ledger_dir, keys, "alice")
    mallory = keys["mallory"]
    out, prev = [], None
    for line in tamper.read_lines(path):
        obj = json.loads(line)
        obj["prev"] = prev
        obj["actor"]["key"] = mallory.public.fingerprint
        obj["actor"]["identity"] = "alice@cluster"
        if obj["seq"] == 0:
            from trainwarden.ledger._format import b64encode

            obj["data"]["key"] = b64encode(mallory.public.raw)
        out.append(tamper.resign(obj, mallory.private))
        prev = tamper.entry_hash_of(out[-1])
    tamper.write_lines(path, out)
    issues = _tampered(ledger_dir, keys).issues
    assert issues[0].kind == "forged"
    assert issues[0].seq == 0
    # Without trusted keys, the rewrite is only visible as "file name does not match key".
    report = inspect_ledger(ledger_dir, keys=(), insecure_skip_signer_check=True)
    assert not report.signers_checked
    assert [i.kind for i in report.issues] == ["misplaced"]


def test_trusted_colleague_cannot_write_into_another_writers_file(ledger_dir, keys, tamper):
    # Bob holds a trusted key, but an entry in alice's file must be signed by alice.
    path = tamper.writer_file(ledger_dir, keys, "alice")
    lines = tamper.read_lines(path)
    obj = json.loads(lines[-1])
    obj.update(seq=obj["seq"] + 1, prev=tamper.entry_hash_of(lines[-1]), event="ckpt.deleted")
    obj["actor"]["key"] = keys["bob"].public.fingerprint
    lines.append(tamper.resign(obj, keys["bob"].private))
    tamper.write_lines(path, lines)
    issues = _tampered(ledger_dir, keys).issues
    assert [(i.kind, i.seq) for i in issues] == [("forged", 6)]
    assert "not to this writer's key" in issues[0].message


def test_replaced_entry_resigned_by_its_own_key_breaks_the_chain(ledger_dir, keys, tamper):
    # Even the key holder cannot rewrite the middle of the chain without breaking it.
    path = tamper.writer_file(ledger_dir, keys, "alice")
    lines = tamper.read_lines(path)
    obj = json.loads(lines[2])
    obj["data"]["loss"] = 0.0
    lines[2] = tamper.resign(obj, keys["alice"].private)
    tamper.write_lines(path, lines)
    issues = _tampered(ledger_dir, keys).issues
    assert [(i.kind, i.seq) for i in issues] == [("chain_broken", 3)]


def test_renamed_writer_file_is_misplaced(ledger_dir, keys, tamper):
    path = tamper.writer_file(ledger_dir, keys, "bob")
    path.rename(path.with_name("node9_1_" + path.name.split("_", 2)[2]))
    issues = _tampered(ledger_dir, keys).issues
    assert issues[0].kind == "misplaced"
    assert "renamed" in issues[0].message


def test_garbage_line_is_malformed(ledger_dir, keys, tamper):
    path = tamper.writer_file(ledger_dir, keys, "alice")
    lines = tamper.read_lines(path)
    lines[3] = b'{"not": "an entry"}\n'
    tamper.write_lines(path, lines)
    issues = _tampered(ledger_dir, keys).issues
    assert [(i.kind, i.line) for i in issues] == [("malformed", 4)]


def test_symlinked_writer_file_is_unreadable(ledger_dir, keys, tamper, tmp_path):
    path = tamper.writer_file(ledger_dir, keys, "bob")
    target = tmp_path / "elsewhere.jsonl"
    shutil.move(path, target)
    path.symlink_to(target)
    issues = _tampered(ledger_dir, keys).issues
    assert [i.kind for i in issues] == ["unreadable"]


# -- truncation, dropped files and seals ------------------------------------------------


def _seal(root, keys, **kwargs):
    return seal_ledger(root, key=keys["sealer"].private, writer_keys=_trusted(keys), **kwargs)


def _verify_sealed(root, keys, **kwargs):
    return verify_ledger(root, keys=_trusted(keys), seal_keys=[keys["sealer"].public], **kwargs)


def test_tail_truncated_after_seal_is_detected(ledger_dir, keys, tamper):
    seal = _seal(ledger_dir, keys)
    assert {w.count for w in seal.writers} == {6, 4}
    path = tamper.writer_file(ledger_dir, keys, "alice")
    tamper.write_lines(path, tamper.read_lines(path)[:-2])
    with pytest.raises(LedgerTampered) as info:
        _verify_sealed(ledger_dir, keys)
    issues = info.value.report.issues
    assert [(i.kind, i.file, i.seq) for i in issues] == [("truncated", str(path), 4)]
    assert "seq 4..5 removed" in issues[0].message


def test_tail_truncated_before_any_seal_is_only_reported_as_unsealed(ledger_dir, keys, tamper):
    # The documented limitation: without a seal, the tail of a chain is unprotected.
    path = tamper.writer_file(ledger_dir, keys, "alice")
    tamper.write_lines(path, tamper.read_lines(path)[:-2])
    report = verify_ledger(ledger_dir, keys=_trusted(keys))
    assert report.intact
    assert any(w.kind == "unsealed" for w in report.warnings)


def test_entries_after_the_last_seal_are_reported_unsealed(ledger_dir, keys):
    _seal(ledger_dir, keys)
    with Ledger(ledger_dir, key=keys["alice"].private) as alice:
        alice.append("train.step", run="run-a", step=99)
    report = _verify_sealed(ledger_dir, keys)
    unsealed = {w.writer: w.unsealed for w in report.writers if w.role == "writer"}
    assert sorted(unsealed.values()) == [0, 0, 2]
    assert sum(w.kind == "unsealed" for w in report.warnings) == 1


def test_dropped_writer_file_after_seal_is_detected(ledger_dir, keys, tamper):
    _seal(ledger_dir, keys)
    path = tamper.writer_file(ledger_dir, keys, "bob")
    path.unlink()
    with pytest.raises(LedgerTampered) as info:
        _verify_sealed(ledger_dir, keys)
    issues = info.value.report.issues
    assert [(i.kind, i.writer) for i in issues] == [("writer_missing", path.name[:-6])]


def test_rewritten_head_after_seal_is_detected(ledger_dir, keys, tamper):
    _seal(ledger_dir, keys)
    path = tamper.writer_file(ledger_dir, keys, "bob")
    lines = tamper.read_lines(path)
    obj = json.loads(lines[-1])
    obj["data"]["step"] = 42
    lines[-1] = tamper.resign(obj, keys["bob"].private)  # valid signature by bob himself
    tamper.write_lines(path, lines)
    with pytest.raises(LedgerTampered) as info:
        _verify_sealed(ledger_dir, keys)
    assert [(i.kind, i.seq) for i in info.value.report.issues] == [("rewritten", 3)]


def test_torn_final_line_is_in_progress_not_tampering(ledger_dir, keys, tamper):
    path = tamper.writer_file(ledger_dir, keys, "alice")
    lines = tamper.read_lines(path)
    tamper.write_lines(path, [*lines, lines[-1][:40]])
    report = verify_ledger(ledger_dir, keys=_trusted(keys))
    assert report.intact
    assert [w.kind for w in report.warnings if w.kind == "in_progress"] == ["in_progress"]
    assert {w.in_progress_bytes for w in report.writers} == {0, 40}


def test_torn_line_covered_by_a_seal_is_truncation(ledger_dir, keys, tamper):
    _seal(ledger_dir, keys)
    path = tamper.writer_file(ledger_dir, keys, "alice")
    lines = tamper.read_lines(path)
    tamper.write_lines(path, [*lines[:-1], lines[-1][:-1]])  # drop only the final newline
    with pytest.raises(LedgerTampered) as info:
        _verify_sealed(ledger_dir, keys)
    assert [(i.kind, i.seq) for i in info.value.report.issues] == [("truncated", 5)]


def test_seal_by_untrusted_key_is_forged(ledger_dir, keys):
    seal_ledger(ledger_dir, key=keys["rogue_sealer"].private)
    with pytest.raises(LedgerTampered) as info:
        _verify_sealed(ledger_dir, keys)
    kinds = [i.kind for i in info.value.report.issues]
    assert kinds == ["seal_forged", "seal_missing"]


def test_untrusted_seals_are_notes_without_seal_keys(ledger_dir, keys):
    # Nobody can accuse writers by planting a seal: untrusted seals are not evidence.
    seal_ledger(ledger_dir, key=keys["rogue_sealer"].private)
    path = next((ledger_dir / SEALS_DIR).glob("*.jsonl"))
    path.write_bytes(path.read_bytes().replace(b'"size":2', b'"size":3'))
    report = verify_ledger(ledger_dir, keys=_trusted(keys))
    assert report.intact
    assert not report.seals_checked
    assert any(w.kind == "seal_altered" for w in report.warnings)


def test_edited_seal_is_detected(ledger_dir, keys):
    _seal(ledger_dir, keys)
    path = next((ledger_dir / SEALS_DIR).glob("*.jsonl"))
    text = path.read_text()
    obj = json.loads(text.splitlines()[1])
    obj["data"]["writers"][0]["count"] -= 1
    new = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    path.write_text(text.splitlines()[0] + "\n" + new + "\n")
    with pytest.raises(LedgerTampered) as info:
        _verify_sealed(ledger_dir, keys)
    assert next(i.kind for i in info.value.report.issues) == "seal_altered"


def test_seal_files_deleted_with_seal_keys_is_seal_missing(ledger_dir, keys):
    _seal(ledger_dir, keys)
    shutil.rmtree(ledger_dir / SEALS_DIR)
    with pytest.raises(LedgerTampered) as info:
        _verify_sealed(ledger_dir, keys)
    assert [i.kind for i in info.value.report.issues] == ["seal_missing"]


def test_seal_rolled_back_is_detected_with_a_receipt(ledger_dir, keys, tamper, tmp_path):
    # Mallory saves the seals and alice's file, lets the job run and get sealed again,
    # then restores both older copies: consistent on disk, caught by the receipt.
    receipt = tmp_path / "receipt.json"
    _seal(ledger_dir, keys, receipt=receipt)
    alice = tamper.writer_file(ledger_dir, keys, "alice")
    saved_alice = alice.read_bytes()
    saved_seals = {p: p.read_bytes() for p in (ledger_dir / SEALS_DIR).iterdir()}
    with Ledger(ledger_dir, key=keys["alice"].private, resume=True) as writer:
        writer.append("checkpoint.saved", run="run-a", path="/c/7", digest="sha256:" + "0" * 64)
    _seal(ledger_dir, keys, receipt=receipt)
    _verify_sealed(ledger_dir, keys, seal_receipts=[receipt])
    alice.write_bytes(saved_alice)
    for path, data in saved_seals.items():
        path.write_bytes(data)
    assert _verify_sealed(ledger_dir, keys).intact  # the limitation without a receipt
    with pytest.raises(LedgerTampered) as info:
        _verify_sealed(ledger_dir, keys, seal_receipts=[receipt])
    kinds = [i.kind for i in info.value.report.issues]
    assert kinds[0] == "seal_rollback"
    assert "truncated" in kinds


def test_later_seal_covering_less_is_a_rollback(ledger_dir, keys, tamper):
    _seal(ledger_dir, keys)
    # A trusted sealer run against an older copy of bob's file produced a shrinking seal.
    bob = tamper.writer_file(ledger_dir, keys, "bob")
    lines = tamper.read_lines(bob)
    writers = []
    for path in sorted((ledger_dir / "writers").glob("*.jsonl")):
        path_lines = lines[:2] if path == bob else tamper.read_lines(path)
        writers.append(
            {
                "count": len(path_lines),
                "head": tamper.entry_hash_of(path_lines[-1]),
                "writer": path.name[:-6],
            }
        )
    leaves = [leaf_bytes(w["writer"], w["count"], w["head"]) for w in writers]
    data = {"root": merkle_root(leaves), "size": len(writers), "writers": writers}
    sealer = Ledger._for_role(ledger_dir, key=keys["sealer"].private, subdir=SEALS_DIR, resume=True)
    with sealer:
        sealer._append(SEAL_EVENT, None, data, internal=True)
    with pytest.raises(LedgerTampered) as info:
        _verify_sealed(ledger_dir, keys)
    issues = info.value.report.issues
    assert [(i.kind, i.file) for i in issues] == [("seal_rollback", str(bob))]
    assert "covers 2 entries" in issues[0].message


def test_sealer_refuses_to_seal_a_tampered_ledger(ledger_dir, keys, tamper):
    _seal(ledger_dir, keys)
    path = tamper.writer_file(ledger_dir, keys, "alice")
    tamper.write_lines(path, tamper.read_lines(path)[:-1])
    with pytest.raises(LedgerTampered):
        _seal(ledger_dir, keys)
    assert len(list((ledger_dir / SEALS_DIR).glob("*.jsonl"))) == 1
    seal_lines = next((ledger_dir / SEALS_DIR).glob("*.jsonl")).read_text().splitlines()
    assert len(seal_lines) == 2  # open + the first seal only


def test_verify_needs_trusted_keys_or_explicit_insecure_mode(ledger_dir):
    with pytest.raises(ConfigError):
        verify_ledger(ledger_dir, keys=())
    report = verify_ledger(ledger_dir, keys=(), insecure_skip_signer_check=True)
    assert report.intact
    assert not report.signers_checked


def test_receipt_needs_seal_keys(ledger_dir, keys, tmp_path):
    with pytest.raises(ConfigError):
        verify_ledger(ledger_dir, keys=_trusted(keys), seal_receipts=[tmp_path / "r"])


def test_single_writer_file_can_be_verified(ledger_dir, keys, tamper):
    _seal(ledger_dir, keys)
    bob = tamper.writer_file(ledger_dir, keys, "bob")
    tamper.writer_file(ledger_dir, keys, "alice").unlink()  # not bob's business
    report = verify_ledger(bob, keys=[keys["bob"].public], seal_keys=[keys["sealer"].public])
    assert report.intact
    assert len(report.writers) == 2
    tamper.write_lines(bob, tamper.read_lines(bob)[:-1])
    with pytest.raises(LedgerTampered) as info:
        verify_ledger(bob, keys=[keys["bob"].public], seal_keys=[keys["sealer"].public])
    assert [i.kind for i in info.value.report.issues] == ["truncated"]


@pytest.mark.parametrize(
    "garbage",
    [
        b"[" * 200_000 + b"]" * 200_000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        b"\xff\xfe\x00",
        b'"\\ud800"',
        b"x" * (1 << 20) + b"y" * 10,
    ],
)
def test_hostile_lines_are_malformed_not_crashes(ledger_dir, keys, tamper, garbage):
    path = tamper.writer_file(ledger_dir, keys, "bob")
    lines = tamper.read_lines(path)
    tamper.write_lines(path, [*lines[:2], garbage + b"\n", *lines[2:]])
    issues = _tampered(ledger_dir, keys).issues
    assert [(i.kind, i.line) for i in issues] == [("malformed", 3)]


def test_huge_line_is_skipped_in_bounded_reads(ledger_dir, keys, tamper):
    import tracemalloc

    path = tamper.writer_file(ledger_dir, keys, "bob")
    lines = tamper.read_lines(path)
    with path.open("wb") as fh:
        fh.writelines(lines[:2])
        block = b"z" * (1 << 20)
        for _ in range(48):  # a 48 MiB line
            fh.write(block)
        fh.write(b"\n")
        fh.writelines(lines[2:])
    tracemalloc.start()
    try:
        issues = _tampered(ledger_dir, keys).issues
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [(i.kind, i.line) for i in issues] == [("malformed", 3)]
    assert peak < 16 << 20


def test_dropped_writer_file_before_any_seal_is_undetectable_but_noted(ledger_dir, keys, tamper):
    # The documented limitation: only a seal knows which writers existed.
    tamper.writer_file(ledger_dir, keys, "bob").unlink()
    report = verify_ledger(ledger_dir, keys=_trusted(keys))
    assert report.intact
    assert [w.kind for w in report.warnings] == ["unsealed"]


def test_a_key_trusted_to_write_and_to_seal_is_noted(ledger_dir, keys):
    seal_ledger(ledger_dir, key=keys["alice"].private)
    report = verify_ledger(ledger_dir, keys=_trusted(keys), seal_keys=[keys["alice"].public])
    assert "seal_key_is_writer_key" in [w.kind for w in report.warnings]
