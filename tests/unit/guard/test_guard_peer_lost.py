"""A rank that dies mid-run: the survivors' guard names a rank lost (T6), not diverged weights.

Two real ranks over gloo, each training its own copy of a small model under a guard (the
guard's exchange is the only collective, as in a job whose ranks share no gradients); rank 1
exits abruptly after step ``DIES_AFTER``, as a killed process does. Rank 0's next exchange
fails: that is a peer gone (T6, suspected: the exchange cannot tell a kill from a crash),
never "parameters diverged between ranks" (T4), which is what it was reported as.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from guarddist import free_port

pytestmark = [pytest.mark.torch, pytest.mark.distributed, pytest.mark.slow]

DIES_AFTER = 3
STEPS = 6


def _rank(rank: int, port: int, out: str) -> None:
    from guardtools import make_job, train

    from trainwarden.guard import Guard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank))
    os.environ["WORLD_SIZE"] = "2"
    dist.init_process_group("gloo", rank=rank, world_size=2)
    job = make_job(steps=STEPS)
    guard = Guard(job.model, job.optimizer, scheduler=job.scheduler, on_violation="warn")

    def die(job: Any, step: int) -> None:
        os._exit(0)  # no clean-up, no goodbye to the group: as SIGKILL leaves it

    train(job, STEPS, between={DIES_AFTER: die} if rank == 1 else None)
    findings = [f.event_data() for f in guard.findings]
    guard.close()
    Path(out, f"rank-{rank}.json").write_text(json.dumps(findings))


def test_a_rank_gone_is_named_as_a_peer_lost_not_as_divergence(tmp_path: Path) -> None:
    mp.start_processes(_rank, args=(free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    assert not (tmp_path / "rank-1.json").exists()  # it really died before reporting
    findings = json.loads((tmp_path / "rank-0.json").read_text())
    assert findings, "rank 0's guard saw nothing of its peer's death"
    lost = [f for f in findings if f["rule_id"] == "guard.peer-lost"]
    assert len(lost) == 1, findings
    assert lost[0]["technique"] == "T6"
    assert lost[0]["step"] == DIES_AFTER + 1
    assert not lost[0]["established"]
    assert "rank" in lost[0]["message"]
    assert not [f for f in findings if f["rule_id"] == "guard.cross-rank"], findings
