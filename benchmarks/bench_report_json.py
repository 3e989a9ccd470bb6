"""The JSON report (``--format json`` of scan, env, sign, provenance): old encoder vs new.

Run: python benchmarks/bench_report_json.py [--files 20000] [--repeats 5]
Writes the `report-json` section of benchmarks/RESULTS.md.

A report of ``--files`` files with three findings each (real ``trainwarden.findings``
objects, the shape ``trainwarden scan`` renders) is encoded by ``json.dumps(indent=2,
sort_keys=True, ensure_ascii=False)`` (what ``render_json`` did, through json's pure-Python
encoder) and by ``render_json`` now, each in a fresh process, alternating, CPU time of the
encoding alone (``to_dict`` is the same for both and timed apart). The outputs are compared
byte for byte. The machine is shared and noisy: read the medians and the ratio.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import median, write_section

ROOT = Path(__file__).resolve().parent.parent

# One measurement in a fresh process: prints {"dict": s, "encode": s, "bytes": n, "sha256": h}.
CHILD = r"""
import hashlib, json, sys, time
from trainwarden.findings import FileReport, Finding, Location, Report, Severity, Verdict
from trainwarden.report import render_json
from trainwarden.report._json import dumps_indented

def build(n, unicode):
    files = []
    for i in range(n):
        text = f"imports and calls posix.system (member {i})"
        if unicode:
            text += " ünïcode \u2028"
        findings = tuple(
            Finding(
                "policy.dangerous-global" if j == 0 else "pickle.trailing-data",
                Severity.CRITICAL if j == 0 else Severity.INFO,
                text,
                Location(f"models/m{i}.pt", "archive/data.pkl", 13 + j),
                evidence="posix.system",
                verdict=Verdict.UNSAFE if j == 0 else Verdict.SAFE,
            )
            for j in range(3)
        )
        files.append(
            FileReport(
                path=f"models/m{i}.pt", format="torch-zip", findings=findings, size=100 + i,
                sha256="ab" * 32, details={"entries": i, "ratio": i / 7, "opcodes": [1, 2.5, None]},
            )
        )
    return Report(files=tuple(files))

which, n, unicode = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
report = build(n, unicode)
t0 = time.process_time()
doc = report.to_dict()
t1 = time.process_time()
if which == "old":
    text = json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
else:
    text = dumps_indented(doc) + "\n"
t2 = time.process_time()
if which == "new":
    assert render_json(report) == text
digest = hashlib.sha256(text.encode()).hexdigest()
size = len(text.encode())
print(json.dumps({"dict": t1 - t0, "encode": t2 - t1, "bytes": size, "sha256": digest}))
"""


def _run(which: str, files: int, unicode: bool) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, which, str(files), "1" if unicode else "0"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    result: dict[str, float] = json.loads(out)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print, do not touch RESULTS.md")
    args = parser.parse_args()
    rows = []
    for unicode in (False, True):
        runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
        for _ in range(args.repeats):
            for which in ("old", "new"):  # interleaved, so load drifts hit both alike
                runs[which].append(_run(which, args.files, unicode))
        digests = {r["sha256"] for rs in runs.values() for r in rs}
        if len(digests) != 1:
            raise SystemExit("the two encoders wrote different bytes")
        old = median([r["encode"] for r in runs["old"]])
        new = median([r["encode"] for r in runs["new"]])
        size = runs["old"][0]["bytes"] / 1e6
        to_dict = median([r["dict"] for r in runs["old"] + runs["new"]])
        strings = "ASCII and non-ASCII" if unicode else "ASCII"
        rows.append(
            f"| {args.files:,} files, {strings} messages | {size:.1f} MB | {old:.3f} | "
            f"{new:.3f} | {old / new:.2f}x | {to_dict:.3f} | identical |"
        )
        print(rows[-1])
    body = "\n".join(
        [
            "## report JSON: `render_json` (every `--format json`) vs json's indenting encoder",
            "",
            f"Machine: {platform.machine()}, 2 CPUs shared with other work (noisy), Python "
            f"{platform.python_version()}. Each encoding in a fresh process, old and new "
            f"alternating, CPU seconds of the encoding alone, median of {args.repeats}. "
            "The old encoder is `json.dumps(indent=2, sort_keys=True, ensure_ascii=False)`, "
            "which runs json's pure-Python encoder (the C encoder does not indent); the new "
            "one has the C encoder write the document compactly and indents it per container "
            "(`report/_json.py`). Bytes are compared by SHA-256 on every run.",
            "",
            "| report | output | old encode CPU (s) | new encode CPU (s) | speed-up | "
            "to_dict CPU (s), both | output |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Regenerate with `python benchmarks/bench_report_json.py`.",
        ]
    )
    if not args.no_write:
        write_section("report-json", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
