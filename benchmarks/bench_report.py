"""`trainwarden report` on a 64-rank, 100k-step run, side by side with what a user would do.

Run: python benchmarks/bench_report.py [--ranks 64] [--steps 100000] [--repeats 3]
Writes the `report` section of benchmarks/RESULTS.md.

The run directory is synthetic (``trainwarden.report._synthetic``: a real ledger, real keys,
really signed checkpoints, 6.4M telemetry lines, the incident's sabotage), generated once
under benchmarks/_work/report and reused. Measured in one run, each tool as its own process:

- ``trainwarden report RUN -o report.html`` (every check: ledger verification, checkpoint
  digests, telemetry digests, binned plots and heatmaps);
- ``trainwarden ledger show`` (the timeline as text: what one reads without the report);
- plotly offline HTML (``include_plotlyjs=True``, plotly installed in a throwaway venv under
  .peers/plotly, never a project dependency): (a) what a user would write, every telemetry
  line read with ``json.loads`` and the step time of every rank plotted at every step;
  (b) the same 200 bins the report draws, so the page cost of plotly.js itself shows.

Each HTML page is then loaded in headless Chromium (same flags as the browser tests): time
from navigation to the plots being drawn, and first contentful paint. Medians of --repeats;
the machine is shared and noisy, so read the ratios.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _results import median, write_section

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(__file__).resolve().parent / "_work" / "report"
PLOTLY = ROOT / ".peers" / "plotly"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1280,1000",
)

# What a user would write with plotly: read everything, plot every point.
PLOTLY_FULL = r"""
import json, sys, glob, os
import plotly.graph_objects as go
tel, out = sys.argv[1], sys.argv[2]
fig = go.Figure()
files = glob.glob(os.path.join(tel, "rank-*.jsonl"))
for path in sorted(files, key=lambda p: int(p.rsplit("-", 1)[1][:-6])):
    steps, times = [], []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            steps.append(rec["step"])
            times.append(rec["step_time"])
    fig.add_trace(go.Scatter(x=steps, y=times, mode="lines", name=os.path.basename(path)))
fig.update_layout(title="step time per rank", xaxis_title="step", yaxis_title="seconds")
fig.write_html(out, include_plotlyjs=True, full_html=True)
"""

# The same binned data the report draws (median per bin of six metrics, every rank).
PLOTLY_BINNED = r"""
import json, sys
import plotly.graph_objects as go
from plotly.subplots import make_subplots
data, out = json.load(open(sys.argv[1])), sys.argv[2]
metrics = ["step_time", "work", "loss", "grad_norm", "residual", "lr"]
fig = make_subplots(rows=len(metrics), cols=1, subplot_titles=metrics)
for i, m in enumerate(metrics, 1):
    for rank, series in data["ranks"].items():
        trace = go.Scatter(x=data["x"], y=series[m], mode="lines", name=f"rank {rank}")
        fig.add_trace(trace.update(showlegend=i == 1), row=i, col=1)
