"""Multi-rank scenarios: real DDP (and FSDP2) over gloo, several tamperings per launch.

``run_ranks(world, scenarios)`` spawns ``world`` processes that build one process group and
play the scenarios in order, each with a fresh model, optimizer and guard; every rank writes
what happened to it (halted at which step, with which findings) for the test to compare.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

SCENARIOS = (
    "clean",
    "lr-one-rank",
    "flip-all-ranks",
    "weights-one-rank",
    "one-weight-one-rank",
    "sleep-one-rank",
    "reseed-one-rank",
    "fsdp-clean",
    "fsdp-flip-one-rank",
    "zero-clean",
    "zero-flip-one-rank",
    # Last: the detached rank stays blocked in the job's next collective until the others
    # are gone (in a real job the halted ranks exit and torchrun tears the group down).
    "hooks-removed-one-rank",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_ranks(
    world: int, scenarios: tuple[str, ...], out: Path, *, timeout: float
) -> list[dict[str, Any]]:
    """Run ``scenarios`` on ``world`` spawned ranks; returns every rank's records."""
    port = free_port()
    context = mp.start_processes(
        _worker,
        args=(world, port, scenarios, str(out)),
        nprocs=world,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError(f"ranks did not finish within {timeout} s")
    records = []
    for rank in range(world):
        path = out / f"rank-{rank}.json"
        records.extend(json.loads(path.read_text()))
    return records


def _worker(rank: int, world: int, port: int, scenarios: tuple[str, ...], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    records = []
    torn = False
    try:
        for name in scenarios:
            play = play_heavy if name in HEAVY_SCENARIOS else _play
            records.append(play(name, rank, world))
            if name == "hooks-removed-one-rank":
                torn = True
                break
            dist.barrier()
    except Exception:
        records.append({"scenario": "crash", "rank": rank, "error": traceback.format_exc()})
        raise
    finally:
        Path(out, f"rank-{rank}.json").write_text(json.dumps(records))
    if not torn:
        dist.destroy_process_group()


#: Scenarios with the guard's code-integrity checks running all the time (see
#: test_guard_timing_heavy.py); not in SCENARIOS, launched on their own.
HEAVY_SCENARIOS = ("clean-during-code-checks", "short-sleeps-during-code-checks")


def heavy_config() -> Any:
    """Default thresholds; the code checks (runtime and package) due every 0.2 s."""
    from trainwarden.guard import GuardConfig

    return GuardConfig(code_every=0.2, package_every=0.2, watchdog_interval=0.05)


def sleep_steps(seed: int, first: int, last: int, p: float = 0.15) -> list[int]:
    """Steps in ``[first, last]`` at which the insider sleeps (probability ``p`` each)."""
    import random

    rng = random.Random(seed)
    return [s for s in range(first, last + 1) if rng.random() < p]


def collecting() -> float:
    """Seconds this process has spent in garbage collection, in any thread, so far.

    A full collection takes ~0.25 s with torch loaded; one run by another thread (the guard's
    watchdog) during a sleep is subtracted from it (docs/guard.md, Timing: the limits).
    """
    from trainwarden.guard import _timing

    return float(_timing._gc["total"])


@dataclass
class Sleeps:
    """An insider's sleeps in Adam.step at armed steps, and what each sleep overlapped."""

    seconds: float
    armed: list[int] = field(default_factory=list)
    overlapped: list[int] = field(default_factory=list)  # a paced check of the guard worked
    collected: list[int] = field(default_factory=list)  # a full collection ran elsewhere

    def tamper(self, steps: list[int]) -> dict[int, Any]:
        """``train``'s tamper map arming a sleep at each of ``steps``."""
        return {s: (lambda j, s: self.armed.append(s)) for s in steps}


@contextlib.contextmanager
def sleeping_adam(seconds: float) -> Iterator[Sleeps]:
    """Adam.step sleeps ``seconds`` at armed steps, between the guard's pre- and post-hooks,
    where T3's sleep was (restored on exit)."""
    import torch.optim.adam as adam_module

    from trainwarden.guard._timing import busy

    sleeps = Sleeps(seconds)
    original = adam_module.adam

    def sleepy(*args: Any, **kwargs: Any) -> Any:
        if sleeps.armed:
            step = sleeps.armed.pop()
            before, gc_before = busy(), collecting()
            time.sleep(seconds)
            if busy() > before:
                sleeps.overlapped.append(step)
            if collecting() - gc_before > 0.05:
                sleeps.collected.append(step)
        return original(*args, **kwargs)

    adam_module.adam = sleepy
    try:
        yield sleeps
    finally:
        adam_module.adam = original


def play_heavy(name: str, rank: int, world: int) -> dict[str, Any]:
    """A run of ``HEAVY_SCENARIOS`` (findings recorded, not halting): in ``short-sleeps-...``
    rank 1 sleeps 0.15 s in the optimizer step at random steps."""
    from guardtools import make_job, train

    from trainwarden.env import snapshot_runtime, verify_runtime
    from trainwarden.events import MemorySink
    from trainwarden.guard import Guard
    from trainwarden.guard._timing import busy

    steps = 120
    job = make_job(steps=steps, world=world, rank=rank, ddp=True)
    sleepy_run = name.startswith("short-sleeps")
    if sleepy_run:
        # The first code check of a process compiles torch sources, units of up to ~80 ms a
        # sleep can overlap (the documented limit); done before, as in the one-rank test.
        verify_runtime(snapshot_runtime())
    sleeps = sleep_steps(5, 20, steps) if sleepy_run and rank == 1 else []
    record: dict[str, Any] = {"scenario": name, "rank": rank, "sleeps": sleeps}
    started = busy()
    with sleeping_adam(0.15) as insider:
        guard = Guard(job.model, job.optimizer, scheduler=job.scheduler, sink=MemorySink(),
                      config=heavy_config(), on_violation="warn")  # fmt: skip
        opt: dict[int, float | None] = {}
        guard.add_step_listener(lambda info: opt.__setitem__(info.step, info.phases.get("opt")))
        try:
            record["steps"] = train(job, steps, tamper=insider.tamper(sleeps))
        finally:
            record["opt"] = {s: opt.get(s) for s in sleeps}
            record["busy"] = busy() - started
            guard.close()
    record["overlapped"] = insider.overlapped
    record["collected"] = insider.collected
    record["findings"] = [
        {"rule": f.rule_id, "rank": f.rank, "step": f.step, "message": f.message}
        for f in guard.findings
    ]
    return record


def _play(name: str, rank: int, world: int) -> dict[str, Any]:
    from guardtools import flipping, make_job, train

    from trainwarden.errors import GuardViolation
    from trainwarden.events import MemorySink
    from trainwarden.guard import Guard, GuardConfig

    steps = 26
    start = 19
    fsdp = name.startswith("fsdp")
    job = make_job(steps=steps, world=world, rank=rank, ddp=not fsdp)
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in job.model.blocks:
            fully_shard(block)
        fully_shard(job.model)
        job.optimizer = torch.optim.AdamW(job.model.parameters(), lr=3e-3, weight_decay=0.1)
        job.scheduler = None
    if name.startswith("zero"):
        from torch.distributed.optim import ZeroRedundancyOptimizer

        job.optimizer = ZeroRedundancyOptimizer(
            job.model.parameters(), optimizer_class=torch.optim.AdamW, lr=3e-3, weight_decay=0.1
        )
        job.scheduler = None
    # A full digest after step 22 (and before 23): what the one-weight scenario relies on.
    config = GuardConfig(timing_warmup=3, timing_min_excess=0.4, full_digest_every=22)
    sink = MemorySink()
    tamper: dict[int, Any] = {}
    between: dict[int, Any] = {}
    undo: list[Any] = []
    one = rank == 1
    if name == "lr-one-rank" and one:
        tamper[start] = lambda j, s: j.optimizer.param_groups[0].__setitem__("lr", 0.3)
    elif name in ("flip-all-ranks", "fsdp-flip-one-rank", "zero-flip-one-rank") and (
        one or name == "flip-all-ranks"
    ):
        import torch.optim.adam as adam_module

        original = adam_module._single_tensor_adam

        def evil(params: list[Any], *args: Any, **kwargs: Any) -> Any:
            return flipping(params, lambda: original(params, *args, **kwargs))

        def flip(j: Any, s: int) -> None:
            adam_module._single_tensor_adam = evil

        tamper[start] = flip
        undo.append(lambda: setattr(adam_module, "_single_tensor_adam", original))
    elif name == "weights-one-rank" and one:

        def edit(j: Any, s: int) -> None:
            with torch.no_grad():
                j.plain.head.weight.mul_(1.01)

        between[start] = edit
    elif name == "one-weight-one-rank" and one:

        def nudge(j: Any, s: int) -> None:
            with torch.no_grad():
                j.plain.head.weight.view(-1)[7] += 1e-3

        between[start] = nudge
    elif name == "sleep-one-rank" and one:
        import torch.optim.adam as adam_module

        original_adam = adam_module.adam

        def sleepy(*args: Any, **kwargs: Any) -> Any:
            time.sleep(1.5)
            return original_adam(*args, **kwargs)

        tamper[start] = lambda j, s: setattr(adam_module, "adam", sleepy)
        undo.append(lambda: setattr(adam_module, "adam", original_adam))
    elif name == "reseed-one-rank" and rank == 0:
        tamper[start] = lambda j, s: torch.manual_seed(5)
    elif name == "hooks-removed-one-rank" and one:

        def remove(j: Any, s: int) -> None:
            j.optimizer._optimizer_step_pre_hooks.clear()
            j.optimizer._optimizer_step_post_hooks.clear()

        between[start] = remove
    record: dict[str, Any] = {"scenario": name, "rank": rank, "start": start}
    guard = Guard(job.model, job.optimizer, scheduler=job.scheduler, sink=sink, config=config)
    try:
        done = train(job, steps, tamper=tamper, between=between)
        record.update(halted=None, steps=done)
    except GuardViolation as exc:
        # StepViolation says where; an asynchronous halt (the guard was detached) does not.
        record.update(
            halted=getattr(exc, "step", guard.step),
            ranks=list(getattr(exc, "ranks", (rank,))),
            kind=type(exc).__name__,
        )
    except RuntimeError as exc:
        # The detached rank, blocked in the job's collective when the others halted and left.
        if name != "hooks-removed-one-rank":
            raise
        record.update(halted=guard.step, ranks=[rank], kind=f"RuntimeError: {str(exc)[:80]}")
    finally:
        for fn in undo:
            fn()
        guard.close()
    record["findings"] = [
        {"rule": f.rule_id, "rank": f.rank, "step": f.step, "message": f.message}
        for f in guard.findings
    ]
    record["attach"] = sink.named("guard.attach")[0].data["not_checked"]
    return record
