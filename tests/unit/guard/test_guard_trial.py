"""A new user's trial: legitimate training setups must raise no false alarm.

Each setup is a real training loop (20-30 steps, real torch on CPU) that a user might write:
a scheduler that cycles momentum, gradient checkpointing, sparse or complex parameters. A
clean run must have no finding; a setup the guard cannot verify must say "not verified"
(``guard.not-verified``, information) and nothing else, never tampering. The controls at the
end show that the same setups still catch the tampering they could hide.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from guardtools import flipping
from torch import nn
from torch.optim import lr_scheduler as sched

from trainwarden.events import MemorySink
from trainwarden.examples.tinygpt import Config, build, make_dataset
from trainwarden.guard import Guard, GuardConfig

pytestmark = pytest.mark.torch

# The test machine is shared: timing is checked elsewhere, with thresholds for that.
CONFIG = GuardConfig().without("timing")
STEPS = 24

torch.set_num_threads(1)


class Branchy(nn.Module):
    """A small classifier; ``use_b`` off leaves ``b`` without a gradient in that step."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 16)
        self.c = nn.Linear(16, 4)
        self.use_b = True
        self.checkpointed = ""

    def forward(self, x: Any) -> Any:
        from torch.utils.checkpoint import checkpoint

        if self.checkpointed:
            reentrant = self.checkpointed == "reentrant"
            h = checkpoint(self._first, x.requires_grad_(reentrant), use_reentrant=reentrant)
        else:
            h = self._first(x)
        if self.use_b:
            h = h + self.b(h)
        return self.c(h)

    def _first(self, x: Any) -> Any:
        # Dropout makes the recomputation depend on the RNG state checkpointing restores.
        return nn.functional.dropout(torch.relu(self.a(x)), 0.1, self.training)


