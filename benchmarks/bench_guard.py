"""Runtime guard overhead on real CPU GPT training: guard with default settings vs no guard.

Run: python benchmarks/bench_guard.py [--steps N] [--repeats R] [--no-write]

For four model sizes (tinygpt's tiny default, 0.11 M parameters in 29 tensors, ~10-20 ms a
step; a small realistic one, 1.8 M parameters in 53 tensors, ~110 ms a step on one core; a
medium one, 7.5 M parameters in 77 tensors, ~0.35 s a step; a large one, 25 M parameters in
101 tensors, ~1.1 s a step, run for a third of the steps: the guard's cost is nearly constant
per step, so the four show how its share falls as steps grow) and for 1 and 2
ranks (DDP over gloo), the same
process trains alternately without a guard and with ``Guard(model, optimizer,
scheduler=scheduler)`` at its defaults, in blocks of N steps, R times; median step times
(steady state, attach excluded and reported apart) give the overhead, and the guard's own
accounting gives the cost of each check per step. Writes the ``guard`` section of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _results import median, write_section

SIZES = {
    # name: (width, layers, context, batch)
    "tiny": (64, 2, 32, 8),
    "realistic": (192, 4, 64, 8),
    "medium": (320, 6, 64, 8),
    "large": (512, 8, 64, 8),
}


def _job(size: str, world: int, rank: int) -> tuple[Any, Any, Any, Any, Any]:
    import torch

    from trainwarden.examples.tinygpt import Config, build, make_dataset

    width, layers, context, batch = SIZES[size]
    cfg = Config(width=width, layers=layers, context=context, batch=batch, samples=1024, heads=4)
    torch.manual_seed(0)
    model, opt, sched = build(cfg)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    data = make_dataset(cfg)
    sampler = torch.utils.data.DistributedSampler(data, num_replicas=world, rank=rank, seed=0)
    loader = torch.utils.data.DataLoader(data, batch_size=batch, sampler=sampler)
    return cfg, model, opt, sched, loader


def _steps(
    cfg: Any, model: Any, opt: Any, sched: Any, batches: Any, n: int, cpu: list[float] | None = None
) -> list[float]:
    import torch

    times = []
    for _ in range(n):
        x, y = next(batches)
        start = time.perf_counter()
        start_cpu = time.thread_time()
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg.vocab), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        times.append(time.perf_counter() - start)
        if cpu is not None:
            cpu.append(time.thread_time() - start_cpu)
    return times


def _forever(loader: Any, sampler_epoch: list[int]) -> Any:
    while True:
        loader.sampler.set_epoch(sampler_epoch[0])
        sampler_epoch[0] += 1
        yield from loader


CONFIG: dict[str, Any] = {}


def measure(
    size: str,
    steps: int,
    repeats: int,
    world: int = 1,
    rank: int = 0,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Alternate bare and guarded blocks on one job; return medians and per-check costs."""
    import torch

    from trainwarden.guard import Guard

    torch.set_num_threads(1)
    cfg, model, opt, sched, loader = _job(size, world, rank)
    batches = _forever(loader, [0])
    _steps(cfg, model, opt, sched, batches, 5)  # warm-up: allocator, kernels
    bare: list[float] = []
    guarded: list[float] = []
    bare_cpu: list[float] = []
    guarded_cpu: list[float] = []
    costs: dict[str, float] = {}
    total = 0.0
    attach: list[float] = []
    digests: list[float] = []
    every = 1
    guarded_steps = 0
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            bare += _steps(cfg, model, opt, sched, batches, steps, bare_cpu)
            start = time.perf_counter()
            from trainwarden.guard import GuardConfig

            guard = Guard(
                model,
                opt,
                scheduler=sched,
                telemetry_dir=tmp,
                config=GuardConfig(**{**CONFIG, **(overrides or {})}),
            )
            attach.append(time.perf_counter() - start)
            _steps(cfg, model, opt, sched, batches, 3)  # the guard's calibration step
            # The first code-integrity pass (snapshot, source compiles, package fingerprint:
            # ~2 s of CPU once, in the watchdog thread) is part of attach, not of a step.
            deadline = time.monotonic() + 120
            while guard.code is not None and guard.code.checks < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            before_total = guard.total_cost
            before = guard._costs()
            before_worker = guard.update.worker_cost
            guarded += _steps(cfg, model, opt, sched, batches, steps, guarded_cpu)
            after = guard._costs()
            after["verification thread"] = guard.update.worker_cost - before_worker
            total += guard.total_cost - before_total
            guarded_steps += steps
            for key, value in after.items():
                costs[key] = costs.get(key, 0.0) + value - before.get(key, 0.0)
            assert guard.findings == (), guard.findings
            every = guard.config.full_digest_every
            guard.close()
            digests += _full_digest_cpu(model)
    per_step = {k: v / guarded_steps for k, v in costs.items()}
    # The full digest runs twice every `every` steps (after the step, before the next); the
    # blocks are shorter than that, so it is timed apart and added, amortized.
    full = 2 * median(digests) / every
    per_step["weights"] = per_step.get("weights", 0.0) + full
    total += full * guarded_steps
    return {
        "size": size,
        "settings": ", ".join(f"{k}={v}" for k, v in (overrides or {}).items()) or "defaults",
        "world": world,
        "params": sum(p.numel() for p in model.parameters()),
        "tensors": len(list(model.parameters())),
        "bare": median(bare),
        "guarded": median(guarded),
        "bare_cpu": median(bare_cpu),
        "guarded_cpu": median(guarded_cpu),
        "attach": median(attach),
        "total": total / guarded_steps,
        "per_check": per_step,
    }


