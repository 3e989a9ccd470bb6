"""Provenance statements: their shape, and verification of signature and outputs on disk."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from trainwarden.errors import ConfigError, InputError
from trainwarden.keys import PrivateKey
from trainwarden.provenance import (
    BUILD_TYPE,
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    ProvenanceMismatch,
    ResourceDescriptor,
    TrainingRun,
    build_statement,
    check_statement,
    output_descriptor,
    read_provenance,
    verify_provenance,
    write_provenance,
)
from trainwarden.provenance._dsse import envelope_json, sign_envelope
from trainwarden.sign import checkpoint_digest


@pytest.fixture
def key() -> PrivateKey:
    return PrivateKey.generate("supervisor@test")


def _outputs(root: Path) -> list[Path]:
    (root / "ckpt").mkdir()
    first = root / "ckpt" / "ckpt-000010.pt"
    first.write_bytes(b"weights-10" * 1000)
    directory = root / "ckpt" / "checkpoint-20"
    directory.mkdir()
    (directory / "model.safetensors").write_bytes(b"weights-20" * 1000)
    (directory / "config.json").write_text('{"lr": 0.001}')
    return [first, directory]


def _run(root: Path, outputs: list[Path]) -> TrainingRun:
    return TrainingRun(
        run_id="run-1",
        outputs=tuple(output_descriptor(p, root=root, annotations={"step": 1}) for p in outputs),
        external_parameters={"command": ["python", "train.py"], "seedCommitment": "sha256:00"},
        internal_parameters={"cwd": str(root)},
        dependencies=(ResourceDescriptor(name="code", digest={"gitCommit": "ab" * 20}),),
        byproducts=(ResourceDescriptor(name="exit", annotations={"status": 0}),),
        started="2026-01-01T00:00:00.000000Z",
        finished="2026-01-01T00:01:00.000000Z",
        builder_version={"trainwarden": "0.1.0"},
    )


def test_statement_has_the_in_toto_and_slsa_shape(tmp_path: Path) -> None:
    statement = build_statement(_run(tmp_path, _outputs(tmp_path)))
    assert statement["_type"] == STATEMENT_TYPE == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == PREDICATE_TYPE == "https://slsa.dev/provenance/v1"
    definition = statement["predicate"]["buildDefinition"]
    assert definition["buildType"] == BUILD_TYPE
    assert set(definition) == {
        "buildType",
        "externalParameters",
        "internalParameters",
        "resolvedDependencies",
    }
    details = statement["predicate"]["runDetails"]
    assert set(details) == {"builder", "metadata", "byproducts"}
    assert details["metadata"] == {
        "invocationId": "run-1",
        "startedOn": "2026-01-01T00:00:00.000000Z",
        "finishedOn": "2026-01-01T00:01:00.000000Z",
    }
    assert [s["name"] for s in statement["subject"]] == [
        "ckpt/ckpt-000010.pt",
        "ckpt/checkpoint-20",
    ]
    assert check_statement(statement) == []


def test_subject_digests_are_those_sign_computes(tmp_path: Path) -> None:
    outputs = _outputs(tmp_path)
    for path in outputs:
        descriptor = output_descriptor(path, root=tmp_path)
        assert "sha256:" + descriptor.digest["sha256"] == checkpoint_digest(path)


def test_outputs_outside_the_root_keep_absolute_names(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    out = tmp_path / "b.pt"
    out.write_bytes(b"x")
    assert output_descriptor(out, root=tmp_path / "a").name == str(out)


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda s: s.update(_type="https://in-toto.io/Statement/v0.1"), "_type"),
        (lambda s: s.update(predicateType="https://slsa.dev/provenance/v0.2"), "predicateType"),
        (lambda s: s["predicate"]["buildDefinition"].update(buildType="x"), "buildType"),
        (lambda s: s["subject"][0]["digest"].update(sha256="ABC"), "hex"),
        (lambda s: s["subject"][0].pop("name"), "no name"),
        (lambda s: s["subject"].append(dict(s["subject"][0])), "repeats"),
        (lambda s: s["predicate"].pop("runDetails"), "runDetails"),
        (lambda s: s.update(subject={}), "subject is not a list"),
    ],
)
def test_check_statement_names_each_problem(tmp_path: Path, mutate: Any, problem: str) -> None:
    statement = build_statement(_run(tmp_path, _outputs(tmp_path)))
    mutate(statement)
    problems = check_statement(statement)
    assert any(problem in p for p in problems), problems


def test_clean_provenance_verifies(tmp_path: Path, key: PrivateKey) -> None:
    outputs = _outputs(tmp_path)
    written = write_provenance(tmp_path / "p.json", build_statement(_run(tmp_path, outputs)), key)
    assert written.subjects == 2
    result = verify_provenance(written.path, [key.public])
    assert result.ok
    assert [s.status for s in result.subjects] == ["ok", "ok"]
    assert result.signer == key.public
    assert result.statement is not None
    assert result.statement.run_id == "run-1"


def test_modified_and_deleted_outputs_are_named(tmp_path: Path, key: PrivateKey) -> None:
    outputs = _outputs(tmp_path)
    path = write_provenance(tmp_path / "p.json", build_statement(_run(tmp_path, outputs)), key).path
    outputs[0].write_bytes(b"tampered" * 10)
    (outputs[1] / "config.json").unlink()
    with pytest.raises(ProvenanceMismatch) as info:
        verify_provenance(path, [key.public])
    statuses = {s.name: s.status for s in info.value.result.subjects}
    assert statuses == {"ckpt/ckpt-000010.pt": "modified", "ckpt/checkpoint-20": "modified"}
    rules = {f.rule_id for f in info.value.report.findings}
    assert rules == {"provenance.output-modified"}
    import shutil

    shutil.rmtree(outputs[1])
    with pytest.raises(ProvenanceMismatch) as info:
        verify_provenance(path, [key.public])
    assert {s.name: s.status for s in info.value.result.subjects}["ckpt/checkpoint-20"] == "missing"
    assert "provenance.output-missing" in {f.rule_id for f in info.value.report.findings}


def test_tampered_statement_fails_the_signature(tmp_path: Path, key: PrivateKey) -> None:
    outputs = _outputs(tmp_path)
    path = write_provenance(tmp_path / "p.json", build_statement(_run(tmp_path, outputs)), key).path
    # The insider modifies a checkpoint and rewrites the recorded digest to match.
    outputs[0].write_bytes(b"tampered")
    doc = json.loads(path.read_text())
    statement = json.loads(base64.b64decode(doc["payload"]))
    statement["subject"][0]["digest"]["sha256"] = checkpoint_digest(outputs[0]).split(":")[1]
    doc["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    path.write_text(json.dumps(doc))
    with pytest.raises(ProvenanceMismatch) as info:
        verify_provenance(path, [key.public])
    assert [f.rule_id for f in info.value.report.findings] == ["provenance.signature"]


def test_statement_resigned_by_another_key_is_not_trusted(tmp_path: Path, key: PrivateKey) -> None:
    outputs = _outputs(tmp_path)
    insider = PrivateKey.generate("insider")
    path = write_provenance(
        tmp_path / "p.json", build_statement(_run(tmp_path, outputs)), insider
    ).path
    with pytest.raises(ProvenanceMismatch, match="no signature"):
        verify_provenance(path, [key.public])


def test_a_well_signed_statement_of_another_shape_fails(tmp_path: Path, key: PrivateKey) -> None:
    payload = json.dumps({"_type": STATEMENT_TYPE, "subject": []}).encode()
    envelope = sign_envelope("application/vnd.in-toto+json", payload, [key])
    path = tmp_path / "p.json"
    path.write_bytes(envelope_json(envelope))
    with pytest.raises(ProvenanceMismatch) as info:
        verify_provenance(path, [key.public])
    assert {f.rule_id for f in info.value.report.findings} == {"provenance.shape"}


def test_subject_names_cannot_leave_the_run(tmp_path: Path, key: PrivateKey) -> None:
    (tmp_path / "secret").write_bytes(b"x")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    statement = build_statement(_run(run_dir, []))
    statement["subject"] = [{"name": "../secret", "digest": {"sha256": "0" * 64}}]
    path = write_provenance(tmp_path / "p.json", statement, key).path
    with pytest.raises(ProvenanceMismatch) as info:
        verify_provenance(path, [key.public])
    assert info.value.result.subjects[0].status == "unreadable"


def test_against_relocates_outputs_and_signature_only_skips_them(
    tmp_path: Path, key: PrivateKey
) -> None:
    import shutil

    (tmp_path / "a").mkdir()
    outputs = _outputs(tmp_path / "a")
    path = write_provenance(
        tmp_path / "p.json", build_statement(_run(tmp_path / "a", outputs)), key
    ).path
    shutil.move(str(tmp_path / "a"), str(tmp_path / "copy"))
    with pytest.raises(ProvenanceMismatch):
        verify_provenance(path, [key.public])
    assert verify_provenance(path, [key.public], against=tmp_path / "copy").ok
    result = verify_provenance(path, [key.public], check_outputs=False)
    assert {s.status for s in result.subjects} == {"not-checked"}


def test_read_provenance_parses_without_verifying(tmp_path: Path, key: PrivateKey) -> None:
    outputs = _outputs(tmp_path)
    path = write_provenance(tmp_path / "p.json", build_statement(_run(tmp_path, outputs)), key).path
    statement = read_provenance(path)
    assert statement.run_id == "run-1"
    assert [d.name for d in statement.dependencies] == ["code"]


def test_errors(tmp_path: Path, key: PrivateKey) -> None:
    with pytest.raises(ConfigError):
        verify_provenance(tmp_path / "p.json", [])
    with pytest.raises(InputError):
        verify_provenance(tmp_path / "missing.json", [key.public])
    (tmp_path / "junk.json").write_text("{")
    with pytest.raises(InputError):
        verify_provenance(tmp_path / "junk.json", [key.public])