class ComplexModel(nn.Module):
    """One complex weight: a legitimate model the update check has no reference for."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(16, 4, dtype=torch.cfloat) * 0.1)

    def forward(self, x: Any) -> Any:
        return (x.to(torch.cfloat) @ self.w).abs()


def _train(
    model: nn.Module,
    opt: Any,
    scheduler: Any = None,
    *,
    steps: int = STEPS,
    before: Callable[[int], None] | None = None,
    inputs: Callable[[Any], Any] | None = None,
) -> None:
    gen = torch.Generator().manual_seed(0)
    for step in range(1, steps + 1):
        if before is not None:
            before(step)
        x = inputs(gen) if inputs is not None else torch.randn(8, 16, generator=gen)
        y = torch.randint(0, 4, (8,), generator=gen)
        loss = nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()


def _guard(
    model: Any, opt: Any, sink: MemorySink, scheduler: Any = None, config: GuardConfig = CONFIG
) -> Guard:
    return Guard(model, opt, scheduler=scheduler, sink=sink, on_violation="warn", config=config)


def _branchy(**settings: Any) -> Branchy:
    torch.manual_seed(0)
    model = Branchy()
    for key, value in settings.items():
        setattr(model, key, value)
    return model


# ----------------------------------------------------------------------------- setups


def cyclic_sgd_momentum(sink: MemorySink) -> Guard:
    model = _branchy()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    scheduler = sched.CyclicLR(opt, 1e-3, 1e-2, step_size_up=5)  # cycles momentum too
    with _guard(model, opt, sink, scheduler) as guard:
        _train(model, opt, scheduler)
    return guard


def cyclic_adamw_beta1(sink: MemorySink) -> Guard:
    model = _branchy()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = sched.CyclicLR(opt, 1e-4, 1e-3, step_size_up=5)  # cycles beta1
    with _guard(model, opt, sink, scheduler) as guard:
        _train(model, opt, scheduler)
    return guard


def chained_with_one_cycle(sink: MemorySink) -> Guard:
    model = _branchy()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    scheduler = sched.ChainedScheduler(
        [sched.OneCycleLR(opt, 1e-2, total_steps=STEPS + 1), sched.ConstantLR(opt, 0.5, 4)]
    )
    with _guard(model, opt, sink, scheduler) as guard:
        _train(model, opt, scheduler)
    return guard


def checkpointing(sink: MemorySink) -> Guard:
    model = _branchy(checkpointed="plain")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with _guard(model, opt, sink) as guard:
        _train(model, opt)
    return guard


def checkpointing_reentrant(sink: MemorySink) -> Guard:
    model = _branchy(checkpointed="reentrant")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with _guard(model, opt, sink) as guard:
        _train(model, opt)
    return guard


def fork_rng_evaluation(sink: MemorySink) -> Guard:
    """Sampling for evaluation inside ``fork_rng`` leaves the training RNG as it was."""
    model = _branchy()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def evaluate(step: int) -> None:
        if step % 5 == 0:
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                model(torch.randn(4, 16))

    with _guard(model, opt, sink) as guard:
        _train(model, opt, before=evaluate)
    return guard


def unused_branch(sink: MemorySink) -> Guard:
    model = _branchy()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)

    def toggle(step: int) -> None:
        model.use_b = step % 3 != 0

    with _guard(model, opt, sink) as guard:
        _train(model, opt, before=toggle)
    return guard


def ema_copy(sink: MemorySink) -> Guard:
    model = _branchy()
    ema = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def average(step: int) -> None:
        with torch.no_grad():
            for mine, theirs in zip(ema.parameters(), model.parameters(), strict=True):
                mine.mul_(0.9).add_(theirs, alpha=0.1)

    with _guard(model, opt, sink) as guard:
        _train(model, opt, before=average)
    return guard


def tinygpt_tied_weights(sink: MemorySink) -> Guard:
    cfg = Config(samples=64, width=32, layers=1, heads=4)
    torch.manual_seed(0)
    model, _, _ = build(cfg)
    emb = next(m for m in model.modules() if isinstance(m, nn.Embedding))
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    head.weight = emb.weight
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    x, y = make_dataset(cfg).tensors
    with _guard(model, opt, sink) as guard:
        for step in range(STEPS):
            i = slice(8 * step % 64, 8 * step % 64 + 8)
            loss = nn.functional.cross_entropy(model(x[i]).reshape(-1, cfg.vocab), y[i].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return guard


CLEAN: dict[str, Callable[[MemorySink], Guard]] = {
    f.__name__: f
    for f in (
        cyclic_sgd_momentum,
        cyclic_adamw_beta1,
        chained_with_one_cycle,
        checkpointing,
        checkpointing_reentrant,
        fork_rng_evaluation,
        unused_branch,
        ema_copy,
        tinygpt_tied_weights,
    )
}


@pytest.mark.parametrize("name", sorted(CLEAN))
def test_legitimate_setup_has_no_findings(name: str, sink: MemorySink) -> None:
    guard = CLEAN[name](sink)
    assert [(f.rule_id, f.step, f.message) for f in guard.findings] == []


# ------------------------------------------------------------------- not verifiable


def _sparse_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(50, 16, sparse=True), nn.Linear(16, 4))


def _token_inputs(gen: Any) -> Any:
    return torch.randint(0, 50, (8,), generator=gen)


def sparse_sgd(sink: MemorySink) -> Guard:
    model = _sparse_model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    with _guard(model, opt, sink) as guard:
        _train(model, opt, inputs=_token_inputs)
    return guard


def sparse_sgd_momentum(sink: MemorySink) -> Guard:
    model = _sparse_model()  # the momentum buffer of a sparse gradient is sparse too
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    with _guard(model, opt, sink) as guard:
        _train(model, opt, inputs=_token_inputs)
    return guard


def sparse_sgd_verified_in_a_thread(sink: MemorySink) -> Guard:
    model = _sparse_model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    config = GuardConfig(verify_async=True).without("timing")
    with _guard(model, opt, sink, config=config) as guard:
        _train(model, opt, inputs=_token_inputs)
    return guard


def sparse_adam(sink: MemorySink) -> Guard:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 4, sparse=True))
    opt = torch.optim.SparseAdam(model.parameters(), lr=1e-2)
    with _guard(model, opt, sink) as guard:
        _train(model, opt, inputs=_token_inputs)
    return guard


def complex_adamw(sink: MemorySink) -> Guard:
    torch.manual_seed(0)
    model = ComplexModel()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with _guard(model, opt, sink) as guard:
        _train(model, opt)
    return guard


def complex_sgd(sink: MemorySink) -> Guard:
    torch.manual_seed(0)
    model = ComplexModel()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    with _guard(model, opt, sink) as guard:
        _train(model, opt)
    return guard


NOT_VERIFIED: dict[str, Callable[[MemorySink], Guard]] = {
    f.__name__: f
    for f in (
        sparse_sgd,
        sparse_sgd_momentum,
        sparse_sgd_verified_in_a_thread,
        sparse_adam,
        complex_adamw,
        complex_sgd,
    )
}


@pytest.mark.parametrize("name", sorted(NOT_VERIFIED))
def test_unverifiable_setup_is_said_to_be_not_verified_never_tampered(
    name: str, sink: MemorySink
) -> None:
    guard = NOT_VERIFIED[name](sink)
    assert guard.findings, "an unverified update must be said, never passed silently"
    assert {f.rule_id for f in guard.findings} == {"guard.not-verified"}
    assert not any(f.halts or f.established for f in guard.findings)


# ------------------------------------------------- controls: tampering is still caught


def _rules(guard: Guard) -> set[str]:
    return {f.rule_id for f in guard.findings}


@pytest.mark.parametrize("followed", [True, False], ids=["replica", "no-replica"])
def test_cycled_momentum_leaves_the_other_settings_pinned(sink: MemorySink, followed: bool) -> None:
    model = _branchy()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    scheduler: Any = sched.CyclicLR(opt, 1e-4, 1e-3, step_size_up=5)
    if not followed:  # beta1 cycled by a OneCycleLR inside a chain: exempt, not followed
        one_cycle = sched.OneCycleLR(opt, 1e-3, total_steps=STEPS + 1)
        scheduler = sched.ChainedScheduler([one_cycle, sched.ConstantLR(opt, 0.5, 4)])

    def tamper(step: int) -> None:
        group = opt.param_groups[0]
        if step == 8:
            group["betas"] = (group["betas"][0], 0.5)  # beta2: not the scheduler's
        if step == 14:
            group["weight_decay"] = 0.0

    with _guard(model, opt, sink, scheduler) as guard:
        _train(model, opt, scheduler, before=tamper)
    first: dict[str, int] = {}
    for f in guard.findings:
        assert f.rule_id == "guard.hyperparam"
        first.setdefault(f.message.split(" of ")[0], f.step)
    assert first == {"betas": 8, "weight_decay": 14}
    attach = sink.named("guard.attach")[0].data
    if followed:  # CyclicLR has a replica: the cycled beta1 is followed, not exempted.
        assert "momentum" not in attach["not_checked"]
        assert attach["lr"].startswith("replica of CyclicLR")
    else:
        assert "betas" in attach["not_checked"]["momentum"]


@pytest.mark.parametrize("key", ["lr", "momentum"])
def test_lr_or_momentum_moved_off_a_cyclic_schedule_is_caught(sink: MemorySink, key: str) -> None:
    # Followed now that CyclicLR has a replica: before, both were exempt under CyclicLR.
    model = _branchy()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    scheduler = sched.CyclicLR(opt, 1e-3, 1e-2, step_size_up=5)

    def tamper(step: int) -> None:
        if step == 7:
            opt.param_groups[0][key] *= 1.5

    with _guard(model, opt, sink, scheduler) as guard:
        _train(model, opt, scheduler, before=tamper)
    found = [(f.rule_id, f.step) for f in guard.findings]
    assert found[0] == ("guard.hyperparam", 7)
    assert key in guard.findings[0].message


def test_momentum_a_scheduler_does_not_cycle_stays_pinned(sink: MemorySink) -> None:
    model = _branchy()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    scheduler = sched.CyclicLR(opt, 1e-3, 1e-2, step_size_up=5, cycle_momentum=False)

    def tamper(step: int) -> None:
        if step == 9:
            opt.param_groups[0]["momentum"] = 0.0

    with _guard(model, opt, sink, scheduler) as guard:
        _train(model, opt, scheduler, before=tamper)
    assert [(f.rule_id, f.step) for f in guard.findings] == [("guard.hyperparam", 9)]


def _rng_job(sink: MemorySink, insider: Callable[[int], None]) -> Guard:
    model = _branchy(checkpointed="plain")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with _guard(model, opt, sink) as guard:
        _train(model, opt, before=insider)
    return guard


def test_a_restore_of_another_state_is_still_reported(sink: MemorySink) -> None:
    saved: list[Any] = []

    def insider(step: int) -> None:
        if step == 3:
            saved.append(torch.get_rng_state())
        if step == 9:
            torch.set_rng_state(saved[0])  # replays step 3's dropout masks from here on

    guard = _rng_job(sink, insider)
    assert [(f.rule_id, f.step) for f in guard.findings] == [("guard.reseed", 9)]
    assert sink.named("guard.reseed")[0].data["caller"].startswith(__file__)


def test_a_restore_inside_fork_rng_by_other_code_is_still_reported(sink: MemorySink) -> None:
    saved: list[Any] = []

    def insider(step: int) -> None:
        if step == 3:
            saved.append(torch.get_rng_state())
        if step == 9:
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(saved[0])
        if step == 12:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(7)

    guard = _rng_job(sink, insider)
    found = [(f.rule_id, f.step, f.halts) for f in guard.findings]
    assert found[:2] == [("guard.reseed", 9, False), ("guard.reseed", 12, True)]
    reseeds = sink.named("guard.reseed")
    assert [e.data["function"] for e in reseeds] == ["torch.set_rng_state", "torch.manual_seed"]


def test_a_restore_that_changes_nothing_is_not_reported(sink: MemorySink) -> None:
    import random

    import numpy as np

    def same(step: int) -> None:
        if step == 5:
            torch.set_rng_state(torch.get_rng_state())
            np.random.set_state(np.random.get_state())
            random.setstate(random.getstate())

    assert _rng_job(sink, same).findings == ()


def test_a_dense_group_beside_a_sparse_one_is_still_verified(sink: MemorySink) -> None:
    # The functional update SGD.step calls flips the dense head's update; the optimizer's
    # hooks still run around it, so only the recomputation of that group can tell.
    import torch.optim.sgd as sgd_module

    model = _sparse_model()
    embedding, head = model[0], model[1]
    opt = torch.optim.SGD(
        [{"params": embedding.parameters()}, {"params": head.parameters()}], lr=1e-2
    )
    original = sgd_module._single_tensor_sgd

    def flip_dense(params: list[Any], grads: list[Any], *args: Any, **kwargs: Any) -> Any:
        if any(g.is_sparse for g in grads):
            return original(params, grads, *args, **kwargs)
        return flipping(params, lambda: original(params, grads, *args, **kwargs))

    def insider(step: int) -> None:
        if step == 10:
            sgd_module._single_tensor_sgd = flip_dense

    try:
        with _guard(model, opt, sink) as guard:
            _train(model, opt, inputs=_token_inputs, before=insider)
    finally:
        sgd_module._single_tensor_sgd = original
    unverified = [f for f in guard.findings if f.rule_id == "guard.not-verified"]
    assert [(f.step, f.evidence) for f in unverified] == [(1, "SGD group 0")]
    update = [f for f in guard.findings if f.rule_id == "guard.update"]
    assert update
    assert update[0].step == 10
    assert "1.weight" in update[0].message or "1.bias" in update[0].message


@pytest.mark.parametrize("declared", [True, False])
def test_a_warmup_written_by_hand_is_a_finding_unless_declared(
    sink: MemorySink, declared: bool
) -> None:
    model = _branchy()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with _guard(model, opt, sink) as guard:

        def warmup(step: int) -> None:
            if step <= 5:
                opt.param_groups[0]["lr"] = 1e-3 * step / 5
                if declared:
                    guard.declare_change("warm-up written by hand")

        _train(model, opt, before=warmup)
    if declared:
        assert guard.findings == ()
        assert len(sink.named("guard.declared")) == 5
    else:
        assert [f.step for f in guard.findings] == [1, 2, 3, 4]  # step 5 restores 1e-3
        assert "guard.declare_change(reason)" in guard.findings[0].message


def test_a_scheduler_created_after_the_guard_is_named_with_the_remedy(sink: MemorySink) -> None:
    model = _branchy()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with _guard(model, opt, sink) as guard:
        scheduler = sched.CosineAnnealingLR(opt, STEPS)  # the lr moves undeclared: a finding
        _train(model, opt, scheduler, steps=4)
    assert [f.step for f in guard.findings] == [2, 3, 4]
    message = guard.findings[0].message
    assert "created for this optimizer after the guard attached" in message
    assert "scheduler=" in message
