"""``trainwarden provenance verify|show``: exit codes and output."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from trainwarden.cli import main
from trainwarden.keys import generate_key
from trainwarden.provenance import (
    ResourceDescriptor,
    TrainingRun,
    build_statement,
    output_descriptor,
    write_provenance,
)


@pytest.fixture
def run(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A statement over two outputs, signed by the supervisor's key: (file, pub, output)."""
    private, public = generate_key(tmp_path / "sup", identity="platform")
    from trainwarden.keys import load_private_key

    key = load_private_key(private)
    (tmp_path / "ck").mkdir()
    out = tmp_path / "ck" / "ckpt-10.pt"
    out.write_bytes(b"w" * 4096)
    (tmp_path / "result.json").write_text('{"loss": 1.5}')
    statement = build_statement(
        TrainingRun(
            run_id="r1",
            outputs=(
                output_descriptor(out, root=tmp_path, annotations={"step": 10}),
                output_descriptor(tmp_path / "result.json", root=tmp_path),
            ),
            external_parameters={"command": ["python", "train.py"], "seedCommitment": "sha256:1"},
            internal_parameters={"cwd": str(tmp_path)},
            dependencies=(ResourceDescriptor(name="code", digest={"gitCommit": "a" * 40}),),
            byproducts=(ResourceDescriptor(name="exit", annotations={"status": 0}),),
            started="2026-01-01T00:00:00.000000Z",
            finished="2026-01-01T00:10:00.000000Z",
        )
    )
    path = write_provenance(tmp_path / "provenance.intoto.json", statement, key).path
    return path, public, out


def test_clean_statement_verifies(
    run: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path, pub, _ = run
    # --key PUB is the spelling of the interface contract; --pubkey the common one.
    assert main(["provenance", "verify", str(path), "--key", str(pub)]) == 0
    assert capsys.readouterr().out.startswith("VERIFIED ")
    assert main(["provenance", "verify", str(path), "--pubkey", str(pub.parent)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("VERIFIED ")
    assert "run r1, signed by platform" in out
    assert "2 output(s) unchanged" in out
    assert "ok          ck/ckpt-10.pt" in out


def test_tampered_output_exits_1(
    run: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path, pub, out = run
    out.write_bytes(b"x" * 4096)
    assert main(["provenance", "verify", str(path), "--key", str(pub)]) == 1
    captured = capsys.readouterr()
    assert "NOT VERIFIED" in captured.out
    assert "modified    ck/ckpt-10.pt" in captured.out
    assert "provenance.output-modified" in captured.out
    assert "NOT VERIFIED" in captured.err


def test_tampered_statement_exits_1(
    run: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path, pub, _ = run
    doc = json.loads(path.read_text())
    statement = json.loads(base64.b64decode(doc["payload"]))
    statement["predicate"]["buildDefinition"]["externalParameters"]["command"] = ["python", "x.py"]
    doc["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    path.write_text(json.dumps(doc))
    assert main(["provenance", "verify", str(path), "--key", str(pub)]) == 1
    assert "provenance.signature" in capsys.readouterr().out


def test_another_key_exits_1(run: tuple[Path, Path, Path], tmp_path: Path) -> None:
    path, _, _ = run
    _, other = generate_key(tmp_path / "other")
    assert main(["provenance", "verify", str(path), "--key", str(other)]) == 1


def test_json_and_sarif_reports(
    run: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path, pub, out = run
    assert main(["provenance", "verify", str(path), "--key", str(pub), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["schema_version"] == 1
    (statement,) = [f for f in report["files"] if f["format"] == "provenance"]
    assert statement["details"]["run"] == "r1"
    assert {f["details"]["name"] for f in report["files"] if f["format"] == "checkpoint"} == {
        "ck/ckpt-10.pt",
        "result.json",
    }
    out.unlink()
    assert main(["provenance", "verify", str(path), "--key", str(pub), "--format", "sarif"]) == 1
    sarif = json.loads(capsys.readouterr().out)
    rules = [r["ruleId"] for r in sarif["runs"][0]["results"]]
    assert rules == ["provenance.output-missing"]


def test_against_and_signature_only(
    run: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, pub, out = run
    elsewhere = tmp_path / "copy"
    (elsewhere / "ck").mkdir(parents=True)
    (elsewhere / "ck" / out.name).write_bytes(out.read_bytes())
    (elsewhere / "result.json").write_text('{"loss": 1.5}')
    out.unlink()
    assert main(["provenance", "verify", str(path), "--key", str(pub)]) == 1
    assert (
        main(["provenance", "verify", str(path), "--key", str(pub), "--against", str(elsewhere)])
        == 0
    )
    assert main(["provenance", "verify", str(path), "--key", str(pub), "--signature-only"]) == 0
    assert "not checked" in capsys.readouterr().out


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"payloadType": "x"}'])
def test_malformed_files_exit_2(
    tmp_path: Path, content: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    _, pub = generate_key(tmp_path / "k")
    bad = tmp_path / "bad.json"
    bad.write_bytes(content)
    assert main(["provenance", "verify", str(bad), "--key", str(pub)]) == 2
    assert "error" in capsys.readouterr().err


def test_missing_file_and_bad_key_exit_2(run: tuple[Path, Path, Path], tmp_path: Path) -> None:
    path, pub, _ = run
    assert main(["provenance", "verify", str(tmp_path / "nope.json"), "--key", str(pub)]) == 2
    assert main(["provenance", "verify", str(path), "--key", str(tmp_path / "nope.pub")]) == 2
    assert main(["provenance", "verify", str(path)]) == 2  # a trusted key is required
    (tmp_path / "nokeys").mkdir()
    no_keys = str(tmp_path / "nokeys")
    assert main(["provenance", "verify", str(path), "--pubkey", no_keys]) == 2  # no *.pub
    assert main(["provenance", "verify", str(path), "--pubkey", str(pub), "-o", str(path)]) == 2


def test_show_prints_an_unverified_summary(
    run: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _, _ = run
    assert main(["provenance", "show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "NOT verified" in out
    assert "ck/ckpt-10.pt" in out
    assert main(["provenance", "show", str(path), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema_version"] == 1
    assert doc["verified"] is False
    assert doc["statement"]["_type"] == "https://in-toto.io/Statement/v1"
