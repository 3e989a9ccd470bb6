"""Benchmark ``trainwarden scan`` against picklescan, ModelScan, fickling and ModelAudit.

One run, same folders for every tool: detections per attack, false positives on a few hundred
legitimate files, whole-process wall-clock time (median of N runs for the fast tools, one run
for the slow ones), the ratio against picklescan, and every tool on one 8 GB checkpoint.
Writes the ``scan`` section of benchmarks/RESULTS.md.

Needs the peers installed (``install-peers .peers``) and ~8 GB free disk for the big file.
Usage: ``python benchmarks/bench_scan.py [--runs 5] [--no-big] [--skip-modelaudit]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import median, write_section
from corpus import WORK, Corpus, build_corpus

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / ".peers"
VENV_BIN = Path(sys.executable).parent
SLOW_TIMEOUT = 600.0

# Per-file outcome: "flagged" (the tool reports a problem), "error" (it could not analyse the
# file and says so), "clean" (no problem reported, or the file was silently skipped).
FLAGGED, ERROR, CLEAN = "flagged", "error", "clean"


@dataclass
class Run:
    """One tool's result on one target."""

    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # user + system seconds of the process tree
    returncode: int | None = None
    timed_out: bool = False
    files: dict[str, str] = field(default_factory=dict)
    unsafe_files: set[str] = field(default_factory=set)
    note: str = ""


@dataclass(frozen=True)
class Tool:
    """How to run one scanner on a folder and read its per-file results."""

    name: str
    version: str
    command: Callable[[Path, Path], list[str]]
    parse: Callable[[subprocess.CompletedProcess[str], Path, Path], Run]
    slow: bool = False
    env: tuple[tuple[str, str], ...] = ()


# -- result parsers ----------------------------------------------------------------------------


def _mark(files: dict[str, str], path: str, state: str) -> None:
    rank = {CLEAN: 0, ERROR: 1, FLAGGED: 2}
    if rank[state] >= rank.get(files.get(path, CLEAN), 0):
        files[path] = state


def _strip_member(location: str, target: Path) -> str:
    """``/x/model.pt:archive/data.pkl (pos 3)`` -> ``/x/model.pt`` (longest existing prefix)."""
    loc = re.sub(r" \(pos \d+\)$", "", location)
    if not loc.startswith("/"):
        loc = str(target / loc)
    while loc and not Path(loc).exists() and ":" in loc:
        loc = loc.rsplit(":", 1)[0]
    return loc


def parse_trainwarden(proc: subprocess.CompletedProcess[str], target: Path, out: Path) -> Run:
    run = Run(returncode=proc.returncode)
    doc = json.loads(out.read_text(encoding="utf-8"))
    for f in doc["files"]:
        path = f["path"].split("!", 1)[0]
        verdict = f["verdict"]
        state = (
            FLAGGED if verdict in ("unsafe", "unknown") else ERROR if verdict == "error" else CLEAN
        )
        _mark(run.files, path, state)
        if verdict == "unsafe":
            run.unsafe_files.add(path)
    return run


def parse_picklescan(proc: subprocess.CompletedProcess[str], target: Path, _out: Path) -> Run:
    # "<path>[:<member>]: dangerous import 'mod name' FOUND" is what picklescan counts as
    # infected; "ERROR: parsing pickle in <path>" and "WARNING: could not parse <path>" are
    # analysis failures. Suspicious (not dangerous) globals do not make a file infected.
    run = Run(returncode=proc.returncode)
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.endswith(" FOUND") and ": dangerous import" in line:
            _mark(run.files, _strip_member(line.split(": dangerous import")[0], target), FLAGGED)
        elif m := re.match(
            r"(?:ERROR: parsing pickle in|WARNING: could not parse) (/\S+?):? ", line
        ):
            _mark(run.files, _strip_member(m.group(1), target), ERROR)
    if proc.returncode == 2 and "Traceback" in proc.stderr:
        run.note = "crashed: " + proc.stderr.strip().splitlines()[-1][:120]
    return run


