"""The sandbox: its own torch that env verify judges, edits that never reach the real one, the
insider under its own uid."""

from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainwarden.drill import SCENARIOS
from trainwarden.drill._attacks.torch_source import SEED_FILE, edit_torch_file, seed_payload
from trainwarden.drill._identity import INSIDER_UID, choose_account
from trainwarden.drill._runner import _Drill
from trainwarden.drill._sandbox import Sandbox, torch_installation
from trainwarden.errors import ConfigError
from trainwarden.ledger import read_ledger

pytest.importorskip("torch")
pytestmark = [pytest.mark.torch, pytest.mark.slow]

ROOT = os.geteuid() == 0
BY_ID = {s.id: s for s in SCENARIOS}


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    box = Sandbox.create(choose_account())
    try:
        yield box
    finally:
        box.close()


def _env_verify(box: Sandbox) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "trainwarden",
            "env",
            "verify",
            "--path",
            str(box.site),
            "--lock",
            str(box.lock),
            "--key",
            str(box.keys["platform"].public),
            "--skip-pyc",
        ],
        capture_output=True,
        text=True,
        check=False,
    )


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_sandbox_torch_is_what_imports_and_what_env_verify_judges(sandbox: Sandbox) -> None:
    clean = _env_verify(sandbox)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    out = subprocess.run(
        [
            str(sandbox.python),
            "-c",
            "import torch.random, trainwarden; print(torch.random.__file__)",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    ).stdout.strip()
    assert out == str(sandbox.site / SEED_FILE)


def test_an_edit_shows_as_a_change_of_the_installed_torch_and_never_reaches_the_real_one(
    sandbox: Sandbox,
) -> None:
    real_site, dist_info = torch_installation()
    real_file, real_record = real_site / SEED_FILE, dist_info / "RECORD"
    before = (_digest(real_file), _digest(real_record))

    touched = edit_torch_file(sandbox.site, SEED_FILE, seed_payload(7919))
    try:
        assert (_digest(real_file), _digest(real_record)) == before
        edited = sandbox.site / SEED_FILE
        assert not edited.is_symlink()
        assert edited.read_bytes() != real_file.read_bytes()
        # RECORD was rewritten to match: only the signed lock still shows the edit.
        report = _env_verify(sandbox)
        assert report.returncode == 1
        assert "env.lock-modified" in report.stdout
        assert SEED_FILE in report.stdout
        assert "env.file-modified" not in report.stdout
    finally:
        sandbox.restore(touched)
    assert _env_verify(sandbox).returncode == 0
    assert (_digest(real_file), _digest(real_record)) == before


@pytest.mark.skipif(not ROOT, reason="switching to the insider's uid needs root")
def test_the_insider_acts_under_its_own_uid_and_signs_with_its_own_key(sandbox: Sandbox) -> None:
    drill = _Drill(ranks=2, scenarios=(), keep=None, progress=None, defenses=True)
    drill.sandbox = sandbox
    run = sandbox.prepare_run("insider-test")
    scenario = BY_ID["T2-pth-hook"]
    log = sandbox.loot / "insider-test.jsonl"
    outcomes = drill._attack(run, [(scenario, {"site": str(sandbox.site), "recon_log": str(log)})])
    try:
        outcome = outcomes[scenario.id]
        assert outcome["ok"], outcome
        hook = sandbox.site / outcome["touched"][0]
        assert hook.stat().st_uid == INSIDER_UID
        (entry,) = [e for e in read_ledger(run.ledger) if e.event == "drill.scenario"]
        assert entry.actor.uid == INSIDER_UID
        assert entry.actor.identity == "intern@drill"
        assert entry.data["scenario"] == scenario.id
    finally:
        sandbox.restore(outcome["touched"])
    assert not (sandbox.site / outcome["touched"][0]).exists()


@pytest.mark.skipif(not ROOT, reason="switching to the insider's uid needs root")
def test_the_insider_cannot_write_what_its_uid_may_not(sandbox: Sandbox) -> None:
    drill = _Drill(ranks=2, scenarios=(), keep=None, progress=None, defenses=True)
    drill.sandbox = sandbox
    run = sandbox.prepare_run("insider-denied")
    # The platform's own directory is not the team's: the insider's replace must fail there.
    target = sandbox.platform / "ckpt-000020.pt"
    target.write_bytes(b"not a checkpoint the insider may touch")
    outcomes = drill._attack(
        run,
        [(BY_ID["T7-modified"], {"target": str(target)})],
    )
    assert not outcomes["T7-modified"]["ok"]
    assert target.read_bytes() == b"not a checkpoint the insider may touch"


def test_keep_must_be_a_new_or_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "something").write_text("x", encoding="utf-8")
    with pytest.raises(ConfigError, match="new or empty"):
        Sandbox.create(choose_account(), keep=tmp_path)


