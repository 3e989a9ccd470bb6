"""`verify_environment` on real venvs: clean, then tampered in each way T2 describes."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import marshal
import shutil
from pathlib import Path

from envtools import CanaryLike, Venv

from trainwarden.env import verify_environment
from trainwarden.findings import Finding, Report, Verdict


def _problems(report: Report) -> list[Finding]:
    return [f for f in report.findings if f.verdict is not Verdict.SAFE]


def _rules(report: Report) -> set[str]:
    return {f.rule_id for f in _problems(report)}


def test_clean_venv_reports_nothing(venv: Venv) -> None:
    report = verify_environment([str(venv.site)])
    assert _problems(report) == []
    assert report.verdict is Verdict.SAFE
    dists = {f.details.get("name") for f in report.files if f.format == "distribution"}
    assert dists == {"idna", "six"}


def test_modified_source_reports_both_digests(venv: Venv) -> None:
    target = venv.site / "idna" / "core.py"
    original = target.read_bytes()
    target.write_bytes(original.replace(b"def encode(", b"def encode(  ", 1))
    report = verify_environment([str(venv.site)], check_pyc=False)
    [finding] = [f for f in _problems(report) if f.rule_id == "env.file-modified"]
    assert finding.location.path == str(target)
    recorded = base64.urlsafe_b64encode(hashlib.sha256(original).digest()).rstrip(b"=").decode()
    assert finding.location.extra["expected"] == f"sha256={recorded}"
    assert finding.location.extra["actual"] != finding.location.extra["expected"]
    owner = next(f for f in report.files if finding in f.findings)
    assert owner.details["name"] == "idna"
    assert owner.verdict is Verdict.UNSAFE


def test_unlisted_file_in_package_is_attributed_to_its_distribution(venv: Venv) -> None:
    planted = venv.site / "idna" / "backdoor.py"
    planted.write_text("X = 1\n")
    report = verify_environment([str(venv.site)], check_pyc=False)
    [finding] = [f for f in _problems(report) if f.rule_id == "env.file-unexpected"]
    assert finding.location.path == str(planted)
    owner = next(f for f in report.files if finding in f.findings)
    assert owner.details["name"] == "idna"


def test_missing_file_is_reported(venv: Venv) -> None:
    (venv.site / "idna" / "codec.py").unlink()
    assert "env.file-missing" in _rules(verify_environment([str(venv.site)], check_pyc=False))


def test_deleted_pyc_is_not_a_finding(venv: Venv) -> None:
    # RECORD lists compiled files without hashes; Python recompiles a deleted one.
    shutil.rmtree(venv.site / "idna" / "__pycache__")
    assert _problems(verify_environment([str(venv.site)])) == []


def test_unowned_top_level_module_is_reported(venv: Venv) -> None:
    (venv.site / "helper.py").write_text("import os\n")
    assert "env.unowned-code" in _rules(verify_environment([str(venv.site)], check_pyc=False))


def test_pth_with_import_line_runs_and_is_reported(venv: Venv, canary: CanaryLike) -> None:
    c = canary
    (venv.site / "zz_hook.pth").write_text(f"import os; {c.python_code}\n")
    c.assert_absent()
    report = verify_environment([str(venv.site)], check_pyc=False)
    c.assert_absent()  # verifying never runs it
    [finding] = [f for f in _problems(report) if f.rule_id == "env.pth-exec"]
    assert finding.evidence is not None
    assert finding.evidence.startswith("import os")
    # The attack is real: any interpreter start of that venv runs the line.
    assert venv.run("pass").returncode == 0
    c.assert_present()


def test_pth_path_line_from_nobody_is_not_verified(venv: Venv, tmp_path: Path) -> None:
    (venv.site / "extra.pth").write_text(f"{tmp_path}\n")
    report = verify_environment([str(venv.site)], check_pyc=False)
    [finding] = [f for f in report.findings if f.rule_id == "env.pth-path"]
    assert finding.verdict is Verdict.UNKNOWN


def test_sitecustomize_runs_and_is_reported(venv: Venv, canary: CanaryLike) -> None:
    c = canary
    planted = venv.site / "sitecustomize.py"
    planted.write_text(c.python_code + "\n")
    report = verify_environment([str(venv.site)], check_pyc=False)
    c.assert_absent()
    hits = [f for f in _problems(report) if f.rule_id == "env.sitecustomize"]
    assert [f.location.path for f in hits] == [str(planted)]
    assert venv.run("pass").returncode == 0
    c.assert_present()


def _forge_pyc(source: Path, pyc: Path, payload: str, *, flags: int = 0) -> None:
    """Write a pyc CPython accepts for the untouched ``source`` but whose code differs."""
    text = source.read_text(encoding="utf-8") + "\n" + payload + "\n"
    code = compile(text, str(source), "exec", dont_inherit=True)
    st = source.stat()
    header = importlib.util.MAGIC_NUMBER + flags.to_bytes(4, "little")
    if flags & 1:
        header += b"\0" * 8  # a wrong source hash: only "unchecked" makes CPython use it
    else:
        header += (int(st.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little")
        header += (st.st_size & 0xFFFFFFFF).to_bytes(4, "little")
    pyc.write_bytes(header + marshal.dumps(code))


def test_forged_timestamp_pyc_runs_and_is_reported(venv: Venv, canary: CanaryLike) -> None:
    c = canary
    source = venv.site / "six.py"
    pyc = next((venv.site / "__pycache__").glob("six.cpython-*.pyc"))
    before = source.read_bytes()
    _forge_pyc(source, pyc, c.python_code)
    assert source.read_bytes() == before
    report = verify_environment([str(venv.site)])
    c.assert_absent()
    [finding] = [f for f in _problems(report) if f.rule_id == "env.pyc-forged"]
    assert finding.location.path == str(pyc)
    # RECORD alone passes: six.py is untouched and RECORD lists the pyc without a hash.
    assert "env.file-modified" not in _rules(report)
    # CPython really imports the forged bytecode in place of the untouched source.
    assert venv.run("import six").returncode == 0
    c.assert_present()


def test_forged_unchecked_hash_pyc_is_reported(venv: Venv, canary: CanaryLike) -> None:
    c = canary
    source = venv.site / "idna" / "intranges.py"
    pyc = next((venv.site / "idna" / "__pycache__").glob("intranges.cpython-*.pyc"))
    _forge_pyc(source, pyc, c.python_code, flags=0b01)  # hash-based, unchecked
    report = verify_environment([str(venv.site)])
    assert "env.pyc-forged" in _rules(report)
    assert venv.run("import idna.intranges").returncode == 0
    c.assert_present()


def test_stale_pyc_is_information_only(venv: Venv) -> None:
    pyc = next((venv.site / "__pycache__").glob("six.cpython-*.pyc"))
    data = bytearray(pyc.read_bytes())
    data[8:12] = b"\0\0\0\0"  # mtime no longer matches: CPython recompiles from source
    pyc.write_bytes(bytes(data))
    report = verify_environment([str(venv.site)])
    assert _problems(report) == []
    assert any(f.rule_id == "env.pyc-stale" for f in report.findings)


def test_distribution_without_record_cannot_be_verified(venv: Venv) -> None:
    (venv.site / "six-1.17.0.dist-info" / "RECORD").unlink()
    report = verify_environment([str(venv.site)], check_pyc=False)
    [finding] = [f for f in report.findings if f.rule_id == "env.unverifiable-distribution"]
    assert finding.verdict is Verdict.UNKNOWN
    assert report.fails(Verdict.UNKNOWN)
    assert not report.fails(Verdict.UNSAFE)


def test_record_forged_together_with_the_file_fools_record_only(venv: Venv) -> None:
    # The reason the lock exists: whoever edits torch/ can rewrite its RECORD as well.
    target = venv.site / "idna" / "core.py"
    new = target.read_bytes() + b"\n# edited\n"
    target.write_bytes(new)
    record = venv.site / "idna-3.20.dist-info" / "RECORD"
    digest = base64.urlsafe_b64encode(hashlib.sha256(new).digest()).rstrip(b"=").decode()
    lines = [
        f"idna/core.py,sha256={digest},{len(new)}" if line.startswith("idna/core.py,") else line
        for line in record.read_text().splitlines()
    ]
    record.write_text("\n".join(lines) + "\n")
    assert _problems(verify_environment([str(venv.site)], check_pyc=False)) == []


def test_fifos_planted_as_metadata_pth_and_pyc_do_not_hang(venv: Venv) -> None:
    import os

    pyc = next((venv.site / "idna" / "__pycache__").glob("core.cpython-*.pyc"))
    pyc.unlink()
    os.mkfifo(pyc)
    os.mkfifo(venv.site / "zz.pth")
    record = venv.site / "six-1.17.0.dist-info" / "RECORD"
    record.unlink()
    os.mkfifo(record)
    report = verify_environment([str(venv.site)])  # returns: nothing blocks on a FIFO
    rules = {f.rule_id for f in report.findings}
    assert {"env.pyc-unreadable", "env.pth-unreadable", "env.unverifiable-distribution"} <= rules
    assert report.fails(Verdict.UNKNOWN)


def test_record_row_outside_the_environment_is_not_read(venv: Venv, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2")
    record = venv.site / "six-1.17.0.dist-info" / "RECORD"
    digest = base64.urlsafe_b64encode(hashlib.sha256(b"x").digest()).rstrip(b"=").decode()
    with record.open("a") as fh:
        fh.write(f"{secret},sha256={digest},1\n")
    report = verify_environment([str(venv.site)], check_pyc=False)
    [finding] = [f for f in report.findings if f.rule_id == "env.record-outside"]
    assert finding.verdict is Verdict.UNKNOWN
    real = base64.urlsafe_b64encode(hashlib.sha256(b"hunter2").digest()).rstrip(b"=").decode()
    assert all(real not in (f.message + str(f.location.extra)) for f in report.findings)
