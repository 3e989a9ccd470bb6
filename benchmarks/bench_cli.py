"""CLI start-up: trainwarden commands vs the bare interpreter, picklescan and an older revision.

Run: python benchmarks/bench_cli.py [--runs N] [--ab REV]
Writes the `cli` section of benchmarks/RESULTS.md. Every command runs in a fresh process,
`--runs` times, interleaved (one run of each in turn, so a burst of load hits all of them);
medians of wall-clock and CPU time (user + system of the child). With `--ab REV`, the same
trainwarden commands also run from git revision REV's source tree (put first on PYTHONPATH,
same interpreter and dependencies): the before/after of a change to start-up. picklescan is
what a user would otherwise run to scan a file; it is measured when installed in
.peers/picklescan (a virtual environment beside this checkout).
"""

from __future__ import annotations

import argparse
import os
import pickle
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import median, write_section

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / ".peers"
PY = sys.executable
# `import time: SELF | CUMULATIVE | NAME` lines of -X importtime, for our own modules.
_IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+\d+ \|\s*trainwarden\S*")


@dataclass
class Command:
    name: str
    argv: list[str]
    env: dict[str, str] | None = None
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def _run(command: Command) -> None:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        command.argv,
        env=command.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=120,
        check=False,
    )
    command.wall.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    command.cpu.append(
        after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
    )
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{command.name} failed ({proc.returncode}): {proc.stderr[-500:]!r}")


def _tree(rev: str, into: Path) -> Path:
    """The ``src`` directory of git revision ``rev``, extracted under ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "src"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def _import_profile(env: dict[str, str] | None, argv: list[str], runs: int) -> tuple[float, int]:
    """Median total self import time (ms) of trainwarden modules, and how many are imported."""
    totals, counts = [], []
    for _ in range(runs):
        proc = subprocess.run(
            [PY, "-X", "importtime", "-m", "trainwarden", *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        ours = [
            int(m.group(1))
            for m in re.finditer(
                r"import time:\s+(\d+) \|\s+\d+ \|\s*(trainwarden\S*)", proc.stderr
            )
        ]
        totals.append(sum(ours) / 1000)
        counts.append(len(ours))
    return median(totals), int(median([float(c) for c in counts]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--ab", metavar="REV", help="also run the CLI of git revision REV")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = work / "model.pkl"
        model.write_bytes(pickle.dumps({"weights": [0.0] * 16, "step": 3}, protocol=4))
        variants: list[tuple[str, dict[str, str] | None]] = [("this tree", None)]
        if args.ab:
            old = _tree(args.ab, work / "old")
            env = {**os.environ, "PYTHONPATH": str(old)}
            variants.append((args.ab, env))
        commands = [Command("python -c pass", [PY, "-c", "pass"])]
        tw_commands = [
            ("scan --help", ["scan", "--help"]),
            ("scan FILE", ["scan", "--no-progress", str(model)]),
            ("verify --help", ["verify", "--help"]),
            ("--help (every command)", ["--help"]),
        ]
        for label, argv in tw_commands:
            for variant, env in variants:
                name = f"trainwarden {label}" + (f" [{variant}]" if args.ab else "")
                commands.append(Command(name, [PY, "-m", "trainwarden", *argv], env))
        picklescan = PEERS / "picklescan" / "bin" / "picklescan"
        if picklescan.exists():
            commands.append(Command("picklescan -p FILE", [str(picklescan), "-p", str(model)]))
        for command in commands:  # warm the page cache and the bytecode caches
            _run(command)
            command.wall.clear()
            command.cpu.clear()
        load = os.getloadavg()[0]
        for _ in range(args.runs):
            for command in commands:
                _run(command)
        profiles = {
            variant: _import_profile(env, ["scan", "--help"], max(5, args.runs // 3))
            for variant, env in variants
        }

    floor = median(commands[0].cpu)
    rows = [
        "| command | wall (ms) | CPU (ms) | CPU above `python -c pass` (ms) |",
        "|---|---|---|---|",
    ]
    for c in commands:
        cpu = median(c.cpu)
        rows.append(
            f"| {c.name} | {median(c.wall) * 1000:.0f} | {cpu * 1000:.0f} | "
            f"{(cpu - floor) * 1000:.0f} |"
        )
    lines = [
        "## cli: start-up of `trainwarden` commands",
        "",
        " ".join(
            [
                f"Machine: {platform.machine()}, {os.cpu_count()} CPUs,",
                f"Python {platform.python_version()}, load average {load:.1f} at the start",
                "(a shared machine: read the differences and ratios, not the absolute times).",
                "Whole process, fresh interpreter each time, median of",
                f"{args.runs} interleaved runs; the file scanned is a 300-byte pickle.",
            ]
        ),
        "",
        *rows,
        "",
        "Imports of `python -X importtime -m trainwarden scan --help` (median self time of "
        "the trainwarden modules imported):",
        "",
        "| source | trainwarden modules imported | their import time (ms) |",
        "|---|---|---|",
        *(f"| {v} | {n} | {ms:.1f} |" for v, (ms, n) in profiles.items()),
    ]
    if args.ab:
        by_name = {c.name: c for c in commands}
        lines += ["", "Ratio of CPU time above the bare interpreter, this tree / " + args.ab + ":"]
        lines.append("")
        for label, _ in tw_commands:
            new = median(by_name[f"trainwarden {label} [this tree]"].cpu) - floor
            old = median(by_name[f"trainwarden {label} [{args.ab}]"].cpu) - floor
            lines.append(
                f"- `{label}`: {new * 1000:.0f} ms vs {old * 1000:.0f} ms: {new / old:.2f}x"
            )
    lines += [
        "",
        "`main` builds the parser of the command group being run only (`trainwarden scan`"
        " no longer imports the other command modules, the drill package, `dataclasses` and"
        " `inspect` through `trainwarden.findings`, or `secrets`/`hmac` through `_fs`); rich,"
        " cryptography and the capabilities are imported inside the handlers. `scan FILE` is"
        " then mostly the scanner's own imports. `--help` lists every command, so it imports"
        " every command module; `cli/drill.py` imports the `trainwarden.drill` package to"
        " register (about 50 ms of CPU here), the largest part of what remains.",
    ]
    write_section("cli", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
