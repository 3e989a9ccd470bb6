"""Tampering that goes around the guard rather than through what it checks: caught in the step.

An attacker's review of the guard at its defaults found paths that changed training with no
finding at all: the optimizer's step replaced by code that never runs the guard's hooks, the
model's parameters swapped for tensors the optimizer does not update, the scheduler's step
(which the guard counts) replaced, the sampler's epoch made to stop advancing, and weights or
optimizer state replaced through ``load_state_dict`` in the middle of a run. Each class is
parametrised over variants; real tinygpt training on CPU, ``on_violation="halt"``.
"""

from __future__ import annotations

import copy
import functools
import time
from typing import Any

import pytest
import torch
from guardtools import Job, make_job, patched, rules, train

from trainwarden.events import MemorySink
from trainwarden.guard import Guard, StepViolation

pytestmark = pytest.mark.torch

STEPS = 16
START = 7


def _halted(job: Job, sink: MemorySink, steps: int = STEPS, **train_kwargs: Any) -> StepViolation:
    with Guard(job.model, job.optimizer, scheduler=job.scheduler, sink=sink) as guard:
        with pytest.raises(StepViolation) as info:
            train(job, steps, **train_kwargs)
        assert guard.findings
    return info.value


def _own_sgd(job: Job) -> Any:
    """A replacement step that updates the weights itself (no hooks, no optimizer state)."""

    def step(closure: Any = None) -> None:
        with torch.no_grad():
            for group in job.optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-1e-3)

    return step


def _unhooked_adam(job: Job) -> Any:
    """torch's own Adam step without the hook wrapper torch puts around it."""
    unhooked = torch.optim.Adam.step.__wrapped__  # type: ignore[attr-defined]
    return torch.no_grad()(functools.partial(unhooked, job.optimizer))


@pytest.mark.parametrize("replacement", [_own_sgd, _unhooked_adam], ids=["own-update", "unhooked"])
def test_optimizer_step_replaced_on_the_instance_is_caught(
    sink: MemorySink, replacement: Any
) -> None:
    # Before: no finding at all (the guard's checks of the step method ran only inside the
    # hooks the replacement skips; the forward pre-hook's check ran only after a hooked step).
    def tamper(job: Job, step: int) -> None:
        job.optimizer.step = replacement(job)

    violation = _halted(make_job(), sink, tamper={START: tamper})
    assert violation.step <= START + 1
    assert rules(violation.findings) & {"guard.code", "guard.detached"}


def _new_parameter(job: Job) -> None:
    linear = job.plain.blocks[0].mlp[0]
    linear.weight = torch.nn.Parameter(linear.weight.detach().clone())


def _copied_submodule(job: Job) -> None:
    job.plain.blocks[0].mlp = copy.deepcopy(job.plain.blocks[0].mlp)


def _frozen_parameter(job: Job) -> None:
    # The same weights as a buffer: the forward still reads them, nothing trains them.
    linear = job.plain.blocks[0].mlp[0]
    weight = linear.weight.detach().clone()
    del linear.weight
    linear.register_buffer("weight", weight)


@pytest.mark.parametrize("swap", [_new_parameter, _copied_submodule, _frozen_parameter])
def test_model_parameters_swapped_out_of_the_optimizer_are_caught(
    sink: MemorySink, swap: Any
) -> None:
    # The model computes with tensors the optimizer no longer updates: that part of the
    # network silently stops training, while every check of the optimizer's tensors passes.
    violation = _halted(make_job(), sink, between={START: lambda job, step: swap(job)})
    assert violation.step == START + 1
    weights = [f for f in violation.findings if f.rule_id == "guard.weights"]
    assert weights
    assert "blocks.0.mlp" in weights[0].message


def test_parameters_moved_between_param_groups_are_named_as_moved(sink: MemorySink) -> None:
    # The same tensors in other groups: the no-decay group's parameters decayed (before:
    # named as tensors replaced, which sent the reader looking for the wrong thing).
    def move(job: Job, step: int) -> None:
        decay, no_decay = job.optimizer.param_groups[:2]
        no_decay["params"].append(decay["params"].pop())

    violation = _halted(make_job(), sink, tamper={START: move})
    assert violation.step == START
    weights = [f for f in violation.findings if f.rule_id == "guard.weights"]
    assert weights
    assert "moved between its param groups" in weights[0].message


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


