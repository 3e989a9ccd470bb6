"""Time of the whole drill, side by side with the bare training jobs it runs.

Run: python benchmarks/bench_drill.py [--repeats R] [--job-repeats J] [--ranks N]
Writes the `drill` section of benchmarks/RESULTS.md.

Nothing else does what the drill does, so the baseline is the drill's own irreducible work:
the same training job (tinygpt, N ranks over gloo under torchrun, the drill's settings)
launched bare in the real environment, once per job run of the drill; and the same job under
`trainwarden run` with the guard in warn mode, as the drill launches it (what every job of a
team using trainwarden pays). The ratios say what the sandbox, the insider and the
verifications add on top. Each stage and each run of the drill is timed from its progress
events.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _results import median, write_section

from trainwarden.drill import DrillProgress, run_drill
from trainwarden.drill._scenarios import RUNS, SCENARIOS

GOAL_S, LIMIT_S = 120.0, 300.0


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _job_command(ranks: int, work: Path) -> list[str]:
    """The drill's job (see trainwarden.drill._job), in the real environment."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--master-addr=127.0.0.1",
        f"--master-port={port}",
        f"--nproc-per-node={ranks}",
        "--max-restarts=0",
        "-m",
        "trainwarden.examples.tinygpt",
        "--steps",
        "40",
        "--out",
        str(work / "r.json"),
        "--ckpt-dir",
        str(work / "ckpt"),
        "--samples",
        str(80 * ranks),
        "--batch",
        "8",
        "--ckpt-every",
        "10",
    ]