@pytest.mark.skipif(not ROOT, reason="only an insider with another uid can be locked out")
def test_a_sandbox_the_insider_cannot_reach_is_refused_up_front() -> None:
    private = Path(tempfile.mkdtemp())  # mode 0700, owned by root
    try:
        with pytest.raises(ConfigError, match=rf"\(uid {INSIDER_UID}\) cannot reach"):
            Sandbox.create(choose_account(), keep=private / "sandbox")
    finally:
        (private / "sandbox").rmdir()
        private.rmdir()


def test_close_removes_the_sandbox_and_only_the_sandbox() -> None:
    real_site, _ = torch_installation()
    probe = real_site / "torch" / "__init__.py"
    before = _digest(probe)
    box = Sandbox.create(choose_account())
    assert (box.site / "torch" / "__init__.py").is_symlink()
    box.close()
    assert not box.root.exists()
    assert _digest(probe) == before


def test_reset_puts_back_every_change_an_attack_can_make(sandbox: Sandbox) -> None:
    from trainwarden.drill._attacks.startup_hook import HOOK_NAME, hook_line

    edit_torch_file(sandbox.site, SEED_FILE, seed_payload(1))
    (sandbox.site / HOOK_NAME).write_text(hook_line(str(sandbox.loot / "x")), encoding="utf-8")
    assert _env_verify(sandbox).returncode == 1
    sandbox.reset()
    assert not (sandbox.site / HOOK_NAME).exists()
    assert (sandbox.site / SEED_FILE).is_symlink()
    assert _env_verify(sandbox).returncode == 0


def test_without_another_uid_the_insider_is_a_second_key_under_the_same_uid(
    sandbox: Sandbox,
) -> None:
    from trainwarden.drill._identity import InsiderAccount

    drill = _Drill(ranks=2, scenarios=(), keep=None, progress=None, defenses=True)
    drill.sandbox = sandbox
    drill.account = InsiderAccount(
        uid=None, gid=None, groups=(), team_gid=None, mode="same-uid", note="test"
    )
    run = sandbox.prepare_run("same-uid")
    scenario = BY_ID["T2-pth-hook"]
    log = sandbox.loot / "same-uid.jsonl"
    outcomes = drill._attack(run, [(scenario, {"site": str(sandbox.site), "recon_log": str(log)})])
    try:
        assert outcomes[scenario.id]["ok"], outcomes
        (entry,) = [e for e in read_ledger(run.ledger) if e.event == "drill.scenario"]
        assert entry.actor.uid == os.getuid()
        assert entry.actor.identity == "intern@drill"  # the key still tells them apart
    finally:
        sandbox.restore(outcomes[scenario.id].get("touched", []))


def test_every_job_is_launched_under_trainwarden_run_with_the_sandbox_interpreter(
    sandbox: Sandbox,
) -> None:
    from trainwarden.drill._job import Job, JobSpec

    run = sandbox.prepare_run("launch-check")
    resume = run.ckpt / "ckpt-000020.pt"
    cmd = Job(sandbox, run, JobSpec(40, 10, resume=resume, scan=(resume,)), ranks=2).command()
    split = cmd.index("--")
    supervisor, job = cmd[:split], cmd[split + 1 :]
    assert supervisor[:4] == [sys.executable, "-m", "trainwarden", "run"]
    options = dict(itertools.pairwise(supervisor))
    assert options["--run-id"] == run.run_id
    assert options["--ledger"] == str(run.ledger)
    assert options["--key"] == str(sandbox.keys["platform"].private)
    assert options["--lock"] == str(sandbox.lock)
    assert options["--env-check"] == "fast"
    assert options["--on-violation"] == "warn"
    assert ("--scan", str(resume)) in itertools.pairwise(supervisor)
    assert {"env-unsafe=warn", "scan-unsafe=warn", "access=warn"} <= {
        value for flag, value in itertools.pairwise(supervisor) if flag == "--on"
    }
    # The job runs with the sandbox's interpreter, so its ranks import the sandbox's torch;
    # epochs of 10 steps, so the guard sees the sampler reshuffle.
    assert job[:3] == [str(sandbox.python), "-m", "torch.distributed.run"]
    assert "--standalone" not in job
    assert job[job.index("--samples") + 1] == str(10 * 8 * 2)
    assert job[job.index("--resume") + 1] == str(resume)
    # Without defences (to show the attacks are real), neither protect() nor the guard.
    bare = Job(sandbox, run, JobSpec(40, protect=False), ranks=2).command()
    assert {"--no-protect", "--no-guard"} <= set(bare[: bare.index("--")])


def test_the_job_refuses_an_empty_corpus() -> None:
    from trainwarden.examples.tinygpt import main

    with pytest.raises(SystemExit) as exc:
        main(["--samples", "0"])
    assert exc.value.code == 2
