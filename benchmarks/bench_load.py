"""Benchmark trainwarden.load against torch.load, side by side in one run.

Cases: one ~2 GB checkpoint, and many small ones. Loaders: torch.load(weights_only=False),
torch.load(weights_only=True), trainwarden.load; plus mmap=True for both with the memory the
process gained (RSS) after loading and after reading every tensor once. Conversion:
``trainwarden.load.convert`` (scan, policy load, safetensors, atomic synced write) against the
usual recipe ``safetensors.torch.save_file(torch.load(p, weights_only=True), out)``.

Each measurement runs in a fresh interpreter (torch imported before the clock starts), so no
run benefits from another's warm heap; the files are in the page cache for all of them.

    python benchmarks/bench_load.py [--big-gb 2] [--small 200] [--repeat 5] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import median, write_section

WORK = Path(__file__).resolve().parent / "_work" / "load"
WARMUP = WORK / "warmup.pt"

LOADERS = {
    "torch.load(weights_only=False)": "torch.load(p, weights_only=False{mm})",
    "torch.load(weights_only=True)": "torch.load(p, weights_only=True{mm})",
    "trainwarden.load": "trainwarden.load(p{mm})",
}

CHILD = r"""
import json, os, sys, time
import torch, trainwarden, trainwarden.scan  # imported before the clock starts
paths = json.loads(sys.argv[1]); mmap = sys.argv[2] == "1"; touch = sys.argv[3] == "1"
warmup = sys.argv[4]

def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0

def load(p):
    return {expr}

# One load of a tiny checkpoint first: lazy imports (torch's and the scanner's) are a
# one-time cost per process, measured separately, not part of every load.
t0 = time.perf_counter()
load(warmup)
first = time.perf_counter() - t0
before = rss()
t0 = time.perf_counter()
objs = [load(p) for p in paths]
seconds = time.perf_counter() - t0
after_load = rss()
total = 0.0
if touch:
    for obj in objs:
        for t in obj.values():
            total += float(t.float().sum())
print(json.dumps({{"seconds": seconds, "first": first, "rss_load": after_load - before,
                  "rss_touch": rss() - before, "check": total}}))
