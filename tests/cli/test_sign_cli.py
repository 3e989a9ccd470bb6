"""`trainwarden keygen`, `sign` and `verify` through main(argv): exit codes and output."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from trainwarden.cli import main


def checkpoint(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "model.bin").write_bytes(bytes(range(256)) * 100)
    (root / "config.json").write_text('{"lr": 0.1}\n')
    return root


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    key = tmp_path / "keys" / "alice"
    key.parent.mkdir()
    assert main(["keygen", str(key), "--identity", "alice@login1"]) == 0
    return key, key.with_name("alice.pub")


def test_keygen_writes_keys_and_refuses_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "k"
    assert main(["keygen", str(key), "--identity", "bob"]) == 0
    out = capsys.readouterr().out
    assert "fingerprint SHA256:" in out
    assert "identity bob" in out
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert main(["keygen", str(key)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["keygen", str(key), "--force"]) == 0


def test_sign_then_verify_ok(
    tmp_path: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    key, pub = keys
    ckpt = checkpoint(tmp_path / "ckpt")
    capsys.readouterr()
    assert main(["sign", str(ckpt), "--key", str(key), "--run", "r1", "--step", "5"]) == 0
    out = capsys.readouterr().out
    assert "sha256:" in out
    assert "run r1, step 5" in out
    assert (tmp_path / "ckpt.sig").exists()
    assert main(["verify", str(ckpt), "--key", str(pub)]) == 0
    out = capsys.readouterr().out
    assert "VERIFIED" in out
    assert "alice@login1" in out


def test_sign_json_output(
    tmp_path: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    key, _ = keys
    ckpt = checkpoint(tmp_path / "ckpt")
    capsys.readouterr()
    sig = tmp_path / "elsewhere.sig"
    assert main(["sign", str(ckpt), "--key", str(key), "--sig", str(sig), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["signature"] == str(sig)
    assert doc["files"] == 2
    assert doc["digest"].startswith("sha256:")


def test_verify_tampered_exits_1_with_json_report(
    tmp_path: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    key, pub = keys
    ckpt = checkpoint(tmp_path / "ckpt")
    assert main(["sign", str(ckpt), "--key", str(key)]) == 0
    (ckpt / "config.json").write_text('{"lr": 9.9}\n')
    (ckpt / "added.pkl").write_bytes(b"\x80\x04N.")
    capsys.readouterr()
    assert main(["verify", str(ckpt), "--key", str(pub), "--format", "json"]) == 1
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["schema_version"] == 1
    assert doc["tool"]["command"] == "verify"
    problems = {
        Path(f["path"]).name: [x["rule_id"] for x in f["findings"]]
        for f in doc["files"]
        if f["verdict"] != "safe"
    }
    assert problems == {"config.json": ["sign.modified"], "added.pkl": ["sign.extra"]}
    assert "NOT VERIFIED" in captured.err


def test_verify_text_report_names_files(
    tmp_path: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    key, pub = keys
    ckpt = checkpoint(tmp_path / "ckpt")
    assert main(["sign", str(ckpt), "--key", str(key)]) == 0
    (ckpt / "model.bin").unlink()
    capsys.readouterr()
    assert main(["verify", str(ckpt), "--key", str(pub)]) == 1
    out = capsys.readouterr().out
    assert "model.bin" in out
    assert "sign.missing" in out


def test_verify_wrong_key_exits_1(
    tmp_path: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    key, _ = keys
    other = tmp_path / "other"
    assert main(["keygen", str(other)]) == 0
    ckpt = checkpoint(tmp_path / "ckpt")
    assert main(["sign", str(ckpt), "--key", str(key)]) == 0
    capsys.readouterr()
    assert main(["verify", str(ckpt), "--key", f"{other}.pub"]) == 1
    assert "sign.untrusted-key" in capsys.readouterr().out
    # Several trusted keys: one of them signed.
    assert main(["verify", str(ckpt), "--key", f"{other}.pub", "--key", str(keys[1])]) == 0


@pytest.mark.parametrize("content", [b"", b"not json", b"{}"])
def test_verify_malformed_signature_exits_2(
    tmp_path: Path, keys: tuple[Path, Path], content: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    key, pub = keys
    ckpt = checkpoint(tmp_path / "ckpt")
    assert main(["sign", str(ckpt), "--key", str(key)]) == 0
    (tmp_path / "ckpt.sig").write_bytes(content)
    capsys.readouterr()
    assert main(["verify", str(ckpt), "--key", str(pub)]) == 2
    err = capsys.readouterr().err
    assert "malformed" in err
    assert "Traceback" not in err


def test_operational_errors_exit_2(
    tmp_path: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    key, pub = keys
    ckpt = checkpoint(tmp_path / "ckpt")
    assert main(["verify", str(ckpt), "--key", str(pub)]) == 2  # no signature yet
    assert main(["sign", str(tmp_path / "nope"), "--key", str(key)]) == 2
    assert main(["sign", str(ckpt), "--key", str(pub)]) == 2  # a public key cannot sign
    assert main(["sign", str(ckpt), "--key", str(key), "--step", "3"]) == 2  # no --run
    assert main(["verify", str(ckpt)]) == 2  # --key is required
    assert "Traceback" not in capsys.readouterr().err


def test_ledger_rollback_through_cli(
    tmp_path: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    key, pub = keys
    ledger = tmp_path / "ledger"
    assert main(["ledger", "init", str(ledger)]) == 0
    capsys.readouterr()
    latest = checkpoint(tmp_path / "latest")
    base = ["--key", str(key), "--ledger", str(ledger), "--run", "r"]
    assert main(["sign", str(latest), *base, "--step", "1", "--format", "json"]) == 0
    first = json.loads(capsys.readouterr().out)
    shutil.copytree(latest, tmp_path / "old")
    shutil.copy(tmp_path / "latest.sig", tmp_path / "old.sig")
    (latest / "model.bin").write_bytes(b"newer weights")
    assert main(["sign", str(latest), *base, "--step", "2", "--parent", first["digest"]]) == 0
    shutil.rmtree(latest)
    shutil.copytree(tmp_path / "old", latest)
    shutil.copy(tmp_path / "old.sig", tmp_path / "latest.sig")
    assert main(["verify", str(latest), "--key", str(pub)]) == 0
    capsys.readouterr()
    assert main(["verify", str(latest), "--key", str(pub), "--ledger", str(ledger)]) == 1
    assert "lineage.rolled-back" in capsys.readouterr().out


def test_openssh_key_sign_and_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    raw = Ed25519PrivateKey.generate()
    key = tmp_path / "id_ed25519"
    key.write_bytes(
        raw.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    key.chmod(0o600)
    pub = tmp_path / "id_ed25519.pub"
    pub.write_bytes(
        raw.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + b" erin@gpu3\n"
    )
    ckpt = checkpoint(tmp_path / "ckpt")
    assert main(["sign", str(ckpt), "--key", str(key)]) == 0
    capsys.readouterr()
    assert main(["verify", str(ckpt), "--key", str(pub)]) == 0
    assert "erin@gpu3" in capsys.readouterr().out
