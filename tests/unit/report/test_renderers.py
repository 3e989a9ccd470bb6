"""The report renderers: JSON (the contract's shape), SARIF 2.1.0 and text, exact and stable."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainwarden import __version__
from trainwarden.findings import FileReport, Finding, Location, Report, Severity, Verdict
from trainwarden.report import FORMATS, render, render_json, render_sarif, render_text
from trainwarden.report._json import dumps_indented


def _report() -> Report:
    bad = FileReport(
        path="models/b.pt",
        format="torch-zip",
        findings=(
            Finding(
                "policy.dangerous-global",
                Severity.CRITICAL,
                "imports and calls posix.system",
                Location("models/b.pt", "archive/data.pkl", 13),
                evidence="posix.system",
                verdict=Verdict.UNSAFE,
            ),
            Finding(
                "pickle.trailing-data",
                Severity.INFO,
                "3 byte(s) after the last pickle",
                Location("models/b.pt", None, 40),
            ),
        ),
        size=100,
    )
    good = FileReport(path="models/a.safetensors", format="safetensors", size=10, sha256="ab" * 32)
    return Report(files=(bad, good))


def test_json_contract_shape_and_order() -> None:
    doc = json.loads(render_json(_report()))
    assert doc["schema_version"] == 1
    assert doc["tool"] == {"name": "trainwarden", "version": __version__, "command": "scan"}
    assert [f["path"] for f in doc["files"]] == ["models/a.safetensors", "models/b.pt"]
    bad = doc["files"][1]
    assert bad["verdict"] == "unsafe"
    first = bad["findings"][0]
    assert first == {
        "rule_id": "policy.dangerous-global",
        "severity": "critical",
        "message": "imports and calls posix.system",
        "evidence": "posix.system",
        "location": {"path": "models/b.pt", "member": "archive/data.pkl", "offset": 13},
        "verdict": "unsafe",
    }
    assert doc["summary"]["verdicts"] == {"safe": 1, "unknown": 0, "unsafe": 1, "error": 0}
    assert doc["summary"]["verdict"] == "unsafe"


def test_json_is_deterministic() -> None:
    report = _report()
    shuffled = Report(files=tuple(reversed(report.files)))
    assert render_json(report) == render_json(shuffled)
    assert render_json(report).endswith("\n")


def test_sarif_log() -> None:
    log = json.loads(render_sarif(_report()))
    assert log["version"] == "2.1.0"
    assert log["$schema"].endswith("sarif-2.1.0.json")
    run = log["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == ["pickle.trailing-data", "policy.dangerous-global"]
    by_rule = {r["ruleId"]: r for r in run["results"]}
    danger = by_rule["policy.dangerous-global"]
    assert danger["level"] == "error"
    assert danger["ruleIndex"] == 1
    assert danger["locations"][0]["logicalLocations"][0]["fullyQualifiedName"] == (
        "archive/data.pkl"
    )
    assert "region" not in danger["locations"][0]["physicalLocation"]
    trailing = by_rule["pickle.trailing-data"]
    assert trailing["level"] == "note"
    assert trailing["locations"][0]["physicalLocation"]["region"] == {"byteOffset": 40}
    assert run["properties"]["summary"]["files"] == 2


def test_text_plain() -> None:
    text = render_text(_report())
    lines = text.splitlines()
    assert lines[0] == "SAFE    models/a.safetensors (safetensors)"
    assert lines[1] == "UNSAFE  models/b.pt (torch-zip)"
    assert "policy.dangerous-global posix.system" in lines[2]
    assert "archive/data.pkl@13" in lines[2]
    # Informational findings of an unsafe file are still listed; of safe files, hidden.
    assert any("pickle.trailing-data" in line for line in lines)
    assert lines[-1] == "2 file(s): 1 safe, 1 unsafe"
    assert "\x1b[" not in text


def test_text_color_and_markup_escaping() -> None:
    report = Report(files=(FileReport(path="[bold]x[/bold].pt", format="data"),))
    assert "[bold]x[/bold].pt" in render_text(report)
    assert "\x1b[" in render_text(report, color=True)


def test_render_dispatch() -> None:
    report = _report()
    assert FORMATS == ("text", "json", "sarif")
    assert render(report, "json") == render_json(report)
    with pytest.raises(ValueError, match="unknown format"):
        render(report, "yaml")
    with pytest.raises(TypeError):
        render(object(), "json")


# -- the indented JSON encoder: json.dumps's bytes, faster ------------------------------------

_SCALAR = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
    | st.sampled_from(['a"b', "x\\", '\\"', "{", "]", "[}", '"{"', "\x1f", ",\x1f"])
)
_TREE = st.recursive(
    _SCALAR,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text() | st.sampled_from(["{", '"]', "a\\"]), inner, max_size=5)
    ),
    max_leaves=40,
)


def _dumps(value: object) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


@settings(max_examples=800, deadline=None)
@given(_TREE)
def test_indented_json_is_byte_identical_to_json_dumps(value: object) -> None:
    assert dumps_indented(value) == _dumps(value)


@pytest.mark.parametrize(
    "value",
    [
        {1: "a", 2.5: "b", 0: "c"},  # keys json spells out
        {True: 1, False: 2},
        {None: 1},
        {"a": float("nan"), "b": [float("inf"), -float("inf")]},
        [[], {}, [[]], [{}], {"x": []}],
        "top-level string",
        {"s": "ends in a backslash\\", "t": 'quote " and {brackets}'},
    ],
)
def test_indented_json_edge_cases(value: object) -> None:
    assert dumps_indented(value) == _dumps(value)


def test_indented_json_rejects_what_json_rejects() -> None:
    cycle: list[object] = []
    cycle.append(cycle)
    with pytest.raises(ValueError, match="Circular reference"):
        dumps_indented(cycle)
    with pytest.raises(TypeError, match="not JSON serializable"):
        dumps_indented({"x": object()})
    with pytest.raises(TypeError):
        dumps_indented({1: "a", "b": 2})  # keys json cannot sort


def test_render_json_is_json_dumps_of_the_report() -> None:
    report = _report()
    assert render_json(report) == _dumps(report.to_dict()) + "\n"


def test_sarif_uris_are_uris_for_paths_with_spaces_and_unicode() -> None:
    # SARIF's artifactLocation.uri is a URI reference (RFC 3986): "my models/bert-ünï code"
    # as written is none, and code-scanning uploads reject or mislink it. Percent-encoded,
    # it decodes back to the path; plain paths stay as they were.
    from urllib.parse import unquote

    path = "my models/bert-ünï code/model#1.pt"
    finding = Finding("policy.unknown-global", Severity.MEDIUM, "m", Location(path, None, 2))
    plain = Finding("policy.unknown-global", Severity.MEDIUM, "m", Location("/tmp/a_b-c.pt"))
    report = Report(files=(FileReport(path=path, format="pickle", findings=(finding, plain)),))
    results = json.loads(render_sarif(report))["runs"][0]["results"]
    uris = sorted(r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in results)
    assert uris == ["/tmp/a_b-c.pt", "my%20models/bert-%C3%BCn%C3%AF%20code/model%231.pt"]
    assert unquote(uris[1]) == path
