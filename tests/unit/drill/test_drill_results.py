"""Scenario table, result types and their JSON: what exit status 0 may mean."""

from __future__ import annotations

import json

import pytest

from trainwarden.drill import (
    SCENARIOS,
    SCHEMA_VERSION,
    STATUSES,
    Detection,
    DrillResult,
    Person,
    ScenarioResult,
    select_scenarios,
)
from trainwarden.drill._attacks import all_attacks
from trainwarden.drill._scenarios import RUNS
from trainwarden.errors import ConfigError


def test_every_technique_has_scenarios_and_every_scenario_an_attack_and_a_run() -> None:
    assert {s.technique for s in SCENARIOS} == {f"T{i}" for i in range(1, 9)}
    assert set(all_attacks()) == {s.id for s in SCENARIOS}
    assert {s.run for s in SCENARIOS} <= set(RUNS)
    assert len({s.id for s in SCENARIOS}) == len(SCENARIOS)
    for scenario in SCENARIOS:
        assert scenario.checks, scenario.id


def test_select_by_technique_or_id() -> None:
    assert [s.id for s in select_scenarios(("T4",))] == [
        "T4-flip-one-rank",
        "T4-perturb-all-ranks",
    ]
    assert [s.id for s in select_scenarios(("T6-sigkill",))] == ["T6-sigkill"]
    assert select_scenarios(()) == SCENARIOS


def test_t8_brings_t7_whose_entries_it_rewrites() -> None:
    chosen = {s.technique for s in select_scenarios(("T8",))}
    assert chosen == {"T7", "T8"}


def test_unknown_scenario_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown drill scenario 'T9'"):
        select_scenarios(("T9",))


def _row(status: str, **extra: object) -> ScenarioResult:
    return ScenarioResult(
        scenario="T1-resume-checkpoint",
        technique="T1",
        title="t",
        run="r",
        status=status,
        **extra,  # type: ignore[arg-type]
    )


def _result(*rows: ScenarioResult, control: str = "clean") -> DrillResult:
    return DrillResult(
        control=ScenarioResult(
            scenario="control", technique="-", title="c", run="r0", status=control
        ),
        scenarios=rows,
        ranks=2,
        insider=Person(via="drill", identity="intern@drill", uid=4242),
        insider_mode="separate-uid",
        components={"guard": False},
        seconds=1.0,
    )


@pytest.mark.parametrize("status", sorted(STATUSES))
def test_only_detected_attacks_and_a_clean_control_pass(status: str) -> None:
    result = _result(_row(status))
    assert result.passed is (status == "detected")
    assert _result(_row("detected"), control="findings").passed is False


def test_unavailable_detector_never_passes() -> None:
    row = _row("unavailable", reason="guard not installed")
    assert not row.detected
    assert not row.passed
    assert not _result(row).passed


def test_attribution_compares_evidence_with_the_insider() -> None:
    insider = Person(via="ledger", identity="intern@drill", uid=4242, host="h", pid=10, key="K")
    same_pid = Person(via="signal sender", uid=4242, pid=10, host="h")
    root_sender = Person(via="signal sender", uid=0, pid=11)
    assert same_pid.matches(insider)
    assert not root_sender.matches(insider)
    # uid 0 names nobody in particular: root is not an attribution.
    assert not Person(via="file owner", uid=0).matches(Person(via="ledger", uid=0))

    def with_evidence(evidence: Person | None) -> ScenarioResult:
        detection = Detection("x", None, "m", None, 1.0, 0, True, "check", evidence)
        return _row("detected", detections=(detection,), insider=insider)

    assert with_evidence(same_pid).attributed is True
    assert with_evidence(root_sender).attributed is False
    assert with_evidence(None).attributed is None


def test_json_has_schema_version_and_is_deterministic() -> None:
    detection = Detection(
        "preflight.scan",
        "policy.dangerous-global",
        "exec",
        "2026-01-01T00:00:00.000000Z",
        2.5,
        0,
        True,
        "ledger",
        Person(via="file owner", uid=4242),
    )
    result = _result(_row("detected", detections=(detection,)), _row("unavailable", reason="x"))
    data = result.to_dict()
    assert data["schema_version"] == SCHEMA_VERSION == 1
    assert data["passed"] is False
    assert data["summary"] == {
        "scenarios": 2,
        "detected": 1,
        "not_detected": 1,
        "control_clean": True,
        "errors": 0,
    }
    first = data["scenarios"][0]["first"]
    assert first["check"] == "preflight.scan"
    assert first["evidence"]["uid"] == 4242
    assert json.dumps(data, sort_keys=True) == json.dumps(result.to_dict(), sort_keys=True)


def test_html_index_escapes_and_links_each_run() -> None:
    from trainwarden.drill._html import render_index

    row = ScenarioResult(
        scenario="T2-pth-hook",
        technique="T2",
        title="<script>alert(1)</script>",
        run="drill-abc-t2",
        status="detected",
        detections=(Detection("preflight.env", "env.pth-exec", "m", None, 1.5, 0, True, "ledger"),),
    )
    page = render_index(
        _result(row),
        {"r0": "r-control.html", "drill-abc-t2": "r-t2.html"},
        {"drill-abc-t6": "<b>cannot</b>"},
    )
    assert "<script>alert(1)</script>" not in page
    assert "<b>cannot</b>" not in page
    assert "&lt;script&gt;" in page
    assert 'href="r-t2.html"' in page
    assert 'href="r-control.html"' in page
    assert 'href="#T2-pth-hook"' in page  # the table row links the attack's section
    assert "0 steps, 1.5 s" in page
    assert "the report of run drill-abc-t6 could not be written" in page
    assert page.startswith("<!doctype html>")
    assert "<script" not in page
    # Control clean and the one attack detected.
    assert 'trainwarden drill: <span class="passed">passed</span>' in page


@pytest.mark.parametrize(
    ("steps", "seconds", "said"),
    [
        (1, 0.42, "1 step, 0.4 s"),
        (0, 1.5, "0 steps, 1.5 s"),
        (17, None, "17 steps, -"),
        (None, None, "-, -"),
    ],
)
def test_how_long_after_reads_as_english(
    steps: int | None, seconds: float | None, said: str
) -> None:
    detection = Detection("guard.timing", "guard.timing", "m", None, seconds, steps, True, "ledger")
    assert detection.after() == said
