"""Broken, hostile and missing parts of a run directory: a report that says so, never a crash."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from trainwarden.errors import InputError
from trainwarden.report import read_run, render_report_html
from trainwarden.report._run import MAX_RUN_JSON, MAX_STACK
from trainwarden.report._synthetic import SyntheticRun, write_synthetic_run


@pytest.fixture
def run(tmp_path: Path) -> SyntheticRun:
    return write_synthetic_run(tmp_path / "run", ranks=2, steps=60)


def _notes(run_dir: Path, **kwargs: object) -> str:
    report = read_run(run_dir, **kwargs)  # type: ignore[arg-type]
    render_report_html(report)  # every part renders whatever was read
    return " | ".join(report.notes)


def test_a_missing_run_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        read_run(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        read_run(tmp_path / "file")
    with pytest.raises(InputError, match="clean run directory"):
        read_run(tmp_path, against=tmp_path / "nope")


def test_an_unreadable_key_is_an_error(run: SyntheticRun, tmp_path: Path) -> None:
    (tmp_path / "bad.pub").write_text("not a key")
    with pytest.raises(InputError):
        read_run(run.run_dir, keys=[tmp_path / "bad.pub"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"no \*\.pub"):
        read_run(run.run_dir, keys=[tmp_path / "empty"])


@pytest.mark.parametrize(
    ("content", "note"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b"[" * 100_000, "not JSON"),
        (json.dumps({"schema_version": 9, "run_id": "x"}).encode(), "schema_version 9"),
    ],
)
def test_a_broken_run_json_is_a_note(run: SyntheticRun, content: bytes, note: str) -> None:
    (run.run_dir / "run.json").write_bytes(content)
    assert note in _notes(run.run_dir, keys=run.keys)


def test_a_run_json_of_wrong_types_reads_as_absent(run: SyntheticRun) -> None:
    (run.run_dir / "run.json").write_text(
        json.dumps(
            {
                "schema_version": 1,
                "run_id": ["not", "a", "string"],
                "command": "rm -rf /",
                "world_size": "64",
                "exit": [],
                "supervisor": "x",
                "nodes": {"a": 1},
                "started": 5,
            }
        )
    )
    report = read_run(run.run_dir, keys=run.keys)
    assert report.info is not None
    assert (report.info.command, report.info.world_size, report.info.nodes) == ((), None, ())
    # Without a run id in run.json the run is found from the ledger.
    assert report.run_id == run.run_id
    render_report_html(report)


def test_a_huge_or_special_run_json_is_refused(run: SyntheticRun) -> None:
    path = run.run_dir / "run.json"
    path.unlink()
    with path.open("wb") as fh:
        fh.truncate(MAX_RUN_JSON + 1)
    assert "limit" in _notes(run.run_dir)
    path.unlink()
    os.mkfifo(path)
    assert "FIFO" in _notes(run.run_dir)  # and the report did not block on it


def test_no_ledger_is_not_verified(run: SyntheticRun) -> None:
    import shutil

    shutil.rmtree(run.run_dir / "ledger")
    report = read_run(run.run_dir, keys=run.keys)
    assert report.ledger.error is not None
    assert report.verdict != "clean"
    assert any("ledger could not be read" in u for u in report.unverified)
    page = render_report_html(report)
    assert "unreadable" in page


def test_a_ledger_that_is_not_one(run: SyntheticRun) -> None:
    import shutil

    shutil.rmtree(run.run_dir / "ledger")
    (run.run_dir / "ledger").write_text("just a file")
    report = read_run(run.run_dir, keys=run.keys)
    assert report.ledger.error is not None
    render_report_html(report)


def test_garbage_in_a_ledger_file_is_tampering(run: SyntheticRun) -> None:
    writer = next((run.run_dir / "ledger" / "writers").glob("*.jsonl"))
    with writer.open("ab") as fh:
        fh.write(b"\xff\xfe not an entry\n")
    report = read_run(run.run_dir, keys=run.keys)
    assert report.ledger.first_break is not None
    assert report.ledger.first_break.kind == "malformed"
    assert report.verdict == "compromised"


def test_a_ledger_path_in_run_json_that_is_not_a_path(run: SyntheticRun) -> None:
    data = json.loads((run.run_dir / "run.json").read_text())
    data["ledger"] = "led\x00ger"
    (run.run_dir / "run.json").write_text(json.dumps(data))
    report = read_run(run.run_dir, keys=run.keys)
    assert report.ledger.error is not None


def test_telemetry_that_is_garbage_or_special(run: SyntheticRun) -> None:
    tel = run.run_dir / "telemetry"
    (tel / "rank-0.jsonl").write_bytes(os.urandom(5000))
    (tel / "rank-1.jsonl").unlink()
    os.mkfifo(tel / "rank-1.jsonl")
    report = read_run(run.run_dir, keys=run.keys)
    notes = " | ".join(report.notes)
    assert "rank 0" in notes
    assert "FIFO" in notes
    checks = {rank: status for rank, status, _ in report.telemetry_checks}
    assert checks[0] in ("changed", "unattested")
    render_report_html(report)


def test_huge_stack_dumps_are_cut(run: SyntheticRun) -> None:
    (run.run_dir / "stacks" / "rank-0-9.txt").write_bytes(b"A" * (MAX_STACK * 3))
    (run.run_dir / "stacks" / "rank-1-9.txt").write_bytes(b"\xff\xfe\x00binary")
    report = read_run(run.run_dir, keys=run.keys)
    stacks = dict(report.stacks)
    assert len(stacks["rank-0-9.txt"]) < MAX_STACK + 100
    assert "cut at" in stacks["rank-0-9.txt"]
    assert "binary" in stacks["rank-1-9.txt"]


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b"", "not JSON"),
        (b"[]", "not a DSSE envelope"),
        (json.dumps({"payloadType": "x", "payload": "%%%"}).encode(), "not base64"),
        (json.dumps({"payload": base64.b64encode(b"[1]").decode()}).encode(), "not an in-toto"),
        (
            json.dumps(
                {"payload": base64.b64encode(json.dumps({"predicate": 5}).encode()).decode()}
            ).encode(),
            None,
        ),
    ],
)
def test_a_malformed_provenance_statement(
    run: SyntheticRun, content: bytes, error: str | None
) -> None:
    (run.run_dir / "provenance.intoto.json").write_bytes(content)
    report = read_run(run.run_dir, keys=run.keys)
    assert report.provenance.present
    assert report.provenance.verified is not True
    if error:
        assert error in (report.provenance.error or "")
    # Its digest no longer matches what the ledger recorded: evidence of tampering.
    assert any(f.check == "provenance.changed" for f in report.findings)
    render_report_html(report)


def test_a_run_with_only_a_ledger_still_reports(tmp_path: Path) -> None:
    from trainwarden.keys import PrivateKey
    from trainwarden.ledger import Ledger

    key = PrivateKey.generate("x@y")
    with Ledger(tmp_path / "ledger", key=key) as ledger:
        ledger.append("run.start", run="a", command=["x"], run_dir=str(tmp_path))
        ledger.append("run.start", run="b", command=["y"])
    report = read_run(tmp_path, keys=[key.public])
    assert report.run_id == "a"  # the run whose run.start names this directory
    assert any("run.json is missing" in n for n in report.notes)


@pytest.mark.parametrize("content", [[], ["notes.txt"], ["runs/"]])
def test_a_directory_with_no_part_of_a_run_is_an_error(tmp_path: Path, content: list[str]) -> None:
    # An empty directory, or the parent of the run directory: nothing to report on, and a
    # "not verified" page would only hide the wrong path.
    for name in content:
        if name.endswith("/"):
            (tmp_path / name).mkdir()
        else:
            (tmp_path / name).write_text("x")
    with pytest.raises(InputError, match="is not a run directory"):
        read_run(tmp_path)


def test_any_one_part_of_a_run_is_enough_to_report(run: SyntheticRun) -> None:
    for part in ("run.json", "ledger", "provenance.intoto.json"):
        target = run.run_dir / part
        if target.is_dir():
            target.rename(run.run_dir / "ledger-moved")
        else:
            target.unlink()
    assert read_run(run.run_dir).verdict != "clean"  # telemetry/ alone: reported


def test_a_torn_ledger_entry_is_said_at_the_top(run: SyntheticRun) -> None:
    # The last entry of a writer file cut in the middle (a crash, a failed write, an edit):
    # the ledger library ignores it; the report must say a record was not read.
    writer = sorted((run.run_dir / "ledger" / "writers").glob("*.jsonl"))[0]
    data = writer.read_bytes()
    writer.write_bytes(data[: len(data) - 40])
    report = read_run(run.run_dir, keys=run.keys)
    assert any("incomplete entry" in u for u in report.unverified)
    assert report.verdict != "clean"


def test_the_parent_of_run_directories_names_them(tmp_path: Path) -> None:
    # `trainwarden report trainwarden-runs` (the default parent of every run) said only what
    # it lacks; it names the runs inside, newest first, so the fix is one copy away.
    for name in ("20261203-101500-aaaaaa", "20261203-111500-bbbbbb"):
        (tmp_path / name / "ledger").mkdir(parents=True)
    (tmp_path / "notes").mkdir()
    with pytest.raises(InputError) as info:
        read_run(tmp_path)
    message = str(info.value)
    assert "is not a run directory" in message
    assert f"it holds 2 run directories: {tmp_path / '20261203-111500-bbbbbb'}, " in message
    assert "notes" not in message
