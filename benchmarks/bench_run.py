"""Overhead of `trainwarden run` on the CPU GPT job (tinygpt) against the same job run bare.

Run: python benchmarks/bench_run.py [--repeats R] [--steps N] [--no-torchrun]
Writes the `run` section of benchmarks/RESULTS.md.

Each configuration starts the real job as a user would, in one run, interleaved (A B C A B C
...) so that a loaded machine weighs on all alike; medians are reported with ratios to bare:

- start-up and tear-down: wall time of the whole command minus the job's own training loop;
- per step: the training loop's seconds (measured by tinygpt itself) / steps;
- for the supervised runs, where the time goes: pre-flight (run.start to the decision),
  launch to the first rank's hello, and the end (the last rank's exit to the process exit);
- the per-step cost of the rank's runtime without the guard, side by side: tinygpt's step
  run bare and under `run --no-guard` at the same time (the same machine conditions for
  both), timed per step in wall time and in CPU time of the training thread, with what
  trainwarden's own threads in the rank used meanwhile.

The order of the configurations is reversed every other repeat, so that none always follows
the same neighbour (a loaded machine drifts: sequential runs of 10 ms steps differ by tens of
percent from one minute to the next).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _results import median, write_section

from trainwarden.ledger import read_ledger

PY = sys.executable
BIN = Path(PY).parent
WORK = Path(__file__).parent / "_work" / "run"
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def _job(steps: int, out: Path) -> list[str]:
    return ["-m", "trainwarden.examples.tinygpt", "--steps", str(steps), "--out", str(out)]


# tinygpt's training step, timed per step after a warm-up: wall time and CPU time of the
# training thread (which a loaded machine does not inflate by making it wait), and the CPU
# time and wake-ups (context switches) of trainwarden's threads in this process meanwhile.
STEP_TIMER = """
import json, os, sys, threading, time
import torch
from trainwarden.examples.tinygpt import Config, build, make_dataset
steps, warm, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
torch.set_num_threads(1)
torch.manual_seed(0)
cfg = Config(steps=steps)
model, optimizer, scheduler = build(cfg)
loader = torch.utils.data.DataLoader(make_dataset(cfg), batch_size=cfg.batch, shuffle=True)
def ours():
    names = {t.native_id: t.name for t in threading.enumerate()}
    cpu = wakeups = 0
    for tid in os.listdir("/proc/self/task"):
        if not names.get(int(tid), "").startswith("trainwarden-"):
            continue
        with open(f"/proc/self/task/{tid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        with open(f"/proc/self/task/{tid}/status") as fh:
            wakeups += sum(int(line.split()[1]) for line in fh if "ctxt_switches" in line)
        cpu += int(fields[11]) + int(fields[12])
    return cpu / os.sysconf("SC_CLK_TCK"), wakeups
wall, cpu, step = [], [], 0
while step < steps:
    for inputs, targets in loader:
        if step == warm:
            start, before = time.monotonic(), ours()
        if step >= steps:
            break
        w, c = time.perf_counter(), time.thread_time()
        logits = model(inputs)
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, cfg.vocab), targets.reshape(-1)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        optimizer.step()
        scheduler.step()
        float(loss.detach())
        wall.append(time.perf_counter() - w)
        cpu.append(time.thread_time() - c)
        step += 1