def bare_job(ranks: int, *, supervised: bool = False) -> tuple[float, float]:
    """One job of 40 steps in the real environment: (wall s, CPU s).

    ``supervised``: under ``trainwarden run`` as the drill launches it (fast env check, the
    guard in warn mode in every rank, checkpoints signed as written, an ephemeral key).
    """
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cmd = _job_command(ranks, work)
        if supervised:
            cmd = [
                *(sys.executable, "-m", "trainwarden", "run", "--run-dir", str(work / "run")),
                *("--env-check", "fast", "--on-violation", "warn", "--settle", "0.5"),
                *("--orphan-grace", "2", "--no-progress", "--"),
                *cmd,
            ]
        cpu0, t0 = _cpu(), time.perf_counter()
        subprocess.run(
            cmd,
            check=True,
            capture_output=True,
            cwd=work,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        return time.perf_counter() - t0, _cpu() - cpu0


def drill(ranks: int) -> tuple[float, float, dict[str, float], dict[str, float], bool]:
    """One whole drill: (wall s, CPU s, seconds per stage, seconds per run, passed)."""
    stages: dict[str, float] = defaultdict(float)
    runs: dict[str, float] = defaultdict(float)
    last: list[Any] = [time.perf_counter(), "sandbox", "(sandbox)"]

    def progress(event: DrillProgress) -> None:
        now = time.perf_counter()
        stages[str(last[1])] += now - float(last[0])
        runs[str(last[2])] += now - float(last[0])
        last[0], last[1] = now, event.stage
        last[2] = event.run or ("(report)" if event.stage == "report" else "(sandbox)")

    cpu0, t0 = _cpu(), time.perf_counter()
    result = run_drill(ranks=ranks, progress=progress)
    wall = time.perf_counter() - t0
    stages[str(last[1])] += time.perf_counter() - float(last[0])
    runs[str(last[2])] += time.perf_counter() - float(last[0])
    return wall, _cpu() - cpu0, dict(stages), dict(runs), result.passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1, help="whole drills (default 1)")
    parser.add_argument("--job-repeats", type=int, default=3, help="jobs of each kind (default 3)")
    parser.add_argument("--ranks", type=int, default=2)
    args = parser.parse_args()

    load_start = os.getloadavg()[0]
    # Interleaved, so that a change of load hits both kinds alike.
    bare, supervised = [], []
    for _ in range(args.job_repeats):
        bare.append(bare_job(args.ranks))
        supervised.append(bare_job(args.ranks, supervised=True))
    job_wall, job_cpu = median([w for w, _ in bare]), median([c for _, c in bare])
    run_wall, run_cpu = median([w for w, _ in supervised]), median([c for _, c in supervised])
    drills = [drill(args.ranks) for _ in range(args.repeats)]
    load_end = os.getloadavg()[0]
    wall = median([d[0] for d in drills])
    cpu = median([d[1] for d in drills])
    stages: dict[str, float] = defaultdict(float)
    per_run: dict[str, float] = defaultdict(float)
    for _, _, per_stage, runs_seconds, _ in drills:
        for name, seconds in per_stage.items():
            stages[name] += seconds / len(drills)
        for name, seconds in runs_seconds.items():
            per_run[name] += seconds / len(drills)
    runs = len(RUNS)
    bare_wall, bare_cpu = runs * job_wall, runs * job_cpu

    lines = [
        "## drill: the whole `trainwarden drill` vs the bare training jobs it runs",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; load average {load_start:.1f} at start, "
        f"{load_end:.1f} at the end (the machine is shared with other work: read the ratios, "
        f"and the CPU seconds). {args.ranks} ranks; {runs} job runs per drill; drill: median "
        f"of {args.repeats}, jobs: median of {args.job_repeats} each, interleaved.",
        "",
        "| what | wall (s) | CPU (s) | wall vs bare jobs | CPU vs bare jobs |",
        "|---|---:|---:|---:|---:|",
        f"| one bare job (torchrun, 40 steps, real environment) | {job_wall:.1f} | "
        f"{job_cpu:.1f} | | |",
        f"| one job under `trainwarden run` (guard in warn mode, as the drill runs it) | "
        f"{run_wall:.1f} | {run_cpu:.1f} | {run_wall / job_wall:.2f}x of one | "
        f"{run_cpu / job_cpu:.2f}x of one |",
        f"| {runs} bare jobs (the drill's irreducible work) | {bare_wall:.1f} | "
        f"{bare_cpu:.1f} | 1.00x | 1.00x |",
        f"| {runs} jobs under `trainwarden run` | {runs * run_wall:.1f} | {runs * run_cpu:.1f} | "
        f"{run_wall / job_wall:.2f}x | {run_cpu / job_cpu:.2f}x |",
        f"| **the whole drill** | **{wall:.1f}** | {cpu:.1f} | {wall / bare_wall:.2f}x | "
        f"{cpu / bare_cpu:.2f}x |",
        "",
        f"Goal {GOAL_S:.0f} s, limit {LIMIT_S:.0f} s on 2 cores: "
        f"**{'within the goal' if wall <= GOAL_S else 'over the goal'}**, "
        f"{'within' if wall <= LIMIT_S else 'OVER'} the limit. Passed (every attack detected, "
        f"control clean): {', '.join(str(d[4]) for d in drills)}.",
        "",
        "CPU seconds are the steadier measure on a shared machine: wall time follows the load "
        "of the neighbours. With two idle cores the drill cannot take less than "
        f"{cpu / 2:.0f} s (its CPU time over two cores); torch's import in each process is "
        "single-threaded, so it takes more.",
        "",
        "Where the drill's time goes (wall seconds, from its progress events), by run and by "
        "stage:",
        "",
        "| run | scenarios | seconds |",
        "|---|---|---:|",
    ]
    members = {name: [s.id for s in SCENARIOS if s.run == name] for name in RUNS}
    for name, seconds in sorted(per_run.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {', '.join(members.get(name, [])) or '-'} | {seconds:.1f} |")
    lines += ["", "| stage | seconds | share |", "|---|---:|---:|"]
    total = sum(stages.values()) or 1.0
    for name, seconds in sorted(stages.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {seconds:.1f} | {100 * seconds / total:.0f}% |")
    lines += [
        "",
        "`job` is each job under `trainwarden run`: the supervisor's pre-flight (`env verify` "
        "of the sandbox against the signed lock, without recompiling pycs; the access audit; "
        "the scan of T1's checkpoint), then five processes (torchrun's agent, a shim and a "
        "rank per rank; the agent and the ranks import torch) with the guard in every rank, "
        "and the signing of checkpoints as they are written. T6's jobs are killed at step 10. "
        "`attack` is the insider's processes; `check` sealing and verifying checkpoints and "
        "ledgers as an operator would; `sandbox` the venv, the mirror of ~15,000 links (in "
        "/dev/shm) and the signed lock.",
    ]
    write_section("drill", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
