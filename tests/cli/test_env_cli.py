"""`trainwarden env verify|snapshot|diff`: exit codes, formats and the lock workflow."""

from __future__ import annotations

import json
import shutil
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
    assert "bad signature" in capsys.readouterr().err
    lock.write_bytes(data)
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
