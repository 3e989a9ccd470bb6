from __future__ import annotations

import json

import pytest

from trainwarden.errors import UnsafeModelError
from trainwarden.findings import FileReport, Finding, Location, Report, Severity, Verdict
from trainwarden.report import render


def _finding(verdict: Verdict, severity: Severity = Severity.HIGH, rule: str = "r") -> Finding:
    return Finding(
        rule, severity, "m", Location("f.pkl", "archive/data.pkl", 7), "os.system", verdict
    )


def test_verdict_is_derived_from_findings() -> None:
    assert FileReport("a", "pickle").verdict is Verdict.SAFE
    info = _finding(Verdict.SAFE, Severity.INFO)
    assert FileReport("a", "pickle", (info,)).verdict is Verdict.SAFE
    both = (_finding(Verdict.UNKNOWN), _finding(Verdict.UNSAFE))
    assert FileReport("a", "pickle", both).verdict is Verdict.UNSAFE
    err = (_finding(Verdict.UNSAFE), _finding(Verdict.ERROR))
    assert FileReport("a", "pickle", err).verdict is Verdict.ERROR


@pytest.mark.parametrize(
    ("verdict", "fail_on", "fails"),
    [
        (Verdict.SAFE, Verdict.UNKNOWN, False),
        (Verdict.UNKNOWN, Verdict.UNKNOWN, True),
        (Verdict.UNKNOWN, Verdict.UNSAFE, False),
        (Verdict.UNSAFE, Verdict.UNSAFE, True),
        (Verdict.ERROR, Verdict.UNSAFE, True),
    ],
)
def test_fail_on(verdict: Verdict, fail_on: Verdict, fails: bool) -> None:
    findings = () if verdict is Verdict.SAFE else (_finding(verdict),)
    report = Report((FileReport("a", "pickle", findings),))
    assert report.fails(fail_on) is fails


def test_json_shape_matches_contract() -> None:
    report = Report(
        (
            FileReport("b.pt", "torch-zip", (_finding(Verdict.UNSAFE),)),
            FileReport("a.safetensors", "safetensors"),
        )
    )
    doc = json.loads(render(report, "json"))
    assert doc["schema_version"] == 1
    assert [f["path"] for f in doc["files"]] == ["a.safetensors", "b.pt"]
    bad = doc["files"][1]
    assert bad["verdict"] == "unsafe"
    assert bad["format"] == "torch-zip"
    finding = bad["findings"][0]
    assert set(finding) >= {"rule_id", "severity", "message", "evidence", "location"}
    assert finding["severity"] == "high"
    assert finding["location"] == {"path": "f.pkl", "member": "archive/data.pkl", "offset": 7}
    assert doc["summary"]["verdicts"] == {"safe": 1, "unknown": 0, "unsafe": 1, "error": 0}
    # Deterministic: the same report renders to the same bytes.
    assert render(report, "json") == render(report, "json")


def test_sarif_has_rules_and_levels() -> None:
    report = Report((FileReport("b.pt", "torch-zip", (_finding(Verdict.UNSAFE),)),))
    doc = json.loads(render(report, "sarif"))
    assert doc["version"] == "2.1.0"
    run = doc["runs"][0]
    assert [r["id"] for r in run["tool"]["driver"]["rules"]] == ["r"]
    (result,) = run["results"]
    assert result["ruleId"] == "r"
    assert result["level"] == "error"
    assert result["ruleIndex"] == 0
    assert result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "f.pkl"


def test_text_lists_unsafe_file_and_summary() -> None:
    report = Report((FileReport("b.pt", "torch-zip", (_finding(Verdict.UNSAFE),)),))
    text = render(report, "text")
    assert "UNSAFE" in text
    assert "os.system" in text
    assert text.rstrip().endswith("1 file(s): 1 unsafe")
    assert "\x1b[" not in text


def test_unsafe_model_error_explains_itself() -> None:
    report = Report((FileReport("b.pt", "torch-zip", (_finding(Verdict.UNSAFE),)),))
    err = UnsafeModelError(report)
    assert "b.pt" in str(err)
    assert "[r] m" in err.diagnostics()
    assert err.report is report


def test_severity_parse() -> None:
    assert Severity.parse("High") is Severity.HIGH
    with pytest.raises(ValueError, match="unknown severity"):
        Severity.parse("urgent")
