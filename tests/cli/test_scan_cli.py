"""`trainwarden scan` and `trainwarden demo`: exit codes, JSON and SARIF shapes, help text."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest

from trainwarden.cli import main


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("true",))


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {
        "safe": tmp_path / "safe.pkl",
        "unsafe": tmp_path / "unsafe.pkl",
        "unknown": tmp_path / "unknown.pkl",
    }
    out["safe"].write_bytes(pickle.dumps({"a": [1, 2]}))
    out["unsafe"].write_bytes(pickle.dumps(_Payload()))
    out["unknown"].write_bytes(b"ctrainwarden_cli_test\nThing\n)R.")
    return out


def _json(capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_safe_file_exits_0_with_contract_json(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["scan", str(files["safe"]), "--format", "json"]) == 0
    doc = _json(capsys)
    assert doc["schema_version"] == 1
    (entry,) = doc["files"]  # type: ignore[misc]
    assert entry["path"] == str(files["safe"])
    assert entry["format"] == "pickle"
    assert entry["verdict"] == "safe"
    assert entry["findings"] == []
    assert doc["summary"]["verdict"] == "safe"  # type: ignore[index]


def test_unsafe_file_exits_1(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", str(files["unsafe"]), "--format", "json"]) == 1
    (entry,) = _json(capsys)["files"]  # type: ignore[misc]
    assert entry["verdict"] == "unsafe"
    finding = entry["findings"][0]
    assert set(finding) >= {"rule_id", "severity", "message", "evidence", "location"}
    assert "system" in finding["evidence"]


def test_fail_on_threshold(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", str(files["unknown"])]) == 1
    assert main(["scan", str(files["unknown"]), "--fail-on", "unsafe"]) == 0
    assert main(["scan", str(files["unsafe"]), "--fail-on", "unsafe"]) == 1
    capsys.readouterr()


def test_allow_flag_makes_unknown_safe(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["scan", str(files["unknown"]), "--allow", "trainwarden_cli_test.Thing"]) == 0
    capsys.readouterr()


@pytest.mark.parametrize(
    "argv",
    [
        ["scan", "{missing}"],
        ["scan", "{safe}", "--allow", "not a name!"],
        ["scan", "{safe}", "--allow", "os.system"],
        ["scan", "{safe}", "--profile", "no-such-profile"],
        ["scan", "{safe}", "--limit", "max_nesting=zero"],
        ["scan", "{safe}", "--limit", "no_such_limit=3"],
        ["scan", "{safe}", "--jobs", "0"],
        ["scan", "{safe}", "--format", "yaml"],
        ["scan"],
    ],
)
def test_usage_and_operational_errors_exit_2(
    files: dict[str, Path], tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    args = [a.format(missing=tmp_path / "missing.pt", safe=files["safe"]) for a in argv]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Traceback" not in captured.err


def test_directory_and_output_file(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path.parent / f"{tmp_path.name}-report.json"  # never inside the scanned tree
    assert main(["scan", str(tmp_path), "--format", "json", "--output", str(out), "-j", "2"]) == 1
    assert capsys.readouterr().out == ""
    doc = json.loads(out.read_text())
    verdicts = {Path(f["path"]).name: f["verdict"] for f in doc["files"]}
    assert verdicts == {"safe.pkl": "safe", "unsafe.pkl": "unsafe", "unknown.pkl": "unknown"}


def test_sarif_shape(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", str(files["unsafe"]), str(files["safe"]), "--format", "sarif"]) == 1
    log = _json(capsys)
    assert log["version"] == "2.1.0"
    (run,) = log["runs"]  # type: ignore[misc]
    rules = run["tool"]["driver"]["rules"]
    results = run["results"]
    assert results
    assert all(r["ruleId"] in {rule["id"] for rule in rules} for r in results)
    assert results[0]["level"] == "error"
    uri = results[0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
    assert uri == str(files["unsafe"])


def test_text_report(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", str(files["unsafe"]), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "UNSAFE" in out
    assert "1 file(s)" in out


def test_help_lists_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in (
        "--format",
        "--output",
        "--allow",
        "--profile",
        "--fail-on",
        "--jobs",
        "--limit",
        "--no-progress",
    ):
        assert flag in text
    assert "exit status" in text


def test_demo_catches_the_malicious_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--format", "json"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    verdicts = {Path(f["path"]).name: f["verdict"] for f in doc["files"]}
    assert verdicts.pop("malicious_checkpoint.pt") == "unsafe"
    assert verdicts
    assert set(verdicts.values()) == {"safe"}
    assert "as expected" in captured.err


@pytest.mark.torch
def test_bundled_malicious_example_really_runs_its_payload() -> None:
    import subprocess
    import sys
    from importlib import resources

    pytest.importorskip("torch")
    path = resources.files("trainwarden") / "examples" / "checkpoints" / "malicious_checkpoint.pt"
    code = f"import torch; torch.load({str(path)!r}, weights_only=False)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert "this checkpoint ran a shell command" in done.stdout


# -- issue 8: nothing lost, nothing overwritten, every error clear ---------------------------------


def test_output_over_a_scanned_file_is_refused(files: dict[str, Path]) -> None:
    before = files["safe"].read_bytes()
    assert main(["scan", str(files["safe"]), "-o", str(files["safe"])]) == 2
    assert files["safe"].read_bytes() == before


def test_output_inside_a_scanned_directory_is_refused(files: dict[str, Path]) -> None:
    directory = files["safe"].parent
    target = directory / "report.json"
    assert main(["scan", str(directory), "--format", "json", "-o", str(target)]) == 2
    assert not target.exists()


def test_missing_path_is_listed_and_fails_but_the_rest_is_reported(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.pt"
    code = main(["scan", str(files["safe"]), str(missing), "--format", "json"])
    doc = _json(capsys)
    assert code == 1  # a missing input is never exit 0
    by_path = {f["path"]: f for f in doc["files"]}  # type: ignore[index, union-attr]
    assert by_path[str(files["safe"])]["verdict"] == "safe"
    assert by_path[str(missing)]["verdict"] == "error"
    assert by_path[str(missing)]["findings"][0]["rule_id"] == "file.missing"


def test_nothing_scannable_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", str(tmp_path / "a.pt"), str(tmp_path / "b.pt")]) == 2
    assert "nothing could be scanned" in capsys.readouterr().err


def test_file_names_cannot_forge_lines_in_text_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    forged = tmp_path / "x.pkl\nSAFE    everything-is-fine.pt\x1b[2K"
    forged.write_bytes(pickle.dumps(_Payload()))
    assert main(["scan", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "\x1b" not in out
    lines = out.splitlines()
    assert not any(line.startswith("SAFE") for line in lines), out
    assert any(line.startswith("UNSAFE") and "\\n" in line for line in lines), out


def test_every_format_lists_the_applied_configuration(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    project = tmp_path / "proj"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        '[tool.trainwarden]\nallow = ["trainwarden_cli_test.Thing"]\nprofiles = ["lightning"]\n'
        "[tool.trainwarden.limits]\nmax_seconds = 90\n"
    )
    monkeypatch.chdir(project)
    argv = ["scan", str(files["unknown"]), "--profile", "sklearn", "--limit", "max_nesting=3"]
    assert main([*argv, "--format", "json"]) == 0
    config = _json(capsys)["config"]
    assert isinstance(config, dict)
    sources = {p["name"]: p["source"] for p in config["profiles"]}
    assert sources["lightning"] == str(project / "pyproject.toml")
    assert sources["sklearn"] == "--profile"
    assert sources["core"] == "built-in"
    assert config["allow"] == [
        {"entry": "trainwarden_cli_test.Thing", "source": str(project / "pyproject.toml"),
         "dangerous": False}
    ]  # fmt: skip
    assert config["limits"] == {
        "max_nesting": {"value": 3, "source": "--limit"},
        "max_seconds": {"value": 90, "source": str(project / "pyproject.toml")},
    }
    assert main([*argv, "--format", "sarif"]) == 0
    sarif = json.loads(capsys.readouterr().out)
    assert sarif["runs"][0]["properties"]["configuration"]["limits"] == config["limits"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "config: allow trainwarden_cli_test.Thing" in text
    assert "max_nesting=3 (--limit)" in text


@pytest.mark.parametrize("fmt", ["json", "sarif"])
def test_json_outputs_carry_schema_version(
    files: dict[str, Path], fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["scan", str(files["safe"]), "--format", fmt])
    doc = json.loads(capsys.readouterr().out)
    assert doc.get("schema_version") == 1 or doc.get("version") == "2.1.0"
    if fmt == "json":
        assert doc["schema_version"] == 1


def test_unknown_pyproject_key_is_a_config_error(
    files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    (tmp_path / "pyproject.toml").write_text('[tool.trainwarden]\nalow = ["a.b"]\n')
    monkeypatch.chdir(tmp_path)
    assert main(["scan", str(files["safe"])]) == 2
    assert "alow" in capsys.readouterr().err


def test_progress_is_plain_lines_without_a_terminal(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from trainwarden.cli import _common

    # Shown only for work longer than a few seconds: the thresholds are lowered to 0 here so
    # the test needs no clock.
    monkeypatch.setattr(_common, "PLAIN_AFTER", 0.0)
    monkeypatch.setattr(_common, "PLAIN_EVERY", 0.0)
    main(["scan", str(files["safe"].parent)])
    err = capsys.readouterr().err
    assert "trainwarden: scan: 1 files, " in err
    assert str(files["safe"]) in err
    main(["scan", "--no-progress", str(files["safe"].parent)])
    assert "scan:" not in capsys.readouterr().err


def test_unknown_framework_classes_get_a_profile_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A new user's sklearn pipeline or training_args.bin comes out unknown with no word of
    the --profile that the README mentions far above: stderr names it when a profile would
    allow every unknown global, and stays silent when none would (no false comfort)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    pipe = tmp_path / "pipe.pkl"
    pipe.write_bytes(pickle.dumps(make_pipeline(LogisticRegression())))
    assert main(["scan", str(pipe)]) == 1
    err = capsys.readouterr().err
    assert "--profile sklearn" in err
    assert main(["scan", str(pipe), "--profile", "sklearn"]) == 0
    assert "hint" not in capsys.readouterr().err
    other = tmp_path / "other.pkl"
    other.write_bytes(b"cmypkg.config\nTrainConfig\n)R.")
    assert main(["scan", str(pipe), str(other)]) == 1
    assert "--profile" not in capsys.readouterr().err
