"""`trainwarden ledger append|seal|verify|show`: exit codes, JSON output, messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainwarden.cli import main
from trainwarden.sign import generate_key


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("cli-keys")
    out = {}
    for name in ("alice", "mallory", "sealer"):
        priv, pub = generate_key(directory / name, identity=f"{name}@node")
        out[name], out[f"{name}.pub"] = priv, pub
    return out


def _append(root: Path, key: Path, *args: str) -> int:
    return main(["ledger", "append", str(root), "--key", str(key), "--create", *args])


def test_append_verify_show_roundtrip(tmp_path, keys, capsys):
    root = tmp_path / "ledger"
    assert _append(root, keys["alice"], "--event", "run.started", "--run", "r1") == 0
    assert (
        _append(root, keys["alice"], "--event", "lr", "--run", "r1", "--data", '{"lr": 0.1}') == 0
    )
    assert len(list((root / "writers").iterdir())) == 1  # the CLI continues its own file
    capsys.readouterr()
    assert main(["ledger", "verify", str(root), "--key", str(keys["alice.pub"])]) == 0
    assert "intact" in capsys.readouterr().out
    code = main(
        ["ledger", "verify", str(root), "--key", str(keys["alice.pub"]), "--format", "json"]
    )
    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (doc["schema_version"], doc["intact"], doc["entries"]) == (1, True, 3)
    assert main(["ledger", "show", str(root), "--run", "r1", "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [e["event"] for e in shown["entries"]] == ["run.started", "lr"]
    assert shown["entries"][1]["data"] == {"lr": 0.1}
    assert shown["entries"][0]["actor"]["identity"] == "alice@node"
    assert main(["ledger", "show", str(root)]) == 0
    captured = capsys.readouterr()
    assert "run.started" in captured.out
    assert "alice@node" in captured.out
    assert "NOT verified" in captured.err


def test_verify_without_key_fails_closed(tmp_path, keys, capsys):
    root = tmp_path / "ledger"
    _append(root, keys["alice"], "--event", "e")
    assert main(["ledger", "verify", str(root)]) == 2
    assert "signer trust was NOT checked" in capsys.readouterr().err
    assert main(["ledger", "verify", str(root), "--insecure-no-signer-check"]) == 0


def test_verify_tampered_exits_1_and_names_the_entry(tmp_path, keys, capsys):
    root = tmp_path / "ledger"
    for i in range(3):
        _append(root, keys["alice"], "--event", "step", "--data", json.dumps({"i": i}))
    path = next((root / "writers").iterdir())
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:2] + lines[3:]))
    capsys.readouterr()
    code = main(
        ["ledger", "verify", str(root), "--key", str(keys["alice.pub"]), "--format", "json"]
    )
    doc = json.loads(capsys.readouterr().out)
    assert code == 1
    assert doc["intact"] is False
    assert doc["issues"][0]["kind"] == "dropped"
    assert doc["first_issue"] == doc["issues"][0]
    assert (doc["issues"][0]["file"], doc["issues"][0]["seq"]) == (str(path), 3)


def test_verify_accepts_a_key_directory_and_a_writer_file(tmp_path, keys, capsys):
    root = tmp_path / "ledger"
    _append(root, keys["alice"], "--event", "e")
    keydir = tmp_path / "trusted"
    keydir.mkdir()
    (keydir / "alice.pub").write_bytes(keys["alice.pub"].read_bytes())
    path = next((root / "writers").iterdir())
    assert main(["ledger", "verify", str(path), "--key", str(keydir)]) == 0
    assert main(["ledger", "verify", str(root), "--key", str(keys["mallory.pub"])]) == 1
    assert "forged" in capsys.readouterr().out


def test_seal_then_truncation_is_detected(tmp_path, keys, capsys):
    root = tmp_path / "ledger"
    for i in range(3):
        _append(root, keys["alice"], "--event", "step", "--data", json.dumps({"i": i}))
    receipt = tmp_path / "receipt.json"
    seal = ["ledger", "seal", str(root), "--key", str(keys["sealer"])]
    assert main([*seal, "--writer-key", str(keys["alice.pub"]), "--receipt", str(receipt)]) == 0
    assert "root sha256:" in capsys.readouterr().out
    verify = [
        "ledger",
        "verify",
        str(root),
        "--key",
        str(keys["alice.pub"]),
        "--seal-key",
        str(keys["sealer.pub"]),
        "--seal-receipt",
        str(receipt),
    ]
    assert main(verify) == 0
    path = next((root / "writers").iterdir())
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:-1]))
    capsys.readouterr()
    assert main(verify) == 1
    assert "[truncated]" in capsys.readouterr().out
    assert main(seal) == 1  # the sealer refuses to endorse a truncated chain
    assert "truncated" in capsys.readouterr().err


def test_check_files_flags_a_changed_checkpoint(tmp_path, keys, capsys):
    root = tmp_path / "ledger"
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights")
    digest = "sha256:" + __import__("hashlib").sha256(b"weights").hexdigest()
    data = json.dumps({"path": str(ckpt), "digest": digest, "step": 1})
    _append(root, keys["alice"], "--event", "checkpoint.saved", "--run", "r", "--data", data)
    verify = ["ledger", "verify", str(root), "--key", str(keys["alice.pub"]), "--check-files"]
    assert main(verify) == 0
    ckpt.write_bytes(b"poisoned")
    capsys.readouterr()
    assert main(verify) == 1
    assert "[file_changed]" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["ledger", "append", "{root}", "--key", "{key}", "--event", "e", "--data", "[1]"],
        ["ledger", "append", "{root}", "--key", "{key}", "--event", "e", "--data", "{{bad"],
        ["ledger", "append", "{root}", "--key", "{key}", "--event", "ledger.seal"],
        ["ledger", "append", "{root}", "--key", "{missing}", "--event", "e"],
        ["ledger", "verify", "{missing}", "--key", "{pub}"],
        ["ledger", "verify", "{root}", "--key", "{missing}"],
        ["ledger", "verify", "{root}", "--key", "{pub}", "--insecure-no-signer-check"],
        ["ledger", "show", "{missing}"],
        ["ledger", "verify", "{root}/writers", "--key", "{pub}"],
        ["ledger", "verify", "{root}/seals/x.jsonl", "--key", "{pub}"],
        ["ledger", "seal", "{root}"],
        ["ledger"],
    ],
)
def test_bad_input_exits_2_without_traceback(tmp_path, keys, capsys, argv):
    root = tmp_path / "ledger"
    _append(root, keys["alice"], "--event", "e")
    (root / "seals").mkdir()
    (root / "seals" / "x.jsonl").write_text("")
    values = {
        "root": str(root),
        "key": str(keys["alice"]),
        "pub": str(keys["alice.pub"]),
        "missing": str(tmp_path / "missing"),
    }
    capsys.readouterr()
    assert main([a.format(**values) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip()


def test_verify_sarif_points_at_the_tampered_line(tmp_path, keys, capsys):
    root = tmp_path / "ledger"
    for i in range(3):
        _append(root, keys["alice"], "--event", "step", "--data", json.dumps({"i": i}))
    path = next((root / "writers").iterdir())
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"i":1', b'"i":7')
    path.write_bytes(b"".join(lines))
    capsys.readouterr()
    argv = ["ledger", "verify", str(root), "--key", str(keys["alice.pub"]), "--format", "sarif"]
    assert main(argv) == 1
    sarif = json.loads(capsys.readouterr().out)
    results = [r for r in sarif["runs"][0]["results"] if r["level"] == "error"]
    assert [r["ruleId"] for r in results] == ["ledger.altered"]
    location = results[0]["locations"][0]["physicalLocation"]
    assert location["region"]["byteOffset"] == len(lines[0]) + len(lines[1])
    assert main(["ledger", "verify", str(root), "--insecure-no-signer-check", "-j", "1"]) == 1