def parse_modelscan(proc: subprocess.CompletedProcess[str], target: Path, out: Path) -> Run:
    run = Run(returncode=proc.returncode)
    if not out.exists():
        run.note = "no report written"
        return run
    doc = json.loads(out.read_text(encoding="utf-8"))
    for issue in doc.get("issues", []):
        _mark(run.files, _strip_member(issue["source"], target), FLAGGED)
    for err in doc.get("errors", []):
        if err.get("source"):
            _mark(run.files, _strip_member(err["source"], target), ERROR)
    return run


def parse_fickling(proc: subprocess.CompletedProcess[str], target: Path, _out: Path) -> Run:
    run = Run(returncode=proc.returncode)
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            _mark(run.files, rec["path"], rec["state"])
    return run


def parse_modelaudit(proc: subprocess.CompletedProcess[str], target: Path, out: Path) -> Run:
    # Critical and warning issues are what ModelAudit's exit code 1 reports; info/debug are not.
    run = Run(returncode=proc.returncode)
    if not out.exists():
        run.note = "no report written"
        return run
    doc = json.loads(out.read_text(encoding="utf-8"))
    for issue in doc.get("issues", []):
        loc = issue.get("location") or ""
        if not loc:
            continue
        sev = str(issue.get("severity", "")).lower()
        msg = str(issue.get("message", "")).lower()
        if sev in ("critical", "warning", "high", "medium", "error"):
            _mark(run.files, _strip_member(loc, target), FLAGGED)
        elif "error" in msg or "failed" in msg or "not installed" in msg:
            _mark(run.files, _strip_member(loc, target), ERROR)
    return run


# fickling has no directory mode; this driver walks the folder and calls fickling's own
# per-file API the way its CLI does (zip archives member by member, anything else as a pickle).
FICKLING_DRIVER = r"""
import json, os, sys, zipfile, tempfile
from fickling.loader import scan_file, scan_zip_archive
out = os.path.join(tempfile.mkdtemp(), "fickling.json")
for root, _dirs, names in os.walk(sys.argv[1]):
    for name in sorted(names):
        path = os.path.join(root, name)
        try:
            if zipfile.is_zipfile(path):
                results = list(scan_zip_archive(path, graceful=True, json_output_path=out).values())
            else:
                results = [scan_file(path, graceful=True, json_output_path=out)]
            flagged = any(not r.is_safe for r in results)
            errors = any(r.errors for r in results)
            state = "flagged" if flagged else "error" if errors else "clean"
        except Exception as exc:
            state = "error"
        print(json.dumps({"path": path, "state": state}))
"""


def _version(venv: str, dist: str) -> str:
    py = PEERS / venv / "bin" / "python"
    if not py.exists():
        return "missing"
    code = f"import importlib.metadata as m; print(m.version({dist!r}))"
    res = subprocess.run([str(py), "-c", code], capture_output=True, text=True, check=False)
    return res.stdout.strip() or "?"


