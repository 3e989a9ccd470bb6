"""Optimizer state edited between two steps is named as a state edit, in the step that follows.

The post-hook of step N reads the state step N + 1 will start from (at step N + 1's secret
sample); the pre-hook of step N + 1 reads it again. An insider who edits the state in between
(negates or rescales a moment, resets or advances the step count, drops a parameter's state)
leaves the optimizer's arithmetic intact: before, such an edit showed only as step N + 1's update
differing from the reference (``guard.update``): the right step, the wrong name (an insider's
edit read as a broken optimizer). Legitimate reloads and declared changes are not findings. Real
tinygpt training on CPU.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from guardtools import Job, make_job, train

from trainwarden.events import MemorySink
from trainwarden.guard import Guard, GuardConfig, StepViolation

pytestmark = pytest.mark.torch

START = 6
STEPS = 12


def _largest(job: Job) -> Any:
    return max(job.optimizer.param_groups[0]["params"], key=lambda p: p.numel())


def _scale_second_moment_of_one_tensor(job: Job, step: int) -> None:
    with torch.no_grad():
        job.optimizer.state[_largest(job)]["exp_avg_sq"].mul_(4.0)


def _advance_step_count(job: Job, step: int) -> None:
    job.optimizer.state[_largest(job)]["step"].fill_(1000.0)


def _drop_state_of_one_tensor(job: Job, step: int) -> None:
    del job.optimizer.state[_largest(job)]  # Adam re-creates it: moments restart from zero


def _zero_momentum(job: Job, step: int) -> None:
    with torch.no_grad():
        for state in job.optimizer.state.values():
            state["momentum_buffer"].zero_()


def _raise_max_second_moment(job: Job, step: int) -> None:
    with torch.no_grad():
        job.optimizer.state[_largest(job)]["max_exp_avg_sq"].add_(1.0)


def _sgd(params: Any) -> Any:
    return torch.optim.SGD(params, lr=0.05, momentum=0.9)


def _amsgrad(params: Any) -> Any:
    return torch.optim.Adam(params, lr=1e-3, amsgrad=True)


CASES = [
    pytest.param(None, _scale_second_moment_of_one_tensor, "'exp_avg_sq'", id="second-moment"),
    pytest.param(None, _advance_step_count, "step count", id="step-count"),
    pytest.param(None, _drop_state_of_one_tensor, "dropped", id="state-dropped"),
    pytest.param(_sgd, _zero_momentum, "'momentum_buffer'", id="sgd-momentum"),
    pytest.param(_amsgrad, _raise_max_second_moment, "'max_exp_avg_sq'", id="amsgrad-max"),
]


@pytest.mark.parametrize(("optimizer", "edit", "named"), CASES)
@pytest.mark.parametrize("verify_async", [False, True], ids=["sync", "async"])
def test_state_edited_between_steps_halts_the_next_step_named_as_such(
    sink: MemorySink, optimizer: Any, edit: Any, named: str, verify_async: bool
) -> None:
    job = make_job(optimizer=optimizer)
    config = GuardConfig(verify_async=verify_async)
    guard = Guard(job.model, job.optimizer, scheduler=job.scheduler, sink=sink, config=config)
    with guard, pytest.raises(StepViolation) as info:
        train(job, STEPS, between={START: edit})
    violation = info.value
    assert violation.step == START + 1
    edits = [
        f
        for f in violation.findings
        if f.rule_id == "guard.weights" and "between steps" in f.message
    ]
    assert edits, [f.message for f in violation.findings]
    assert any(named in f.message and "outside the optimizer" in f.message for f in edits)
    assert all(f.step == START + 1 and f.established for f in edits)


def test_state_untouched_between_steps_is_no_finding(sink: MemorySink) -> None:
    # The extra read sees the same bits the post-hook read: a clean run stays clean, with a
    # round trip of the optimizer's own state dict between two steps (a checkpoint save and
    # reload of what is in memory) and frozen parameters without state.
    job = make_job(steps=16)
    frozen = job.optimizer.param_groups[0]["params"][-1]
    frozen.requires_grad_(False)

    def round_trip(job: Job, step: int) -> None:
        job.optimizer.load_state_dict(job.optimizer.state_dict())

    with Guard(job.model, job.optimizer, scheduler=job.scheduler, sink=sink) as guard:
        train(job, 16, between={START: round_trip})
    assert not guard.findings, [f.message for f in guard.findings]


def test_a_declared_state_reset_is_no_finding(sink: MemorySink) -> None:
    # Resetting the moments after a loss spike is a decision the job may take: declared, the
    # state it leaves is the new baseline.
    job = make_job(steps=16)
    guard = Guard(job.model, job.optimizer, scheduler=job.scheduler, sink=sink)

    def reset(job: Job, step: int) -> None:
        with torch.no_grad():
            for state in job.optimizer.state.values():
                state["exp_avg"].zero_()
        guard.declare_change("moments reset after a loss spike")

    with guard:
        train(job, 16, between={START: reset})
    assert not guard.findings, [f.message for f in guard.findings]


@pytest.mark.parametrize("window", [8, 7], ids=["after-a-digest", "between-digests"])
def test_one_weight_edited_between_steps_is_found_by_the_full_digest(
    sink: MemorySink, window: int
) -> None:
    # One coordinate of the model: the secret sample misses it nearly always. The full digest,
    # taken after step N and before step N + 1 every `full_digest_every` steps, does not: an
    # edit in that window is named in step N + 1; one in another window is not the digest's
    # to find (the edited value is what the next digest starts from).
    job = make_job()
    every = 4
    largest = _largest(job)
    where = largest.numel() // 2 + 3

    def nudge(job: Job, step: int) -> None:
        with torch.no_grad():
            largest.view(-1)[where] += 1e-3

    config = GuardConfig(full_digest_every=every)
    guard = Guard(
        job.model, job.optimizer, scheduler=job.scheduler, sink=sink, config=config,
        on_violation="warn",
    )  # fmt: skip
    with guard:
        train(job, STEPS, between={window: nudge})
    digest = [f for f in guard.findings if "full digest" in f.message]
    if window % every:
        assert not digest
        return
    assert [f.step for f in digest] == [window + 1]
    assert digest[0].rule_id == "guard.weights"
    assert digest[0].established
