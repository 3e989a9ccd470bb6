"""Ledger append throughput: trainwarden (signed, chained) vs unsigned JSON lines, logging, git.

Run: python benchmarks/bench_ledger.py [--events N] [--repeats R] [--ab REV]
Writes the `ledger` section of benchmarks/RESULTS.md. All tools run in the same process and
on the same disk, each `--repeats` times; medians are reported with the ratio to trainwarden.
With `--ab REV`, the batched writer of git revision REV and this tree's run alternately
(A B B A) in fresh processes: the regression check of a refactor.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import median, write_section

from trainwarden.keys import generate_key, load_private_key, load_public_key
from trainwarden.ledger import Ledger, verify_ledger

WORK = Path(__file__).parent / "_work" / "ledger"
CPU_SECONDS: list[float] = []
BATCH = 1000


def _event(i: int) -> dict[str, object]:
    return {"step": i, "rank": i % 8, "rule": "lr-schedule", "value": 0.001 * i}


def tw_batched(root: Path, key: Path, n: int) -> None:
    with Ledger(root, key=key, fsync="batch", batch_size=BATCH) as ledger:
        for start in range(0, n, BATCH):
            with ledger.batch():
                for i in range(start, min(n, start + BATCH)):
                    ledger.append("guard.finding", run="bench", **_event(i))


def tw_always(root: Path, key: Path, n: int) -> None:
    with Ledger(root, key=key, fsync="always") as ledger:
        for i in range(n):
            ledger.append("guard.finding", run="bench", **_event(i))


def jsonl_batched(root: Path, n: int, *, fsync_every: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / "events.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        buf = []
        for i in range(n):
            record = {"event": "guard.finding", "run": "bench", "time": time.time(), **_event(i)}
            buf.append(json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n")
            if len(buf) >= fsync_every:
                os.write(fd, "".join(buf).encode())
                os.fsync(fd)
                buf.clear()
        if buf:
            os.write(fd, "".join(buf).encode())
            os.fsync(fd)
    finally:
        os.close(fd)


def logging_file(root: Path, n: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(f"bench-{root.name}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.FileHandler(root / "events.log")  # flushes every record, never fsyncs
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(message)s"))
    logger.addHandler(handler)
    try:
        for i in range(n):
            logger.info("guard.finding run=bench %s", json.dumps(_event(i), sort_keys=True))
    finally:
        logger.removeHandler(handler)
        handler.close()


def git_commits(root: Path, n: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "b",
        "GIT_AUTHOR_EMAIL": "b@b",
        "GIT_COMMITTER_NAME": "b",
        "GIT_COMMITTER_EMAIL": "b@b",
    }
    subprocess.run(["git", "init", "-q", str(root)], check=True, env=env)
    log = root / "events.jsonl"
    for i in range(n):
        with log.open("a") as fh:
            fh.write(json.dumps({"event": "guard.finding", **_event(i)}) + "\n")
        subprocess.run(["git", "-C", str(root), "add", "events.jsonl"], check=True, env=env)
        subprocess.run(
            ["git", "-C", str(root), "commit", "-q", "-m", f"event {i}"], check=True, env=env
        )


def _proc(root: str, key: str, n: int) -> None:
    tw_batched(Path(root), Path(key), n)


def tw_multiproc(root: Path, key: Path, n: int, procs: int) -> None:
    ctx = multiprocessing.get_context("fork")
    ps = [ctx.Process(target=_proc, args=(str(root), str(key), n // procs)) for _ in range(procs)]
    for p in ps:
        p.start()
    for p in ps:
        p.join()
        assert p.exitcode == 0


def _cpu() -> float:
    # This process plus the children it waited for (writer processes, git, verify workers).
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(fn, *args, **kwargs) -> float:
    start, cpu = time.perf_counter(), _cpu()
    fn(*args, **kwargs)
    CPU_SECONDS.append(_cpu() - cpu)
    return time.perf_counter() - start


def fresh(name: str) -> Path:
    path = WORK / name
    shutil.rmtree(path, ignore_errors=True)
    return path


# One batched writer in a fresh process; prints "<events per CPU-second> <events per second>".
_AB_CHILD = """
import pathlib, shutil, sys, tempfile, time
from trainwarden.ledger import Ledger
try:
    from trainwarden.keys import load_private_key