@pytest.mark.parametrize("how", ["noop", "every-other-call"])
def test_scheduler_step_replaced_is_caught(sink: MemorySink, how: str) -> None:
    # The guard counts scheduler steps through a wrapper on the instance; replacing it
    # freezes (or slows) the schedule, and the replica, counting nothing, agreed.
    def tamper(job: Job, step: int) -> None:
        wrapped = job.scheduler.step
        calls = [0]

        def every_other(*args: Any, **kwargs: Any) -> Any:
            calls[0] += 1
            return wrapped(*args, **kwargs) if calls[0] % 2 else None

        job.scheduler.step = _noop if how == "noop" else every_other

    violation = _halted(make_job(), sink, between={START: tamper})
    assert violation.step <= START + 1
    assert "guard.detached" in rules(violation.findings)
    assert any("scheduler" in f.message for f in violation.findings)


class _FrozenEpochSampler(torch.utils.data.DistributedSampler):  # type: ignore[type-arg]
    """The insider's subclass: its epoch never advances."""

    def set_epoch(self, epoch: int) -> None:
        return None


@pytest.mark.parametrize("how", ["instance", "class", "class-swapped"])
def test_epoch_that_stops_advancing_is_caught(sink: MemorySink, how: str) -> None:
    # 256 samples / batch 8 = 32 steps an epoch. set_epoch made a no-op from step 20: the
    # second epoch (from step 33) would replay the first one's order (before: no finding).
    job = make_job(steps=40)
    sampler_type = torch.utils.data.DistributedSampler
    original = sampler_type.__dict__["set_epoch"]

    def tamper(job: Job, step: int) -> None:
        if how == "instance":
            job.sampler.set_epoch = _noop
        elif how == "class":
            sampler_type.set_epoch = _noop  # type: ignore[method-assign]
        else:
            job.sampler.__class__ = _FrozenEpochSampler

    with patched(sampler_type, "set_epoch", original):
        violation = _halted(job, sink, steps=40, tamper={20: tamper})
    assert violation.step == 20
    if how == "class":
        # The guard's wrapper of set_epoch replaced.
        assert "guard.detached" in rules(violation.findings)
        return
    order = [f for f in violation.findings if f.rule_id == "guard.data-order"]
    assert order
    assert ("set_epoch" if how == "instance" else "class") in order[0].message


def _model_reload(job: Job) -> None:
    state = {k: v * 1.05 for k, v in job.plain.state_dict().items()}
    job.plain.load_state_dict(state)


def _optimizer_reload(job: Job) -> None:
    state = job.optimizer.state_dict()
    for entry in state["state"].values():
        entry["exp_avg"] = -entry["exp_avg"]
    job.optimizer.load_state_dict(state)


@pytest.mark.parametrize("reload", [_model_reload, _optimizer_reload])
def test_reload_in_the_middle_of_a_run_is_caught_unless_declared(
    sink: MemorySink, reload: Any
) -> None:
    # load_state_dict is the sanctioned way to replace weights or state: before, the guard
    # recorded guard.reload and started its comparison afresh from whatever was loaded.
    violation = _halted(make_job(), sink, between={START: lambda job, step: reload(job)})
    assert violation.step == START + 1
    weights = [f for f in violation.findings if f.rule_id == "guard.weights"]
    assert any("load_state_dict" in f.message for f in weights), [f.message for f in weights]
    assert sink.named("guard.reload")


def _round_trip(job: Job) -> None:
    job.plain.load_state_dict(job.plain.state_dict())
    job.optimizer.load_state_dict(job.optimizer.state_dict())


def test_a_mid_run_reload_of_the_same_state_is_no_finding(sink: MemorySink) -> None:
    # What was loaded is what the last step left, at every sampled coordinate: recorded
    # (guard.reload), not named (frameworks round-trip state, e.g. to move or re-shard it).
    job = make_job()
    with Guard(job.model, job.optimizer, scheduler=job.scheduler, sink=sink) as guard:
        train(job, START + 3, between={START: lambda job, step: _round_trip(job)})
        assert guard.findings == ()
    assert len(sink.named("guard.reload")) == 2


@pytest.mark.parametrize("reload", [_model_reload, _optimizer_reload])
def test_declared_reload_and_resume_before_the_first_step_are_not_findings(
    sink: MemorySink, reload: Any
) -> None:
    job = make_job()
    with Guard(job.model, job.optimizer, scheduler=job.scheduler, sink=sink) as guard:
        reload(job)  # a resume: the guard attached, then the job loaded its checkpoint
        train(job, 4)

        def rollback(job: Job, step: int) -> None:
            reload(job)
            guard.declare_change("rolled back after a loss spike")

        train(job, 6, between={3: rollback})
        assert guard.findings == ()
    assert len(sink.named("guard.reload")) == 2
    assert sink.named("guard.declared")