after, seconds = ours(), time.monotonic() - start
with open(out, "w") as fh:
    json.dump({"wall": wall[warm:], "cpu": cpu[warm:], "seconds": seconds,
               "ours_cpu": after[0] - before[0], "ours_wakeups": after[1] - before[1]}, fh)
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def configurations(steps: int, torchrun: bool) -> dict[str, Any]:
    tw = [PY, "-m", "trainwarden", "run", "--no-progress"]

    def bare(out: Path, rd: Path) -> list[str]:
        return [PY, *_job(steps, out)]

    def run_min(out: Path, rd: Path) -> list[str]:
        return [
            *tw,
            "--env-check",
            "off",
            "--no-access-audit",
            "--run-dir",
            str(rd),
            "--",
            PY,
            *_job(steps, out),
        ]

    def run_no_guard(out: Path, rd: Path) -> list[str]:
        command = run_min(out, rd)
        return [*command[:5], "--no-guard", *command[5:]]

    def run_default(out: Path, rd: Path) -> list[str]:
        return [*tw, "--run-dir", str(rd), "--", PY, *_job(steps, out)]

    configs: dict[str, Any] = {
        "bare python": bare,
        "run --no-guard (no env check, no access audit)": run_no_guard,
        "run (no env check, no access audit)": run_min,
        "run (defaults: env fast + access audit)": run_default,
    }
    if torchrun:

        def tr(out: Path) -> list[str]:
            return [
                str(BIN / "torchrun"),
                "--nproc-per-node",
                "2",
                "--master-port",
                str(_port()),
                *_job(steps, out),
            ]

        configs["bare torchrun x2"] = lambda out, rd: tr(out)
        configs["run torchrun x2 (no env check, no access audit)"] = lambda out, rd: [
            *tw,
            "--env-check",
            "off",
            "--no-access-audit",
            "--run-dir",
            str(rd),
            "--",
            *tr(out),
        ]
    return configs


def _ts(text: str) -> float:
    return (
        datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
        .replace(tzinfo=datetime.timezone.utc)
        .timestamp()
    )


