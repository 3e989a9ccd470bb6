"""The detection plumbing: real ledgers with the events of docs/events.md, mapped to table rows.

These are the events the guard and ``trainwarden run`` will write (phase 2 of the drill); the
ledger here is a real one, written with real keys, so the mapping is tested against exactly
what it will read.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from trainwarden.drill import SCENARIOS
from trainwarden.drill._checks import Observation
from trainwarden.drill._detection import (
    AttackRecord,
    Target,
    control_result,
    ledger_observations,
    scenario_result,
    seconds_between,
)
from trainwarden.drill._results import Person
from trainwarden.keys import PrivateKey
from trainwarden.ledger import Ledger, read_ledger

RUN = "drill-test-run"
BY_ID = {s.id: s for s in SCENARIOS}
GUARD_MISSING = {"guard": "guard not installed", "supervisor": "supervisor not installed"}


@pytest.fixture
def keys() -> dict[str, PrivateKey]:
    return {
        "platform": PrivateKey.generate("platform@drill"),
        "insider": PrivateKey.generate("intern@drill"),
    }


def _insider(ledger: Path, key: PrivateKey, scenario: str, step: int | None) -> Person:
    with Ledger(ledger, key=key, resume=True) as writer:
        entry = writer.append(
            "drill.scenario",
            run=RUN,
            scenario=scenario,
            technique=scenario[:2],
            started=None,
            attack="test",
            insider=key.identity,
            step=step,
        )
    actor = entry.actor
    return Person(
        via="ledger",
        identity=actor.identity,
        user=actor.user,
        uid=actor.uid,
        host=actor.host,
        pid=actor.pid,
        key=actor.key,
    )


def _record(ledger: Path, target: Target, insider: Person, step: int | None) -> AttackRecord:
    entry = next(e for e in read_ledger(ledger) if e.event == "drill.scenario")
    return AttackRecord(
        ok=True, error=None, target=target, insider=insider, started=entry.time, step=step
    )


def _row(scenario_id: str, record: AttackRecord, ledger: Path, **kwargs: object) -> object:
    scenario = BY_ID[scenario_id]
    return scenario_result(
        scenario,
        run_id=RUN,
        record=record,
        observations=kwargs.pop("observations", None) or ledger_observations(read_ledger(ledger)),  # type: ignore[arg-type]
        siblings=kwargs.pop("siblings", None) or {scenario: record.target},  # type: ignore[arg-type]
        unavailable=kwargs.pop("unavailable", GUARD_MISSING),  # type: ignore[arg-type]
        effect=None,
    )


def test_guard_finding_of_the_technique_detects_with_steps_and_seconds(
    tmp_path: Path, keys: dict[str, PrivateKey]
) -> None:
    ledger = tmp_path / "ledger"
    insider = _insider(ledger, keys["insider"], "T4-flip-one-rank", step=10)
    with Ledger(ledger, key=keys["platform"]) as guard:
        # A finding of another technique on the same run is listed, never counted for T4.
        guard.append(
            "guard.finding",
            run=RUN,
            rule_id="guard.timing",
            technique="T3",
            check="timing",
            severity="high",
            message="rank 1 is slow",
            evidence=None,
            rank=1,
            step=11,
            established=False,
            pid=1,
            host="h",
        )
        guard.append(
            "guard.finding",
            run=RUN,
            rule_id="guard.update",
            technique="T4",
            check="update",
            severity="critical",
            message="update reversed",
            evidence="param tok.weight",
            rank=1,
            step=12,
            established=True,
            pid=2,
            host="h",
        )
    record = _record(ledger, Target(), insider, step=10)
    row = _row("T4-flip-one-rank", record, ledger)
    assert row.status == "detected"
    assert row.first is not None
    assert row.first.check == "guard.update"
    assert row.first.steps == 2
    assert row.first.seconds is not None
    assert row.first.seconds >= 0
    timing = [d for d in row.detections if d.check == "guard.timing"]
    assert timing
    assert not timing[0].counts


def test_other_technique_alone_leaves_the_row_undetected(
    tmp_path: Path, keys: dict[str, PrivateKey]
) -> None:
    ledger = tmp_path / "ledger"
    insider = _insider(ledger, keys["insider"], "T4-flip-one-rank", step=10)
    with Ledger(ledger, key=keys["platform"]) as guard:
        guard.append(
            "guard.finding",
            run=RUN,
            rule_id="guard.timing",
            technique="T3",
            check="timing",
            severity="high",
            message="slow",
            evidence=None,
            rank=1,
            step=11,
            established=False,
            pid=1,
            host="h",
        )
    record = _record(ledger, Target(), insider, step=10)
    missing = _row("T4-flip-one-rank", record, ledger)
    assert missing.status == "unavailable"
    assert missing.reason == "guard not installed"
    assert not missing.passed
    missed = _row("T4-flip-one-rank", record, ledger, unavailable={})
    assert missed.status == "missed"
    assert "guard.update" in (missed.reason or "")


def test_signal_with_sender_detects_and_attributes(
    tmp_path: Path, keys: dict[str, PrivateKey]
) -> None:
    ledger = tmp_path / "ledger"
    insider = _insider(ledger, keys["insider"], "T6-sigterm", step=10)
    with Ledger(ledger, key=keys["platform"]) as supervisor:
        # The launcher's own teardown of the surviving rank: another pid, not the attack.
        supervisor.append(
            "rank.signal",
            run=RUN,
            rank=0,
            pid=111,
            signal="SIGTERM",
            signo=15,
            sender={"pid": 99, "uid": 0, "user": "root", "cmdline": "torchrun"},
            source="sigwaitinfo",
            note=None,
        )
        supervisor.append(
            "rank.signal",
            run=RUN,
            rank=1,
            pid=222,
            signal="SIGTERM",
            signo=15,
            sender={
                "pid": insider.pid,
                "uid": insider.uid,
                "user": insider.user,
                "cmdline": "python -m trainwarden.drill._insider",
            },
            source="sigwaitinfo",
            note=None,
        )
        supervisor.append(
            "rank.exit", run=RUN, rank=1, pid=222, status=None, signal="SIGTERM", seconds=3.0
        )
    record = _record(ledger, Target(pid=222, signal="SIGTERM"), insider, step=10)
    row = _row("T6-sigterm", record, ledger)
    assert row.status == "detected"
    assert row.first is not None
    assert row.first.check == "rank.signal"
    assert row.first.evidence is not None
    assert row.first.evidence.pid == insider.pid
    assert row.attributed is True
    # The launcher's teardown of rank 0 is listed as seen on the run, but is not the attack.
    teardown = [d for d in row.detections if "pid 111" in d.message]
    assert teardown
    assert not any(d.counts for d in teardown)


def test_sigkill_without_sender_is_detected_but_not_attributed(
    tmp_path: Path, keys: dict[str, PrivateKey]
) -> None:
    ledger = tmp_path / "ledger"
    insider = _insider(ledger, keys["insider"], "T6-sigkill", step=10)
    with Ledger(ledger, key=keys["platform"]) as supervisor:
        supervisor.append(
            "rank.exit", run=RUN, rank=1, pid=333, status=None, signal="SIGKILL", seconds=2.0
        )
    record = _record(ledger, Target(pid=333, signal="SIGKILL"), insider, step=10)
    row = _row("T6-sigkill", record, ledger)
    assert row.status == "detected"
    assert row.attributed is None  # the kernel does not say who sent a SIGKILL


def test_preflight_findings_are_matched_by_the_file_each_attack_touched(
    tmp_path: Path, keys: dict[str, PrivateKey]
) -> None:
    ledger = tmp_path / "ledger"
    insider = _insider(ledger, keys["insider"], "T2-torch-source", step=0)
    site = "/sandbox/env/lib/python3.11/site-packages"
    with Ledger(ledger, key=keys["platform"]) as supervisor:
        supervisor.append(
            "preflight.env",
            run=RUN,
            verdict="unsafe",
            summary={},
            lock=None,
            findings=[
                {
                    "rule_id": "env.pth-exec",
                    "verdict": "unsafe",
                    "severity": "high",
                    "message": "x.pth runs code",
                    "evidence": None,
                    "location": {"path": f"{site}/x.pth", "member": None, "offset": None},
                },
                {
                    "rule_id": "env.lock-modified",
                    "verdict": "unsafe",
                    "severity": "high",
                    "message": "torch/random.py differs",
                    "evidence": None,
                    "location": {"path": f"{site}/torch/random.py"},
                },
                {
                    "rule_id": "env.pyc-skipped",
                    "verdict": "safe",
                    "severity": "info",
                    "message": "not compared",
                    "evidence": None,
                    "path": site,
                },
            ],
        )
    source, hook = BY_ID["T2-torch-source"], BY_ID["T2-pth-hook"]
    targets = {source: Target(files=("torch/random.py",)), hook: Target(files=("x.pth",))}
    record = _record(ledger, targets[source], insider, step=0)
    row = _row("T2-torch-source", record, ledger, siblings=targets)
    assert row.status == "detected"
    assert [d.rule_id for d in row.detections] == ["env.lock-modified"]  # not the hook's
    assert row.first is not None
    assert row.first.steps == 0
    hook_row = _row(
        "T2-pth-hook", _record(ledger, targets[hook], insider, 0), ledger, siblings=targets
    )
    assert [d.rule_id for d in hook_row.detections] == ["env.pth-exec"]


def test_preflight_on_a_guard_technique_is_listed_but_does_not_count(
    tmp_path: Path, keys: dict[str, PrivateKey]
) -> None:
    ledger = tmp_path / "ledger"
    insider = _insider(ledger, keys["insider"], "T3-sleeping-optimizer", step=5)
    with Ledger(ledger, key=keys["platform"]) as supervisor:
        supervisor.append(
            "preflight.env",
            run=RUN,
            verdict="unsafe",
            summary={},
            lock=None,
            findings=[
                {
                    "rule_id": "env.lock-modified",
                    "verdict": "unsafe",
                    "severity": "high",
                    "message": "optimizer.py differs",
                    "evidence": None,
                    "path": "/s/site-packages/torch/optim/optimizer.py",
                }
            ],
        )
    record = _record(ledger, Target(files=("torch/optim/optimizer.py",)), insider, step=5)
    row = _row("T3-sleeping-optimizer", record, ledger)
    assert row.status == "unavailable"
    assert [(d.check, d.counts) for d in row.detections] == [("preflight.env", False)]


def test_ledger_issues_map_to_the_t8_scenario_that_caused_them() -> None:
    insider = Person(via="ledger", identity="intern@drill", uid=4242)
    edited = Observation(
        "ledger verify",
        "ledger.altered",
        "[altered] seq 1",
        "2026-01-01T00:00:01.000000Z",
        "check",
        facts={"kind": "altered", "writer": "w1", "seq": 1},
        evidence=Person(via="ledger file owner", uid=4242),
    )
    dropped = Observation(
        "ledger verify",
        "ledger.dropped",
        "[dropped] seq 4",
        "2026-01-01T00:00:01.000000Z",
        "check",
        facts={"kind": "dropped", "writer": "w1", "seq": 4},
    )
    forged = Observation(
        "ledger verify",
        "ledger.forged",
        "[forged] seq 0",
        "2026-01-01T00:00:01.000000Z",
        "check",
        facts={"kind": "forged", "writer": "w2", "seq": 0},
    )
    targets = {
        BY_ID["T8-edited"]: Target(writer="w1", seq=1),
        BY_ID["T8-dropped"]: Target(writer="w1", seq=3),
        BY_ID["T8-denied"]: Target(writer="w2"),
    }
    found = {}
    for scenario, target in targets.items():
        record = AttackRecord(
            ok=True,
            error=None,
            target=target,
            insider=insider,
            started="2026-01-01T00:00:00.000000Z",
        )
        row = scenario_result(
            scenario,
            run_id=RUN,
            record=record,
            observations=[edited, dropped, forged],
            siblings=targets,
            unavailable={},
            effect=None,
        )
        assert row.status == "detected"
        found[scenario.id] = [d.rule_id for d in row.detections]
    assert found == {
        "T8-edited": ["ledger.altered"],
        "T8-dropped": ["ledger.dropped"],
        "T8-denied": ["ledger.forged"],
    }


def test_failed_attack_is_an_error_never_detected() -> None:
    record = AttackRecord(ok=False, error="AttackFailed: no checkpoint", target=Target())
    row = scenario_result(
        BY_ID["T7-modified"],
        run_id=RUN,
        record=record,
        observations=[],
        siblings={},
        unavailable={},
        effect=None,
    )
    assert row.status == "error"
    assert not row.passed
    assert "no checkpoint" in (row.reason or "")


def test_control_is_clean_only_without_any_observation() -> None:
    assert control_result(run_id=RUN, observations=[], problems=[]).status == "clean"
    dirty = control_result(
        run_id=RUN,
        observations=[
            Observation(
                "guard.timing", "guard.timing", "slow rank", "2026-01-01T00:00:00.000000Z", "ledger"
            )
        ],
        problems=[],
    )
    assert dirty.status == "findings"
    assert not dirty.passed
    assert "guard.timing" in (dirty.reason or "")


def test_ledger_observations_ignore_clean_events(
    tmp_path: Path, keys: dict[str, PrivateKey]
) -> None:
    ledger = tmp_path / "ledger"
    with Ledger(ledger, key=keys["platform"]) as supervisor:
        supervisor.append(
            "run.start",
            run=RUN,
            command=["x"],
            launcher="torchrun",
            cwd="/",
            run_dir="/r",
            world_size=2,
            config={},
            seed_commitment=None,
        )
        supervisor.append("rank.exit", run=RUN, rank=0, pid=1, status=0, signal=None, seconds=1.0)
        supervisor.append(
            "preflight.env", run=RUN, verdict="safe", summary={}, lock=None, findings=[]
        )
    assert ledger_observations(read_ledger(ledger)) == []


def test_seconds_between_parses_ledger_times() -> None:
    assert seconds_between("2026-01-01T00:00:00.000000Z", "2026-01-01T00:00:02.500000Z") == 2.5
    assert seconds_between(None, "2026-01-01T00:00:00.000000Z") is None
    assert seconds_between("garbage", "2026-01-01T00:00:00.000000Z") is None