def _clip_ten_times_harder() -> Any:
    import torch.nn.utils.clip_grad as clip_module

    original = clip_module._clip_grads_with_norm_

    def harder(parameters: Any, max_norm: float, total_norm: Any, *args: Any, **kw: Any) -> Any:
        return original(parameters, max_norm * 0.1, total_norm, *args, **kw)

    return patched(clip_module, "_clip_grads_with_norm_", harder)


def _smoothed_loss() -> Any:
    import torch.nn.functional as functional

    original = functional.cross_entropy

    def smoothed(*args: Any, **kwargs: Any) -> Any:
        return original(*args, **{**kwargs, "label_smoothing": 0.2})

    return patched(functional, "cross_entropy", smoothed)


def _smoothed_loss_code() -> Any:
    # The function object stays the same (identity checks pass); its code is another's.
    import torch.nn.functional as functional

    def smoothed(
        input: Any,
        target: Any,
        weight: Any = None,
        size_average: Any = None,
        ignore_index: int = -100,
        reduce: Any = None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
    ) -> Any:
        # Runs with torch.nn.functional's globals: its _Reduction, not this module's.
        reduction_enum = globals()["_Reduction"].get_enum(reduction)
        return torch._C._nn.cross_entropy_loss(  # type: ignore[attr-defined]
            input, target, weight, reduction_enum, ignore_index, 0.2
        )

    return patched(functional.cross_entropy, "__code__", smoothed.__code__)


@pytest.mark.parametrize("patch", [_clip_ten_times_harder, _smoothed_loss, _smoothed_loss_code])
def test_live_patch_on_the_gradient_path_is_caught_within_sixteen_steps(
    sink: MemorySink, patch: Any
) -> None:
    # What the gradients go through before the optimizer (the loss, the functions that
    # clip_grad_norm_ calls) is not recomputed: the reference takes the patched gradients as
    # given. Before: named by the runtime check only, up to code_every (60 s) later. A
    # sixteenth of the bindings is compared before each step, in turn.
    job = make_job()
    patches: list[Any] = []

    def tamper(job: Job, step: int) -> None:
        patches.append(patch())
        patches[-1].__enter__()

    try:
        with Guard(job.model, job.optimizer, scheduler=job.scheduler, sink=sink) as guard:
            assert guard.code is not None
            waited = 0.0
            while guard.code.checks < 1:  # the first runtime check records the bindings
                assert waited < 300, "the guard's first runtime check did not finish"
                time.sleep(0.05)
                waited += 0.05
            with pytest.raises(StepViolation) as info:
                train(job, START + 17, tamper={START: tamper})
    finally:
        for applied in patches:
            applied.__exit__(None, None, None)
    assert START <= info.value.step < START + 16
    code = [f for f in info.value.findings if f.rule_id == "guard.code"]
    assert code
    assert "changed while the job ran" in code[0].message


def test_a_removed_param_group_leaves_the_update_check_running(sink: MemorySink) -> None:
    # The removal itself is caught (guard.hyperparam, guard.weights); the update check should
    # go on verifying what is left rather than fail with a medium "could not verify".
    def remove(job: Job, step: int) -> None:
        job.optimizer.param_groups.pop()

    job = make_job()
    with Guard(
        job.model, job.optimizer, scheduler=job.scheduler, sink=sink, on_violation="warn"
    ) as guard:
        train(job, START + 2, tamper={START: remove})
    assert "guard.hyperparam" in rules(guard.findings)
    assert not [f for f in guard.findings if "update check failed" in f.message]


def _negate_first_moment(job: Job, step: int) -> None:
    with torch.no_grad():
        for state in job.optimizer.state.values():
            state["exp_avg"].neg_()


def _reset_step_count(job: Job, step: int) -> None:
    for state in job.optimizer.state.values():
        state["step"].fill_(1.0)  # bias correction as at the first step: a larger update


@pytest.mark.parametrize("edit", [_negate_first_moment, _reset_step_count])
def test_optimizer_state_edited_between_steps_is_named_as_such(sink: MemorySink, edit: Any) -> None:
    violation = _halted(make_job(), sink, between={START: edit})
    assert violation.step == START + 1
    state = [f for f in violation.findings if f.rule_id == "guard.weights"]
    assert state
    assert "between steps" in state[0].message