"""


CONVERTERS = {
    "save_file(torch.load(weights_only=True))": (
        "import safetensors.torch\n"
        "safetensors.torch.save_file(torch.load(src, weights_only=True), dst)"
    ),
    "trainwarden convert": "trainwarden.load.convert(src, dst)",
}

CONVERT_CHILD = r"""
import os, sys, time
import torch, trainwarden, trainwarden.load, trainwarden.scan, safetensors.torch
src, dst = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
{code}
seconds = time.perf_counter() - t0
os.unlink(dst)
print(seconds)
"""


def bench_convert(src: Path, repeat: int) -> dict[str, dict[str, float]]:
    """Whole conversions in fresh interpreters (torch imported before the clock starts)."""
    dst = WORK / "converted.safetensors"
    times: dict[str, list[float]] = {name: [] for name in CONVERTERS}
    for r in range(repeat):
        names = list(CONVERTERS) if r % 2 == 0 else list(reversed(CONVERTERS))
        for name in names:
            code = CONVERT_CHILD.format(code=CONVERTERS[name])
            proc = subprocess.run(
                [sys.executable, "-c", code, str(src), str(dst)],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr)
            times[name].append(float(proc.stdout.strip().splitlines()[-1]))
    return {n: {"median": median(t), "min": min(t)} for n, t in times.items()}


def make_big(path: Path, gigabytes: float) -> None:
    import torch

    n = 64
    numel = int(gigabytes * 1e9 / 4 / n)
    torch.manual_seed(0)
    state = {f"layer{i}.weight": torch.randn(numel) for i in range(n)}
    torch.save(state, path)


def make_small(directory: Path, count: int) -> list[Path]:
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    torch.manual_seed(0)
    for i in range(count):
        path = directory / f"small-{i:04d}.pt"
        if not path.exists():
            state = {f"block{j}.{k}": torch.randn(64, 16) for j in range(8) for k in ("w", "b")}
            torch.save(state, path)
        paths.append(path)
    return paths


def warm(paths: list[Path]) -> None:
    for path in paths:
        with path.open("rb") as f:
            while f.read(1 << 24):
                pass


# --baseline SRC adds "trainwarden.load (<label>)": the same loader from another source tree
# (PYTHONPATH puts it before the installed one), measured in the same run.
BASELINE: dict[str, str] = {}


def run(
    expr: str, paths: list[Path], *, mmap: bool, touch: bool = False, name: str = ""
) -> dict[str, float]:
    code = CHILD.format(expr=expr.format(mm=", mmap=True" if mmap else ""))
    argv = [json.dumps([str(p) for p in paths]), str(int(mmap)), str(int(touch)), str(WARMUP)]
    env = dict(os.environ)
    if name in BASELINE:
        env["PYTHONPATH"] = BASELINE[name]
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def bench(paths: list[Path], repeat: int, *, mmap: bool) -> dict[str, dict[str, float]]:
    times: dict[str, list[float]] = {name: [] for name in LOADERS}
    firsts: dict[str, list[float]] = {name: [] for name in LOADERS}
    rss: dict[str, list[tuple[float, float]]] = {name: [] for name in LOADERS}
    for r in range(repeat):
        # Alternate the order so drift on a shared machine hits every loader alike.
        names = list(LOADERS) if r % 2 == 0 else list(reversed(LOADERS))
        for name in names:
            out = run(LOADERS[name], paths, mmap=mmap, touch=mmap and r == 0, name=name)
            times[name].append(out["seconds"])
            firsts[name].append(out["first"])
            if mmap and r == 0:
                rss[name].append((out["rss_load"], out["rss_touch"]))
    result = {}
    for name in LOADERS:
        row = {
            "median": median(times[name]),
            "min": min(times[name]),
            "first": median(firsts[name]),
        }
        if rss[name]:
            row["rss_load"], row["rss_touch"] = rss[name][0]
        result[name] = row
    return result


def fmt_table(title: str, rows: dict[str, dict[str, float]], *, mmap: bool) -> list[str]:
    base = rows["torch.load(weights_only=False)"]["median"]
    out = [f"**{title}**", ""]
    header = "| loader | median s | min s | vs torch.load(weights_only=False) |"
    sep = "|---|---:|---:|---:|"
    if mmap:
        header += " RSS after load | RSS after reading every tensor |"
        sep += "---:|---:|"
    out += [header, sep]
    for name, row in rows.items():
        line = f"| {name} | {row['median']:.3f} | {row['min']:.3f} | {row['median'] / base:.2f}x |"
        if mmap:
            line += f" {row['rss_load'] / 2**20:.0f} MiB | {row['rss_touch'] / 2**20:.0f} MiB |"
        out.append(line)
    return [*out, ""]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--big-gb", type=float, default=2.0)
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--baseline", metavar="SRC", help="src dir of a version to compare with")
    parser.add_argument("--baseline-label", default="baseline")
    args = parser.parse_args()
    if args.baseline:
        name = f"trainwarden.load ({args.baseline_label})"
        LOADERS[name] = LOADERS["trainwarden.load"]
        BASELINE[name] = args.baseline
    WORK.mkdir(parents=True, exist_ok=True)
    big = WORK / f"big-{args.big_gb:g}gb.pt"
    if not big.exists():
        print(f"writing {big} ...", file=sys.stderr)
        make_big(big, args.big_gb)
    small = make_small(WORK / "small", args.small)
    if not WARMUP.exists():
        import torch

        torch.save({"w": torch.ones(4)}, WARMUP)
    warm([big, *small, WARMUP])
    started = time.time()
    results = {
        "big": bench([big], args.repeat, mmap=False),
        "big-mmap": bench([big], args.repeat, mmap=True),
        "small": bench(small, args.repeat, mmap=False),
        "convert": bench_convert(big, max(1, min(3, args.repeat))),
    }
    size_gb = big.stat().st_size / 1e9
    # Other work on the machine skews wall-clock medians; say how busy it was.
    busy = f"load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    lines = [
        "Loading torch checkpoints: `trainwarden.load` (scan + policy Unpickler over the same "
        "buffer) against `torch.load`, each run in a fresh interpreter after one warm-up load, "
        f"files in the page cache; median and best of {args.repeat} runs "
        f"(`python benchmarks/bench_load.py`, {os.cpu_count()} CPUs"
        f"{', ' + busy if busy else ''} at the end of the run).",
        "",
        *fmt_table(f"One {size_gb:.2f} GB checkpoint (64 tensors)", results["big"], mmap=False),
        *fmt_table(
            "Same checkpoint, mmap=True (RSS gained by the process; after reading, it counts "
            "the mapped page cache: equal numbers mean no private copy of tensor bytes)",
            results["big-mmap"],
            mmap=True,
        ),
        *fmt_table(
            f"{len(small)} small checkpoints (16 tensors, 66 KB each), loaded in one process",
            results["small"],
            mmap=False,
        ),
        f"**Converting the {size_gb:.2f} GB checkpoint to safetensors** (median of "
        f"{max(1, min(3, args.repeat))}; trainwarden scans first, loads under the policy, and "
        "writes through a synced atomic write: fsync of file and directory; save_file does "
        "not sync)",
        "",
        "| converter | median s | min s | vs save_file(torch.load) |",
        "|---|---:|---:|---:|",
        *(
            f"| {name} | {row['median']:.3f} | {row['min']:.3f} | "
            f"{row['median'] / results['convert'][next(iter(CONVERTERS))]['median']:.2f}x |"
            for name, row in results["convert"].items()
        ),
        "",
        "One-time cost per process (first load of a tiny checkpoint, lazy imports included; "
        "excluded above): "
        + ", ".join(f"{n} {r['first'] * 1000:.0f} ms" for n, r in results["small"].items())
        + ".",
        "",
        f"Total benchmark time: {time.time() - started:.0f} s.",
    ]
    if args.baseline:
        lines += [
            "",
            f"`trainwarden.load ({args.baseline_label})` is the same loader from that version's "
            "source, measured in the same run in alternating order: on a machine this busy, "
            "compare it with `trainwarden.load` by the best runs (min) as much as by medians.",
        ]
    text = "\n".join(lines)
    print(text)
    print(json.dumps(results, indent=2), file=sys.stderr)
    if not args.no_write:
        write_section("load", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