except ImportError:  # revisions before the keys package
    from trainwarden.sign import load_private_key
key = load_private_key(pathlib.Path(sys.argv[1]))
n = int(sys.argv[2])
root = pathlib.Path(tempfile.mkdtemp(dir=sys.argv[3])) / "l"
cpu, wall = time.process_time(), time.perf_counter()
with Ledger(root, key=key, fsync="batch", batch_size=1000) as ledger:
    for start in range(0, n, 1000):
        with ledger.batch():
            for i in range(start, min(n, start + 1000)):
                ledger.append("guard.finding", run="bench", step=i, rank=i % 8, value=0.001 * i)
cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
shutil.rmtree(root.parent)
print(n / cpu, n / wall)
"""


def ab_rows(rev: str, key: Path, n: int, runs: int) -> list[str]:
    """Events per CPU-second and per second of revision ``rev`` and this tree."""
    old_src = WORK / f"ab-{rev}"
    shutil.rmtree(old_src, ignore_errors=True)
    old_src.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(Path(__file__).resolve().parents[1]), "archive", rev, "src"],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(old_src)], input=archive, check=True)
    envs = {
        "old": {**os.environ, "PYTHONPATH": str(old_src / "src")},
        "new": {k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    }
    cpu: dict[str, list[float]] = {"old": [], "new": []}
    wall: dict[str, list[float]] = {"old": [], "new": []}
    for i in range(runs):
        for side in ("old", "new") if i % 2 == 0 else ("new", "old"):
            out = subprocess.run(
                [sys.executable, "-c", _AB_CHILD, str(key), str(n), str(WORK)],
                capture_output=True,
                text=True,
                check=True,
                env=envs[side],
            ).stdout.split()
            cpu[side].append(float(out[0]))
            wall[side].append(float(out[1]))
    print(f"A/B {rev}: per CPU-s {cpu}, per s {wall}", file=sys.stderr)
    o, nw = median(cpu["old"]), median(cpu["new"])
    ow, nww = median(wall["old"]), median(wall["new"])
    return [
        f"Refactor check, fresh processes alternating A B B A, {n:,} batched appends, median "
        f"of {runs}: revision `{rev}` {o:,.0f} events per CPU-second ({ow:,.0f}/s), this "
        f"tree {nw:,.0f} ({nww:,.0f}/s): {nw / o:.2f}x per CPU-second, {nww / ow:.2f}x wall.",
        "",
    ]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--durable-events", type=int, default=1000)
    parser.add_argument("--git-events", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--verify-events", type=int, default=100_000)
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    parser.add_argument("--ab", metavar="REV", help="also compare with git revision REV")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    keyfile = WORK / "key"
    for p in (keyfile, keyfile.with_name("key.pub")):
        p.unlink(missing_ok=True)
    priv, pub = generate_key(keyfile, identity="bench@local")
    load_private_key(priv)
    n, nd, ng = args.events, args.durable_events, args.git_events
    load_start = os.getloadavg()[0]
    rows: dict[str, list[float]] = {}
    cpu_rows: dict[str, list[float]] = {}

    def run(label: str, count: int, fn, *fargs, **fkwargs) -> None:
        CPU_SECONDS.clear()
        secs = [
            timed(fn, fresh(label.split()[0]), *fargs, count, **fkwargs)
            for _ in range(args.repeats)
        ]
        rows[label] = [count / s for s in secs]
        cpu_rows[label] = [count / max(c, 1e-9) for c in CPU_SECONDS]
        print(
            f"{label:55s} {median(rows[label]):>10.0f} events/s "
            f"{median(cpu_rows[label]):>10.0f} per CPU-s",
            file=sys.stderr,
        )

    run(
        "tw-batch trainwarden Ledger, batch() of 1000, fsync per batch",
        n,
        lambda root, c: tw_batched(root, priv, c),
    )
    run(
        "jsonl-batch unsigned JSON lines, write+fsync per 1000",
        n,
        lambda root, c: jsonl_batched(root, c, fsync_every=BATCH),
    )
    run(
        "logging Python logging.FileHandler (flush per record, no fsync)",
        n,
        lambda root, c: logging_file(root, c),
    )
    run(
        "tw-2proc trainwarden, 2 processes x batch(), fsync per batch",
        n,
        lambda root, c: tw_multiproc(root, priv, c, 2),
    )
    run(
        "tw-always trainwarden Ledger, fsync='always' (per entry)",
        nd,
        lambda root, c: tw_always(root, priv, c),
    )
    run(
        "jsonl-always unsigned JSON lines, write+fsync per entry",
        nd,
        lambda root, c: jsonl_batched(root, c, fsync_every=1),
    )
    if shutil.which("git"):
        run("git one `git commit` per event", ng, lambda root, c: git_commits(root, c))
    # Verification throughput over a ledger large enough for parallel checks.
    root = fresh("verify")
    nv = args.verify_events
    tw_batched(root, priv, nv)
    pubkey = load_public_key(pub)
    verify_rows: dict[int, float] = {}
    verify_cpu: dict[int, float] = {}
    for workers in (1, 2):
        CPU_SECONDS.clear()
        secs = [
            timed(verify_ledger, root, keys=[pubkey], workers=workers)
            for _ in range(max(1, args.repeats // 2))
        ]
        verify_rows[workers] = nv / median(secs)
        verify_cpu[workers] = nv / median(CPU_SECONDS)
        print(f"verify workers={workers}: {verify_rows[workers]:.0f} entries/s", file=sys.stderr)

    ab = ab_rows(args.ab, priv, n, max(args.repeats, 6)) if args.ab else []
    tw = median(rows["tw-batch trainwarden Ledger, batch() of 1000, fsync per batch"])
    tw_cpu = median(cpu_rows["tw-batch trainwarden Ledger, batch() of 1000, fsync per batch"])
    lines = [
        "## ledger: signed appends and verification vs unsigned logs and git",
        "",
        f"`python benchmarks/bench_ledger.py` ({n} events, {args.repeats} repeats, "
        f"medians; Python {platform.python_version()}, {os.cpu_count()} CPUs). "
        "Every trainwarden entry is Ed25519-signed and hash-chained.",
        "",
        "| tool / mode | events/s (wall) | events per CPU-second "
        "| wall: trainwarden batched ÷ this |",
        "|---|---:|---:|---:|",
    ]
    for label, values in rows.items():
        name = label.split(" ", 1)[1]
        lines.append(
            f"| {name} | {median(values):,.0f} | {median(cpu_rows[label]):,.0f} "
            f"| {tw / median(values):.2f}x |"
        )
    durable = median(rows["tw-always trainwarden Ledger, fsync='always' (per entry)"])
    plain_durable = median(rows["jsonl-always unsigned JSON lines, write+fsync per entry"])
    lines += [
        "",
        f"Batched, one trainwarden writer signs {tw:,.0f} entries/s of wall time "
        f"({tw_cpu:,.0f} per CPU-second; goal 10,000/s): one Ed25519 signature per entry, one "
        "write and one fsync per batch. With an fsync per entry the disk dominates: "
        f"{durable:,.0f}/s vs {plain_durable:,.0f}/s unsigned.",
        "",
        f"| verification of {nv:,} entries (chain, canonical form, one Ed25519 check each) "
        "| entries/s (wall) "
        "| entries per CPU-second |",
        "|---|---:|---:|",
        f"| `verify_ledger(workers=1)` | {verify_rows[1]:,.0f} | {verify_cpu[1]:,.0f} |",
        f"| `verify_ledger(workers=2)` (CLI default: all CPUs) | {verify_rows[2]:,.0f} "
        f"| {verify_cpu[2]:,.0f} |",
        "",
        *ab,
        f"Load average at the start of the run: {load_start:.1f}, at the end: "
        f"{os.getloadavg()[0]:.1f}. On a shared machine wall-clock rates move with the load; "
        "the per-CPU-second rates show the cost of the work itself.",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("ledger", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
