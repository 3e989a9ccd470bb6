"""Each tampering of the incident, started at a random step of a real run, caught within one step.

One process, real tinygpt training on CPU, the guard attached with its defaults (timing
thresholds relaxed where the test machine is shared), ``on_violation="halt"``: the step in
which the tampering is detected raises StepViolation, and the finding names the rule.
"""

from __future__ import annotations

import random
import warnings
from typing import Any

import pytest
import torch
from guardtools import Job, make_job, rules, train

from trainwarden.errors import GuardViolation
from trainwarden.events import MemorySink
from trainwarden.guard import Guard, GuardConfig, StepViolation

pytestmark = pytest.mark.torch

STEPS = 24
SEEDS = (3, 11)


def _start(seed: int, low: int = 4, high: int = STEPS - 4) -> int:
    return random.Random(seed).randint(low, high)


def _halted(
    job: Job, sink: MemorySink, config: GuardConfig | None = None, **train_kwargs: Any
) -> StepViolation:
    with Guard(
        job.model, job.optimizer, scheduler=job.scheduler, sink=sink, config=config
    ) as guard:
        with pytest.raises(StepViolation) as info:
            train(job, STEPS, **train_kwargs)
        assert info.value.findings, "a halting step carries this rank's findings"
        assert guard.findings
    assert isinstance(info.value, GuardViolation)
    return info.value


def test_clean_run_has_no_findings(sink: MemorySink, tmp_path: Any) -> None:
    job = make_job(steps=40)
    with Guard(
        job.model, job.optimizer, scheduler=job.scheduler, sink=sink, telemetry_dir=tmp_path
    ) as guard:
        assert train(job, 40) == 40
        assert guard.findings == ()
    names = [e.event for e in sink.events]
    assert names[0] == "guard.attach"
    assert "guard.finding" not in names
    attach = sink.named("guard.attach")[0].data
    assert attach["reference"] == "AdamW"
    assert attach["lr"].startswith("replica of SequentialLR")
    assert attach["not_checked"] == {}
    assert attach["sampling"] == "local"
    close = sink.named("guard.close")[0].data
    assert close["steps"] == 40
    assert close["verified_steps"] == 40
    assert close["checked"] >= 40 * 500
    telemetry = sink.named("guard.telemetry")[0].data
    lines = (tmp_path / "rank-0.jsonl").read_text().splitlines()
    assert telemetry["lines"] == len(lines) == 40


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("key", "value"), [("lr", 0.5), ("weight_decay", 0.0)])
def test_param_group_change_is_caught(sink: MemorySink, seed: int, key: str, value: float) -> None:
    start = _start(seed)

    def tamper(job: Job, step: int) -> None:
        job.optimizer.param_groups[0][key] = value

    violation = _halted(make_job(), sink, tamper={start: tamper})
    assert violation.step == start
    assert "guard.hyperparam" in rules(violation.findings)
    assert any(key in (f.evidence or "") for f in violation.findings)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", ["flip", "scale"])
def test_patched_adamw_step_is_caught(sink: MemorySink, seed: int, kind: str) -> None:
    # The insider's edit: AdamW.step wrapped so that the update is flipped or scaled.
    start = _start(seed)
    factor = -1.0 if kind == "flip" else 3.0
    original = torch.optim.AdamW.step

    def evil(self: Any, *args: Any, **kwargs: Any) -> Any:
        before = [p.detach().clone() for g in self.param_groups for p in g["params"]]
        out = original(self, *args, **kwargs)
        with torch.no_grad():
            params = [p for g in self.param_groups for p in g["params"]]
            for p, b in zip(params, before, strict=True):
                p.copy_(b + factor * (p - b))
        return out

    def tamper(job: Job, step: int) -> None:
        torch.optim.AdamW.step = evil  # type: ignore[method-assign]

    try:
        violation = _halted(make_job(), sink, tamper={start: tamper})
    finally:
        torch.optim.AdamW.step = original  # type: ignore[method-assign]
    assert violation.step == start
    assert rules(violation.findings) & {"guard.code", "guard.update"}


