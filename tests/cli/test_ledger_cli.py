"""`trainwarden ledger append|seal|verify|show`: exit codes, JSON output, messages."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from test_sign_cli import TRAINWARDEN, run_cli

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


# -- hardening: creation is explicit, bad input, outputs, full disks, flags ------------------------


def test_append_never_creates_a_ledger_by_accident(tmp_path, keys, capsys):
    typo = tmp_path / "ledgr"
    argv = ["ledger", "append", str(typo), "--key", str(keys["alice"]), "--event", "e"]
    assert main(argv) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not typo.exists()
    assert main([*argv, "--create"]) == 0
    assert main(argv) == 0  # it exists now
    other = tmp_path / "other"
    capsys.readouterr()
    assert main(["ledger", "init", str(other), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == {"schema_version": 1, "ledger": str(other), "created": True}
    assert main(["ledger", "init", str(other)]) == 0
    assert capsys.readouterr().out == f"already a ledger {other}\n"


@pytest.fixture
def bad(tmp_path, keys):
    root = tmp_path / "ledger"
    assert _append(root, keys["alice"], "--event", "e", "--run", "r") == 0
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "garbage").write_bytes(os.urandom(300))
    (tmp_path / "dir").mkdir()
    (tmp_path / "full-dir").mkdir()
    (tmp_path / "full-dir" / "notes.txt").write_text("mine")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    return {
        "root": str(root),
        "writer": str(next((root / "writers").iterdir())),
        "key": str(keys["alice"]),
        "pub": str(keys["alice.pub"]),
        "sealer": str(keys["sealer"]),
        "missing": str(tmp_path / "missing"),
        "empty": str(tmp_path / "empty"),
        "garbage": str(tmp_path / "garbage"),
        "dir": str(tmp_path / "dir"),
        "full-dir": str(tmp_path / "full-dir"),
        "fifo": str(tmp_path / "fifo"),
        "loop": str(tmp_path / "loop"),
        "tmp": str(tmp_path),
    }


_SLOTS = ["missing", "empty", "dir", "fifo", "loop", "garbage"]
_LEDGERS = ["missing", "empty", "fifo", "loop", "garbage", "full-dir"]
BAD_LEDGER_INPUTS = [
    *[["ledger", "init", f"{{{slot}}}"] for slot in ["empty", "fifo", "loop", "full-dir"]],
    ["ledger", "init", "{root}", "-o", "{root}/out.txt"],
    *[["ledger", "append", f"{{{slot}}}", "--key", "{key}", "--event", "e"] for slot in _LEDGERS],
    *[
        ["ledger", "append", "{root}", "--key", f"{{{slot}}}", "--event", "e"]
        for slot in [*_SLOTS, "pub"]
    ],
    ["ledger", "append", "{root}", "--key", "{key}", "--event", "e", "--data", "[" * 100000],
    ["ledger", "append", "{root}", "--key", "{key}", "--event", "bad event"],
    ["ledger", "append", "{root}", "--key", "{key}", "--event", "e", "-o", "{writer}"],
    *[["ledger", "seal", f"{{{slot}}}", "--key", "{sealer}"] for slot in _LEDGERS],
    ["ledger", "seal", "{writer}", "--key", "{sealer}"],
    *[["ledger", "seal", "{root}", "--key", f"{{{slot}}}"] for slot in [*_SLOTS, "pub"]],
    *[["ledger", "seal", "{root}", "--key", "{sealer}", "--pubkey", f"{{{s}}}"] for s in _SLOTS],
    *[
        ["ledger", "seal", "{root}", "--key", "{sealer}", "--receipt", receipt]
        for receipt in [
            "{dir}",
            "{fifo}",
            "{loop}",
            "{root}/receipt",
            "{missing}/x",
            "{writer}",
            "{sealer}",
        ]
    ],
    *[["ledger", "verify", f"{{{slot}}}", "--pubkey", "{pub}"] for slot in _LEDGERS],
    *[["ledger", "verify", "{root}", "--pubkey", f"{{{slot}}}"] for slot in [*_SLOTS, "key"]],
    *[
        [
            "ledger",
            "verify",
            "{root}",
            "--pubkey",
            "{pub}",
            "--seal-pubkey",
            "{pub}",
            "--seal-receipt",
            f"{{{slot}}}",
        ]
        for slot in _SLOTS
    ],
    ["ledger", "verify", "{root}", "--pubkey", "{pub}", "-o", "{writer}"],
    ["ledger", "verify", "{root}", "--pubkey", "{pub}", "-o", "{pub}"],
    ["ledger", "append", "{root}", "--key", "{key}", "--event", "e", "-o", "{key}"],
    ["ledger", "verify", "{root}", "--pubkey", "{pub}", "-o", "{root}/report.txt"],
    ["ledger", "verify", "{root}", "--pubkey", "{pub}", "--jobs", "-2"],
    *[["ledger", "show", f"{{{slot}}}"] for slot in _LEDGERS],
    ["ledger", "show", "{root}", "-o", "{root}/writers/timeline.txt"],
]


@pytest.mark.parametrize(
    "argv", BAD_LEDGER_INPUTS, ids=[" ".join(a)[:80] for a in BAD_LEDGER_INPUTS]
)
def test_every_ledger_command_on_bad_input_exits_2_without_traceback(bad, argv, capsys):
    writer = Path(bad["writer"])
    before = writer.read_bytes()
    capsys.readouterr()
    assert run_cli([a.format(**bad) for a in argv], [Path(bad["fifo"])]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "trainwarden: error: " in err
    assert writer.read_bytes() == before  # nothing appended, sealed or overwritten
    assert not (Path(bad["root"]) / "seals").exists() or not any(
        (Path(bad["root"]) / "seals").iterdir()
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["ledger", "init", "{tmp}/new"],
        ["ledger", "append", "{root}", "--key", "{key}", "--event", "e"],
        ["ledger", "seal", "{root}", "--key", "{sealer}", "--format", "json"],
        ["ledger", "verify", "{root}", "--pubkey", "{pub}"],
        ["ledger", "verify", "{root}", "--pubkey", "{pub}", "--format", "sarif"],
        ["ledger", "show", "{root}"],
        ["ledger", "show", "{root}", "--format", "json"],
    ],
)
def test_ledger_output_to_a_full_disk_is_exit_2(bad, argv):
    args = [a.format(**bad) for a in argv]
    with Path("/dev/full").open("wb") as full:
        proc = subprocess.run(
            [*TRAINWARDEN, *args], stdout=full, stderr=subprocess.PIPE, text=True, check=False
        )
    assert proc.returncode == 2, proc.stderr
    assert "No space left on device" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert stat.S_ISCHR(Path("/dev/full").stat().st_mode)


def test_every_ledger_json_output_carries_schema_version(bad, capsys):
    receipt = Path(bad["tmp"]) / "receipt"
    runs = [
        ["ledger", "init", bad["root"], "--format", "json"],
        ["ledger", "append", bad["root"], "--key", bad["key"], "--event", "e", "--format", "json"],
        [
            "ledger",
            "seal",
            bad["root"],
            "--key",
            bad["sealer"],
            "--format",
            "json",
            "--receipt",
            str(receipt),
        ],
        ["ledger", "verify", bad["root"], "--pubkey", bad["pub"], "--format", "json"],
        ["ledger", "show", bad["root"], "--format", "json"],
    ]
    for argv in runs:
        capsys.readouterr()
        assert main(argv) == 0, argv
        assert json.loads(capsys.readouterr().out)["schema_version"] == 1, argv


def test_old_flag_spellings_still_work(bad, capsys):
    receipt = Path(bad["tmp"]) / "receipt"
    seal = ["ledger", "seal", bad["root"], "--key", bad["sealer"], "--receipt", str(receipt)]
    assert main([*seal, "--writer-key", bad["pub"]]) == 0
    sealer_pub = bad["sealer"] + ".pub"
    for flags in (
        ["--pubkey", bad["pub"], "--seal-pubkey", sealer_pub],
        ["--key", bad["pub"], "--seal-key", sealer_pub],
    ):
        argv = ["ledger", "verify", bad["root"], *flags, "--seal-receipt", str(receipt)]
        assert main(argv) == 0
    capsys.readouterr()
    assert main(["ledger", "seal", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--pubkey PUB" in text
    assert "--writer-key" not in text


def test_show_escapes_what_could_forge_lines(tmp_path, capsys):
    key = tmp_path / "k"
    assert main(["keygen", str(key), "--identity", "eve\x1b[2Jmallory"]) == 0
    root = tmp_path / "l"
    forged = "r\n2026-01-01T00:00:00.000000Z  root(0)@admin  [admin]  run=x  ok"
    assert (
        main(
            [
                "ledger",
                "append",
                str(root),
                "--key",
                str(key),
                "--create",
                "--event",
                "e",
                "--run",
                forged,
                "--data",
                '{"note": "a\\u001b[31m\\u2028b"}',
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["ledger", "show", str(root)]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 2  # ledger.open and the one event: no forged line
    assert "\x1b" not in out
    assert "\u2028" not in out
    assert "run=r\\n2026" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["ledger", "init", ""],
        ["ledger", "append", "", "--key", "{key}", "--event", "e", "--create"],
        ["ledger", "verify", "", "--pubkey", "{pub}"],
        ["ledger", "show", ""],
        ["sign", "", "--key", "{key}"],
        ["sign", "{root}", "--key", ""],
        ["verify", "", "--pubkey", "{pub}"],
        ["keygen", ""],
    ],
)
def test_an_empty_path_never_means_the_current_directory(bad, argv, capsys, monkeypatch):
    workdir = Path(bad["dir"])
    monkeypatch.chdir(workdir)
    capsys.readouterr()
    assert main([a.format(**bad) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "empty path" in err or "no key path" in err
    assert "Traceback" not in err
    assert list(workdir.iterdir()) == []  # nothing created in the current directory


def test_python_api_refuses_an_empty_path(keys):
    from trainwarden.errors import ConfigError, InputError
    from trainwarden.keys import load_private_key
    from trainwarden.ledger import Ledger, init_ledger
    from trainwarden.manifest import digest_path
    from trainwarden.sign import sign_path

    key = load_private_key(keys["alice"])
    with pytest.raises(InputError, match="no ledger path"):
        Ledger("", key=key)
    with pytest.raises(InputError, match="no ledger path"):
        init_ledger("")
    with pytest.raises(ConfigError, match="no path"):
        sign_path("", key)
    with pytest.raises(ConfigError, match="no path"):
        digest_path("")


def test_a_seal_by_a_key_not_named_trusted_gets_a_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `trainwarden run` seals its run's ledger with its supervisor key. A user who then
    # verifies or seals that ledger with their own ops key read only "[seal_forged] ... not a
    # trusted key" and "TAMPERED", with no word of the flag that names the run's key.
    from trainwarden.keys import generate_key

    writer, writer_pub = generate_key(tmp_path / "writer.key")
    supervisor, supervisor_pub = generate_key(tmp_path / "supervisor.key")
    ops, ops_pub = generate_key(tmp_path / "ops.key")
    ledger = tmp_path / "ledger"
    assert main(["ledger", "init", str(ledger)]) == 0
    assert main(["ledger", "append", str(ledger), "--key", str(writer), "--event", "x"]) == 0
    assert (
        main(["ledger", "seal", str(ledger), "--key", str(supervisor), "--pubkey", str(writer_pub)])
        == 0
    )
    capsys.readouterr()
    trusted = ["--pubkey", str(writer_pub)]
    assert main(["ledger", "verify", str(ledger), *trusted, "--seal-pubkey", str(ops_pub)]) == 1
    assert "--seal-pubkey" in capsys.readouterr().err
    assert main(["ledger", "seal", str(ledger), "--key", str(ops), *trusted]) == 1
    assert "--seal-pubkey" in capsys.readouterr().err
    extend = ["--seal-pubkey", str(supervisor_pub)]
    assert main(["ledger", "seal", str(ledger), "--key", str(ops), *trusted, *extend]) == 0
    assert "hint" not in capsys.readouterr().err