fig.update_layout(height=2400)
fig.write_html(out, include_plotlyjs=True, full_html=True)
"""


def _generate(ranks: int, steps: int) -> tuple[Path, list[Path], Path]:
    """The synthetic run (reused when already generated with these parameters)."""
    from trainwarden.report._synthetic import write_synthetic_run

    base = WORK / f"{ranks}x{steps}"
    marker = base / "done.json"
    run_dir = base / "run"
    if marker.exists():
        meta = json.loads(marker.read_text())
        return run_dir, [Path(k) for k in meta["keys"]], Path(meta["seal_key"])
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    start = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if done % 10_000 == 0:
            print(f"  generating: step {done:,}/{total:,}", file=sys.stderr)

    # The sabotaged job is killed at 90% of its steps: plan it so that the telemetry holds
    # the requested number of steps per rank.
    planned = math.ceil(steps / 0.9)
    run = write_synthetic_run(
        run_dir, ranks=ranks, steps=planned, drill=True, keys_dir=base / "keys", progress=progress
    )
    keys = [*run.keys, *([run.insider_key] if run.insider_key else [])]
    marker.write_text(json.dumps({"keys": [str(k) for k in keys], "seal_key": str(run.seal_key)}))
    print(f"  generated {ranks}x{steps} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return run_dir, keys, run.seal_key


def _timed(cmd: list[str], *, stdout: Any = subprocess.DEVNULL) -> tuple[float, float, float, int]:
    """Wall seconds, CPU seconds (the whole process tree), peak RSS (MiB) and exit status."""
    probe = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "code = subprocess.call(sys.argv[1:], stdout=sys.stdout)\n"
        "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(time.perf_counter() - t, u.ru_utime + u.ru_stime, u.ru_maxrss, code,"
        " file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, *cmd], stdout=stdout, stderr=subprocess.PIPE, text=True
    )
    last = proc.stderr.strip().splitlines()[-1].split()
    return float(last[0]), float(last[1]), int(last[2]) / 1024, int(last[3])


def _browser(timeout: float) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='bench-chromium-')}")
    driver = webdriver.Chrome(
        service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options
    )
    driver.set_page_load_timeout(timeout)
    driver.set_script_timeout(timeout)
    return driver


def _load(driver: Any, page: Path, drawn: str, timeout: float) -> tuple[float | None, float | None]:
    """Seconds from navigation until ``drawn`` (JS) is true, and first contentful paint."""
    driver.get("about:blank")
    start = time.perf_counter()
    try:
        driver.get(page.resolve().as_uri())
        while not driver.execute_script(f"return !!({drawn})"):
            if time.perf_counter() - start > timeout:
                return None, None
            time.sleep(0.02)
    except Exception:  # a page too large for the browser (timeout, renderer crash)
        return None, None
    elapsed = time.perf_counter() - start
    fcp = None
    deadline = time.perf_counter() + 5
    while fcp is None and time.perf_counter() < deadline:  # recorded once presented
        fcp = driver.execute_script(
            "const p = performance.getEntriesByName('first-contentful-paint')[0];"
            "return p ? p.startTime / 1000 : null"
        )
        time.sleep(0.05)
    return elapsed, fcp


def _binned_json(run_dir: Path, out: Path) -> None:
    from trainwarden.report._run_telemetry import read_telemetry

    t = read_telemetry(run_dir / "telemetry", bins=200, workers=os.cpu_count() or 1)
    data = {
        "x": [t.bin_steps(i)[0] for i in range(t.bins)],
        "ranks": {
            str(r.rank): {
                m: list(r.metrics[m].high if m in ("work", "residual") else r.metrics[m].median)
                for m in ("step_time", "work", "loss", "grad_norm", "residual", "lr")
            }
            for r in t.ranks
        },
    }
    out.write_text(json.dumps(data))


def _fmt(v: float | None, digits: int = 2) -> str:
    return "did not finish" if v is None else f"{v:.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=64)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slow-repeats", type=int, default=1, help="repeats of plotly, all points")
    parser.add_argument("--browser-timeout", type=float, default=240.0)
    parser.add_argument("--no-write", action="store_true", help="print, do not touch RESULTS.md")
    args = parser.parse_args()
    if not (PLOTLY / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(PLOTLY)], check=True)
        subprocess.run(
            [str(PLOTLY / "bin" / "pip"), "install", "-q", "plotly", "numpy"], check=True
        )
    plotly_py = str(PLOTLY / "bin" / "python")
    plotly_version = subprocess.run(
        [plotly_py, "-c", "import plotly; print(plotly.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    run_dir, keys, seal_key = _generate(args.ranks, args.steps)
    tel = run_dir / "telemetry"
    files = sum(1 for _ in tel.glob("rank-*.jsonl"))
    tel_bytes = sum(p.stat().st_size for p in tel.glob("rank-*.jsonl"))
    ledger_entries = sum(
        p.read_bytes().count(b"\n") for p in (run_dir / "ledger" / "writers").glob("*.jsonl")
    )
    out = WORK / "out"
    out.mkdir(parents=True, exist_ok=True)
    key_args = [a for k in keys for a in ("--key", str(k))]
    tw = [sys.executable, "-m", "trainwarden"]
    tools: list[dict[str, Any]] = [
        {
            "name": "trainwarden report",
            "shows": "findings, timeline, 6 plots + 2 heatmaps (200 bins), tables, checks",
            "cmd": [
                *tw,
                "report",
                str(run_dir),
                "-o",
                str(out / "report.html"),
                "--no-progress",
                *key_args,
                "--seal-key",
                str(seal_key),
            ],
            "page": out / "report.html",
            "drawn": "document.querySelectorAll('svg.plot').length >= 8",
            "repeats": args.repeats,
        },
        {
            "name": "trainwarden ledger show (text)",
            "shows": "the ledger timeline as text, unverified",
            "cmd": [*tw, "ledger", "show", str(run_dir / "ledger"), "-o", str(out / "ledger.txt")],
            "page": None,
            "repeats": args.repeats,
        },
        {
            "name": "plotly, every point (include_plotlyjs=True)",
            "shows": f"step time of {args.ranks} ranks at every step",
            "cmd": [plotly_py, "-c", PLOTLY_FULL, str(tel), str(out / "plotly-full.html")],
            "page": out / "plotly-full.html",
            "drawn": "document.querySelector('.plot-container .scatterlayer .trace')",
            "repeats": args.slow_repeats,
        },
    ]
    binned = out / "binned.json"
    _binned_json(run_dir, binned)
    tools.append(
        {
            "name": "plotly, the report's 200 bins (include_plotlyjs=True)",
            "shows": f"6 metrics x {args.ranks} ranks, binned by trainwarden (not timed)",
            "cmd": [plotly_py, "-c", PLOTLY_BINNED, str(binned), str(out / "plotly-binned.html")],
            "page": out / "plotly-binned.html",
            "drawn": "document.querySelectorAll('.scatterlayer .trace').length >= 6",
            "repeats": args.repeats,
        }
    )
    results = []
    for tool in tools:
        walls, cpus, rss = [], [], []
        for i in range(tool["repeats"]):
            wall, cpu, peak, code = _timed(tool["cmd"])
            if code not in (0, 1):
                raise SystemExit(f"{tool['name']} failed with status {code}")
            walls.append(wall)
            cpus.append(cpu)
            rss.append(peak)
            print(
                f"  {tool['name']}: run {i + 1}: {wall:.1f} s, CPU {cpu:.1f} s, {peak:.0f} MiB",
                file=sys.stderr,
            )
        size = (tool["page"] or out / "ledger.txt").stat().st_size
        loads, paints = [], []
        if tool["page"] is not None:
            driver = _browser(args.browser_timeout)
            try:
                for _ in range(tool["repeats"]):
                    elapsed, fcp = _load(driver, tool["page"], tool["drawn"], args.browser_timeout)
                    loads.append(elapsed)
                    paints.append(fcp)
                    print(f"  {tool['name']}: browser {elapsed}", file=sys.stderr)
                    if elapsed is None:
                        break
            finally:
                driver.quit()
        results.append(
            {
                **tool,
                "wall": median(walls),
                "cpu": median(cpus),
                "rss": max(rss),
                "size": size,
                "load": None if not loads or None in loads else median([x for x in loads if x]),
                "fcp": None
                if not paints or None in paints
                else median([x for x in paints if x is not None]),
            }
        )
    ref = results[0]
    rows = [
        "| tool | shows | generation: wall (s) | CPU (s) | CPU x trainwarden | peak RSS (MiB) "
        "| output | Chromium: load to drawn (s) | first paint (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        size = r["size"]
        shown = f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.0f} kB"
        rows.append(
            f"| {r['name']} | {r['shows']} | {r['wall']:.1f} | {r['cpu']:.1f} | "
            f"{r['cpu'] / ref['cpu']:.2f}x | "
            f"{r['rss']:.0f} | {shown} | "
            f"{'—' if r['page'] is None else _fmt(r['load'])} | "
            f"{'—' if r['page'] is None else _fmt(r['fcp'])} |"
        )
    chromium = subprocess.run(
        ["chromium", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    body = "\n".join(
        [
            "## report: `trainwarden report` vs `ledger show` and plotly offline HTML",
            "",
            f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs "
            f"while measured: noisy), Python {platform.python_version()}, {chromium}, plotly "
            f"{plotly_version}. Synthetic sabotaged run (`trainwarden.report._synthetic`): "
            f"{args.ranks} ranks x {args.steps:,} steps (a job planned for "
            f"{math.ceil(args.steps / 0.9):,} steps, killed), {files} telemetry files of "
            f"{tel_bytes / 1e9:.2f} GB ({args.ranks * args.steps:,} lines), a ledger of "
            f"{ledger_entries:,} signed entries (sealed), "
            f"{len(list((run_dir / 'checkpoints').glob('*.pt')))} signed checkpoints. Each tool "
            f"is a fresh process; generation is wall time and CPU time of the whole process tree "
            f"(workers included; CPU time is the steadier figure on a shared machine), median "
            f"of {args.repeats} runs "
            f"({args.slow_repeats} for plotly with every point); Chromium times are from "
            "navigation to the plots being in the page, same flags as the browser tests.",
            "",
            *rows,
            "",
            "`trainwarden report` does more than draw: it verifies the ledger's signatures and "
            "seals, rehashes every checkpoint, hashes every telemetry file against the guard's "
            "record, and reads the telemetry in bins (min/median/mean/max), so its page stays "
            "the same size whatever the run's length. Regenerate with "
            "`python benchmarks/bench_report.py`.",
        ]
    )
    print(body)
    if not args.no_write:
        write_section("report", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
