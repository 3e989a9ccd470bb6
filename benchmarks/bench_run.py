"""Overhead of `trainwarden run` on the CPU GPT job (tinygpt) against the same job run bare.

Run: python benchmarks/bench_run.py [--repeats R] [--steps N] [--no-torchrun]
Writes the `run` section of benchmarks/RESULTS.md.

Each configuration starts the real job as a user would, in one run, interleaved (A B C A B C
...) so that a loaded machine weighs on all alike; medians are reported with ratios to bare:

- start-up and tear-down: wall time of the whole command minus the job's own training loop;
- per step: the training loop's seconds (measured by tinygpt itself) / steps;
- for the supervised runs, where the time goes: pre-flight (run.start to the decision),
  launch to the first rank's hello, and the end (the last rank's exit to the process exit).
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
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    configs = configurations(args.steps, not args.no_torchrun)
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
    for repeat in range(args.repeats):
        for i, (name, build) in enumerate(configs.items()):
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
        f"median of {args.repeats} runs per configuration, interleaved; Python "
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
    ng_step, ng_best = med(no_guard, "per_step") or 0.0, low(no_guard, "per_step") or 0.0
    base_best = low("bare python", "per_step") or 1.0
    ng_ratio = ng_step / base_step if base_step else 0.0
    ng_low = ng_best / base_best
    ng_ms = (ng_step - (base_step or 0.0)) * 1000
    bare_t, run_t = trivial(max(args.repeats, 7))
    costs = micro()
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
        f"{costs['audit_other_event']:.0f} ns for each audited event that is not network "
        "(file opens, imports). Those do not explain what the table shows: on tinygpt's "
        f"{(base_step or 0.0) * 1000:.0f} ms step, `run --no-guard` costs "
        f"{ng_ratio:.2f}x bare per step "
        f"({ng_low:.2f}x in the least disturbed runs, {ng_ms:+.1f} ms a step; "
        "the rank runs four threads of trainwarden beside the training "
        "thread: heartbeats, the channel, signal recording, stack dumps, which share the two "
        "cores with torch's two intra-op threads; not yet pinned down). The guard (on by "
        "default in every rank) adds its own few milliseconds of CPU a step whatever the "
        "model's size (the guard section below): a large share of this tiny step, about 3 % "
        "of a 110 ms one; its attach (the first optimizer step) and first code-integrity pass"
        " are in the start-up figures.",
    ]
    write_section("run", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
