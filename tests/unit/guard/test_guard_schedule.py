"""Learning-rate replicas against torch's schedulers, and hyperparameter pinning."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.optim import lr_scheduler as sched

from trainwarden.guard._hyper import ClipRecord, HyperparamCheck
from trainwarden.guard._schedule import UnsupportedSchedule, replica_for

pytestmark = pytest.mark.torch


def _optimizer(cls: Any = torch.optim.AdamW, **kwargs: Any) -> Any:
    p = torch.nn.Parameter(torch.zeros(3))
    q = torch.nn.Parameter(torch.zeros(2))
    return cls([{"params": [p]}, {"params": [q], "lr": 0.5}], lr=0.1, **kwargs)


def _sgd(**kwargs: Any) -> Any:
    return _optimizer(torch.optim.SGD, momentum=0.9, **kwargs)


def _hf(name: str) -> Callable[[Any], Any]:
    def build(opt: Any) -> Any:
        transformers = pytest.importorskip("transformers")
        return (
            getattr(transformers, name)(opt, 10, 60)
            if "constant" not in name
            else getattr(transformers, name)(opt, 10)
        )

    return build


SCHEDULERS: dict[str, tuple[Callable[[Any], Any], Callable[[], Any]]] = {
    "StepLR": (lambda o: sched.StepLR(o, 7, 0.5), _optimizer),
    "MultiStepLR": (lambda o: sched.MultiStepLR(o, [5, 5, 20], 0.3), _optimizer),
    "ExponentialLR": (lambda o: sched.ExponentialLR(o, 0.97), _optimizer),
    "CosineAnnealingLR": (lambda o: sched.CosineAnnealingLR(o, 25, eta_min=0.001), _optimizer),
    "CosineAnnealingWarmRestarts": (
        lambda o: sched.CosineAnnealingWarmRestarts(o, 5, T_mult=2, eta_min=0.01),
        _optimizer,
    ),
    "LinearLR": (lambda o: sched.LinearLR(o, 0.1, 1.0, 10), _optimizer),
    "ConstantLR": (lambda o: sched.ConstantLR(o, 0.3, 8), _optimizer),
    "PolynomialLR": (lambda o: sched.PolynomialLR(o, 40, 2.0), _optimizer),
    "LambdaLR": (lambda o: sched.LambdaLR(o, lambda t: 0.9**t), _optimizer),
    "MultiplicativeLR": (lambda o: sched.MultiplicativeLR(o, lambda t: 0.95), _optimizer),
    "OneCycleLR-adam": (lambda o: sched.OneCycleLR(o, [1.0, 2.0], total_steps=60), _optimizer),
    "OneCycleLR-sgd-linear": (
        lambda o: sched.OneCycleLR(
            o, 1.0, total_steps=60, anneal_strategy="linear", three_phase=True
        ),
        _sgd,
    ),
    "CyclicLR-sgd-triangular": (lambda o: sched.CyclicLR(o, 0.01, [0.1, 0.2], 7), _sgd),
    "CyclicLR-adam-triangular2": (
        lambda o: sched.CyclicLR(o, [0.01, 0.02], 0.1, 5, 9, mode="triangular2"),
        _optimizer,
    ),
    "CyclicLR-exp-range-no-momentum": (
        lambda o: sched.CyclicLR(
            o, 0.01, 0.1, 6, mode="exp_range", gamma=0.97, cycle_momentum=False
        ),
        _sgd,
    ),
    "SequentialLR-warmup-cosine": (
        lambda o: sched.SequentialLR(
            o, [sched.LinearLR(o, 0.1, total_iters=5), sched.CosineAnnealingLR(o, 35, 0.01)], [5]
        ),
        _optimizer,
    ),
    "SequentialLR-three": (
        lambda o: sched.SequentialLR(
            o,
            [sched.ConstantLR(o, 0.5, 4), sched.ExponentialLR(o, 0.9), sched.StepLR(o, 3)],
            [4, 20],
        ),
        _optimizer,
    ),
    "transformers-cosine-warmup": (_hf("get_cosine_schedule_with_warmup"), _optimizer),
    "transformers-linear-warmup": (_hf("get_linear_schedule_with_warmup"), _optimizer),
    "transformers-constant-warmup": (_hf("get_constant_schedule_with_warmup"), _optimizer),
}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_replica_follows_torch_for_60_steps(name: str) -> None:
    build, make = SCHEDULERS[name]
    opt = make()
    scheduler = build(opt)
    replica = replica_for(scheduler, opt)
    for t in range(60):
        lrs = [g["lr"] for g in opt.param_groups]
        assert lrs == pytest.approx(replica.lr(t), rel=1e-9)
        if replica.momentum is not None:
            key = replica.momentum_key
            momenta = [g["betas"][0] if key == "betas" else g["momentum"] for g in opt.param_groups]
            assert momenta == pytest.approx(replica.momentum(t), rel=1e-9)
        opt.step()
        scheduler.step()


@pytest.mark.parametrize(
    "build",
    [
        lambda o: sched.ReduceLROnPlateau(o),
        lambda o: sched.CyclicLR(o, 0.01, 0.1, scale_fn=lambda x: 0.5, scale_mode="cycle"),
        lambda o: type("Custom", (sched.StepLR,), {})(o, 3),
    ],
)
def test_schedulers_without_replica_are_said_to_be_not_followed(build: Any) -> None:
    opt = _sgd()
    with pytest.raises(UnsupportedSchedule):
        replica_for(build(opt), opt)


def _check(opt: Any, scheduler: Any = None) -> HyperparamCheck:
    return HyperparamCheck(opt, scheduler, rank=0, lr_rel=1e-6)


def test_every_group_setting_is_pinned() -> None:
    opt = _optimizer(weight_decay=0.1, amsgrad=False)
    check = _check(opt)
    assert check.before_step(1) == []
    for key, value in (
        ("eps", 1e-3),
        ("betas", (0.5, 0.999)),
        ("amsgrad", True),
        ("foreach", True),
    ):
        opt.param_groups[1][key] = value
        found = check.before_step(2)
        assert [f.rule_id for f in found] == ["guard.hyperparam"]
        assert key in found[0].message
        check.repin()


def test_lr_change_not_made_by_the_scheduler_persists_as_a_finding() -> None:
    opt = _optimizer()
    scheduler = sched.CosineAnnealingLR(opt, 20)
    check = _check(opt, scheduler)
    for step in range(1, 6):
        assert check.before_step(step) == []
        opt.step()
        scheduler.step()
    opt.param_groups[0]["lr"] *= 1.5  # the recursive form then carries it forward
    for step in range(6, 9):
        found = check.before_step(step)
        assert found
        assert "declared schedule" in found[0].message
        opt.step()
        scheduler.step()
    check.detach()
    assert "step" not in scheduler.__dict__


def test_scheduler_counter_changed_outside_step_is_caught() -> None:
    opt = _optimizer()
    scheduler = sched.StepLR(opt, 2)
    check = _check(opt, scheduler)
    opt.step()
    scheduler.step()
    assert check.counter_drift(1) == []
    scheduler.last_epoch = 0  # rewind: the schedule restarts
    assert check.counter_drift(2)
    check.detach()


def test_clipping_and_accumulation_are_pinned() -> None:
    check = _check(_optimizer())
    assert check.check_clipping(1, [ClipRecord(1.0, 2.0, None)]) == []
    assert check.check_clipping(2, [ClipRecord(1.0, 2.0, None)]) == []
    assert "changed" in check.check_clipping(3, [ClipRecord(100.0, 2.0, None)])[0].message
    assert "stopped" in check.check_clipping(4, [])[0].message
    assert check.check_accumulation(1, 4) == []
    assert check.check_accumulation(2, 2) == []  # one short step (an epoch's end) is fine
    assert check.check_accumulation(3, 4) == []
    assert check.check_accumulation(4, 8) == []
    assert "accumulation" in check.check_accumulation(5, 8)[0].message