def tools() -> list[Tool]:
    """Every scanner, trainwarden first."""
    driver = WORK / "fickling_driver.py"
    driver.parent.mkdir(parents=True, exist_ok=True)
    driver.write_text(FICKLING_DRIVER, encoding="utf-8")
    from trainwarden import __version__

    return [
        Tool(
            "trainwarden",
            __version__,
            lambda t, o: [
                str(VENV_BIN / "trainwarden"),
                "scan",
                "--format",
                "json",
                "--output",
                str(o),
                str(t),
            ],
            parse_trainwarden,
        ),
        Tool(
            "picklescan",
            _version("picklescan", "picklescan"),
            lambda t, o: [str(PEERS / "picklescan/bin/picklescan"), "-p", str(t)],
            parse_picklescan,
        ),
        Tool(
            "modelscan",
            _version("modelscan", "modelscan"),
            lambda t, o: [
                str(PEERS / "modelscan/bin/modelscan"),
                "scan",
                "-p",
                str(t),
                "-r",
                "json",
                "-o",
                str(o),
            ],
            parse_modelscan,
        ),
        Tool(
            "fickling",
            _version("fickling", "fickling"),
            lambda t, o: [str(PEERS / "fickling/bin/python"), str(driver), str(t)],
            parse_fickling,
        ),
        Tool(
            "modelaudit",
            _version("modelaudit", "modelaudit"),
            lambda t, o: [
                str(PEERS / "modelaudit/bin/modelaudit"),
                "scan",
                "--format",
                "json",
                "--output",
                str(o),
                "--no-cache",
                str(t),
            ],
            parse_modelaudit,
            slow=True,
            # Offline machine: telemetry off so network retries are not timed.
            env=(("PROMPTFOO_DISABLE_TELEMETRY", "1"), ("NO_ANALYTICS", "1")),
        ),
    ]


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run_once(tool: Tool, target: Path, result: Run | None) -> Run:
    """Run ``tool`` once on ``target``; parse its output unless ``result`` already holds it."""
    env = {**os.environ, **dict(tool.env)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        started = time.perf_counter()
        cpu_before = _children_cpu()
        try:
            proc = subprocess.run(
                tool.command(target, out),
                capture_output=True,
                text=True,
                env=env,
                timeout=SLOW_TIMEOUT,
                check=False,
                cwd=tmp,
            )
        except subprocess.TimeoutExpired:
            return Run(seconds=[SLOW_TIMEOUT], timed_out=True, note="timed out")
        elapsed = time.perf_counter() - started
        cpu = _children_cpu() - cpu_before
        if result is None:
            try:
                result = tool.parse(proc, target, out)
            except (OSError, ValueError, KeyError) as exc:
                result = Run(returncode=proc.returncode, note=f"unparsable output: {exc!r}")
        result.seconds.append(elapsed)
        result.cpu.append(cpu)
    return result


def run_tool(tool: Tool, target: Path, runs: int) -> Run:
    """Run ``tool`` on ``target`` ``runs`` times (once if slow); parse the first run.

    Every tool runs from compiled bytecode (PYTHONDONTWRITEBYTECODE is dropped: a user's
    install has its .pyc files; a source tree compiled on each run would time the compiler).
    """
    result: Run | None = None
    for _ in range(1 if tool.slow else runs):
        result = _run_once(tool, target, result)
        if result.timed_out:
            break
    assert result is not None
    return result


def run_interleaved(fast: list[Tool], target: Path, runs: int) -> dict[str, Run]:
    """Run the fast tools in rounds, one run of each per round (parse each one's first run).

    On a shared machine the load drifts over seconds: tools timed one after the other would
    each get a different machine. Interleaved, every round times all tools under about the
    same load, so their ratio (medians, and the ratio within each round) is meaningful.
    """
    results: dict[str, Run] = {}
    for _ in range(runs):
        for tool in fast:
            got = results.get(tool.name)
            if got is not None and got.timed_out:
                continue
            results[tool.name] = _run_once(tool, target, got)
    return results


def _round_ratios(base: list[float], ours: list[float]) -> float:
    """Median over the rounds of ``base / ours`` (runs of the same round, same load)."""
    return median([b / o for b, o in zip(base, ours, strict=False) if o > 0])


_BUDGET_PROBE = r"""
import json, resource, sys, time
from trainwarden.scan import scan_bytes
data = open(sys.argv[1], "rb").read()
scan_bytes(b"\x80\x04K\x01.")
def peak_kib():
    # VmHWM belongs to this program's memory; ru_maxrss would also count the parent's peak
    # from before exec (the kernel carries it over), hiding what the scan itself used.
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
before = peak_kib()
t = time.perf_counter()
report = scan_bytes(data)
seconds = time.perf_counter() - t
after = peak_kib()
limits = sorted({f.rule_id for f in report.findings if f.rule_id.startswith("limit.")})
print(json.dumps({"seconds": seconds, "grew_mib": (after - before) / 1024,
                  "verdict": report.verdict.value, "limits": limits}))
"""


def _budget_inputs() -> dict[str, bytes]:
    sys.path.insert(0, str(ROOT / "tests" / "unit" / "scan"))
    from test_budgets import _MEMORY_BOMBS, _zip_one_span

    nested = b"\x80\x04K\x01."
    for _ in range(8):
        nested = _zip_one_span(nested, 10, deflate=False)
    return {
        **{f"pickle: {k}": v for k, v in _MEMORY_BOMBS.items()},
        "zip: 8 levels x 10 shared entries": nested,
        "zip: 2000 entries over one 64 MiB deflate bomb": _zip_one_span(
            b"\0" * (64 << 20), 2000, deflate=True
        ),
    }


def budgets() -> str:
    """Peak memory and time of hostile inputs (each in a fresh interpreter)."""
    lines = [
        "Budgets on hostile inputs (fresh interpreter each; peak RSS growth while scanning, "
        "wall-clock of the scan; limits 256 MiB and ~2 s):",
        "",
        "| input | size | peak memory (MiB) | time (s) | verdict | limit reported |",
        "|---|---|---|---|---|---|",
    ]
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.py"
        probe.write_text(_BUDGET_PROBE, encoding="utf-8")
        for name, data in _budget_inputs().items():
            sample = Path(tmp) / "sample.bin"
            sample.write_bytes(data)
            proc = subprocess.run(
                [sys.executable, str(probe), str(sample)],
                capture_output=True, text=True, env=env, check=False, timeout=600,
            )  # fmt: skip
            try:
                got = json.loads(proc.stdout)
            except ValueError:
                lines.append(f"| {name} | {len(data)} | - | - | failed | {proc.stderr[-80:]} |")
                continue
            lines.append(
                f"| {name} | {len(data) / 1e6:.2f} MB | {got['grew_mib']:.0f} | "
                f"{got['seconds']:.2f} | {got['verdict']} | {', '.join(got['limits']) or '-'} |"
            )
    return "\n".join(lines)


def _precompile() -> None:
    import compileall

    compileall.compile_dir(str(ROOT / "src" / "trainwarden"), quiet=1)


# -- report --------------------------------------------------------------------------------------


def _attack_outcome(run: Run, attack_dir: Path) -> str:
    prefix = str(attack_dir) + os.sep
    states = [s for p, s in run.files.items() if p.startswith(prefix)]
    if run.timed_out:
        return "timeout"
    if FLAGGED in states:
        return "caught"
    return "error" if ERROR in states else "missed"


def _fmt_s(values: list[float]) -> str:
    return f"{median(values):.2f}"


def report(
    corpus: Corpus,
    all_tools: list[Tool],
    speed: dict[str, Run],
    attacks: dict[str, Run],
    big: dict[str, Run],
    runs: int,
    n_benign: int,
) -> str:
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, load average {os.getloadavg()[0]:.1f} at the start "
        "(a shared machine: read the ratios, not the seconds). Corpus from "
        f"`benchmarks/corpus.py`: a mixed folder of {n_benign} legitimate files (torch zip and "
        "legacy, safetensors, numpy, joblib/sklearn, transformers save_pretrained, lightning, "
        "accelerate, ONNX, GGUF, JSON/YAML/text configs, tokenizers, images, nested archives) "
        f"and {len(corpus.attack_ids)} attack samples (`tests/attacks.py`). Whole-process "
        "wall-clock time and CPU time (user + system), every tool from compiled bytecode; fast "
        f"tools: median of {runs} runs, interleaved (one run of each tool per round, so all "
        "see about the same load); ModelAudit: 1 run with its own timeout of "
        f"{SLOW_TIMEOUT:.0f} s (it takes minutes), fickling driver: median of {runs}.",
        "",
        "| tool | version | benign folder wall (s) | CPU (s) | time / picklescan time |"
        " 8 GB checkpoint (s) | attacks caught | errors (not flagged) | missed |"
        " benign flagged | benign errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = median(speed["picklescan"].seconds) if speed["picklescan"].seconds else float("nan")
    base_cpu = median(speed["picklescan"].cpu) if speed["picklescan"].cpu else float("nan")
    for tool in all_tools:
        s, a, b = speed[tool.name], attacks[tool.name], big.get(tool.name)
        outcomes = [_attack_outcome(a, corpus.attacks / i) for i in corpus.attack_ids]
        caught, errors = outcomes.count("caught"), outcomes.count("error")
        missed = len(outcomes) - caught - errors
        flagged = sum(1 for v in s.files.values() if v == FLAGGED)
        errs = sum(1 for v in s.files.values() if v == ERROR)
        t = "timeout" if s.timed_out else _fmt_s(s.seconds)
        ratio = "" if s.timed_out else f"{median(s.seconds) / base:.2f}x"
        big_t = "-" if b is None else ("timeout" if b.timed_out else _fmt_s(b.seconds))
        cpu = "" if s.timed_out or not s.cpu else f"{median(s.cpu):.2f}"
        lines.append(
            f"| {tool.name} | {tool.version} | {t} | {cpu} | {ratio} | {big_t} | "
            f"{caught}/{len(outcomes)} | {errors} | {missed} | {flagged} | {errs} |"
        )
    tw = speed["trainwarden"]
    tw_ratio = base / median(tw.seconds) if tw.seconds else float("nan")
    tw_cpu_ratio = base_cpu / median(tw.cpu) if tw.cpu else float("nan")
    ps = speed["picklescan"]
    round_wall = _round_ratios(ps.seconds, tw.seconds) if ps.seconds else float("nan")
    round_cpu = _round_ratios(ps.cpu, tw.cpu) if ps.cpu else float("nan")
    tw_big = big.get("trainwarden")
    tw_attacks = attacks["trainwarden"]
    must_be_unsafe = [i for i in corpus.attack_ids if corpus.attack_expected[i] == "unsafe"]
    exact = sum(
        1
        for i in must_be_unsafe
        if any(p.startswith(f"{corpus.attacks / i}{os.sep}") for p in tw_attacks.unsafe_files)
    )
    lines += [
        "",
        f"trainwarden verdict on the {len(must_be_unsafe)} attacks whose payload is a known "
        f"code-execution or file-write primitive: unsafe for {exact}; the other "
        f"{len(corpus.attack_ids) - len(must_be_unsafe)} (planted modules, remote code, "
        "templates, names computed at load time) are expected unknown or unsafe.",
        "",
        f"Speed-up of trainwarden over picklescan on the mixed folder: **{tw_ratio:.2f}x** "
        f"wall-clock, **{tw_cpu_ratio:.2f}x** CPU time (picklescan / trainwarden, ratio of the "
        f"medians; goal >= 2x); median of the {len(tw.seconds)} per-round ratios (the two "
        f"runs of a round are timed back to back): {round_wall:.2f}x wall-clock, "
        f"{round_cpu:.2f}x CPU time"
        + (
            f"; 8 GB checkpoint: **{median(tw_big.seconds):.3f} s** (goal < 0.15 s)."
            if tw_big and tw_big.seconds
            else "."
        ),
        "",
        "trainwarden on the benign folder: "
        f"{sum(1 for p in tw.unsafe_files)} files unsafe (false positives), "
        f"{sum(1 for v in tw.files.values() if v == FLAGGED)} not safe (unsafe or unknown: "
        "framework objects such as sklearn estimators or TrainingArguments without their "
        "profile, a pickled nn.Module, TorchScript).",
        "",
        "How results are counted: a file is *flagged* when the tool reports a problem for it "
        "(trainwarden: verdict unsafe or unknown; picklescan: `dangerous import ... FOUND`; "
        "ModelScan: an entry in `issues`; fickling: a result that is not `LIKELY_SAFE`; "
        "ModelAudit: an issue of severity critical or warning), *error* when it reports that "
        "it could not analyse the file (picklescan `ERROR`/`could not parse`, ModelScan "
        "`errors`, fickling scan errors, trainwarden verdict error). An attack is *caught* when "
        "any file of its sample folder is flagged. Files a tool silently skips count as not "
        "flagged. picklescan and ModelAudit got their optional 7z/lz4 extras "
        "(`py7zr`, `lz4`) so they do not crash or skip those archives; fickling has no "
        "directory mode, so a small driver walks the folder in one process and calls "
        "`fickling.loader.scan_file` / `scan_zip_archive` as its CLI does.",
        "",
        "Per attack (C caught, E error only, - missed, T timeout):",
        "",
        "| attack | expected | " + " | ".join(t.name for t in all_tools) + " |",
        "|---|---|" + "---|" * len(all_tools),
    ]
    sym = {"caught": "C", "error": "E", "missed": "-", "timeout": "T"}
    for attack_id in corpus.attack_ids:
        cells = [
            sym[_attack_outcome(attacks[t.name], corpus.attacks / attack_id)] for t in all_tools
        ]
        lines.append(
            f"| {attack_id} | {corpus.attack_expected[attack_id]} | " + " | ".join(cells) + " |"
        )
    notes = [
        f"- {t.name}: {r.note}"
        for t in all_tools
        for r in (speed[t.name], attacks[t.name])
        if r.note
    ]
    if notes:
        lines += ["", "Notes:", *sorted(set(notes))]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="runs per fast tool (median)")
    parser.add_argument("--no-big", action="store_true", help="skip the 8 GB checkpoint")
    parser.add_argument("--skip-modelaudit", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print, do not write RESULTS.md")
    args = parser.parse_args()

    corpus = build_corpus(big=not args.no_big)
    _precompile()
    all_tools = [t for t in tools() if not (args.skip_modelaudit and t.name == "modelaudit")]
    missing = [t.name for t in all_tools if t.version == "missing"]
    if missing:
        print(f"bench: not installed, skipped: {', '.join(missing)}", file=sys.stderr)
    all_tools = [t for t in all_tools if t.version != "missing"]
    n_benign = sum(1 for p in corpus.benign.rglob("*") if p.is_file())
    speed: dict[str, Run] = {}
    attacks: dict[str, Run] = {}
    big: dict[str, Run] = {}
    fast = [t for t in all_tools if not t.slow]
    print(f"bench: {args.runs} interleaved rounds of {', '.join(t.name for t in fast)} ...",
          file=sys.stderr, flush=True)  # fmt: skip
    speed.update(run_interleaved(fast, corpus.benign, args.runs))
    for tool in all_tools:
        print(f"bench: {tool.name} ...", file=sys.stderr, flush=True)
        if tool.slow:
            speed[tool.name] = run_tool(tool, corpus.benign, args.runs)
        attacks[tool.name] = run_tool(tool, corpus.attacks, 1)
        if corpus.big is not None:
            big[tool.name] = run_tool(tool, corpus.big.parent, 3 if tool.name != "fickling" else 1)
        print(
            f"bench: {tool.name}: benign {median(speed[tool.name].seconds):.2f} s",
            file=sys.stderr,
            flush=True,
        )
    canaries = WORK / "canaries"
    ran = sorted(p.name for p in canaries.glob("*")) if canaries.exists() else []
    body = report(corpus, all_tools, speed, attacks, big, args.runs, n_benign)
    body += "\n\n" + budgets()
    if ran:
        body += "\n\nWARNING: payloads ran during the benchmark: " + ", ".join(ran)
    print(body)
    if not args.no_write:
        write_section("scan", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
