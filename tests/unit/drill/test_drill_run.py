"""The whole drill, as CI runs it (``trainwarden drill``): every scenario, the real job.

One drill (about two minutes on two idle cores) feeds every test here: the exit status and the
JSON contract, the control run is
clean, each attack is caught by a check of its technique or shown as not detected because its
detector is not installed (never as passed), each attack really changed the job, the ledger
names the insider, and the environment the drill mirrored is byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
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


@pytest.fixture(scope="module")
def drill() -> Iterator[tuple[dict[str, Any], int, dict[str, object], dict[str, object]]]:
    """The whole drill through the CLI, as CI runs it: (JSON, exit status, before, after)."""
    before = _environment_state()
    base = Path(tempfile.mkdtemp(prefix="drill-ci-", dir=_scratch_dir()))
    os.chmod(base, 0o755)  # noqa: PTH101  # the insider (another uid) must reach the sandbox
    try:
        out = base / "drill.json"
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
            ]
        )
        data = json.loads(out.read_text(encoding="utf-8"))
        yield data, code, before, _environment_state()
    finally:
        shutil.rmtree(base)


def _row(data: dict[str, Any], scenario: str) -> dict[str, Any]:
    return next(s for s in data["scenarios"] if s["scenario"] == scenario)


def test_the_control_run_is_clean_and_the_exit_status_says_all(drill: Any) -> None:
    data, code = drill[0], drill[1]
    assert data["control"]["status"] == "clean", data["control"]["reason"]
    assert data["summary"]["errors"] == 0, [s["reason"] for s in data["scenarios"]]
    # Exit 0 only if every attack was detected; 1 while a detector is not installed.
    assert code == (0 if data["passed"] else 1)
    assert data["passed"] is all(s["status"] == "detected" for s in data["scenarios"])


@pytest.mark.parametrize("scenario", [s.id for s in SCENARIOS])
def test_each_attack_is_caught_or_honestly_not(drill: Any, scenario: str) -> None:
    data = drill[0]
    row = _row(data, scenario)
    if data["components"].get(BY_ID[scenario].detector, True):
        assert row["status"] == "detected", row["reason"]
        assert row["first"]["check"] in BY_ID[scenario].checks
        assert row["first"]["counts"] is True
        assert row["first"]["seconds"] >= 0
    else:
        # Its detector is not part of this installation yet: shown as such, never as caught.
        assert row["status"] == "unavailable"
        assert "not installed" in row["reason"] or "not wired" in row["reason"]
        assert row["detected"] is False
    assert row["insider"]["identity"] == "intern@drill"
    assert row["attack_started"] is not None


@pytest.mark.parametrize("scenario", [s.id for s in SCENARIOS if s.id != "T1-resume-checkpoint"])
def test_each_attack_really_changed_the_job(drill: Any, scenario: str) -> None:
    # Only T1 is prevented (protect() refuses the load); every other attack is detected
    # after the fact or by a component not wired in yet, so it acted on the job in this run.
    effect = _row(drill[0], scenario)["effect"]
    assert effect["observed"] is True, effect["description"]


def test_t1_never_ran_under_protect(drill: Any) -> None:
    row = _row(drill[0], "T1-resume-checkpoint")
    assert row["effect"]["observed"] is False
    assert {d["check"] for d in row["detections"]} >= {"preflight.scan", "protect()"}


@pytest.mark.skipif(not ROOT, reason="attribution by uid needs the insider under its own uid")
def test_the_evidence_names_the_insider(drill: Any) -> None:
    data = drill[0]
    assert data["insider_mode"] == "separate-uid"
    for row in data["scenarios"]:
        assert row["insider"]["uid"] == INSIDER_UID
        if row["first"] is not None and row["first"]["evidence"] is not None:
            assert row["attributed"] is True, (row["scenario"], row["first"]["evidence"])


def test_the_real_environment_is_byte_identical_after_the_drill(drill: Any) -> None:
    before, after = drill[2], drill[3]
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert changed == []


def test_the_json_lists_every_scenario_and_the_kept_sandbox(drill: Any) -> None:
    data = drill[0]
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
