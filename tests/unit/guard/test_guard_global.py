"""The global guard (no code change), process defaults, and a script's own guard taking over."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from guardtools import Job, make_job, rules, train

from trainwarden.errors import ConfigError
from trainwarden.events import MemorySink
from trainwarden.guard import (
    Guard,
    StepInfo,
    StepViolation,
    configure_defaults,
    current_defaults,
    install_global,
)

pytestmark = pytest.mark.torch


@pytest.fixture(autouse=True)
def _reset_defaults() -> Any:
    yield
    configure_defaults()


def test_global_guard_finds_model_and_scheduler_and_stays_quiet(sink: MemorySink) -> None:
    job = make_job()  # the scheduler is built before install_global: found by its referrers
    beats: list[StepInfo] = []
    with install_global(sink=sink) as gg:
        gg.add_step_listener(beats.append)
        train(job, 12)
        assert len(gg.guards) == 1
        assert gg.findings == ()
    attach = sink.named("guard.attach")[0].data
    assert attach["global_guard"] is True
    assert attach["lr"].startswith("replica of SequentialLR")
    assert "model" not in attach["not_checked"]
    assert [b.step for b in beats] == list(range(1, 13))
    assert all(b.rank == 0 and b.time > 0 for b in beats)


def test_global_guard_catches_tampering_in_an_unchanged_script(sink: MemorySink) -> None:
    job = make_job()

    def tamper(job: Job, step: int) -> None:
        job.optimizer.param_groups[1]["weight_decay"] = 0.5

    with install_global(sink=sink), pytest.raises(StepViolation) as info:
        train(job, 20, tamper={9: tamper})
    assert info.value.step == 9
    assert "guard.hyperparam" in rules(info.value.findings)


def test_global_guard_notices_schedulers_built_after_it(sink: MemorySink) -> None:
    with install_global(sink=sink) as gg:
        model = torch.nn.Linear(4, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.StepLR(opt, 2)
        for _ in range(6):
            model(torch.randn(3, 4)).sum().backward()
            opt.step()
            scheduler.step()
            opt.zero_grad()
        assert gg.findings == ()
    attach = sink.named("guard.attach")[0].data
    assert attach["lr"] == "replica of StepLR"
    assert attach["reference"] == "SGD"


def test_global_guard_follows_the_composite_scheduler_built_after_it(sink: MemorySink) -> None:
    # tinygpt under `trainwarden run`: install_global runs first, then the script builds
    # LinearLR, CosineAnnealingLR and the SequentialLR that drives them. SequentialLR does
    # not call LRScheduler.__init__, so the guard must notice it by its own constructor,
    # or it follows the last child built and halts a clean job at step 1.
    with install_global(sink=sink) as gg:
        job = make_job()
        train(job, 12)
        assert gg.findings == ()
    attach = sink.named("guard.attach")[0].data
    assert attach["lr"].startswith("replica of SequentialLR")


def test_global_guard_follows_a_chained_scheduler(sink: MemorySink) -> None:
    with install_global(sink=sink) as gg:
        model = torch.nn.Linear(4, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        first = torch.optim.lr_scheduler.StepLR(opt, 2, gamma=0.5)
        second = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)
        chained = torch.optim.lr_scheduler.ChainedScheduler([first, second], optimizer=opt)
        for _ in range(5):
            model(torch.randn(3, 4)).sum().backward()
            opt.step()
            chained.step()
            opt.zero_grad()
        # Whatever the guard can replicate of a chain, it must not judge the job against a
        # single child's schedule (that would be a false finding every step).
        assert [f.rule_id for f in gg.findings if f.rule_id == "guard.hyperparam"] == []
    attach = sink.named("guard.attach")[0].data
    assert "StepLR" not in attach["lr"]
    assert "ExponentialLR" not in attach["lr"]


def test_script_guard_takes_over_from_the_global_one(sink: MemorySink) -> None:
    job = make_job()
    with install_global(sink=sink) as gg:
        train(job, 3)
        assert gg.guards[0].active
        with Guard(job.model, job.optimizer, scheduler=job.scheduler, sink=sink) as own:
            assert not gg.guards[0].active
            train(job, 3)
            assert own.step == 3
        with (
            Guard(job.model, job.optimizer, scheduler=job.scheduler, sink=sink),
            pytest.raises(ConfigError),
        ):
            Guard(job.model, job.optimizer, sink=sink)


def test_defaults_apply_to_guards_built_without_arguments(tmp_path: Path) -> None:
    sink = MemorySink()
    secret = b"s" * 32
    configure_defaults(sink=sink, run="run-42", secret=secret, telemetry_dir=tmp_path)
    assert current_defaults().run == "run-42"
    job = make_job()
    with Guard(job.model, job.optimizer, scheduler=job.scheduler):
        train(job, 2)
    attach = sink.named("guard.attach")[0]
    assert attach.run == "run-42"
    assert attach.data["sampling"] == "secret"
    assert secret.hex() not in repr([e.data for e in sink.events])
    assert (tmp_path / "rank-0.jsonl").read_text().count("\n") == 2


@pytest.mark.parametrize(
    "kwargs",
    [{"on_violation": "explode"}, {"secret": b"short"}],
)
def test_bad_defaults_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        configure_defaults(**kwargs)


def test_guard_refuses_what_is_not_an_optimizer() -> None:
    with pytest.raises(ConfigError):
        Guard(None, object())


def test_close_restores_everything(sink: MemorySink) -> None:
    from trainwarden import patching

    job = make_job()
    seed = torch.manual_seed
    pre = dict(job.optimizer._optimizer_step_pre_hooks)
    forward = dict(job.model._forward_pre_hooks)
    guard = Guard(job.model, job.optimizer, scheduler=job.scheduler, sink=sink)
    train(job, 2)
    assert torch.manual_seed is not seed
    guard.close()
    guard.close()  # idempotent
    assert torch.manual_seed is seed
    assert dict(job.optimizer._optimizer_step_pre_hooks) == pre
    assert dict(job.model._forward_pre_hooks) == forward
    assert "step" not in job.scheduler.__dict__
    assert [h for h in patching.hooks() if h.purpose.startswith("guard")] == []
    assert sink.named("guard.close")[0].data["steps"] == 2


def test_signal_recorded_by_the_recorder_becomes_a_finding(sink: MemorySink) -> None:
    from trainwarden.guard import SignalRecord

    job = make_job()
    with Guard(job.model, job.optimizer, scheduler=job.scheduler, sink=sink) as guard:
        train(job, 2)
        guard.on_signal(
            SignalRecord(
                "SIGTERM",
                15,
                {"pid": 4242, "uid": 1000, "user": "mallory", "cmdline": "kill -TERM 1"},
                "SI_USER",
                "default",
            )
        )
        train(job, 1)  # a signal is a fact to record, not a reason to halt
    (finding,) = [f for f in guard.findings if f.rule_id == "guard.signal"]
    assert finding.technique is not None
    assert finding.technique.value == "T6"
    assert "4242" in finding.message
    assert finding.step == 3
    assert not finding.halts


def test_a_guarded_scheduler_still_saves_and_resumes(sink: MemorySink, tmp_path: Path) -> None:
    # The guard counts scheduler steps through a wrapper held by the scheduler instance;
    # torch's state_dict copies the instance's __dict__, so the wrapper must stay out of the
    # checkpoint (it does not pickle, and a checkpoint must not carry the guard's code).
    job = make_job()
    with install_global(sink=sink) as gg:
        train(job, 5)
        state = job.scheduler.state_dict()
        assert "step" not in state
        assert "state_dict" not in state
        torch.save({"scheduler": state}, tmp_path / "ckpt.pt")
        job.scheduler.load_state_dict(torch.load(tmp_path / "ckpt.pt")["scheduler"])
        train(job, 3)
        assert gg.findings == ()
