"""Time spent inside ``optimizer.step()`` is the optimizer's, whoever's hook spends it.

T3 of the incident (and of the drill) rides in the shared torch install as a *global*
optimizer-step pre-hook that sleeps. torch runs global pre-hooks before an optimizer's own,
so the sleep came before the guard's pre-step hook, where the guard closed the backward: the
stall was named "backward pass", pointing the team at the GPUs' compute rather than at the
optimizer. The guard now marks the step's start with a global pre-hook of its own, first in
line, so whatever runs inside ``step()`` before its checks counts as the optimizer's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch.optim.optimizer as optim_mod
from guardtools import make_job, train

from trainwarden.events import MemorySink
from trainwarden.guard import Guard, install_global

SLEEP = 0.25
AT = (6, 9)


@pytest.fixture
def sleeping_global_hook() -> Iterator[list[int]]:
    """A global step pre-hook registered before the guard (as an edited torch would)."""
    calls: list[int] = []

    def pre_step(optimizer: Any, args: Any, kwargs: Any) -> None:
        calls.append(len(calls) + 1)
        if len(calls) in AT:
            time.sleep(SLEEP)

    handle = optim_mod.register_optimizer_step_pre_hook(pre_step)
    yield calls
    handle.remove()


@pytest.mark.parametrize("attach", ["guard", "global guard"])
def test_a_sleep_in_a_global_step_pre_hook_is_the_optimizers_time(
    sink: MemorySink, sleeping_global_hook: list[int], attach: str
) -> None:
    job = make_job()
    phases: dict[int, dict[str, float | None]] = {}
    if attach == "guard":
        guard: Any = Guard(job.model, job.optimizer, scheduler=job.scheduler, sink=sink)
    else:  # as trainwarden run attaches it: no change to the job's code
        guard = install_global(sink=sink)
    with guard:
        guard.add_step_listener(lambda info: phases.__setitem__(info.step, dict(info.phases)))
        train(job, 12)
    assert sleeping_global_hook == list(range(1, 13))
    for step in AT:
        # Not the whole sleep: the guard's paced heavy checks (its first code-integrity pass,
        # in the watchdog thread) may run while the job sleeps, and are not the job's time.
        assert (phases[step]["opt"] or 0.0) >= SLEEP / 2, phases[step]
        assert (phases[step]["bwd"] or 0.0) < SLEEP / 2, phases[step]
        assert (phases[step]["wait"] or 0.0) < SLEEP / 2, phases[step]
    quiet = [phases[s]["opt"] or 0.0 for s in range(2, 13) if s not in AT]
    assert max(quiet) < SLEEP / 2
    assert not [f for f in guard.findings if f.rule_id in ("guard.hooks", "guard.detached")]


def test_the_step_mark_is_the_guards_own_hook_and_its_removal_is_seen(sink: MemorySink) -> None:
    job = make_job()
    with Guard(job.model, job.optimizer, sink=sink, on_violation="warn") as guard:
        train(job, 2)
        hooks = optim_mod._global_optimizer_pre_hooks
        assert len(hooks) == 1
        mark = next(iter(hooks))
        del hooks[mark]
        train(job, 2)
    assert "guard.detached" in {f.rule_id for f in guard.findings}
