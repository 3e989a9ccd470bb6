"""`trainwarden env verify|snapshot|diff`: exit codes, formats and the lock workflow."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from trainwarden.cli import main


@pytest.fixture(scope="session")
def installed_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site directory holding a real wheel installed by pip (``--target``).

    ``packaging`` has no console scripts, which ``--target`` would misrecord.
    """
    wheels = tmp_path_factory.mktemp("cli-wheels")
    download = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "-q",
            "-d",
            str(wheels),
            "packaging",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if download.returncode != 0:
        pytest.skip(f"cannot download the test wheel: {download.stderr.strip()[-300:]}")
    site = tmp_path_factory.mktemp("cli-site") / "site-packages"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--target",
            str(site),
            *(str(w) for w in wheels.glob("*.whl")),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return site


@pytest.fixture
def site(installed_site: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "site-packages"
    shutil.copytree(installed_site, copy, symlinks=True)
    return copy


def _json(capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    out: dict[str, object] = json.loads(capsys.readouterr().out)
    return out


def test_verify_clean_site_exits_0(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["env", "verify", "--path", str(site), "--format", "json"]) == 0
    doc = _json(capsys)
    assert doc["schema_version"] == 1
    assert doc["tool"]["command"] == "env verify"  # type: ignore[index]
    assert doc["summary"]["verdict"] == "safe"  # type: ignore[index]


def test_verify_tampered_site_exits_1_with_details(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (site / "packaging" / "version.py").write_text("raise SystemExit\n")
    assert main(["env", "verify", "--path", str(site), "--format", "json"]) == 1
    files = _json(capsys)["files"]
    [dist] = [f for f in files if f["format"] == "distribution"]  # type: ignore[union-attr,index]
    [finding] = [f for f in dist["findings"] if f["verdict"] != "safe"]
    assert finding["rule_id"] == "env.file-modified"
    assert finding["location"]["expected"].startswith("sha256=")
    assert finding["location"]["actual"].startswith("sha256=")


def test_verify_sarif_and_output_file(site: Path, tmp_path: Path) -> None:
    (site / "packaging" / "planted.py").write_text("")
    out = tmp_path / "report.sarif"
    assert main(["env", "verify", "--path", str(site), "--format", "sarif", "-o", str(out)]) == 1
    sarif = json.loads(out.read_text())
    rules = {r["ruleId"] for r in sarif["runs"][0]["results"]}
    assert "env.file-unexpected" in rules


def test_text_output_names_the_file(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (site / "packaging" / "version.py").write_text("x = 1\n")
    assert main(["env", "verify", "--path", str(site)]) == 1
    text = capsys.readouterr().out
    assert "env.file-modified" in text
    assert "packaging/version.py" in text


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["env", "verify", "--path", str(tmp_path / "missing")]) == 2
    assert main(["env", "verify", "--key", str(tmp_path / "k.pub")]) == 2
    assert main(["env", "verify", "--jobs", "0", "--path", str(tmp_path)]) == 2
    assert main(["env", "verify", "--lock", str(tmp_path / "missing.lock")]) == 2
    assert main(["env", "bogus"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_snapshot_verify_diff_workflow_with_signature(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trainwarden.sign import generate_key

    key, pub = generate_key(tmp_path / "env.key", identity="ops")
    lock = tmp_path / "env.lock"
    assert (
        main(["env", "snapshot", "--path", str(site), "--out", str(lock), "--key", str(key)]) == 0
    )
    assert Path(f"{lock}.sig").exists()
    capsys.readouterr()
    assert main(["env", "verify", "--lock", str(lock), "--key", str(pub), "--format", "json"]) == 0
    # Edit a file and its RECORD row both: RECORD is fooled, the signed lock is not.
    (site / "packaging" / "tags.py").write_text("INTERPRETER_SHORT_NAMES = {}\n")
    _rewrite_record(site, "packaging/tags.py")
    assert main(["env", "verify", "--path", str(site), "--skip-pyc"]) == 0
    capsys.readouterr()
    assert main(["env", "verify", "--lock", str(lock), "--key", str(pub), "--format", "json"]) == 1
    rules = {
        f["rule_id"]
        for file in _json(capsys)["files"]  # type: ignore[attr-defined]
        for f in file["findings"]
    }
    assert "env.lock-modified" in rules
    # A lock whose bytes were edited fails its signature: exit 1 with the reason.
    data = lock.read_bytes()
    lock.write_bytes(data.replace(b'"mode":420', b'"mode":511', 1))
    assert main(["env", "verify", "--lock", str(lock), "--key", str(pub)]) == 1
    err = capsys.readouterr().err
    assert "bad signature" in err
    # Which file failed, and against which key: "bad signature" alone sends a new user
    # hunting through every file the command read.
    assert f"lock signature {lock}.sig" in err
    lock.write_bytes(data)
    _, other_pub = generate_key(tmp_path / "other.key", identity="someone")
    assert main(["env", "verify", "--lock", str(lock), "--pubkey", str(other_pub)]) == 1
    err = capsys.readouterr().err
    assert f"lock signature {lock}.sig does not verify" in err
    assert "someone" in err
    # diff: the same lock twice is equal; a new snapshot differs.
    assert main(["env", "diff", str(lock), str(lock)]) == 0
    new_lock = tmp_path / "new.lock"
    assert main(["env", "snapshot", "--path", str(site), "--out", str(new_lock)]) == 0
    capsys.readouterr()
    assert main(["env", "diff", str(lock), str(new_lock), "--format", "json"]) == 1
    changed = [
        f["location"]["path"]
        for file in _json(capsys)["files"]  # type: ignore[attr-defined]
        for f in file["findings"]
    ]
    assert any(p.endswith("tags.py") for p in changed)


def test_snapshot_refuses_a_tampered_environment(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (site / "packaging" / "version.py").write_text("x = 1\n")
    lock = tmp_path / "env.lock"
    assert main(["env", "snapshot", "--path", str(site), "--out", str(lock)]) == 1
    assert not lock.exists()
    assert "refusing" in capsys.readouterr().err
    args = ["env", "snapshot", "--path", str(site), "--out", str(lock), "--unsafe-accept-findings"]
    assert main(args) == 0
    assert lock.exists()


def _rewrite_record(site: Path, rel: str) -> None:
    import base64
    import hashlib

    data = (site / rel).read_bytes()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    [record] = site.glob("packaging-*.dist-info/RECORD")
    rows = [
        f"{rel},sha256={digest},{len(data)}" if row.startswith(f"{rel},") else row
        for row in record.read_text().splitlines()
    ]
    record.write_text("\n".join(rows) + "\n")


# ------------------------------------------------------------------------ bad input, all of it


def _special(tmp_path: Path, kind: str) -> Path:
    """A path of the given kind of bad input."""
    path = tmp_path / f"bad-{kind}"
    if kind == "missing":
        return path
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink-loop":
        path.symlink_to(path)
    elif kind == "garbage":
        path.write_bytes(b"\x8f\x00{not json" * 50)
    elif kind == "unreadable":
        path.write_text('{"format": "trainwarden.env-lock"}')
        path.chmod(0)
    return path


BAD_KINDS = ("missing", "empty", "directory", "fifo", "symlink-loop", "garbage", "unreadable")


def _run_cli(*args: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a child (a FIFO must not hang the test run), as ``user`` if given.

    Root reads every file, so "unreadable" runs the command as another uid: in a forked copy
    of this process (which has trainwarden loaded already, wherever the interpreter lives).
    """
    if user is None:
        return subprocess.run(
            [sys.executable, "-m", "trainwarden", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd="/",
        )
    # The other uid may not read this interpreter's own files: import what the command needs
    # before dropping privileges.
    import locale  # noqa: F401  # argparse's gettext

    import trainwarden.env
    import trainwarden.keys
    import trainwarden.report  # noqa: F401
    from trainwarden.cli import build_parser

    build_parser()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop privileges, run main, report through the pipe
        code = 70
        try:
            os.dup2(write_end, 2)
            os.setgid(user)
            os.setuid(user)
            sys.stderr = os.fdopen(2, "w", closefd=False)
            code = main(list(args))
            sys.stderr.flush()
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as stream:
        err = stream.read()
    _, status = os.waitpid(pid, 0)
    return subprocess.CompletedProcess(args, os.waitstatus_to_exitcode(status), "", err)


def _other_uid() -> int | None:
    return 65534 if os.geteuid() == 0 else None


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_lock_or_key_files_exit_2_without_traceback(
    tmp_path: Path, kind: str, site: Path
) -> None:
    bad = _special(tmp_path, kind)
    user = _other_uid() if kind == "unreadable" else None
    runs = [
        _run_cli("env", "verify", "--path", str(site), "--lock", str(bad), user=user),
        _run_cli("env", "diff", str(bad), str(bad), user=user),
        _run_cli(
            "env",
            "snapshot",
            "--path",
            str(site),
            "--lock",
            str(tmp_path / "l"),
            "--key",
            str(bad),
            user=user,
        ),
    ]
    for done in runs:
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert done.stderr.startswith("trainwarden: error:"), done.stderr


def test_a_fifo_signature_fails_instead_of_hanging(site: Path, tmp_path: Path) -> None:
    from trainwarden.keys import generate_key

    _, pub = generate_key(tmp_path / "ops.key", identity="ops")
    lock = tmp_path / "env.lock"
    assert main(["env", "snapshot", "--path", str(site), "--lock", str(lock)]) == 0
    os.mkfifo(f"{lock}.sig")
    done = _run_cli("env", "verify", "--lock", str(lock), "--pubkey", str(pub))
    assert done.returncode == 2, done.stderr
    assert "FIFO" in done.stderr or "not a regular file" in done.stderr


def test_a_public_key_given_as_the_signing_key_is_named(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trainwarden.keys import generate_key

    _, pub = generate_key(tmp_path / "ops.key", identity="ops")
    lock = tmp_path / "env.lock"
    args = ["env", "snapshot", "--path", str(site), "--lock", str(lock), "--key", str(pub)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "is a public key" in err
    assert "chmod" not in err
    assert not lock.exists()


def test_outputs_over_inputs_are_refused(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trainwarden.keys import generate_key

    key, _ = generate_key(tmp_path / "ops.key", identity="ops")
    lock = tmp_path / "env.lock"
    assert main(["env", "snapshot", "--path", str(site), "--lock", str(lock)]) == 0
    before = lock.read_bytes()
    key_bytes = key.read_bytes()
    refused = [
        ["env", "verify", "--path", str(site), "--lock", str(lock), "-o", str(lock)],
        ["env", "diff", str(lock), str(lock), "-o", str(lock)],
        ["env", "snapshot", "--path", str(site), "--lock", str(key), "--key", str(key)],
        ["env", "snapshot", "--path", str(site), "--lock", str(site / "env.lock")],
        ["env", "verify", "--path", str(site), "-o", str(site / "report.txt")],
    ]
    for argv in refused:
        capsys.readouterr()
        assert main(argv) == 2, argv
        assert "refusing" in capsys.readouterr().err
    assert lock.read_bytes() == before
    assert key.read_bytes() == key_bytes
    assert not (site / "env.lock").exists()


def test_a_report_to_a_full_device_is_exit_2_and_the_device_stays(
    site: Path, tmp_path: Path
) -> None:
    full = tmp_path / "full"
    if os.geteuid() == 0:
        os.mknod(full, 0o666 | stat.S_IFCHR, os.makedev(1, 7))  # a private /dev/full
    elif Path("/dev/full").exists():
        full = Path("/dev/full")
    else:
        pytest.skip("needs /dev/full")
    done = _run_cli("env", "verify", "--path", str(site), "--skip-pyc", "-o", str(full))
    assert done.returncode == 2, done.stderr
    assert "No space left" in done.stderr
    assert stat.S_ISCHR(full.stat().st_mode), "the device was replaced by a regular file"
    # And to a full stdout.
    with full.open("w") as sink:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "trainwarden",
                "env",
                "verify",
                "--path",
                str(site),
                "--skip-pyc",
            ],
            stdout=sink,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr


def test_old_flag_spellings_keep_working(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trainwarden.keys import generate_key

    key, pub = generate_key(tmp_path / "ops.key", identity="ops")
    lock = tmp_path / "env.lock"
    assert (
        main(["env", "snapshot", "--path", str(site), "--out", str(lock), "--key", str(key)]) == 0
    )
    assert main(["env", "verify", "--lock", str(lock), "--key", str(pub)]) == 0
    assert main(["env", "verify", "--lock", str(lock), "--pubkey", str(pub)]) == 0
    assert main(["env", "diff", str(lock), str(lock), "--key", str(pub)]) == 0
    help_text = _help(["env", "verify", "--help"], capsys)
    assert "--pubkey" in help_text
    assert "--key" not in help_text


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 0
    return capsys.readouterr().out


def test_plain_progress_lines_when_stderr_is_not_a_terminal(
    site: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from trainwarden.cli import _common

    # The thresholds, not the clock, are what this checks: show from the first message on.
    monkeypatch.setattr(_common, "PLAIN_AFTER", 0.0)
    monkeypatch.setattr(_common, "PLAIN_EVERY", 0.0)
    assert main(["env", "verify", "--path", str(site)]) == 0
    err = capsys.readouterr().err
    assert "trainwarden: env verify: hashing:" in err
    assert "trainwarden: env verify: compared" in err or "comparing" in err
    assert main(["env", "verify", "--path", str(site), "--no-progress"]) == 0
    assert "trainwarden: env verify:" not in capsys.readouterr().err
