"""Exact output of the JSON, SARIF and text renderers, compared with tests/golden/.

``pytest --update-goldens`` rewrites the files after a deliberate change; review the diff.
"""

from __future__ import annotations

from golden_files import Golden
from trainwarden import __version__
from trainwarden.findings import FileReport, Finding, Location, Report, Severity, Verdict
from trainwarden.report import render


def _report() -> Report:
    unsafe = FileReport(
        path="ckpt/model.pt",
        format="torch-zip",
        size=1234,
        sha256="ab" * 32,
        findings=(
            Finding(
                "policy.dangerous-global",
                Severity.CRITICAL,
                "STACK_GLOBAL imports and calls posix.system: runs shell commands [posix]",
                Location("ckpt/model.pt", "archive/data.pkl", 57),
                "posix.system",
                Verdict.UNSAFE,
            ),
            Finding(
                "pickle.frame-overrun",
                Severity.HIGH,
                "a FRAME reaches past STOP",
                Location("ckpt/model.pt", "archive/data.pkl", 13),
                "FRAME ends at 47",
                Verdict.UNKNOWN,
            ),
        ),
    )
    unknown = FileReport(
        path="ckpt/evil\nSAFE  name.bin\x1b[31m",
        format="data",
        findings=(
            Finding(
                "format.unrecognised-model-file",
                Severity.MEDIUM,
                "named like a model file (.bin) but its bytes match no format",
                Location("ckpt/evil\nSAFE  name.bin\x1b[31m"),
                ".bin",
                Verdict.UNKNOWN,
            ),
        ),
    )
    safe = FileReport(path="ckpt/config.json", format="json", size=20, sha256="cd" * 32)
    missing = FileReport(
        path="ckpt/missing.pt",
        format="missing",
        findings=(
            Finding(
                "file.missing",
                Severity.HIGH,
                "no such file or directory: nothing was scanned here",
                Location("ckpt/missing.pt"),
                verdict=Verdict.ERROR,
            ),
        ),
    )
    config = {
        "profiles": [
            {"name": "core", "source": "built-in"},
            {"name": "lightning", "source": "pyproject.toml"},
        ],
        "allow": [{"entry": "mypkg.Config", "source": "--allow", "dangerous": False}],
        "limits": {"max_seconds": {"value": 120, "source": "--limit"}},
        "fail_on": "unknown",
        "pyproject": "pyproject.toml",
    }
    return Report(files=(unsafe, unknown, safe, missing), config=config)


def _stable(text: str) -> str:
    return text.replace(__version__, "<version>")


def test_json_golden(golden: Golden) -> None:
    golden.check("scan-report.json", _stable(render(_report(), "json")))


def test_sarif_golden(golden: Golden) -> None:
    golden.check("scan-report.sarif", _stable(render(_report(), "sarif")))


def test_text_golden(golden: Golden) -> None:
    golden.check("scan-report.txt", _stable(render(_report(), "text")))


def test_text_golden_in_colour(golden: Golden) -> None:
    golden.check("scan-report.ansi.txt", _stable(render(_report(), "text", color=True)))