def _full_digest_cpu(model: Any) -> list[float]:
    """CPU seconds of the guard's full digest of the weights, three times."""
    from trainwarden.guard._update import full_digest

    params = list(model.parameters())
    times = []
    for _ in range(3):
        start = time.thread_time()
        full_digest(params)
        times.append(time.thread_time() - start)
    return times


def _rank(rank: int, world: int, port: int, size: str, steps: int, repeats: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    result = measure(size, steps, repeats, world, rank)
    Path(out, f"{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def measure_ranks(size: str, steps: int, repeats: int, world: int = 2) -> dict[str, Any]:
    """The same protocol on ``world`` ranks (DDP over gloo); rank 0's figures."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(
            _rank, args=(world, port, size, steps, repeats, out), nprocs=world, start_method="spawn"
        )
        results: dict[str, Any] = json.loads(Path(out, "0.json").read_text())
        return results


def _row(r: dict[str, Any]) -> str:
    overhead = (r["guarded"] - r["bare"]) / r["bare"]
    cpu_overhead = (r["guarded_cpu"] - r["bare_cpu"]) / r["bare_cpu"]
    direct = r["total"] / r["bare_cpu"]
    return (
        f"| {r['size']} ({r['params'] / 1e6:.2f} M params, {r['tensors']} tensors) "
        f"| {r['settings']} | {r['world']} "
        f"| {r['bare'] * 1e3:.1f} | {r['guarded'] * 1e3:.1f} | {overhead:+.2%} "
        f"| {r['bare_cpu'] * 1e3:.1f} | {r['guarded_cpu'] * 1e3:.1f} | {cpu_overhead:+.2%} "
        f"| {r['total'] * 1e3:.2f} | **{direct:.2%}** | {r['attach'] * 1e3:.0f} |"
    )


def _checks(r: dict[str, Any]) -> str:
    lines = [
        f"Cost of each check per step (CPU time of the thread that runs it), {r['size']} model, "
        f"{r['world']} rank(s) (median step {r['bare_cpu'] * 1e3:.1f} ms of CPU):",
        "",
        "| check | µs per step | % of step |",
        "|---|---:|---:|",
    ]
    for name, value in sorted(r["per_check"].items(), key=lambda kv: -kv[1]):
        where = (
            " (a sixteenth of the bindings each step; the full check in the watchdog thread)"
            if name == "code"
            else ""
        )
        lines.append(f"| {name}{where} | {value * 1e6:.0f} | {value / r['bare_cpu']:.3%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30, help="steps per block")
    parser.add_argument("--repeats", type=int, default=3, help="bare/guarded block pairs")
    parser.add_argument("--no-write", action="store_true", help="print, do not write RESULTS.md")
    parser.add_argument("--sizes", default="tiny,realistic,medium,large")
    parser.add_argument("--worlds", default="1,2")
    parser.add_argument("--sync", action="store_true", help="verify updates on the training thread")
    args = parser.parse_args(argv)
    if args.sync:
        CONFIG["verify_async"] = False
    results = []
    for size in args.sizes.split(","):
        for world in (int(w) for w in args.worlds.split(",")):
            start = time.time()
            # The large model's steps take ~1 s: a third of the steps keeps the run short.
            steps = max(10, args.steps // 3) if size == "large" else args.steps
            if world == 1:
                r = measure(size, steps, args.repeats)
            else:
                r = measure_ranks(size, steps, args.repeats, world)
            results.append(r)
            print(_row(r), f"({time.time() - start:.0f} s)", flush=True)
    # What the defaults buy, against lighter settings (same job, one rank).
    for overrides in ({"verify_async": True}, {"verify_fraction": 0.1}, {"k": 256}):
        r = measure("realistic", args.steps, args.repeats, overrides=overrides)
        results.append(r)
        print(_row(r), flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    body = "\n".join(
        [
            "## guard: runtime guard overhead (`Guard(model, optimizer, scheduler=...)`) vs none",
            "",
            f"`python benchmarks/bench_guard.py --steps {args.steps} --repeats {args.repeats}` on "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs shared with "
            f"other work (load average {load:.1f} at the end: read medians and ratios, not "
            "absolute times), torch "
            f"{__import__('torch').__version__}, one intra-op thread per rank. Each row trains "
            "one job alternately without and with the guard at its default settings (k = 1024 "
            "coordinates verified every step, every check on, telemetry written), in blocks, "
            "and reports median step times, wall and CPU (of the training thread). The guard's "
            "own cost is the CPU time the training thread spent inside the guard's hooks "
            "(the update check, most of it: reading the sampled values and recomputing them, "
            "in caches the step has just flushed), which the noise of a shared machine does "
            "not blur; the verification thread's CPU (with verify_async) is listed with the "
            "checks. The full digest of the weights (BLAKE3 of every byte, after a step and "
            "before the next, every 100 steps) falls outside the blocks: it is timed apart and "
            "its amortized cost added to the guard's own CPU (the `weights` check). Attach (a "
            "one-time cost, plus a first code-integrity pass of about 2 s of CPU in the "
            "watchdog thread, paced over about ten times as much wall time) is excluded from "
            "the step times.",
            "",
            "| model | guard settings | ranks | wall step, no guard (ms) | wall step, guard (ms) "
            "| wall overhead "
            "| CPU step, no guard (ms) | CPU step, guard (ms) | CPU overhead "
            "| guard's own CPU per step (ms) | guard's own CPU / step | attach (ms) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            *(_row(r) for r in results),
            "",
            *(
                x
                for r in results
                if r["world"] == 1 and r["settings"] == "defaults"
                for x in (_checks(r), "")
            ),
            *(x for r in results if r["world"] > 1 for x in (_checks(r), "")),
        ]
    )
    print(body)
    if not args.no_write:
        write_section("guard", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
