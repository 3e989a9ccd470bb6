"""`trainwarden keygen`, `sign` and `verify` through main(argv): exit codes and output."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
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


# -- hardening: bad input, outputs over inputs, full disks, flags -----------------------------

TRAINWARDEN = [sys.executable, "-c", "from trainwarden.cli import entry_point; entry_point()"]


def run_cli(argv: list[str], fifos: list[Path]) -> int:
    """``main(argv)`` in a thread; a read blocked on one of ``fifos`` fails the test."""
    result: list[int] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(main(argv))
        except BaseException as exc:  # a crash: reported below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    if thread.is_alive():
        for fifo in fifos:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
        pytest.fail(f"{argv} blocked on a FIFO")
    if errors:
        raise errors[0]
    return result[0]


@pytest.fixture
def bad(tmp_path: Path, keys: tuple[Path, Path]) -> dict[str, str]:
    """Every kind of bad input, by name, plus a valid key, checkpoint and signature."""
    key, pub = keys
    ckpt = checkpoint(tmp_path / "ckpt")
    assert main(["sign", str(ckpt), "--key", str(key)]) == 0
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "garbage").write_bytes(os.urandom(300))
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    return {
        "key": str(key),
        "pub": str(pub),
        "ckpt": str(ckpt),
        "model": str(ckpt / "model.bin"),
        "sig": str(tmp_path / "ckpt.sig"),
        "missing": str(tmp_path / "missing"),
        "empty": str(tmp_path / "empty"),
        "garbage": str(tmp_path / "garbage"),
        "dir": str(tmp_path / "dir"),
        "fifo": str(tmp_path / "fifo"),
        "loop": str(tmp_path / "loop"),
        "tmp": str(tmp_path),
    }


_KEY_SLOTS = ["missing", "empty", "dir", "fifo", "loop", "garbage"]
BAD_SIGN_INPUTS = [
    *[(["keygen", arg], 2) for arg in ["", ".", "{dir}", "{key}", "{missing}/x/k"]],
    *[(["sign", "{ckpt}", "--key", f"{{{slot}}}"], 2) for slot in [*_KEY_SLOTS, "pub"]],
    *[(["sign", f"{{{slot}}}", "--key", "{key}"], 2) for slot in ["missing", "fifo", "loop"]],
    *[
        (["sign", "{ckpt}", "--key", "{key}", "--sig", sig], 2)
        for sig in ["{dir}", "{fifo}", "{loop}", "{ckpt}", "{model}", "{missing}/x"]
    ],
    (["sign", "{model}", "--key", "{key}", "--sig", "{model}"], 2),
    (["sign", "{ckpt}", "--key", "{key}", "--sig", "{key}"], 2),
    (["sign", "{ckpt}", "--key", "{key}", "-o", "{key}"], 2),
    *[
        (["sign", "{ckpt}", "--key", "{key}", "--ledger", f"{{{slot}}}"], 2)
        for slot in ["missing", "garbage", "fifo", "loop", "dir"]
    ],
    (["sign", "{ckpt}", "--key", "{key}", "--format", "json", "-o", "{model}"], 2),
    (["sign", "{ckpt}", "--key", "{key}", "-o", "{sig}"], 2),
    (["sign", "{ckpt}", "--key", "{key}", "--jobs", "-1"], 2),
    *[(["verify", "{ckpt}", "--pubkey", f"{{{slot}}}"], 2) for slot in [*_KEY_SLOTS, "key"]],
    *[
        (["verify", "{ckpt}", "--pubkey", "{pub}", "--sig", f"{{{slot}}}"], 2)
        for slot in _KEY_SLOTS
    ],
    (["verify", "{missing}", "--pubkey", "{pub}"], 2),
    (["verify", "{ckpt}", "--pubkey", "{pub}", "-o", "{model}"], 2),
    (["verify", "{ckpt}", "--pubkey", "{pub}", "-o", "{ckpt}/report.txt"], 2),
    (["verify", "{ckpt}", "--pubkey", "{pub}", "-o", "{sig}"], 2),
    (["verify", "{ckpt}", "--pubkey", "{pub}", "-o", "{dir}"], 2),
    (["verify", "{ckpt}", "--pubkey", "{pub}", "-o", "{pub}"], 2),
    *[
        (["verify", "{ckpt}", "--pubkey", "{pub}", "--ledger", f"{{{slot}}}"], 2)
        for slot in ["missing", "garbage", "fifo", "loop", "dir"]
    ],
    (["verify", "{ckpt}"], 2),
]


@pytest.mark.parametrize(
    ("argv", "code"), BAD_SIGN_INPUTS, ids=[" ".join(a) for a, _ in BAD_SIGN_INPUTS]
)
def test_bad_input_is_a_clear_error_without_traceback(
    bad: dict[str, str], argv: list[str], code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {p: Path(bad[p]).read_bytes() for p in ("model", "sig", "key", "pub")}
    capsys.readouterr()
    args = [a.format(**bad) for a in argv]
    assert run_cli(args, [Path(bad["fifo"])]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("trainwarden: ")
    assert {p: Path(bad[p]).read_bytes() for p in before} == before  # no input touched


def test_checkpoint_replaced_by_a_fifo_is_tampering_not_a_hang(
    bad: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    model = Path(bad["model"])
    model.unlink()
    os.mkfifo(model)
    assert run_cli(["verify", bad["ckpt"], "--pubkey", bad["pub"]], [model]) == 1
    assert "sign.special-file" in capsys.readouterr().out


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_key_and_signature(bad: dict[str, str]) -> None:
    Path(bad["key"]).chmod(0)
    Path(bad["sig"]).chmod(0)
    assert main(["sign", bad["ckpt"], "--key", bad["key"]]) == 2
    assert main(["verify", bad["ckpt"], "--pubkey", bad["pub"]]) == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["keygen", "{tmp}/new"],
        ["sign", "{ckpt}", "--key", "{key}"],
        ["sign", "{ckpt}", "--key", "{key}", "--format", "json"],
        ["verify", "{ckpt}", "--pubkey", "{pub}"],
        ["verify", "{ckpt}", "--pubkey", "{pub}", "--format", "json"],
    ],
)
def test_output_to_a_full_disk_is_exit_2(bad: dict[str, str], argv: list[str]) -> None:
    args = [a.format(**bad) for a in argv]
    with Path("/dev/full").open("wb") as full:
        proc = subprocess.run(
            [*TRAINWARDEN, *args], stdout=full, stderr=subprocess.PIPE, text=True, check=False
        )
    assert proc.returncode == 2, proc.stderr
    assert "No space left on device" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = subprocess.run(
        [
            *TRAINWARDEN,
            *args[:1],
            *[a.replace("/new", "/new2") for a in args[1:]],
            "-o",
            "/dev/full",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "No space left on device" in proc.stderr
    assert stat.S_ISCHR(Path("/dev/full").stat().st_mode)


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_output_to_a_device_writes_into_it_never_replaces_it(bad: dict[str, str]) -> None:
    # A private copy of /dev/null: renaming a report over it would turn it into a file.
    null = Path(bad["tmp"]) / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    assert main(["verify", bad["ckpt"], "--pubkey", bad["pub"], "-o", str(null)]) == 0
    assert (
        main(["sign", bad["ckpt"], "--key", bad["key"], "--format", "json", "-o", str(null)]) == 0
    )
    assert stat.S_ISCHR(null.lstat().st_mode)


def test_every_json_output_carries_schema_version(
    bad: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    runs = [
        ["keygen", f"{bad['tmp']}/k2", "--format", "json"],
        ["sign", bad["ckpt"], "--key", bad["key"], "--format", "json"],
        ["verify", bad["ckpt"], "--pubkey", bad["pub"], "--format", "json"],
    ]
    for argv in runs:
        capsys.readouterr()
        assert main(argv) == 0
        assert json.loads(capsys.readouterr().out)["schema_version"] == 1


def test_old_key_flags_still_work_but_are_not_advertised(
    bad: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    ledger = Path(bad["tmp"]) / "ledger"
    assert main(["ledger", "init", str(ledger)]) == 0
    assert (
        main(["sign", bad["ckpt"], "--key", bad["key"], "--ledger", str(ledger), "--run", "r"]) == 0
    )
    for flags in (
        ["--pubkey", bad["pub"], "--ledger-pubkey", bad["pub"]],
        ["--key", bad["pub"], "--ledger-key", bad["pub"]],
    ):
        assert main(["verify", bad["ckpt"], *flags, "--ledger", str(ledger)]) == 0
    capsys.readouterr()
    assert main(["verify", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--pubkey PUB" in text
    assert "--key" not in text
    assert "--ledger-key" not in text


def test_output_file_and_jobs(bad: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    report = Path(bad["tmp"]) / "report.json"
    argv = ["verify", bad["ckpt"], "--pubkey", bad["pub"], "--format", "json", "-j", "1"]
    assert main([*argv, "-o", str(report)]) == 0
    assert json.loads(report.read_text())["schema_version"] == 1
    assert capsys.readouterr().out == ""


def test_progress_shows_plainly_when_stderr_is_not_a_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from trainwarden.cli._common import Progress

    clock = [100.0]
    with Progress("signing x", enabled=True, unit="bytes", clock=lambda: clock[0]) as progress:
        progress.update(done=1 << 20, total=8 << 30)  # quick work prints nothing
        clock[0] += 6
        progress.update(done=3 << 30, total=8 << 30)
        clock[0] += 1
        progress.update(done=5 << 30, total=8 << 30)  # not again within a few seconds
    err = capsys.readouterr().err
    assert err == "trainwarden: signing x: 3.0 GiB of 8.0 GiB at 512.0 MiB/s (38%), 6 s\n"


def test_keygen_creates_a_missing_key_directory_private_to_its_owner(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's `keygen ~/.trainwarden/alice` must work on a fresh machine, like ssh-keygen
    creating ~/.ssh: one missing directory level is created (mode 0700); a deeper missing
    path is still a typo, refused with exit 2."""
    key = tmp_path / "home" / ".trainwarden" / "alice"
    (tmp_path / "home").mkdir()
    assert main(["keygen", str(key), "--identity", "alice@login1"]) == 0
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.with_name("alice.pub").is_file()
    capsys.readouterr()
    assert main(["keygen", str(tmp_path / "nowhere" / "deeper" / "k")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()


def test_verify_text_counts_every_file_checked_not_only_those_listed(
    tmp_path: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A verified directory printed "1 file(s): 1 safe" (the signature alone) above the
    VERIFIED line; a modified one "2 file(s): 1 safe, 1 unsafe": a user reads that as the
    size of the checkpoint. Text names only files with something to say, and counts all."""
    key, pub = keys
    ckpt = checkpoint(tmp_path / "ckpt")
    assert main(["sign", str(ckpt), "--key", str(key)]) == 0
    capsys.readouterr()
    assert main(["verify", str(ckpt), "--pubkey", str(pub)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("VERIFIED ")
    assert "1 safe" not in out
    assert "(signature)" not in out
    data = bytearray((ckpt / "model.bin").read_bytes())
    data[7] ^= 1
    (ckpt / "model.bin").write_bytes(bytes(data))
    assert main(["verify", str(ckpt), "--pubkey", str(pub)]) == 1
    out = capsys.readouterr().out
    assert "model.bin" in out
    assert "config.json" not in out
    assert "(signature)" not in out
    assert out.splitlines()[-1] == "1 of 2 file(s) not as signed: 1 unsafe"
