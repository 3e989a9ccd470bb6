"""Benchmark `trainwarden sign/verify` against the `model_signing` CLI, in one run.

Datasets (generated under benchmarks/_work/sign, reused when present): a directory of 4 x 1 GiB
files and one directory holding a single 8 GiB file. Each tool signs and verifies each dataset
three times (whole-process wall clock, median). The same run measures the machine's parallel
SHA-256 limit (one thread per core hashing in-memory buffers) and states each ratio to it.

model-signing signs offline only with a private key, and only EC keys (P-256 here): its
`sign key` / `verify key` CLI is the comparison. trainwarden uses Ed25519.

With `--ab REV` the same run also times, in-process and interleaved (so load from other
processes falls on both alike), the manifest hashing code of git revision REV against this
tree's: the regression check of a refactor.

Usage: python benchmarks/bench_sign.py [--runs 3] [--no-write] [--ab REV]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import median, write_section

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
WORK = ROOT / "_work" / "sign"
GIB = 1 << 30
VENV_BIN = Path(sys.executable).parent
TRAINWARDEN = [str(VENV_BIN / "trainwarden")]
MS_BIN = REPO / ".peers" / "model-signing" / "bin" / "model_signing"


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def ensure_file(path: Path, size: int, seed: int) -> None:
    if path.exists() and path.stat().st_size == size:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    block = bytearray(os.urandom(16 << 20))
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as fh:
        written = 0
        i = 0
        while written < size:
            # Vary each block so no two blocks (or files) are equal.
            block[:16] = hashlib.md5(f"{seed}:{i}".encode(), usedforsecurity=False).digest()
            n = min(len(block), size - written)
            fh.write(block[:n])
            written += n
            i += 1
    tmp.replace(path)


def warm(paths: list[Path]) -> None:
    for p in paths:
        with p.open("rb") as fh:
            while fh.read(16 << 20):
                pass


def sha256_limit(threads: int, seconds: float = 3.0) -> float:
    """Aggregate bytes/s of `threads` threads hashing in-memory buffers (GIL released)."""
    buf = os.urandom(64 << 20)
    counts = [0] * threads
    stop = time.perf_counter() + seconds

    def work(i: int) -> None:
        h = hashlib.sha256()
        mv = memoryview(buf)
        while time.perf_counter() < stop:
            for off in range(0, len(buf), 4 << 20):
                h.update(mv[off : off + (4 << 20)])
            counts[i] += len(buf)

    start = time.perf_counter()
    ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def timed(cmd: list[str], *, expect: int = 0) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != expect:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return elapsed


def hasher_at(rev: str):
    """``(hash_tree, walk_tree)`` of the manifest code at git revision ``rev``."""
    for rel in ("src/trainwarden/manifest/_tree.py", "src/trainwarden/sign/_manifest.py"):
        proc = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{rev}:{rel}"],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode == 0:
            break
    else:
        raise SystemExit(f"no manifest code at revision {rev}")
    path = WORK / f"ab_{rev}.py"
    path.write_text(proc.stdout)
    spec = importlib.util.spec_from_file_location(f"tw_ab_{rev}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module.hash_tree, module.walk_tree


def _digests(result) -> list[tuple[str, int, int, str]]:
    return [(e.path, s.start, s.end, s.digest) for e in result.entries for s in e.shards]


def ab_rows(rev: str, datasets: dict[str, list[Path]], runs: int) -> list[str]:
    """In-process timings of revision ``rev`` and this tree, one row a dataset.

    Runs alternate A B B A, so neither side always follows the other (page cache, turbo),
    and CPU-seconds are reported next to wall time: on a loaded machine the wall clock
    measures the neighbours, the CPU time the work.
    """
    from trainwarden.manifest import hash_tree, walk_tree

    old_hash, old_walk = hasher_at(rev)
    sides = {"old": (old_hash, old_walk), "new": (hash_tree, walk_tree)}
    rows = []
    for name, files in datasets.items():
        model = files[0].parent
        warm(files)
        wall: dict[str, list[float]] = {"old": [], "new": []}
        cpu: dict[str, list[float]] = {"old": [], "new": []}
        results = {}
        for i in range(runs):
            for side in ("old", "new") if i % 2 == 0 else ("new", "old"):
                hash_fn, walk_fn = sides[side]
                start, cpu_start = time.perf_counter(), time.process_time()
                results[side] = hash_fn(walk_fn(model))
                wall[side].append(time.perf_counter() - start)
                cpu[side].append(time.process_time() - cpu_start)
            # Same digests, or the comparison means nothing.
            assert _digests(results["old"]) == _digests(results["new"])
        print(f"A/B {name}: wall {wall}, cpu {cpu}", file=sys.stderr)
        o, n = median(wall["old"]), median(wall["new"])
        oc, nc = median(cpu["old"]), median(cpu["new"])
        rows.append(
            f"| {name} | {o:.2f} s ({oc:.2f} CPU-s) | {n:.2f} s ({nc:.2f} CPU-s) "
            f"| {n / o:.2f}x | {nc / oc:.2f}x |"
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--ab", metavar="REV", help="also time the hashing code of git REV")
    args = parser.parse_args()

    need = 12 * GIB
    free = shutil.disk_usage(ROOT).free
    datasets = {
        "4 x 1 GiB": [WORK / "dir4" / f"shard-{i}.bin" for i in range(4)],
        "1 x 8 GiB": [WORK / "one8" / "model.bin"],
    }
    missing = sum(
        (GIB if "dir4" in str(p) else 8 * GIB)
        for files in datasets.values()
        for p in files
        if not p.exists()
    )
    if missing and free < missing + 4 * GIB:
        raise SystemExit(f"not enough disk: need {need / GIB:.0f} GiB, {free / GIB:.1f} free")
    for i, p in enumerate(datasets["4 x 1 GiB"]):
        ensure_file(p, GIB, i)
    ensure_file(datasets["1 x 8 GiB"][0], 8 * GIB, 100)

    keys = WORK / "keys"
    keys.mkdir(exist_ok=True)
    tw_key = keys / "tw"
    if not tw_key.exists():
        subprocess.run([*TRAINWARDEN, "keygen", str(tw_key), "--identity", "bench"], check=True)
    ec_key, ec_pub = keys / "ec.key", keys / "ec.pub"
    if not ec_key.exists():
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        key = ec.generate_private_key(ec.SECP256R1())
        ec_key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        ec_pub.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    have_ms = MS_BIN.exists()
    if not have_ms:
        print(f"model-signing not installed at {MS_BIN}; run tools/install-peers", file=sys.stderr)

    load_start = os.getloadavg()[0]
    threads = cpu_count()
    limits = [sha256_limit(threads)]
    in_process: list[tuple[str, int, float]] = []
    single = sha256_limit(1)
    rows = []
    for name, files in datasets.items():
        model = files[0].parent
        total = sum(p.stat().st_size for p in files)
        warm(files)
        tw_sig = WORK / f"{model.name}.tw.sig"
        ms_sig = WORK / f"{model.name}.ms.sig"
        commands = {
            ("trainwarden", "sign"): [
                *TRAINWARDEN,
                "sign",
                str(model),
                "--key",
                str(tw_key),
                "--sig",
                str(tw_sig),
            ],
            ("trainwarden", "verify"): [
                *TRAINWARDEN,
                "verify",
                str(model),
                "--pubkey",
                f"{tw_key}.pub",
                "--sig",
                str(tw_sig),
            ],
        }
        if have_ms:
            commands[("model-signing", "sign")] = [
                str(MS_BIN),
                "sign",
                "key",
                str(model),
                "--private_key",
                str(ec_key),
                "--signature",
                str(ms_sig),
            ]
            commands[("model-signing", "verify")] = [
                str(MS_BIN),
                "verify",
                "key",
                str(model),
                "--public_key",
                str(ec_pub),
                "--signature",
                str(ms_sig),
            ]
        # Interleave the tools within each run, so that load from other processes on a
        # shared machine falls on both alike.
        times: dict[tuple[str, str], list[float]] = {key: [] for key in commands}
        for _ in range(args.runs):
            for key in sorted(commands, key=lambda k: (k[1] != "sign", k[0])):
                times[key].append(timed(commands[key]))
        # The same hashing in-process (no interpreter start-up, no signature I/O).
        from trainwarden.manifest import hash_tree, walk_tree

        api = []
        for _ in range(args.runs):
            start = time.perf_counter()
            hash_tree(walk_tree(model))
            api.append(time.perf_counter() - start)
        in_process.append((name, total, median(api)))
        limits.append(sha256_limit(threads))
        results = {key: median(values) for key, values in times.items()}
        for key, values in times.items():
            print(f"{name} {key[0]} {key[1]}: {[round(t, 2) for t in values]}", file=sys.stderr)
        for op in ("sign", "verify"):
            tw = results[("trainwarden", op)]
            ms = results.get(("model-signing", op))
            rows.append((name, op, total, tw, ms))
    ab = ab_rows(args.ab, datasets, max(args.runs, 6)) if args.ab else []
    # Other processes can only slow the measurement down: the best one is the machine's limit.
    limit = max(limits)
    print(
        f"sha256 limit: {[round(x / 1e9, 2) for x in limits]} GB/s with {threads} threads, "
        f"{single / 1e9:.2f} GB/s with 1",
        file=sys.stderr,
    )
    table = []
    for name, op, total, tw, ms in rows:
        floor = total / limit
        versus = (
            f"{ms:.2f} s ({total / ms / 1e9:.2f} GB/s) | {ms / tw:.2f}x |" if ms else "n/a | n/a |"
        )
        table.append(
            f"| {name} | {op} | {tw:.2f} s ({total / tw / 1e9:.2f} GB/s) | {versus} "
            f"{floor:.2f} s | {tw / floor:.2f}x |"
        )

    body = "\n".join(
        [
            "## sign: `trainwarden sign/verify` vs `model_signing sign key/verify key`",
            "",
            f"Warm page cache, {threads} CPUs shared with other jobs (load average "
            f"{load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end), median of "
            f"{args.runs} whole-process runs. "
            f"Parallel SHA-256 limit measured in the same run: {limit / 1e9:.2f} GB/s "
            f"({threads} threads hashing in-memory buffers; {single / 1e9:.2f} GB/s on one). "
            "model-signing 1.1.1 with a P-256 key (its CLI signs with whole-file digests); "
            "trainwarden with Ed25519 and 256 MiB shards.",
            "",
            "| data | op | trainwarden | model-signing | speed-up | sha256 limit | tw / limit |",
            "|---|---|---|---|---|---|---|",
            *table,
            "",
            "trainwarden's hashing alone, in-process (no interpreter start-up): "
            + "; ".join(
                f"{name}: {t:.2f} s, {total / t / 1e9:.2f} GB/s = "
                f"{t / (total / limit):.2f}x the limit"
                for name, total, t in in_process
            )
            + ".",
            "",
            *(
                [
                    f"Refactor check, in-process, alternating A B B A: the manifest hashing "
                    f"code of revision `{args.ab}` (before the change detection and the move "
                    f"to `trainwarden.manifest`) against this tree's (same digests asserted), "
                    f"median of {max(args.runs, 6)} each; CPU-seconds of the whole process.",
                    "",
                    f"| data | `{args.ab}` | this tree | wall: this / `{args.ab}` "
                    f"| CPU: this / `{args.ab}` |",
                    "|---|---|---|---|---|",
                    *ab,
                    "",
                ]
                if ab
                else []
            ),
            "Goal: faster than model-signing, and within 1.2x of the limit. Reproduce: "
            "`python benchmarks/bench_sign.py` (needs 12 GiB free under benchmarks/_work).",
            "",
            "The remaining gap to the limit is the copy from the page cache into each "
            "thread's buffer (positional `preadv`; memory-mapping would avoid it but a file "
            "truncated during verification would then kill the verifier with SIGBUS) plus "
            "interpreter start-up. On a shared, loaded machine both tools slow down alike "
            "and the limit drops with them, so compare the ratios, not the seconds. Every "
            "shard also checks its file's identity (device, inode, size, mtime, ctime) "
            "before and after it is read, so a file rewritten while it is hashed is refused "
            "(two fstat calls per 256 MiB: not measurable here).",
        ]
    )
    print(body)
    if not args.no_write:
        write_section("sign", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