@pytest.mark.parametrize("seed", SEEDS)
def test_patched_functional_adam_is_caught_by_the_reference(sink: MemorySink, seed: int) -> None:
    # Deeper: the functional update torch's Adam.step calls flips 1 % of the coordinates;
    # the optimizer's hooks still run around it, so only the recomputation can tell.
    import torch.optim.adam as adam_module

    start = _start(seed)
    original = adam_module._single_tensor_adam
    gen = torch.Generator().manual_seed(seed)

    def evil(params: list[Any], *args: Any, **kwargs: Any) -> Any:
        before = [p.detach().clone() for p in params]
        out = original(params, *args, **kwargs)
        with torch.no_grad():
            for p, b in zip(params, before, strict=True):
                mask = torch.rand(p.shape, generator=gen) < 0.01
                p.copy_(torch.where(mask, 2 * b - p, p))
        return out

    def tamper(job: Job, step: int) -> None:
        adam_module._single_tensor_adam = evil

    try:
        violation = _halted(make_job(), sink, tamper={start: tamper})
    finally:
        adam_module._single_tensor_adam = original
    assert violation.step == start
    update = [f for f in violation.findings if f.rule_id == "guard.update"]
    assert update
    assert update[0].step == start
    assert "flipped" in update[0].message


@pytest.mark.parametrize(
    ("op", "optimizer"),
    [
        ("lerp_.Scalar", None),
        ("addcdiv_", None),
        ("add_.Tensor", lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
        ("_foreach_add_.List", lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, foreach=True)),
    ],
)
def test_kernel_override_is_caught(sink: MemorySink, op: str, optimizer: Any) -> None:
    # torch.library override registered on CPU mid-run: every caller of the operator (the
    # optimizer included) now gets a perturbed result; the guard's captured kernels do not.
    start = _start(7)
    libraries: list[Any] = []
    original = torch.library.get_kernel(f"aten::{op}", "CPU")

    def perturbed(keyset: Any, *args: Any, **kwargs: Any) -> Any:
        out = original.call_boxed(keyset, *args, **kwargs)
        targets = out if isinstance(out, (list, tuple)) else [out]
        for t in (args[0] if op.startswith("_foreach") else targets) or []:
            if t.numel() > 64:
                flat = t.view(-1)
                flat[:: max(1, flat.numel() // 97)] *= 1.5
        return out

    def tamper(job: Job, step: int) -> None:
        lib = torch.library.Library("aten", "IMPL")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns (once) that a kernel is overridden
            lib.impl(op, perturbed, "CPU", with_keyset=True)
        libraries.append(lib)

    job = make_job(optimizer=optimizer)
    try:
        violation = _halted(job, sink, tamper={start: tamper})
    finally:
        for lib in libraries:
            lib._destroy()
    assert violation.step == start
    assert "guard.update" in rules(violation.findings)


def test_asynchronous_verification_halts_within_one_step(sink: MemorySink) -> None:
    import torch.optim.adam as adam_module

    start = _start(5)
    original = adam_module._single_tensor_adam

    def evil(params: list[Any], *args: Any, **kwargs: Any) -> Any:
        before = [p.detach().clone() for p in params]
        out = original(params, *args, **kwargs)
        with torch.no_grad():
            for p, b in zip(params, before, strict=True):
                p.copy_(b + 3.0 * (p - b))
        return out

    def tamper(job: Job, step: int) -> None:
        adam_module._single_tensor_adam = evil

    try:
        violation = _halted(
            make_job(), sink, GuardConfig(verify_async=True), tamper={start: tamper}
        )
    finally:
        adam_module._single_tensor_adam = original
    # Judged in the guard's verification thread during the next step: that step halts.
    assert violation.step == start + 1
    scaled = [f for f in violation.findings if "scaled by about 3" in f.message]
    assert scaled
    assert scaled[0].step == start


@pytest.mark.parametrize("seed", SEEDS)
def test_weights_edited_between_steps_are_caught(sink: MemorySink, seed: int) -> None:
    start = _start(seed)

    def edit(job: Job, step: int) -> None:
        with torch.no_grad():
            weight = job.plain.blocks[0].mlp[0].weight
            weight.data[:, : weight.shape[1] // 2] *= 1.02  # half the matrix, 2 %

    violation = _halted(make_job(), sink, between={start: edit})
    assert violation.step == start + 1
    weights = [f for f in violation.findings if f.rule_id == "guard.weights"]
    assert weights
    assert "blocks.0.mlp.0.weight" in weights[0].message


def test_extra_optimizer_hook_that_scales_updates_is_caught(sink: MemorySink) -> None:
    start = _start(5)

    def scale(optimizer: Any, args: Any, kwargs: Any) -> None:
        with torch.no_grad():
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.mul_(1.001)

    def tamper(job: Job, step: int) -> None:
        job.optimizer.register_step_post_hook(scale)

    violation = _halted(make_job(), sink, tamper={start: tamper})
    assert violation.step == start
    hooks = [f for f in violation.findings if f.rule_id == "guard.hooks"]
    assert hooks
    assert "scale" in (hooks[0].evidence or "")


def test_module_hook_that_scales_gradients_is_caught(sink: MemorySink) -> None:
    start = _start(6)

    def tamper(job: Job, step: int) -> None:
        job.plain.head.register_full_backward_hook(
            lambda m, gi, go: tuple(g * 4 if g is not None else g for g in gi)
        )

    violation = _halted(make_job(), sink, tamper={start: tamper})
    assert violation.step == start
    assert "guard.hooks" in rules(violation.findings)


def test_removed_guard_hooks_are_caught(sink: MemorySink) -> None:
    start = _start(8)

    def remove(job: Job, step: int) -> None:
        # What an insider who read the guard's source would do: drop its optimizer hooks.
        job.optimizer._optimizer_step_pre_hooks.clear()
        job.optimizer._optimizer_step_post_hooks.clear()

    violation = _halted(make_job(), sink, between={start: remove})
    assert violation.step <= start + 1
    assert "guard.detached" in rules(violation.findings)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("function", ["torch.manual_seed", "numpy.random.seed", "random.seed"])
def test_reseeding_is_caught_with_its_caller(sink: MemorySink, seed: int, function: str) -> None:
    import importlib

    start = _start(seed)
    module_name, _, name = function.rpartition(".")

    def reseed(job: Job, step: int) -> None:
        getattr(importlib.import_module(module_name), name)(4321)

    violation = _halted(make_job(), sink, tamper={start: reseed})
    assert violation.step == start
    reseeds = sink.named("guard.reseed")
    assert reseeds
    assert reseeds[0].data["function"] == function
    assert reseeds[0].data["caller"].endswith(f"{__file__.rsplit('/', 1)[-1]}:{_line(reseed)}")
    assert reseeds[0].data["seed"] == "4321"


def _line(fn: Any) -> int:
    return int(fn.__code__.co_firstlineno) + 1


def test_generator_reseed_through_the_c_method_is_caught(sink: MemorySink) -> None:
    start = _start(9)

    def reseed(job: Job, step: int) -> None:
        torch.default_generator.manual_seed(99)

    violation = _halted(make_job(), sink, tamper={start: reseed})
    assert violation.step == start
    assert "guard.reseed" in rules(violation.findings)


@pytest.mark.parametrize("attack", ["seed", "patched-iter"])
def test_sampler_order_change_is_caught(sink: MemorySink, attack: str) -> None:
    # 256 samples / batch 8 = 32 steps an epoch: run into the second epoch.
    job = make_job(steps=40)
    start = 20
    original = torch.utils.data.DistributedSampler.__iter__

    def reversed_iter(self: Any) -> Any:
        return iter(list(original(self))[::-1])

    def tamper(job: Job, step: int) -> None:
        if attack == "seed":
            job.sampler.seed = 777
        else:
            torch.utils.data.DistributedSampler.__iter__ = reversed_iter  # type: ignore[method-assign]

    try:
        with Guard(job.model, job.optimizer, scheduler=job.scheduler, sink=sink) as guard:
            with pytest.raises(StepViolation) as info:
                train(job, 40, tamper={start: tamper})
            del guard
    finally:
        torch.utils.data.DistributedSampler.__iter__ = original  # type: ignore[method-assign]
    if attack == "seed":
        # The new order takes effect when the next epoch starts (step 33): caught there.
        assert info.value.step == 33
        assert "guard.data-order" in rules(info.value.findings)
    else:
        # Replacing the sampler class's __iter__ drops the guard's wrapper: caught before the
        # new order is ever used.
        assert info.value.step == start
        assert "guard.detached" in rules(info.value.findings)


def _stall_in_adam(sink: MemorySink, seed: int, stall: Any) -> list[Any]:
    """Train with ``stall()`` run inside Adam.step from a random step; the halting findings.

    Inside Adam.step, between the guard's pre- and post-hooks, is where T3's sleep was.
    """
    import torch.optim.adam as adam_module

    start = _start(seed, 16, 30)
    config = GuardConfig(timing_warmup=3, timing_min_excess=0.3)
    original = adam_module.adam

    def stalled(*args: Any, **kwargs: Any) -> Any:
        stall()
        return original(*args, **kwargs)

    def tamper(job: Job, step: int) -> None:
        adam_module.adam = stalled

    job = make_job(steps=40)
    try:
        with (
            Guard(job.model, job.optimizer, scheduler=job.scheduler, sink=sink, config=config),
            pytest.raises(StepViolation) as info,
        ):
            train(job, 40, tamper={start: tamper})
    finally:
        adam_module.adam = original
    assert info.value.step == start
    timing = [f for f in info.value.findings if f.rule_id == "guard.timing"]
    assert timing, info.value.findings
    assert timing[0].rank == 0
    assert "optimizer step" in timing[0].message
    return timing


def test_a_stall_made_of_garbage_collections_in_the_optimizer_step_is_named(
    sink: MemorySink,
) -> None:
    # The guard subtracts the interpreter's own collections from the phases; collections the
    # step asks for itself, in a loop, are a sleep by another name.
    import gc
    import time

    collect = gc.collect

    def collecting() -> None:
        began = time.monotonic()
        while time.monotonic() - began < 1.2:
            gc.collect()

    _stall_in_adam(sink, 5, collecting)
    assert gc.collect is collect  # the guard's wrapper is gone with the guard


def test_a_stall_made_of_collections_set_off_by_lowered_thresholds_is_named(
    sink: MemorySink,
) -> None:
    # No explicit call: thresholds of 1 make the interpreter collect at every allocation.
    import gc
    import time

    def collecting() -> None:
        # Objects kept alive, so that full collections (the expensive ones) keep coming:
        # nearly all of the stall is spent inside the collector.
        before = gc.get_threshold()
        gc.set_threshold(1, 1, 1)
        kept: list[Any] = []
        try:
            began = time.monotonic()
            while time.monotonic() - began < 1.2:
                kept.append([[] for _ in range(5000)])
        finally:
            gc.set_threshold(*before)

    _stall_in_adam(sink, 6, collecting)


def test_collections_a_job_asks_for_between_steps_are_not_a_stall(sink: MemorySink) -> None:
    # Megatron's and torchtitan's manual garbage collection: gc.collect() every few steps,
    # between them. Not the job's stall, also on one rank.
    import gc

    config = GuardConfig(timing_warmup=3, timing_min_excess=0.3)
    job = make_job(steps=40)
    between = {step: (lambda job, step: gc.collect()) for step in range(8, 40, 4)}
    with Guard(job.model, job.optimizer, scheduler=job.scheduler, sink=sink, config=config) as g:
        train(job, 40, between=between)
    assert [f for f in g.findings if f.rule_id == "guard.timing"] == []


def test_rank_sleeping_in_the_optimizer_step_is_named(sink: MemorySink) -> None:
    import time

    timing = _stall_in_adam(sink, 4, lambda: time.sleep(1.2))
    assert not timing[0].established  # a sleep is suspected, the evidence is timing alone


def test_unsupported_optimizer_is_reported_not_verified(sink: MemorySink) -> None:
    job = make_job(optimizer=lambda p: torch.optim.RMSprop(p, lr=1e-3))
    with Guard(job.model, job.optimizer, sink=sink) as guard:
        train(job, 6)
    attach = sink.named("guard.attach")[0].data
    assert "update" in attach["not_checked"]
    assert "RMSprop" in attach["not_checked"]["update"]
    notes = [f for f in guard.findings if f.rule_id == "guard.not-verified"]
    assert notes
    assert not notes[0].halts
    assert {f.rule_id for f in guard.findings} == {"guard.not-verified"}


def test_warn_mode_records_and_continues(sink: MemorySink) -> None:
    job = make_job()

    def tamper(job: Job, step: int) -> None:
        job.optimizer.param_groups[0]["lr"] = 1.0

    with Guard(
        job.model, job.optimizer, scheduler=job.scheduler, sink=sink, on_violation="warn"
    ) as guard:
        assert train(job, 12, tamper={5: tamper}) == 12
    hyper = [f for f in guard.findings if f.rule_id == "guard.hyperparam"]
    assert hyper
    assert hyper[0].step == 5
    events = sink.named("guard.finding")
    assert events[0].data["rule_id"] == "guard.hyperparam"
    assert events[0].data["technique"] == "T5"
    assert events[0].data["established"] is True
