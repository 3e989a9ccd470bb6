"""The guard on a ``torch.compile``'d model: hooks run eagerly, compilations are not stalls.

Before, TorchDynamo traced the guard's hooks inside the compiled forward: the first step
broke the graph at every line of them, recompiled the gradient hook per parameter, and then
raised ``TypeError: unhashable type: 'dict'`` from the guard's RNG wrapper (a rewritten
frame's code object hashes unhashable constants); and a recompilation for the smaller last
batch of an epoch (seconds inside one forward) was named a stall.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch
from guardtools import flip, make_job, snapshot, train

from trainwarden.guard import Guard, GuardConfig
from trainwarden.guard._timing import compiling

SLOW = 0.6  # seconds each compilation takes with the test's backend


def _slow_backend(gm: Any, example_inputs: Any) -> Any:
    # A compiler that takes its time, like inductor on a real model, without a C compiler.
    del example_inputs
    time.sleep(SLOW)
    return gm.forward


def _job() -> Any:
    job = make_job(steps=40, samples=100)  # 100 samples: 12 batches of 8, then one of 4
    torch._dynamo.reset()
    return job


def test_a_compiled_model_trains_clean_and_its_recompilation_is_not_a_stall() -> None:
    job = _job()
    compiled = torch.compile(job.model, backend=_slow_backend)
    config = GuardConfig(timing_warmup=3, timing_min_excess=0.1)
    before = compiling()
    with Guard(job.model, job.optimizer, scheduler=job.scheduler, config=config) as guard:
        # Epochs end at steps 13 and 26 with a batch of 4: recompiled.
        assert train(job, 30, clip=False, forward=compiled) == 30
    assert compiling() - before >= 2 * SLOW, "the compilations were timed"
    assert guard.findings == (), [f.message for f in guard.findings]
    assert guard.update.verified_steps >= 25


def test_tampering_under_a_compiled_model_is_still_caught() -> None:
    from trainwarden.errors import GuardViolation

    job = _job()
    compiled = torch.compile(job.model, backend="eager")
    params = list(job.model.parameters())
    saved: dict[str, list[Any]] = {}
    # Step 18's update reversed once the step is over: an edit between steps 18 and 19.
    tamper = {18: lambda job, s: saved.update(before=snapshot(params))}
    between = {18: lambda job, s: flip(params, saved["before"])}
    with (
        Guard(job.model, job.optimizer, scheduler=job.scheduler),
        pytest.raises(GuardViolation) as info,
    ):
        train(job, 30, clip=False, forward=compiled, tamper=tamper, between=between)
    assert info.value.step == 19
    assert {f.rule_id for f in info.value.findings} == {"guard.weights"}, info.value.findings
