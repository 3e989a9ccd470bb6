"""The whole drill, as CI runs it (``trainwarden drill``): every scenario, the real job.

One drill (a session fixture: about 1.5-2.5 minutes on two cores) feeds every test here: the
exit status and the JSON contract, the control run is clean, each attack is caught by a check
of its own technique (T3-T5 by the guard in the ranks, T6 by the signalled rank's pid), each
attack really changed the job, the ledger names the insider, the HTML report links every run,
and the environment the drill mirrored is byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from trainwarden.cli import main
from trainwarden.drill import SCENARIOS, run_drill
from trainwarden.drill._identity import INSIDER_UID
from trainwarden.drill._sandbox import _scratch_dir, torch_installation

pytest.importorskip("torch")
pytestmark = [pytest.mark.slow, pytest.mark.torch, pytest.mark.distributed]

BY_ID = {s.id: s for s in SCENARIOS}
ROOT = os.geteuid() == 0


def _environment_state() -> dict[str, object]:
    """What the drill must leave untouched: every file of the installed torch and the site."""
    site, dist_info = torch_installation()
    state: dict[str, object] = {}
    for path in sorted(site.iterdir()):  # nothing added next to torch (.pth, sitecustomize)
        state[path.name] = path.is_dir()
    for top in ("torch", dist_info.name):
        for path in (site / top).rglob("*"):
            if path.is_symlink() or not path.is_file():
                continue
            st = path.stat()
            if path.suffix in (".py", ".pyc", ".pth") or path.name == "RECORD":
                state[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:  # the large libraries: size and modification time
                state[str(path)] = (st.st_size, st.st_mtime_ns)
    return state


@dataclass(frozen=True)
class Drill:
    """One whole drill, as CI runs it, shared by every test of this session."""

    data: dict[str, Any]
    code: int
    before: dict[str, object]
    after: dict[str, object]
    base: Path

    @property
    def sandbox(self) -> Path:
        return self.base / "sandbox"

    def entries(self, run: str) -> list[Any]:
        from trainwarden.ledger import read_ledger

        return list(read_ledger(self.sandbox / "runs" / run / "ledger"))


@pytest.fixture(scope="session")
def drill() -> Iterator[Drill]:
    """The whole drill through the CLI, once per session: --keep, --output and --report."""
    before = _environment_state()
    base = Path(tempfile.mkdtemp(prefix="drill-ci-", dir=_scratch_dir()))
    os.chmod(base, 0o755)  # noqa: PTH101  # the insider (another uid) must reach the sandbox
    try:
        out = base / "drill.json"
        (base / "report").mkdir()
        code = main(
            [
                "drill",
                "--format",
                "json",
                "--no-progress",
                "--keep",
                str(base / "sandbox"),
                "--output",
                str(out),
                "--report",
                str(base / "report" / "drill.html"),
            ]
        )
        data = json.loads(out.read_text(encoding="utf-8"))
        yield Drill(data, code, before, _environment_state(), base)
    finally:
        shutil.rmtree(base)


def _run_name(run_id: str) -> str:
    """``drill-<token>-t6-term`` -> ``t6-term`` (the run's directory under runs/)."""
    return run_id.split("-", 2)[2]


def _row(data: dict[str, Any], scenario: str) -> dict[str, Any]:
    return next(s for s in data["scenarios"] if s["scenario"] == scenario)


def test_the_control_run_is_clean_and_the_exit_status_says_all(drill: Drill) -> None:
    data, code = drill.data, drill.code
    assert data["control"]["status"] == "clean", data["control"]["reason"]
    assert data["summary"]["errors"] == 0, [s["reason"] for s in data["scenarios"]]
    # Every technique is detected with every component wired in: exit 0.
    assert data["components"] == dict.fromkeys(data["components"], True)
    assert (code, data["passed"]) == (0, True)
    assert data["passed"] is all(s["status"] == "detected" for s in data["scenarios"])


@pytest.mark.parametrize("scenario", [s.id for s in SCENARIOS])
def test_each_attack_is_caught_by_a_check_of_its_own(drill: Drill, scenario: str) -> None:
    row = _row(drill.data, scenario)
    assert row["status"] == "detected", row["reason"]
    assert row["first"]["check"] in BY_ID[scenario].checks
    assert row["first"]["counts"] is True
    assert row["first"]["seconds"] >= 0
    assert row["insider"]["identity"] == "intern@drill"
    assert row["attack_started"] is not None


@pytest.mark.parametrize("scenario", [s.id for s in SCENARIOS if s.detector == "guard"])
def test_runtime_attacks_are_caught_by_the_guard_in_the_ranks(drill: Drill, scenario: str) -> None:
    # T3-T5 arrive through edited torch files, which the pre-flight also names; the row
    # passes only on a guard finding of its own technique, recorded by a rank of the run.
    row = _row(drill.data, scenario)
    counted = [d for d in row["detections"] if d["counts"]]
    assert counted
    assert all(d["check"].startswith("guard.") for d in counted)
    assert row["first"]["steps"] is not None
    assert row["first"]["steps"] >= 0
    run = _run_name(row["run"])
    findings = [
        e.data
        for e in drill.entries(run)
        if e.event == "guard.finding" and e.data["rule_id"] == row["first"]["check"]
    ]
    assert findings
    assert {f["technique"] for f in findings} == {BY_ID[scenario].technique}


@pytest.mark.parametrize(("scenario", "named"), [("T6-sigterm", True), ("T6-sigkill", False)])
def test_the_signalled_pid_is_a_rank_that_trains(drill: Drill, scenario: str, named: bool) -> None:
    row = _row(drill.data, scenario)
    run = "t6-term" if scenario == "T6-sigterm" else "t6-kill"
    entries = drill.entries(run)
    ranks = {e.data["pid"] for e in entries if e.event == "rank.start" and e.data["role"] == "rank"}
    signalled = {d["message"] for d in row["detections"] if d["counts"]}
    assert signalled
    pids = {
        e.data["pid"]
        for e in entries
        if e.event in ("rank.signal", "guard.signal", "rank.exit")
        and e.data.get("signal") == scenario.split("-")[1].upper()
    }
    assert pids
    assert pids <= ranks
    # The kernel names a SIGTERM's sender; nobody can name a SIGKILL's.
    assert (row["first"]["evidence"] is not None) is named
    if named and ROOT:
        assert row["first"]["evidence"]["uid"] == INSIDER_UID


def test_the_report_links_every_run_and_the_control_is_clean(drill: Drill) -> None:
    report = drill.base / "report"
    index = (report / "drill.html").read_text(encoding="utf-8")
    assert 'trainwarden drill: <span class="passed">passed</span>' in index
    runs = sorted({s["run"] for s in drill.data["scenarios"]} | {drill.data["control"]["run"]})
    for run in runs:
        page = report / f"drill-{_run_name(run)}.html"
        assert page.is_file(), page
        assert f'href="{page.name}"' in index
    control = (report / "drill-control.html").read_text(encoding="utf-8")
    assert "No sign of sabotage" in control
    assert "<script" not in index
    # The attacked runs' pages show what the guard found in them, as their own findings.
    guarded = {s["run"] for s in drill.data["scenarios"] if s["scenario"].startswith("T3")}
    for run in guarded:
        page = (report / f"drill-{_run_name(run)}.html").read_text(encoding="utf-8")
        assert "No sign of sabotage" not in page
        for rule in ("guard.timing", "guard.hyperparam", "guard.reseed"):
            assert rule in page, (run, rule)
        # T3's sleep is in the optimizer step (a global pre-hook), and is named so.
        assert "phase opt:" in page
    # Every run's ledger is sealed once its job is over, as the ops cron does: a page of a
    # run whose ledger nobody tampered with shows no "seal missing" (a suspected T8).
    for run in runs:
        if _run_name(run) not in ("t7",):
            page = (report / f"drill-{_run_name(run)}.html").read_text(encoding="utf-8")
            assert "ledger.seal_missing" not in page, run


@pytest.mark.parametrize("scenario", [s.id for s in SCENARIOS if s.id != "T1-resume-checkpoint"])
def test_each_attack_really_changed_the_job(drill: Drill, scenario: str) -> None:
    # Only T1 is prevented (protect() refuses the load); every other attack is detected
    # after the fact or by a component not wired in yet, so it acted on the job in this run.
    effect = _row(drill.data, scenario)["effect"]
    assert effect["observed"] is True, effect["description"]


def test_t1_never_ran_under_protect(drill: Drill) -> None:
    row = _row(drill.data, "T1-resume-checkpoint")
    assert row["effect"]["observed"] is False
    assert {d["check"] for d in row["detections"]} >= {"preflight.scan", "protect()"}


@pytest.mark.skipif(not ROOT, reason="attribution by uid needs the insider under its own uid")
def test_the_evidence_names_the_insider(drill: Drill) -> None:
    data = drill.data
    assert data["insider_mode"] == "separate-uid"
    for row in data["scenarios"]:
        assert row["insider"]["uid"] == INSIDER_UID
        if row["first"] is not None and row["first"]["evidence"] is not None:
            assert row["attributed"] is True, (row["scenario"], row["first"]["evidence"])


def test_the_real_environment_is_byte_identical_after_the_drill(drill: Drill) -> None:
    before, after = drill.before, drill.after
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert changed == []


def test_the_json_lists_every_scenario_and_the_kept_sandbox(drill: Drill) -> None:
    data = drill.data
    assert data["schema_version"] == 1
    assert [s["scenario"] for s in data["scenarios"]] == [s.id for s in SCENARIOS]
    sandbox = Path(data["sandbox"])
    assert (sandbox / "runs" / "t7" / "ledger" / "writers").is_dir()
    assert (sandbox / "platform" / "env.lock.sig").is_file()


def test_without_defences_the_t1_payload_runs_in_the_job_and_the_resume_still_works() -> None:
    result = run_drill(only=("T1",), unsafe_no_defenses=True)
    row = next(s for s in result.scenarios if s.scenario == "T1-resume-checkpoint")
    assert row.effect is not None
    assert row.effect.observed is True, row.effect.description
    assert "finished normally" in row.effect.description
    # The pre-flight scan still sees it; protect() was off, so it is not among the checks.
    assert row.status == "detected"
    assert "protect()" not in {d.check for d in row.detections}
