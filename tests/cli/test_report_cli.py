"""`trainwarden report RUN_DIR`: exit codes, output, refusals, and the drill-facing API."""

from __future__ import annotations

import subprocess
import sys

import pytest

from trainwarden.cli import main
from trainwarden.report._synthetic import SyntheticRun, write_synthetic_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[SyntheticRun, SyntheticRun]:
    root = tmp_path_factory.mktemp("cli-runs")
    return (
        write_synthetic_run(root / "bad", ranks=4, steps=120, sabotaged=True),
        write_synthetic_run(root / "clean", ranks=4, steps=120),
    )


def _keys(run: SyntheticRun, flag: str = "--pubkey") -> list[str]:
    return [arg for key in run.keys for arg in (flag, str(key))]


def test_sabotaged_run_writes_the_report_and_exits_1(runs, tmp_path, capsys):
    bad, clean = runs
    out = tmp_path / "report.html"
    args = ["report", str(bad.run_dir), "-o", str(out), "--against", str(clean.run_dir)]
    code = main([*args, *_keys(bad), *_keys(clean), "--seal-pubkey", str(bad.seal_key)])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out == ""
    assert "COMPROMISED" in captured.err
    assert str(out) in captured.err
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert 'id="comparison"' in page
    assert "Against the clean run" in page


def test_older_key_spellings_still_work(runs, tmp_path, capsys):
    # --key and --seal-key were this command's first spellings of --pubkey and --seal-pubkey.
    _, clean = runs
    verdicts = []
    for flags in (("--pubkey", "--seal-pubkey"), ("--key", "--seal-key")):
        out = tmp_path / f"clean{flags[0]}.html"
        args = ["report", str(clean.run_dir), "-o", str(out), *_keys(clean, flags[0])]
        code = main([*args, flags[1], str(clean.seal_key)])
        verdicts.append((code, capsys.readouterr().err.split(":", 2)[1]))
    assert verdicts[0] == verdicts[1]
    assert "NOT-VERIFIED" not in verdicts[0][1]


def test_clean_run_without_keys_is_not_verified(runs, tmp_path, capsys):
    _, clean = runs
    out = tmp_path / "clean.html"
    assert main(["report", str(clean.run_dir), "-o", str(out)]) == 1
    assert "NOT-VERIFIED" in capsys.readouterr().err
    assert "signers were not checked" in out.read_text(encoding="utf-8")


def test_report_to_standard_output_when_it_is_not_a_terminal(runs, capsys):
    bad, _ = runs
    assert main(["report", str(bad.run_dir), *_keys(bad), "--skip-checkpoint-digests"]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("<!DOCTYPE html>")
    assert captured.out.rstrip().endswith("</html>")


def test_never_prints_html_to_a_terminal(runs, capsys, monkeypatch):
    bad, _ = runs
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert main(["report", str(bad.run_dir)]) == 2
    assert "use -o FILE" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--bins", "3"], "--bins"),
        (["--jobs", "-1"], "--jobs"),
        (["--pubkey", "/nonexistent/key.pub"], "key"),
        (["--key", "/nonexistent/key.pub"], "key"),
        (["--against", "/nonexistent/run"], "does not exist"),
    ],
)
def test_bad_options_exit_2(runs, tmp_path, capsys, extra, message):
    bad, _ = runs
    out = tmp_path / "r.html"
    assert main(["report", str(bad.run_dir), "-o", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_missing_run_directory_exits_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope"), "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("what", ["empty", "file", "parent"])
def test_a_path_that_is_no_run_directory_exits_2(runs, tmp_path, capsys, what):
    bad, _ = runs
    target = {"empty": tmp_path / "empty", "file": tmp_path / "f", "parent": bad.run_dir.parent}[
        what
    ]
    if what == "empty":
        target.mkdir()
    elif what == "file":
        target.write_text("x")
    out = tmp_path / "r.html"
    assert main(["report", str(target), "-o", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "not a run directory" in err or "not a directory" in err
    assert "Traceback" not in err
    assert not out.exists()


def test_output_over_the_evidence_exits_2_and_changes_nothing(runs, capsys):
    bad, _ = runs
    target = bad.run_dir / "run.json"
    before = target.read_bytes()
    assert main(["report", str(bad.run_dir), "-o", str(target)]) == 2
    assert "refusing to write" in capsys.readouterr().err
    assert target.read_bytes() == before


def test_the_report_may_be_written_into_the_run_directory(runs, capsys):
    _, clean = runs
    out = clean.run_dir / "report.html"
    try:
        assert main(["report", str(clean.run_dir), "-o", str(out), *_keys(clean)]) in (0, 1)
        assert out.exists()
    finally:
        out.unlink(missing_ok=True)


def test_unwritable_output_exits_2(runs, tmp_path, capsys):
    bad, _ = runs
    assert main(["report", str(bad.run_dir), "-o", str(tmp_path / "no" / "dir" / "r.html")]) == 2
    err = capsys.readouterr().err
    assert "no directory" in err
    assert "Traceback" not in err


def test_a_device_output_is_refused_before_the_run_is_read(runs, capsys, monkeypatch):
    # The HTML page is written as a whole file, never as a stream: refused up front.
    import trainwarden.report as report

    def never(*args, **kwargs):
        raise AssertionError("the run was read before the output was checked")

    monkeypatch.setattr(report, "write_run_report", never)
    bad, _ = runs
    assert main(["report", str(bad.run_dir), "-o", "/dev/null"]) == 2
    err = capsys.readouterr().err
    assert "it is a device" in err
    assert "Traceback" not in err


def test_console_script_end_to_end(runs, tmp_path):
    bad, _ = runs
    out = tmp_path / "r.html"
    proc = subprocess.run(
        [sys.executable, "-m", "trainwarden", "report", str(bad.run_dir), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert out.stat().st_size > 10_000
