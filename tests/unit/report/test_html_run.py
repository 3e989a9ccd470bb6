"""What the forensic report finds in a run directory: each technique, each kind of tampering.

Runs are written through the real APIs (ledger, keys, signed checkpoints) by the synthetic
run generator; each tampering test then does to the evidence what an insider would (edit a
ledger line, swap a checkpoint, rewrite telemetry) and checks that the report shows it.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sys
import types
from pathlib import Path

import pytest

from trainwarden.keys import PrivateKey
from trainwarden.report import RunReport, read_run
from trainwarden.report._run_ledger import scope_of
from trainwarden.report._synthetic import SyntheticRun, write_synthetic_run

RANKS = 8
STEPS = 400


def _keys(*runs: SyntheticRun) -> list[Path]:
    keys: list[Path] = []
    for run in runs:
        keys.extend(run.keys)
        if run.insider_key is not None:
            keys.append(run.insider_key)
    return keys


def _read(run: SyntheticRun, **kwargs: object) -> RunReport:
    kwargs.setdefault("keys", _keys(run))
    kwargs.setdefault("seal_keys", [run.seal_key])
    return read_run(run.run_dir, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def sabotaged(tmp_path_factory: pytest.TempPathFactory) -> SyntheticRun:
    root = tmp_path_factory.mktemp("sabotaged")
    return write_synthetic_run(root / "run", ranks=RANKS, steps=STEPS, drill=True)


@pytest.fixture(scope="module")
def clean_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[SyntheticRun, SyntheticRun]:
    root = tmp_path_factory.mktemp("clean")
    return (
        write_synthetic_run(root / "a", ranks=RANKS, steps=STEPS),
        write_synthetic_run(root / "b", ranks=RANKS, steps=STEPS),
    )


@pytest.fixture
def clean(tmp_path: Path) -> SyntheticRun:
    """A fresh clean run to tamper with."""
    return write_synthetic_run(tmp_path / "run", ranks=4, steps=200)


def _by_check(report: RunReport, prefix: str) -> list[object]:
    return [f for f in report.findings if f.check.startswith(prefix)]


# -- a sabotaged run: every technique the incident used ------------------------------------


def test_sabotaged_run_is_compromised_with_each_technique(sabotaged: SyntheticRun) -> None:
    report = _read(sabotaged)
    assert report.verdict == "compromised"
    assert set(report.techniques) == {"T2", "T3", "T4", "T5", "T6", "T7", "T8"}
    established = {f.technique for f in report.findings if f.established}
    assert established >= {"T2", "T4", "T5", "T6", "T7", "T8"}
    # The sleep is timing evidence: suspected, on the right rank.
    (timing,) = _by_check(report, "guard.timing")
    assert not timing.established  # type: ignore[attr-defined]
    assert timing.rank == 3  # type: ignore[attr-defined]
    assert "rank 3" in report.headline or "3" in report.headline


def test_a_check_seen_by_every_rank_is_one_card(sabotaged: SyntheticRun) -> None:
    report = _read(sabotaged)
    (lr,) = _by_check(report, "guard.hyperparam")
    assert lr.ranks == tuple(range(RANKS))  # type: ignore[attr-defined]
    assert lr.rank is None  # type: ignore[attr-defined]
    assert "reported 8 times by 8 ranks" in lr.message  # type: ignore[attr-defined]


def test_an_edited_sender_is_not_named_but_the_guard_finding_still_counts(
    sabotaged: SyntheticRun,
) -> None:
    # As in a real run, the SIGTERM left one record with its sender (guard.signal) and the
    # guard's finding about it. The record was edited to blame the intern: the sender it
    # names now cannot be trusted, but the guard's finding about the same signal verifies.
    report = _read(sabotaged)
    (kill,) = [f for f in report.findings if f.technique == "T6" and f.rank == 2]
    assert kill.check.startswith("signal.sender")
    assert kill.established
    assert kill.named is None
    assert "the only record naming the sender is altered" in kill.message
    assert "SIGTERM received from pid 31337 (uid 1002" in kill.message
    rows = [k for k in report.kills if k.rank == 2 and k.signal == "SIGTERM"]
    assert [k.integrity for k in rows] == ["altered"]
    (sigkill,) = [f for f in report.findings if f.title == "Rank 6 died of SIGKILL"]
    assert not sigkill.established
    assert sigkill.named is None
    # torchrun's agent stopping the other ranks is in the table, never a finding.
    teardown = [k for k in report.kills if k.source == "shim"]
    assert teardown
    assert all(k.machinery for k in teardown)
    assert not [f for f in report.findings if f.technique == "T6" and f.rank not in (2, 6)]


def test_one_signal_is_one_card_and_the_synthetic_run_records_it_as_a_real_run_does(
    sabotaged: SyntheticRun,
) -> None:
    # A real run under torchrun (trainwarden drill's T6-sigterm) records a SIGTERM to a rank
    # with the guard as guard.signal + guard.finding (rule guard.signal) + rank.exit, and no
    # rank.signal; the report shows it as one card.
    report = _read(sabotaged)
    events = {e.event for e in report.timeline if e.rank == 2 or 2 in e.ranks}
    assert "rank.signal" not in events
    assert {"guard.signal", "guard.finding", "rank.exit"} <= events
    t6 = [f for f in report.findings if f.technique == "T6"]
    assert sorted(f.rank for f in t6 if f.rank is not None) == [2, 6]
    assert not [f for f in report.findings if f.check.startswith("guard.signal")]


def test_checkpoints_modified_and_deleted_after_signing(sabotaged: SyntheticRun) -> None:
    report = _read(sabotaged)
    status = {Path(c.path).name: c.status for c in report.checkpoints}
    modified, deleted = sabotaged.checkpoints[3].name, sabotaged.checkpoints[4].name
    assert status[modified] == "changed"
    assert status[deleted] == "missing"
    assert {s for name, s in status.items() if name not in (modified, deleted)} == {"ok"}
    (changed,) = _by_check(report, "checkpoint.changed")
    if os.geteuid() == 0:  # the generator hands the file to uid 1002 only when it can
        assert "1002" in (changed.named or "")  # type: ignore[attr-defined]


def test_a_checkpoint_signature_deleted_or_replaced_after_signing(clean: SyntheticRun) -> None:
    # The checkpoints' bytes are intact, so the ledger's digests match; but `trainwarden
    # verify` now refuses one (signature gone) and another (a sibling's signature in its
    # place): the report said clean.
    first, second, third = (Path(f"{c}.sig") for c in clean.checkpoints[:3])
    first.unlink()
    shutil.copyfile(third, second)
    report = _read(clean)
    rows = {Path(c.path).name: c for c in report.checkpoints}
    assert rows[clean.checkpoints[0].name].signature == "missing"
    assert rows[clean.checkpoints[1].name].signature == "altered"
    assert {c.signature for c in report.checkpoints[2:]} == {"ok"}
    assert {c.status for c in report.checkpoints} == {"ok"}
    deleted = _by_check(report, "checkpoint.signature-missing")
    altered = _by_check(report, "checkpoint.signature-altered")
    assert len(deleted) == len(altered) == 1
    assert all(f.technique == "T7" and f.established for f in [*deleted, *altered])  # type: ignore[attr-defined]
    assert report.verdict == "compromised"


def test_a_checkpoint_signature_by_an_untrusted_key_is_altered(
    clean: SyntheticRun, tmp_path: Path
) -> None:
    from trainwarden.sign import generate_key, load_private_key, sign_path

    target = clean.checkpoints[1]
    private, _ = generate_key(tmp_path / "insider", identity="insider@cluster")
    sign_path(target, load_private_key(private), run=clean.run_id, step=20, workers=1)
    (row,) = [c for c in _read(clean).checkpoints if c.path.endswith(target.name)]
    assert row.signature == "altered"
    assert "trusted" in (row.signature_reason or "")


def test_ledger_edit_and_telemetry_edit_are_evidence_tampering(sabotaged: SyntheticRun) -> None:
    report = _read(sabotaged)
    assert report.ledger.first_break is not None
    assert report.ledger.first_break.kind == "altered"
    (altered,) = _by_check(report, "ledger.altered")
    assert "guard.signal" in altered.message  # type: ignore[attr-defined]
    assert altered.ranks == ()  # type: ignore[attr-defined]  # the edited entry's rank: untrusted
    checks = {rank: status for rank, status, _ in report.telemetry_checks}
    assert checks[3] == "changed"
    assert checks[6] == "unattested"  # SIGKILLed: the guard never closed
    assert {s for r, s in checks.items() if r not in (3, 6)} == {"ok"}
    assert any(f.check == "telemetry.changed" and f.rank == 3 for f in report.findings)
    row = next(e for e in report.timeline if e.integrity == "altered")
    assert row.event == "guard.signal"
    assert row.level == "bad"


def test_drill_scenarios_are_matched_with_their_detection(sabotaged: SyntheticRun) -> None:
    report = _read(sabotaged)
    assert [d.technique for d in report.drill] == ["T3", "T4", "T5", "T5", "T6"]
    assert all(d.detected_by is not None for d in report.drill)
    assert all(d.insider == "mallory@node7" for d in report.drill)
    assert all((d.seconds_to_detection or 0) >= 0 for d in report.drill)


def test_egress_external_endpoint_and_native_library(sabotaged: SyntheticRun) -> None:
    report = _read(sabotaged)
    scopes = {e.host: e.scope for e in report.egress}
    assert scopes == {"paste.example.net": "external", "127.0.0.1": "loopback"}
    assert report.egress[0].host == "paste.example.net"  # external first
    loopback = next(e for e in report.egress if e.host == "127.0.0.1")
    assert loopback.ranks == tuple(range(RANKS))
    assert loopback.count == RANKS
    assert any(e.event == "egress.native-load" for e in report.timeline)


def test_same_event_from_every_rank_is_one_timeline_row(sabotaged: SyntheticRun) -> None:
    report = _read(sabotaged)
    rng_rows = [e for e in report.timeline if e.event == "guard.rng"]
    assert rng_rows
    assert all(e.ranks == tuple(range(RANKS)) for e in rng_rows)
    assert all(len(e.aliases) == RANKS - 1 for e in rng_rows)
    assert "ranks 0–7" in rng_rows[0].summary
    anchors = {e.anchor for e in report.timeline} | {a for e in report.timeline for a in e.aliases}
    assert all(f.anchor in anchors for f in report.findings if f.anchor)


def test_comparison_with_a_clean_run_shows_differences_only(
    sabotaged: SyntheticRun,
    clean_pair: tuple[SyntheticRun, SyntheticRun],
) -> None:
    clean, _ = clean_pair
    report = _read(
        sabotaged,
        keys=_keys(sabotaged, clean),
        seal_keys=[sabotaged.seal_key, clean.seal_key],
        against=clean.run_dir,
    )
    assert report.comparison is not None
    rows = {(r.area, r.item): r for r in report.comparison.rows}
    assert rows[("environment", "environment verdict")].this_run == "tampered"
    assert rows[("environment", "environment verdict")].clean_run == "intact"
    assert ("seeds", "rank 0 reseeds during the run") in rows
    data = [r for r in report.comparison.rows if r.area == "data order" and "batches" in r.item]
    assert len(data) == 1
    assert "ranks 0–7" in data[0].item
    start = int(data[0].this_run.split()[3].split("–")[0])
    assert start <= int(STEPS * 0.5) <= start + report.telemetry.width
    lr = [r for r in report.comparison.rows if "learning rate" in r.item]
    assert len(lr) == 1
    assert not [r for r in report.comparison.rows if r.area == "code"]
    assert report.comparison.same["code"] > 0
    assert report.comparison.notes == ()  # the clean run itself verified clean


def test_a_clean_run_that_is_not_clean_is_said_so(
    sabotaged: SyntheticRun, clean_pair: tuple[SyntheticRun, SyntheticRun]
) -> None:
    clean, _ = clean_pair
    # Only the sabotaged run's keys: the "clean" run's ledger cannot be trusted.
    report = _read(sabotaged, against=clean.run_dir)
    assert report.comparison is not None
    assert "the clean run itself is compromised" in report.comparison.notes[0]


def test_two_clean_runs_of_one_job_do_not_differ(
    clean_pair: tuple[SyntheticRun, SyntheticRun],
) -> None:
    a, b = clean_pair
    report = _read(a, keys=_keys(a, b), seal_keys=[a.seal_key, b.seal_key], against=b.run_dir)
    assert report.comparison is not None
    assert report.comparison.rows == ()
    assert report.comparison.notes == ()


# -- a clean run ----------------------------------------------------------------------------


def test_clean_run_with_every_check_verified_is_clean(
    clean_pair: tuple[SyntheticRun, SyntheticRun],
) -> None:
    run, _ = clean_pair
    report = _read(run)
    assert report.findings == ()
    assert report.unverified == ()
    assert report.verdict == "clean"
    assert report.provenance.verified is True
    assert report.ledger.intact
    assert report.ledger.signers_checked
    assert report.ledger.seals_checked
    assert {c.status for c in report.checkpoints} == {"ok"}
    assert {s for _, s, _ in report.telemetry_checks} == {"ok"}


def test_clean_run_without_keys_is_not_verified(
    clean_pair: tuple[SyntheticRun, SyntheticRun],
) -> None:
    run, _ = clean_pair
    report = read_run(run.run_dir)
    assert report.findings == ()
    assert report.verdict == "not-verified"
    assert any("signers were not checked" in u for u in report.unverified)
    assert all(e.integrity == "unchecked" for e in report.timeline)


def test_provenance_without_a_trusted_key_is_never_called_verified(
    clean_pair: tuple[SyntheticRun, SyntheticRun],
) -> None:
    run, _ = clean_pair
    report = _read(run, keys=[])
    assert report.provenance.verified is None
    assert report.provenance.predicate_type == "https://slsa.dev/provenance/v1"
    assert len(report.provenance.subjects) == 3
    assert report.verdict == "not-verified"


def test_provenance_signed_by_another_key_does_not_verify(clean: SyntheticRun) -> None:

    report = _read(clean, keys=[PrivateKey.generate("someone@else").public])
    assert report.provenance.verified is False
    assert report.verdict == "compromised"


def test_provenance_edited_after_signing(clean: SyntheticRun) -> None:
    path = clean.run_dir / "provenance.intoto.json"
    envelope = json.loads(path.read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["subject"][0]["digest"]["sha256"] = "0" * 64  # swap an output's digest
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    path.write_text(json.dumps(envelope))
    report = _read(clean)
    assert report.provenance.verified is False
    checks = {f.check for f in report.findings}
    assert {"provenance.signature", "provenance.changed"} <= checks
    assert report.verdict == "compromised"


def test_the_verifier_rehashes_outputs_only_when_checkpoints_are(
    clean: SyntheticRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bool] = []

    def verify_provenance(path: Path, keys: object, *, check_outputs: bool = True) -> None:
        seen.append(check_outputs)

    module = types.ModuleType("trainwarden.provenance")
    module.verify_provenance = verify_provenance  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "trainwarden.provenance", module)
    assert _read(clean).provenance.verification.startswith("signature and outputs verified")
    assert _read(clean, check_checkpoints=False).provenance.verified is True
    assert seen == [True, False]


def test_provenance_deleted(clean: SyntheticRun) -> None:
    (clean.run_dir / "provenance.intoto.json").unlink()
    report = _read(clean)
    assert any(f.check == "provenance.missing" and f.established for f in report.findings)


# -- tampering with the evidence, one kind at a time ---------------------------------------


def _ckpt(run: SyntheticRun, index: int = 2) -> Path:
    return run.checkpoints[index]


@pytest.mark.parametrize("how", ["rewrite", "append", "symlink", "directory", "delete"])
def test_every_kind_of_checkpoint_swap_shows(clean: SyntheticRun, how: str) -> None:
    path = _ckpt(clean)
    recorded = str(path.resolve())  # as the ledger recorded it, before anything changes
    other = _ckpt(clean, 0)
    if how == "rewrite":
        path.write_bytes(b"\x80\x04other weights")
    elif how == "append":
        with path.open("ab") as fh:
            fh.write(b"\x00")
    elif how == "symlink":  # an older checkpoint put in its place (rollback)
        path.unlink()
        path.symlink_to(other)
    elif how == "directory":
        path.unlink()
        path.mkdir()
        (path / "weights.bin").write_bytes(b"x")
    else:
        path.unlink()
    report = _read(clean)
    row = next(c for c in report.checkpoints if c.path == recorded)
    assert row.status == ("missing" if how == "delete" else "changed")
    assert report.verdict == "compromised"
    assert any(f.technique == "T7" and f.established for f in report.findings)


def test_an_unreadable_checkpoint_is_not_verified_not_fine(clean: SyntheticRun) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    path = _ckpt(clean)
    path.chmod(0)
    try:
        report = _read(clean)
    finally:
        path.chmod(0o644)
    row = next(c for c in report.checkpoints if c.path == str(path.resolve()))
    assert row.status == "unchecked"
    assert report.verdict != "clean"


def _delete_with_record(clean: SyntheticRun, identity: str) -> tuple[Path, PrivateKey]:
    """Delete a checkpoint after a ``checkpoint.deleted`` record signed by a new key."""
    from trainwarden.ledger import Ledger

    path = _ckpt(clean)
    key = PrivateKey.generate(identity)
    with Ledger(clean.run_dir / "ledger", key=key) as ledger:
        ledger.append("checkpoint.deleted", run=clean.run_id, path=str(path.resolve()))
    path.unlink()
    return path, key


def test_a_recorded_deletion_is_not_a_finding(clean: SyntheticRun) -> None:
    # The job's own key is not at hand (the generator kept it); a trusted deleter is a key
    # passed with --key like any writer.
    path, key = _delete_with_record(clean, "retention@cluster")
    report = read_run(clean.run_dir, keys=[*clean.keys, key.public])
    row = next(c for c in report.checkpoints if c.path == str(path.resolve()))
    assert row.status == "deleted"
    assert not [f for f in report.findings if f.technique == "T7"]


@pytest.mark.parametrize("how", ["rewrite", "delete"])
def test_outputs_changed_after_the_provenance_was_signed_are_t7_not_t8(
    clean: SyntheticRun, how: str
) -> None:
    # The statement names the last checkpoints as its outputs; one changed after it was
    # signed. The statement itself is intact: the checkpoint changed (T7), the evidence not.
    path = clean.checkpoints[-1]
    if how == "rewrite":
        path.write_bytes(b"\x80\x04other weights")
    else:
        path.unlink()
    report = _read(clean)
    assert report.provenance.verified is True
    assert [o[:2] for o in report.provenance.outputs] == [
        (str(path.resolve()), "modified" if how == "rewrite" else "missing")
    ]
    assert not [f for f in report.findings if f.technique == "T8"]
    (card,) = [f for f in report.findings if f.technique == "T7"]  # one card, not two
    assert card.established
    assert card.check == ("checkpoint.changed" if how == "rewrite" else "checkpoint.missing")


def test_an_output_no_ledger_record_covers_gets_its_own_t7_card(clean: SyntheticRun) -> None:
    from trainwarden.report._run_findings import build_findings
    from trainwarden.report._run_model import Provenance

    provenance = Provenance(
        path="p.json",
        present=True,
        verified=True,
        outputs=(("/srv/out/final.pt", "modified", "sha256:aa now sha256:bb"),),
    )
    report = _read(clean)
    findings = build_findings(
        view=_view(),
        ledger=report.ledger,
        ledger_path="ledger",
        run_id=report.run_id,
        kills=(),
        checkpoints=report.checkpoints,
        telemetry=report.telemetry,
        telemetry_checks=(),
        provenance=provenance,
        supervisor_pid=None,
        key_args="",
    )
    (card,) = findings
    assert (card.technique, card.check, card.established) == (
        "T7",
        "provenance.output-modified",
        True,
    )


def _view() -> object:
    from trainwarden.report._run_ledger import LedgerView

    return LedgerView(entries=(), integrity={}, signers_checked=True, trusted=frozenset())


def test_a_forged_deletion_record_does_not_hide_a_deletion(clean: SyntheticRun) -> None:
    # trainwarden drill's T8-denied: after deleting a checkpoint, the insider appends a
    # "checkpoint.deleted" signed by a fresh key labelled as the colleague.
    path, _ = _delete_with_record(clean, "alice@cluster")
    report = _read(clean)
    row = next(c for c in report.checkpoints if c.path == str(path.resolve()))
    assert row.status == "missing"
    assert any(f.check == "checkpoint.missing" and f.established for f in report.findings)
    assert any(f.check == "ledger.forged" for f in report.findings)


def test_an_edited_checkpoint_record_is_ledger_tampering_not_a_changed_checkpoint(
    clean: SyntheticRun,
) -> None:
    # The file is untouched; its ledger record's digest was edited. The evidence shows the
    # ledger was tampered with (T8), not that the checkpoint changed (T7).
    path = _ckpt(clean)
    recorded = str(path.resolve())
    for writer in _writer_files(clean):
        lines = writer.read_text(encoding="utf-8").split("\n")
        for i, line in enumerate(lines):
            if '"event":"checkpoint.signed"' in line and json.dumps(recorded) in line:
                digest = json.loads(line)["data"]["digest"]
                lines[i] = line.replace(digest, "sha256:" + "0" * 64)
                writer.write_text("\n".join(lines), encoding="utf-8")
                break
    report = _read(clean)
    row = next(c for c in report.checkpoints if c.path == recorded)
    assert row.status == "unchecked"
    assert "altered" in (row.reason or "")
    assert not [f for f in report.findings if f.technique == "T7"]
    assert any(f.check == "ledger.altered" for f in report.findings)


def test_checkpoints_can_be_left_unhashed_but_then_are_not_verified(clean: SyntheticRun) -> None:
    _ckpt(clean).write_bytes(b"changed")
    report = _read(clean, check_checkpoints=False)
    assert {c.status for c in report.checkpoints} == {"not-checked"}
    assert any("not verified" in u for u in report.unverified)
    assert report.verdict != "clean"


def test_telemetry_edited_to_frame_a_rank_is_t8_not_a_slow_rank(clean: SyntheticRun) -> None:
    # Someone rewrote rank 1's telemetry after the guard closed it, so that rank 1 looks
    # slow: the evidence shows the telemetry was edited (T8), not that rank 1 slept (T3).
    path = clean.run_dir / "telemetry" / "rank-1.jsonl"
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        record["opt"] = (record.get("opt") or 0.0) + 1.5
        lines.append(json.dumps(record, separators=(",", ":")))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = _read(clean)
    assert any(f.check == "telemetry.changed" and f.rank == 1 for f in report.findings)
    assert not [f for f in report.findings if f.technique in ("T3", "T4")]


def test_a_ledger_with_no_trusted_seal_is_suspected_not_established(clean: SyntheticRun) -> None:
    # With --seal-pubkey, a ledger without a seal by that key had its seals deleted or was
    # never sealed (as trainwarden drill's runs other than the control and T7): the evidence
    # cannot tell which, so it is suspected evidence tampering, not established.
    for seal in (clean.run_dir / "ledger" / "seals").glob("*.jsonl"):
        seal.unlink()
    report = _read(clean)
    (missing,) = [f for f in report.findings if f.check == "ledger.seal_missing"]
    assert missing.technique == "T8"
    assert not missing.established
    assert report.verdict == "suspicious"


def _writer_files(run: SyntheticRun) -> list[Path]:
    return sorted((run.run_dir / "ledger" / "writers").glob("*.jsonl"))


def _file_with(run: SyntheticRun, event: str) -> Path:
    return next(p for p in _writer_files(run) if f'"event":"{event}"' in p.read_text())


@pytest.mark.parametrize("how", ["edit", "drop", "truncate", "delete-writer", "forge"])
def test_every_kind_of_ledger_tampering_shows(clean: SyntheticRun, how: str) -> None:
    from trainwarden.ledger import Ledger

    path = _file_with(clean, "checkpoint.signed")
    lines = path.read_text().splitlines(keepends=True)
    if how == "edit":
        index = next(i for i, line in enumerate(lines) if "checkpoint.signed" in line)
        lines[index] = lines[index].replace('"step":', '"step":1', 1)
        path.write_text("".join(lines))
    elif how == "drop":
        del lines[2]
        path.write_text("".join(lines))
    elif how == "truncate":  # the tail removed after the seal covered it
        path.write_text("".join(lines[:-2]))
    elif how == "delete-writer":
        path.unlink()
    else:
        insider = PrivateKey.generate("job-llm7@cluster")  # claims the job's identity
        with Ledger(clean.run_dir / "ledger", key=insider) as ledger:
            ledger.append("checkpoint.deleted", run=clean.run_id, path="/elsewhere")
    report = _read(clean)
    assert report.ledger.first_break is not None
    assert report.verdict == "compromised"
    assert any(f.technique == "T8" and f.established for f in report.findings)
    if how == "forge":
        (forged,) = _by_check(report, "ledger.forged")
        assert "not a trusted key" in (forged.named or "")  # type: ignore[attr-defined]


@pytest.mark.parametrize("how", ["edit", "truncate", "delete", "append"])
def test_every_kind_of_telemetry_tampering_shows(clean: SyntheticRun, how: str) -> None:
    path = clean.run_dir / "telemetry" / "rank-1.jsonl"
    data = path.read_bytes()
    if how == "edit":
        path.write_bytes(data.replace(b'"step":50,', b'"step":50,"x":0,', 1))
    elif how == "append":
        path.write_bytes(data + data.splitlines(keepends=True)[-1])
    elif how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.unlink()
    report = _read(clean)
    checks = {rank: status for rank, status, _ in report.telemetry_checks}
    assert {s for r, s in checks.items() if r != 1} == {"ok"}
    if how == "append":
        # Lines after what the guard attested prove nothing either way: not verified.
        assert checks[1] == "unattested"
        assert not any(f.technique == "T8" for f in report.findings)
        assert report.verdict == "not-verified"
        return
    assert checks[1] == ("missing" if how == "delete" else "changed")
    assert any(f.technique == "T8" and f.rank == 1 for f in report.findings)


def _sessions_run(tmp_path: Path, *, with_bytes: bool) -> tuple[Path, Path, Path]:
    """A rank file written by two guard sessions (a resumed rank), each attesting its part."""
    import hashlib

    from trainwarden.ledger import Ledger

    run_dir = tmp_path / "run"
    (run_dir / "telemetry").mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"schema_version": 1, "run_id": "r"}))
    key = PrivateKey.generate("job@x")
    (tmp_path / "job.pub").write_text(key.public.to_pem())
    parts = [
        "".join(json.dumps({"step": s, "rank": 0, "loss": 1.0}) + "\n" for s in steps).encode()
        for steps in (range(1, 51), range(51, 81))
    ]
    path = run_dir / "telemetry" / "rank-0.jsonl"
    path.write_bytes(b"".join(parts))
    with Ledger(run_dir / "ledger", key=key) as ledger:
        for part in parts:
            extra = {"bytes": len(part)} if with_bytes else {}
            ledger.append(
                "guard.telemetry",
                run="r",
                rank=0,
                path=str(path),
                lines=part.count(b"\n"),
                sha256=hashlib.sha256(part).hexdigest(),
                **extra,
            )
    return run_dir, tmp_path / "job.pub", path


def test_a_file_written_by_two_sessions_is_checked_range_by_range(tmp_path: Path) -> None:
    run_dir, key, path = _sessions_run(tmp_path, with_bytes=True)

    def status() -> tuple[str, str]:
        ((_, state, detail),) = read_run(run_dir, keys=[key]).telemetry_checks
        return state, detail

    assert status() == ("ok", "80 lines, sha256 of 2 sessions matches")
    data = path.read_bytes()
    path.write_bytes(data.replace(b'"step": 7,', b'"step": 8,', 1))
    state, detail = status()
    assert state == "changed"
    assert "session 1 of 2" in detail
    path.write_bytes(data[:-40])
    state, detail = status()
    assert state == "changed"
    assert "cut inside session 2 of 2" in detail


def test_without_byte_counts_two_sessions_cannot_be_verified(tmp_path: Path) -> None:
    run_dir, key, _ = _sessions_run(tmp_path, with_bytes=False)
    ((_, state, detail),) = read_run(run_dir, keys=[key]).telemetry_checks
    assert state == "unattested"
    assert "2 guard sessions" in detail


# -- signals --------------------------------------------------------------------------------


def _signal_run(tmp_path: Path, *events: tuple[str, dict[str, object]]) -> tuple[Path, Path]:
    from trainwarden.ledger import Ledger

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    key = PrivateKey.generate("supervisor@login1")
    (tmp_path / "sup.pub").write_text(key.public.to_pem())
    (run_dir / "run.json").write_text(
        json.dumps(
            {
                "schema_version": 1,
                "run_id": "r1",
                "command": ["python", "train.py"],
                "ledger": "ledger",
                "supervisor": {"pid": 500, "host": "h", "user": "alice", "key": ""},
            }
        )
    )
    with Ledger(run_dir / "ledger", key=key) as ledger:
        for event, data in events:
            ledger.append(event, run="r1", **data)
    return run_dir, tmp_path / "sup.pub"


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        (
            [
                (
                    "rank.signal",
                    {
                        "rank": 1,
                        "pid": 9,
                        "signal": "SIGTERM",
                        "signo": 15,
                        "source": "sigwaitinfo",
                        "sender": {
                            "pid": 77,
                            "uid": 1002,
                            "user": "mallory",
                            "cmdline": ["kill", "9"],
                        },
                    },
                )
            ],
            ("established", "mallory (uid 1002), pid 77: kill 9"),
        ),
        (
            [("rank.exit", {"rank": 1, "pid": 9, "status": None, "signal": "SIGKILL"})],
            ("suspected", None),
        ),
        (
            [
                (
                    "rank.signal",
                    {
                        "rank": 1,
                        "pid": 9,
                        "signal": "SIGTERM",
                        "signo": 15,
                        "source": "supervisor",
                        "sender": {
                            "pid": 500,
                            "uid": 1000,
                            "user": "alice",
                            "cmdline": ["trainwarden"],
                        },
                    },
                )
            ],
            (None, None),
        ),
        (
            [
                (
                    "rank.signal",
                    {
                        "rank": 1,
                        "pid": 9,
                        "signal": "SIGINT",
                        "signo": 2,
                        "source": "sigwaitinfo",
                        "sender": {
                            "pid": 500,
                            "uid": 1000,
                            "user": "alice",
                            "cmdline": ["trainwarden"],
                        },
                    },
                )
            ],
            (None, None),
        ),
        (
            [("rank.exit", {"rank": 1, "pid": 9, "status": None, "signal": "SIGSEGV"})],
            ("suspected", None),
        ),
        (
            [
                (
                    "supervisor.signal",
                    {
                        "signal": "SIGTERM",
                        "signo": 15,
                        "sender": {"pid": 66, "uid": 0, "user": "root", "cmdline": "scancel 12"},
                    },
                )
            ],
            ("established", "root (uid 0), pid 66: scancel 12"),
        ),
        # The records of trainwarden drill's T6-sigterm (a real run under torchrun): the
        # guard's signal record, its finding about the same signal, the shim's exit: one card.
        (
            [
                (
                    "guard.signal",
                    {
                        "rank": 1,
                        "pid": 9,
                        "signal": "SIGTERM",
                        "signo": 15,
                        "code": "SI_USER",
                        "action": "default",
                        "sender": {"pid": 77, "uid": 4242, "user": None, "cmdline": "kill 9"},
                    },
                ),
                (
                    "guard.finding",
                    {
                        "rule_id": "guard.signal",
                        "technique": "T6",
                        "check": "signals",
                        "severity": "medium",
                        "message": "SIGTERM received from pid 77 (uid 4242, kill 9)",
                        "evidence": "SIGTERM from pid 77",
                        "rank": 1,
                        "step": 11,
                        "established": True,
                        "pid": 9,
                    },
                ),
                (
                    "rank.exit",
                    {"rank": 1, "pid": 9, "status": None, "signal": "SIGTERM"},
                ),
            ],
            ("established", "unknown user (uid 4242), pid 77: kill 9"),
        ),
        # The guard's finding and the exit, the signal's own record gone: still one card.
        (
            [
                (
                    "guard.finding",
                    {
                        "rule_id": "guard.signal",
                        "technique": "T6",
                        "message": "SIGTERM received from pid 77 (uid 4242, kill 9)",
                        "evidence": "SIGTERM from pid 77",
                        "rank": 1,
                        "established": True,
                        "pid": 9,
                    },
                ),
                ("rank.exit", {"rank": 1, "pid": 9, "status": None, "signal": "SIGTERM"}),
            ],
            ("established", None),
        ),
        # torchrun's agent (a process of the job without a rank) stopping rank 0 after rank 1
        # failed: the shim records the signal it forwards. The job's machinery, no attack.
        (
            [
                ("process.start", {"rank": None, "pid": 300, "role": "process"}),
                (
                    "rank.signal",
                    {
                        "rank": 0,
                        "pid": 8,
                        "signal": "SIGTERM",
                        "signo": 15,
                        "source": "shim",
                        "note": "sent to the rank's shim (its parent under torchrun) and forwarded",
                        "sender": {"pid": 300, "uid": 0, "user": "root", "cmdline": "torchrun"},
                    },
                ),
            ],
            (None, None),
        ),
        # A sender the guard judged to be the rank's own ancestor (trusted: true).
        (
            [
                (
                    "guard.signal",
                    {
                        "rank": 1,
                        "pid": 9,
                        "signal": "SIGTERM",
                        "signo": 15,
                        "trusted": True,
                        "sender": {"pid": 300, "uid": 0, "user": "root", "cmdline": "torchrun"},
                    },
                ),
            ],
            (None, None),
        ),
        # The same signal from a process that is not the launcher is an attack.
        (
            [
                ("process.start", {"rank": None, "pid": 300, "role": "process"}),
                (
                    "rank.signal",
                    {
                        "rank": 0,
                        "pid": 8,
                        "signal": "SIGTERM",
                        "signo": 15,
                        "source": "shim",
                        "sender": {"pid": 301, "uid": 4242, "user": None, "cmdline": "kill 8"},
                    },
                ),
            ],
            ("established", "unknown user (uid 4242), pid 301: kill 8"),
        ),
    ],
    ids=[
        "sender-named",
        "sigkill",
        "supervisor-teardown",
        "from-supervisor-pid",
        "crash",
        "supervisor-killed",
        "guard-signal-and-its-finding",
        "guard-finding-and-exit-only",
        "launcher-teardown-via-shim",
        "guard-trusted-sender",
        "shim-from-another-process",
    ],
)
def test_signals_are_judged_by_what_the_os_told(
    tmp_path: Path,
    events: list[tuple[str, dict[str, object]]],
    expected: tuple[str | None, str | None],
) -> None:
    run_dir, key = _signal_run(tmp_path, *events)
    report = read_run(run_dir, keys=[key])
    kills = [f for f in report.findings if f.technique == "T6"]
    sure, named = expected
    if sure is None:
        assert kills == []
        assert len(report.kills) == 1
        return
    (kill,) = kills
    assert kill.established is (sure == "established")
    assert kill.named == named


@pytest.mark.parametrize(
    ("host", "address", "scope"),
    [
        ("127.0.0.1", None, "loopback"),
        ("localhost", None, "loopback"),
        ("x", "::1", "loopback"),
        ("x", "::ffff:10.1.2.3", "private"),
        ("x", "10.0.0.8", "private"),
        ("x", "172.20.1.1", "private"),
        ("x", "192.168.1.1", "private"),
        ("x", "fd00::1", "private"),
        ("x", "169.254.1.1", "private"),
        ("x", "8.8.8.8", "external"),
        ("x", "203.0.113.7", "external"),
        ("x", "2001:db8::1", "external"),
        ("evil.example", None, "unknown"),
        ("x", "not an ip", "unknown"),
    ],
)
def test_egress_scope(host: str, address: str | None, scope: str) -> None:
    assert scope_of(host, address) == scope


def test_ctrl_c_at_the_terminal_is_recorded_but_is_no_attack(
    clean: SyntheticRun, tmp_path: Path
) -> None:
    # Ctrl-C on `trainwarden run` under torchrun: the kernel sends SIGINT to the whole
    # foreground group, and the launcher's recorder writes it with si_code SI_KERNEL and
    # sender pid 0. The report called that run COMPROMISED (T6 established, "names root
    # (uid 0), pid 0"): the user stopping their own job read as an insider's kill.
    from trainwarden.keys import generate_key
    from trainwarden.ledger import Ledger

    key, pub = generate_key(tmp_path / "launcher", identity="alice@login1")
    kernel = {"pid": 0, "uid": 0, "user": "root", "cmdline": None}
    with Ledger(clean.run_dir / "ledger", key=key, create=False) as ledger:
        ledger.append(
            "guard.signal",
            run=clean.run_id,
            rank=None,
            pid=4242,
            signal="SIGINT",
            signo=2,
            sender=kernel,
            code="SI_KERNEL",
            action="handler",
        )
    report = _read(clean, keys=[*_keys(clean), pub])
    (row,) = [k for k in report.kills if k.signal == "SIGINT"]
    assert row.machinery
    assert not [f for f in report.findings if f.technique == "T6"]


def test_the_headline_counts_in_words_a_reader_expects() -> None:
    # "COMPROMISED: 1 findings established (T6)" on the terminal and atop the page.
    from trainwarden.report._run_findings import headline_of
    from trainwarden.report._run_model import RunFinding

    def card(technique: str, established: bool) -> RunFinding:
        return RunFinding(
            technique=technique,
            check="c",
            title="t",
            message="m",
            evidence=None,
            severity="high",
            established=established,
        )

    assert headline_of("compromised", [card("T6", True)], []).startswith(
        "1 finding established (T6)"
    )
    two = headline_of("compromised", [card("T6", True), card("T7", True)], [])
    assert two.startswith("2 findings established (T6, T7)")


def test_an_environment_that_could_not_be_verified_is_not_called_tampered(
    clean: SyntheticRun, tmp_path: Path
) -> None:
    # The README's own development venv (an editable install) made every run's report say
    # "Tampered code or environment (pre-flight)" over "returned unknown: ... editable
    # install": nothing was tampered with, it could not be verified. An unsafe or tampered
    # verdict keeps the title.
    from trainwarden.keys import generate_key
    from trainwarden.ledger import Ledger

    key, pub = generate_key(tmp_path / "supervisor", identity="ops")
    with Ledger(clean.run_dir / "ledger", key=key, create=False) as ledger:
        for verdict in ("unknown", "tampered"):
            ledger.append("preflight.env", run=clean.run_id, verdict=verdict, findings=[])
    report = _read(clean, keys=[*_keys(clean), pub])
    titles = {f.established: f.title for f in report.findings if f.check == "preflight.env"}
    assert titles == {
        False: "Code or environment not verifiable (pre-flight)",
        True: "Tampered code or environment (pre-flight)",
    }


def test_an_environment_check_turned_off_is_not_verified_not_suspicious(
    clean: SyntheticRun, tmp_path: Path
) -> None:
    # `trainwarden run --env-check off` records preflight.env verdict "skipped"; the report
    # called the run SUSPICIOUS ("Suspected T2: the pre-flight environment check returned
    # skipped"). Nothing suggests tampering: the environment was simply not checked.
    from trainwarden.keys import generate_key
    from trainwarden.ledger import Ledger

    key, pub = generate_key(tmp_path / "supervisor", identity="ops")
    with Ledger(clean.run_dir / "ledger", key=key, create=False) as ledger:
        ledger.append("preflight.env", run=clean.run_id, verdict="skipped", findings=[], mode="off")
    report = _read(clean, keys=[*_keys(clean), pub])
    assert not [f for f in report.findings if f.check == "preflight.env"]
    assert report.verdict == "not-verified"
    assert any("environment check was skipped" in u for u in report.unverified)