def measure(command: list[str], out: Path, rd: Path) -> dict[str, float]:
    shutil.rmtree(rd, ignore_errors=True)
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    wall_start = time.time()
    proc = subprocess.run(command, env=ENV, cwd=WORK, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    end = time.time()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(out.read_text())
    loop = float(result["seconds"])
    row = {
        "wall": wall,
        "loop": loop,
        "per_step": loop / int(result["steps"]),
        "overhead": wall - loop,
    }
    if (rd / "ledger").exists():
        entries = read_ledger(rd / "ledger")
        first = {e.event: _ts(e.time) for e in reversed(entries)}
        last = {e.event: _ts(e.time) for e in entries}
        if "run.start" in first and "preflight.decision" in first:
            row["preflight"] = first["preflight.decision"] - first["run.start"]
        if "rank.start" in first:
            row["to_first_rank"] = first["rank.start"] - first["preflight.decision"]
        if "rank.exit" in last:
            row["end"] = end - last["rank.exit"]
        row["before_ledger"] = first.get("run.start", wall_start) - wall_start
    return row


def side_by_side(pairs: int, steps: int, warm: int = 20) -> dict[str, list[float]]:
    """Per-step medians of tinygpt's step, bare and under `run --no-guard`, run together.

    Both jobs run at the same time, so whatever else the machine does weighs on both alike;
    which one starts first alternates. Returns, for each pair, the ratios (supervised /
    bare) of the median wall and training-thread CPU per step, the bare medians, and what
    trainwarden's own threads in the supervised rank used (CPU seconds and wake-ups, per
    second of training).
    """
    rows: dict[str, list[float]] = {
        k: [] for k in ("wall_ratio", "cpu_ratio", "bare_wall", "bare_cpu", "ours_cpu", "ours_wake")
    }
    for pair in range(pairs):
        outs = {"bare": WORK / "steps-bare.json", "run": WORK / "steps-run.json"}
        rd = WORK / "rd-steps"
        shutil.rmtree(rd, ignore_errors=True)
        timer = ["-c", STEP_TIMER, str(steps), str(warm)]
        commands = {
            "bare": [PY, *timer, str(outs["bare"])],
            "run": [
                *[PY, "-m", "trainwarden", "run", "--no-progress", "--no-guard"],
                *["--env-check", "off", "--no-access-audit", "--run-dir", str(rd), "--"],
                *[PY, *timer, str(outs["run"])],
            ],
        }
        order = ["bare", "run"] if pair % 2 == 0 else ["run", "bare"]
        errors = {n: WORK / f"steps-{n}.err" for n in order}
        procs = []
        for n in order:
            with errors[n].open("w") as err:
                procs.append(
                    subprocess.Popen(
                        commands[n], env=ENV, cwd=WORK, stdout=subprocess.DEVNULL, stderr=err
                    )
                )
        for n, proc in zip(order, procs, strict=True):
            if proc.wait() != 0:
                raise SystemExit(f"the side-by-side step run ({n}) failed: see {errors[n]}")
        got = {n: json.loads(path.read_text()) for n, path in outs.items()}
        wall = {n: median(got[n]["wall"]) for n in got}
        cpu = {n: median(got[n]["cpu"]) for n in got}
        rows["wall_ratio"].append(wall["run"] / wall["bare"])
        rows["cpu_ratio"].append(cpu["run"] / cpu["bare"])
        rows["bare_wall"].append(wall["bare"])
        rows["bare_cpu"].append(cpu["bare"])
        rows["ours_cpu"].append(got["run"]["ours_cpu"] / got["run"]["seconds"])
        rows["ours_wake"].append(got["run"]["ours_wakeups"] / got["run"]["seconds"])
        print(
            f"[side by side {pair + 1}/{pairs}] wall x{rows['wall_ratio'][-1]:.3f}, "
            f"training-thread CPU x{rows['cpu_ratio'][-1]:.3f}",
            file=sys.stderr,
        )
    return rows


AUDIT_COUNTER = """
import collections, json, sys
import torch
from trainwarden.examples.tinygpt import Config, build, make_dataset
torch.set_num_threads(1)
cfg = Config()
model, optimizer, scheduler = build(cfg)
loader = torch.utils.data.DataLoader(make_dataset(cfg), batch_size=cfg.batch)
counting = [False]
counts = collections.Counter()
def hook(event, args):
    if counting[0]:
        counts[event] += 1
sys.addaudithook(hook)
steps = int(sys.argv[1])
for i, (inputs, targets) in enumerate(loader):
    if i == 5:
        counting[0] = True
    if i == 5 + steps:
        break
    loss = torch.nn.functional.cross_entropy(
        model(inputs).reshape(-1, cfg.vocab), targets.reshape(-1)
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
    optimizer.step()
    scheduler.step()
print(json.dumps(counts))
"""


def audited_events(steps: int) -> tuple[float, list[str]]:
    """Audited events (PEP 578) a warm tinygpt step raises, and which: what the egress hook
    sees on every step."""
    proc = subprocess.run(
        [PY, "-c", AUDIT_COUNTER, str(steps)],
        env=ENV,
        cwd=WORK,
        capture_output=True,
        text=True,
        check=True,
    )
    counts: dict[str, int] = json.loads(proc.stdout.strip().splitlines()[-1])
    return sum(counts.values()) / steps, sorted(counts)


def trivial(repeats: int) -> tuple[float, float]:
    """Median wall time of `python -c pass`, bare and under `trainwarden run` (fixed cost)."""
    bare_times, run_times = [], []
    rd = WORK / "rd-trivial"
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([PY, "-c", "pass"], env=ENV, cwd=WORK, check=True)
        bare_times.append(time.perf_counter() - start)
        shutil.rmtree(rd, ignore_errors=True)
        start = time.perf_counter()
        subprocess.run(
            [
                PY,
                "-m",
                "trainwarden",
                "run",
                "--no-progress",
                "--env-check",
                "off",
                "--no-access-audit",
                "--run-dir",
                str(rd),
                "--",
                PY,
                "-c",
                "pass",
            ],
            env=ENV,
            cwd=WORK,
            check=True,
            capture_output=True,
        )
        run_times.append(time.perf_counter() - start)
    return median(bare_times), median(run_times)


def micro() -> dict[str, float]:
    """Nanoseconds per call of what runs on a rank's hot paths (in this process)."""
    from trainwarden.supervise._egress import EgressRecorder
    from trainwarden.supervise._rank import RankRuntime

    runtime = RankRuntime("rank")
    runtime._beating = True  # no thread: measure the optimizer hook's own work
    n = 1_000_000
    start = time.perf_counter()
    for i in range(n):
        runtime.heartbeat(i)
    beat = (time.perf_counter() - start) / n * 1e9
    recorder = EgressRecorder(lambda event, data: None)
    hook = recorder._hook
    args = ("/tmp/x", "r", 0)
    start = time.perf_counter()
    for _ in range(n):
        hook("open", args)
    other = (time.perf_counter() - start) / n * 1e9
    return {"heartbeat": beat, "audit_other_event": other}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--no-torchrun", action="store_true")
    parser.add_argument(
        "--pairs", type=int, default=7, help="side-by-side runs for the per-step cost"
    )
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    configs = configurations(args.steps, not args.no_torchrun)
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
    for repeat in range(args.repeats):
        order = list(enumerate(configs.items()))
        for i, (name, build) in order if repeat % 2 == 0 else reversed(order):
            out, rd = WORK / f"result-{i}.json", WORK / f"rd-{i}"
            rows[name].append(measure(build(out, rd), out, rd))
            print(
                f"[{repeat + 1}/{args.repeats}] {name}: wall {rows[name][-1]['wall']:.2f} s",
                file=sys.stderr,
            )

    def med(name: str, key: str) -> float | None:
        values = [r[key] for r in rows[name] if key in r]
        return median(values) if values else None

    def low(name: str, key: str) -> float | None:
        # The least disturbed run: on a shared, loaded machine the minimum of a CPU-bound
        # measurement is closer to its cost than the median.
        values = [r[key] for r in rows[name] if key in r]
        return min(values) if values else None

    def fmt(value: float | None, unit: str = "s", digits: int = 2) -> str:
        return "-" if value is None else f"{value:.{digits}f} {unit}"

    lines = [
        "## run: `trainwarden run` vs the same job launched bare",
        "",
        f"tinygpt (`python -m trainwarden.examples.tinygpt --steps {args.steps}`), CPU, "
        f"median of {args.repeats} runs per configuration, interleaved (the order reversed "
        "every other round); Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs shared with other work (a noisy "
        "machine: read the ratios, not the absolute times). `overhead` is the wall time of "
        "the whole command minus the job's own training loop (start-up, imports, tear-down); "
        "`fastest step avg` is the training loop of the least disturbed run / steps.",
        "",
        "| configuration | wall | overhead | ratio | per step | ratio | fastest step avg | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base_over, base_step = med("bare python", "overhead"), med("bare python", "per_step")
    tr_over, tr_step = (
        med("bare torchrun x2", "overhead") if "bare torchrun x2" in rows else (None),
        med("bare torchrun x2", "per_step") if "bare torchrun x2" in rows else None,
    )
    for name in configs:
        ref_over, ref_step = (tr_over, tr_step) if "torchrun" in name else (base_over, base_step)
        over, step = med(name, "overhead"), med(name, "per_step")
        best = low(name, "per_step")
        ref_best = low("bare torchrun x2" if "torchrun" in name else "bare python", "per_step")
        lines.append(
            f"| {name} | {fmt(med(name, 'wall'))} | {fmt(over)} | "
            f"{(over / ref_over) if over and ref_over else 0:.2f}x | "
            f"{fmt(step and step * 1000, 'ms', 2)} | "
            f"{(step / ref_step) if step and ref_step else 0:.3f}x | "
            f"{fmt(best and best * 1000, 'ms', 2)} | "
            f"{(best / ref_best) if best and ref_best else 0:.3f}x |"
        )
    lines += [
        "",
        "Where the supervised runs spend their extra time (medians):",
        "",
        "| configuration | before the ledger (interpreter query, key, dirs) | pre-flight | "
        "decision to first rank | last rank's exit to the end (sign, seal, provenance) |",
        "|---|---|---|---|---|",
    ]
    for name in configs:
        if med(name, "preflight") is None:
            continue
        lines.append(
            f"| {name} | {fmt(med(name, 'before_ledger'))} | {fmt(med(name, 'preflight'))} | "
            f"{fmt(med(name, 'to_first_rank'))} | {fmt(med(name, 'end'))} |"
        )
    no_guard = "run --no-guard (no env check, no access audit)"
    ng_step = med(no_guard, "per_step") or 0.0
    ng_ratio = ng_step / base_step if base_step else 0.0
    bare_t, run_t = trivial(max(args.repeats, 7))
    costs = micro()
    events, kinds = audited_events(steps=50)
    pairs = side_by_side(args.pairs, steps=400)
    cpu_ratio, wall_ratio = median(pairs["cpu_ratio"]), median(pairs["wall_ratio"])
    lines += [
        "",
        "Fixed cost on a trivial job (`python -c pass`, median of "
        f"{max(args.repeats, 7)}): bare {bare_t:.2f} s, under `trainwarden run` (no env check, "
        f"no access audit) {run_t:.2f} s: **+{run_t - bare_t:.2f} s** "
        "(interpreter query, key, run directory and ledger, channel, the rank's bootstrap with "
        "its ephemeral key, signing and the provenance at the end).",
        "",
        "Per step, on the rank's hot paths (this process, 1,000,000 calls): the optimizer "
        f"hook's heartbeat {costs['heartbeat']:.0f} ns a step; the egress audit hook "
        f"{costs['audit_other_event']:.0f} ns for each audited event that is not network, and "
        f"a warm tinygpt step raises {events:.0f} audited events "
        f"({', '.join(f'`{k}`' for k in kinds) or 'none'}): "
        f"{events * costs['audit_other_event'] / 1000:.1f} µs a step.",
        "",
        f"**`run --no-guard` per step, side by side** ({args.pairs} pairs: tinygpt's step bare "
        "and under `run --no-guard` at the same time, 400 steps each, medians after 20 "
        "warm-up steps, median of the pairs' ratios): the training thread's CPU per step "
        f"**{cpu_ratio:.3f}x** bare (pairs {min(pairs['cpu_ratio']):.3f}x to "
        f"{max(pairs['cpu_ratio']):.3f}x; bare {median(pairs['bare_cpu']) * 1000:.2f} ms), "
        f"wall per step {wall_ratio:.3f}x (bare {median(pairs['bare_wall']) * 1000:.2f} ms). "
        "trainwarden's own threads in the rank (channel sender and reader, heartbeats, signal "
        f"recording, egress flusher) used {median(pairs['ours_cpu']) * 100:.2f} % of a core "
        f"and woke {median(pairs['ours_wake']):.1f} times a second, together: heartbeats go "
        "out twice a second, every other thread sleeps in a blocking call. The rank's "
        "environment differs from bare only by `TRAINWARDEN_*` and `PYTHONPATH` (no thread "
        "count, affinity, nice or scheduling change; tinygpt sets one intra-op thread itself); "
        "its blocked signals are never delivered during training. So the rank's runtime has "
        "no per-step cost this machine can measure. The sequential table above "
        f"(`run --no-guard` {ng_ratio:.2f}x bare per step here; 1.15x, +1.4 ms a step, in an "
        "earlier run of 3) compares runs made minutes apart on a shared machine, whose load "
        "moves a 10 ms CPU step by tens of percent: read its per-step columns for the guard, "
        "whose cost is far larger. The guard (on by default in every rank) adds its own few "
        "milliseconds of CPU a step whatever the model's size (the guard section below): a "
        "large share of this tiny step, about 3 % of a 110 ms one; its attach (the first "
        "optimizer step) and first code-integrity pass are in the start-up figures.",
    ]
    write_section("run", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
