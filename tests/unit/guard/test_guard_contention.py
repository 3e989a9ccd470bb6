"""Timing: a phase stretched while computing is contention, one stretched off the CPU a stall.

On a shared machine another process can make a CPU-bound phase take 2-3 times as long
without the run queue showing it (a hyperthread sibling, memory bandwidth, a hypervisor):
a 73 ms backward measured 201 ms of own time, all on a CPU, in the step another process
started writing, and halted a clean run. A sleeping rank is off the CPU. These tests spin
for a given CPU time (``time.thread_time``, so the amount on a CPU is what the test says,
whatever the machine's load) or sleep, in the job's own code between forward and backward.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from guardtools import make_job, train

from trainwarden.errors import ConfigError
from trainwarden.guard import Guard, GuardConfig
from trainwarden.guard._timing import StallDetector, _schedstat

BASE = 0.04  # seconds of computing in every step's backward phase


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def _run(extra: Callable[[], None], at: int = 24, steps: int = 30) -> list[Any]:
    """Train with ``BASE`` of computing per backward, ``extra()`` added at step ``at``."""
    config = GuardConfig(timing_warmup=3, timing_min_excess=0.05)
    job = make_job(steps=steps)

    def work(step: int) -> None:  # the job's own work, between forward and backward
        _spin(BASE)
        if step == at:
            extra()

    with Guard(
        job.model, job.optimizer, scheduler=job.scheduler, config=config, on_violation="warn"
    ) as guard:
        train(job, steps, clip=False, after_forward=work)
    return [f for f in guard.findings if f.rule_id == "guard.timing"]


def _on_cpu_available() -> bool:
    before = _schedstat()[0]
    _spin(0.01)
    return _schedstat()[0] > before


needs_schedstat = pytest.mark.skipif(
    not _on_cpu_available(), reason="the kernel reports no per-thread CPU time (schedstat)"
)


@needs_schedstat
def test_a_backward_that_computes_two_and_a_half_times_as_long_is_not_a_stall() -> None:
    # 60 ms more than the usual 40 ms, all on a CPU: what contention (or a batch of more
    # tokens) does; judged by the whole phase it would be a 0.06 s stall over a 0.05 s floor.
    assert _run(lambda: _spin(1.5 * BASE)) == []


@needs_schedstat
def test_the_same_time_asleep_is_a_stall() -> None:
    found = _run(lambda: time.sleep(3 * BASE))
    assert found, "a sleep in the backward must be named"
    assert found[0].step == 24
    assert "backward" in found[0].message


@needs_schedstat
def test_computing_far_beyond_what_contention_explains_is_a_stall() -> None:
    # A busy loop ten times the phase: contention is forgiven up to timing_cpu_slack (4x).
    found = _run(lambda: _spin(9 * BASE))
    assert found, "a busy loop of 9x the phase must be named"
    assert found[0].step == 24


def _history(detector: StallDetector, steps: int, bwd: float) -> None:
    for step in range(1, steps + 1):
        row = [0.01, bwd + 0.001 * (step % 3), 0.005, 0.001]
        assert detector.observe(step, [row], [None], reporter=0, computing=[row]) == []


@pytest.mark.parametrize(
    ("value", "on_cpu", "stall"),
    [
        (0.20, 0.20, False),  # 2.75x, all computing: contention
        (0.28, 0.28, False),  # 4x: the most contention is forgiven
        (0.40, 0.40, True),  # 5.5x computing: beyond the slack
        (0.20, 0.07, True),  # 0.13 s off the CPU: a sleep
        (0.20, None, True),  # computing unknown: judged whole, as before
    ],
)
def test_the_detector_forgives_computing_up_to_the_slack_and_never_a_sleep(
    value: float, on_cpu: float | None, stall: bool
) -> None:
    detector = StallDetector(GuardConfig(timing_warmup=2))
    _history(detector, 30, 0.07)
    row = [0.01, value, 0.005, 0.001]
    computing = [[0.01, on_cpu, 0.005, None]]
    found = detector.observe(31, [row], [None], reporter=0, computing=computing)
    assert bool(found) is stall, found
    assert detector.contended == (0 if stall else 1)


def test_the_slack_must_be_at_least_one() -> None:
    with pytest.raises(ConfigError, match="timing_cpu_slack"):
        GuardConfig(timing_cpu_slack=0.5)
