"""Time of the whole drill, side by side with the bare training jobs it runs.

Run: python benchmarks/bench_drill.py [--repeats R] [--job-repeats J] [--ranks N]
Writes the `drill` section of benchmarks/RESULTS.md.

Nothing else does what the drill does, so the baseline is the drill's own irreducible work:
the same training job (tinygpt, N ranks over gloo under torchrun) launched bare in the real
environment, once per job run of the drill. The ratio says what the sandbox, the insider, the
pre-flight checks and the verifications add on top of training. Each stage of the drill is
timed from its progress events.
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

sys.path.insert(0, str(Path(__file__).parent))
from _results import median, write_section

from trainwarden.drill import DrillProgress, run_drill
from trainwarden.drill._scenarios import RUNS

GOAL_S, LIMIT_S = 120.0, 300.0


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def bare_job(ranks: int) -> tuple[float, float]:
    """One plain torchrun job of 40 steps in the real environment: (wall s, CPU s)."""
    with tempfile.TemporaryDirectory() as work:
        cpu0, t0 = _cpu(), time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc-per-node={ranks}",
                "-m",
                "trainwarden.examples.tinygpt",
                "--steps",
                "40",
                "--out",
                str(Path(work) / "r.json"),
            ],
            check=True,
            capture_output=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        return time.perf_counter() - t0, _cpu() - cpu0


def drill(ranks: int) -> tuple[float, float, dict[str, float], bool]:
    """One whole drill: (wall s, CPU s, seconds per stage, passed)."""
    stages: dict[str, float] = defaultdict(float)
    last = [time.perf_counter(), "sandbox"]

    def progress(event: DrillProgress) -> None:
        now = time.perf_counter()
        stages[str(last[1])] += now - float(last[0])
        last[0], last[1] = now, event.stage

    cpu0, t0 = _cpu(), time.perf_counter()
    result = run_drill(ranks=ranks, progress=progress)
    wall = time.perf_counter() - t0
    stages[str(last[1])] += time.perf_counter() - float(last[0])
    return wall, _cpu() - cpu0, dict(stages), result.passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1, help="whole drills (default 1)")
    parser.add_argument("--job-repeats", type=int, default=3, help="bare jobs (default 3)")
    parser.add_argument("--ranks", type=int, default=2)
    args = parser.parse_args()

    load_start = os.getloadavg()[0]
    jobs = [bare_job(args.ranks) for _ in range(args.job_repeats)]
    job_wall = median([w for w, _ in jobs])
    job_cpu = median([c for _, c in jobs])
    drills = [drill(args.ranks) for _ in range(args.repeats)]
    load_end = os.getloadavg()[0]
    wall = median([d[0] for d in drills])
    cpu = median([d[1] for d in drills])
    stages: dict[str, float] = defaultdict(float)
    for _, _, per_stage, _ in drills:
        for name, seconds in per_stage.items():
            stages[name] += seconds / len(drills)
    runs = len(RUNS)
    bare_wall, bare_cpu = runs * job_wall, runs * job_cpu

    lines = [
        "## drill: the whole `trainwarden drill` vs the bare training jobs it runs",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; load average {load_start:.1f} at start, "
        f"{load_end:.1f} at the end (the machine is shared: read the ratios). "
        f"{args.ranks} ranks; {runs} job runs per drill; drill: median of {args.repeats}, "
        f"bare job: median of {args.job_repeats}.",
        "",
        "| what | wall (s) | CPU (s) | wall vs bare jobs | CPU vs bare jobs |",
        "|---|---:|---:|---:|---:|",
        f"| one bare job (torchrun, 40 steps, real environment) | {job_wall:.1f} | "
        f"{job_cpu:.1f} | | |",
        f"| {runs} bare jobs (the drill's irreducible work) | {bare_wall:.1f} | "
        f"{bare_cpu:.1f} | 1.00x | 1.00x |",
        f"| **the whole drill** | **{wall:.1f}** | {cpu:.1f} | {wall / bare_wall:.2f}x | "
        f"{cpu / bare_cpu:.2f}x |",
        "",
        f"Goal {GOAL_S:.0f} s, limit {LIMIT_S:.0f} s on 2 cores: "
        f"**{'within the goal' if wall <= GOAL_S else 'over the goal'}**, "
        f"{'within' if wall <= LIMIT_S else 'OVER'} the limit. Passed: "
        f"{', '.join(str(d[3]) for d in drills)} (exit 0 needs the guard and the supervisor "
        "wired in; see docs/drill.md).",
        "",
        "CPU seconds are the steadier measure on a shared machine: wall time follows the load "
        "of the neighbours, and the drill's jobs and the bare jobs ran minutes apart. With two "
        f"idle cores the drill cannot take less than {cpu / 2:.0f} s (its CPU time over two "
        "cores); torch's import in each process is single-threaded, so it takes more.",
        "",
        "Where the drill's time goes (wall seconds, from its progress events):",
        "",
        "| stage | seconds | share |",
        "|---|---:|---:|",
    ]
    total = sum(stages.values()) or 1.0
    for name, seconds in sorted(stages.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {seconds:.1f} | {100 * seconds / total:.0f}% |")
    lines += [
        "",
        "`job` is the training jobs (three processes each importing torch: the launcher and two "
        "ranks; T6's jobs are killed at step 10, T1's is refused at load); `preflight` is "
        "`env verify` of the sandbox against its signed lock (hashing the 0.75 GB torch "
        "through the mirror) and the scan; `attack` the insider's processes; `check` signing, "
        "sealing and verifying checkpoints and ledgers; `sandbox` the venv, the mirror of "
        "~15,000 links (in /dev/shm) and the signed lock.",
    ]
    write_section("drill", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
