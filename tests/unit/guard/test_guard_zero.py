"""``ZeroRedundancyOptimizer``: the guard verifies the partition the rank's local optimizer steps.

The wrapper's ``step()`` runs its local optimizer (``.optim``, a plain torch optimizer holding
the partition's state) and broadcasts each partition from its owner. Before, the guard looked
for a reference of the wrapper itself, found none, and reported "not verified": an update
flipped inside the local optimizer reached every rank with no finding. One rank here (a gloo
group of one, in this process; the several-rank halts are in test_guard_distributed.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from guardtools import flipping, make_job, train

from trainwarden.events import MemorySink
from trainwarden.guard import Guard, StepViolation

pytestmark = pytest.mark.torch

START = 5


@pytest.fixture
def group(tmp_path: Path) -> Iterator[None]:
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _zero(params: Any, **kwargs: Any) -> Any:
    from torch.distributed.optim import ZeroRedundancyOptimizer

    return ZeroRedundancyOptimizer(
        params, optimizer_class=torch.optim.AdamW, lr=3e-3, weight_decay=0.1, **kwargs
    )


@pytest.mark.parametrize("bucket_view", [False, True], ids=["params", "bucket-view"])
def test_a_clean_zero_job_is_verified_with_no_finding(
    group: None, sink: MemorySink, bucket_view: bool
) -> None:
    job = make_job(optimizer=lambda p: _zero(p, parameters_as_bucket_view=bucket_view))
    with Guard(job.model, job.optimizer, sink=sink) as guard:
        train(job, 10)
    assert not guard.findings, [f.message for f in guard.findings]
    assert "update" not in sink.named("guard.attach")[0].data["not_checked"]
    assert guard.update.verified_steps >= 9


def test_an_update_flipped_by_the_local_optimizer_is_caught(group: None, sink: MemorySink) -> None:
    job = make_job(optimizer=_zero)
    inner = job.optimizer.optim
    honest = type(inner).step

    def flipped(self: Any, *args: Any, **kwargs: Any) -> Any:
        params = [p for g in self.param_groups for p in g["params"]]
        return flipping(params, lambda: honest(self, *args, **kwargs))

    def tamper(job: Any, step: int) -> None:
        inner.step = flipped.__get__(inner)  # on the instance: the class is intact

    guard = Guard(job.model, job.optimizer, sink=sink)
    with guard, pytest.raises(StepViolation) as info:
        train(job, 10, tamper={START: tamper})
    assert info.value.step == START
    update = [f for f in guard.findings if f.rule_id == "guard.update"]
    assert update
    assert "sign flipped" in update[0].message
