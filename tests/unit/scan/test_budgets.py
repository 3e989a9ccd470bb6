"""Hostile inputs stay inside the memory and work budgets (issue 8, "Budgets").

Memory is measured as the peak RSS of a fresh interpreter scanning one input (a subprocess, so
nothing else in the test process counts); work is counted with spies on the real functions
(opcodes executed, bytes decompressed, members dispatched), never with a clock: time belongs
in benchmarks/bench_scan.py.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

from trainwarden.findings import Verdict
from trainwarden.scan import DEFAULT_LIMITS, scan_bytes
from trainwarden.scan._formats import _base, _dispatch

MiB = 1 << 20


def _su(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


# -- memory ---------------------------------------------------------------------------------------

_RSS_PROBE = r"""
import json, resource, sys
from trainwarden.scan import scan_bytes
data = open(sys.argv[1], "rb").read()
scan_bytes(b"\x80\x04K\x01.")  # warm: imports and caches count in the baseline
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
report = scan_bytes(data)
after = peak_kib()
limits = sorted({f.rule_id for f in report.findings if f.rule_id.startswith("limit.")})
print(json.dumps({"grew_kib": after - before, "verdict": report.verdict.value, "limits": limits}))
"""

# Inputs whose symbolic state grew far faster than their size before the live-memory budget:
# a 4.9 MB pickle of MEMOIZE opcodes peaked at 350 MB (a dict entry and an int per entry).
_MEMORY_BOMBS = {
    "memoize": b"\x80\x04N" + b"\x94" * 4_900_000 + b".",
    "tuple1-memo": b"\x80\x04" + b"N\x85\x940" * 1_200_000 + b"N.",
    "wide-tuples": b"\x80\x04" + (b"(" + b"N" * 64 + b"t\x940") * 70_000 + b"N.",
    "distinct-globals": b"\x80\x04"
    + b"".join(_su(f"m{i}") + _su("n") + b"\x930" for i in range(150_000))
    + b"N.",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(_MEMORY_BOMBS))
def test_memory_bombs_stay_far_below_the_memory_limit(name: str, tmp_path: Path) -> None:
    sample = tmp_path / "bomb.pkl"
    sample.write_bytes(_MEMORY_BOMBS[name])
    script = tmp_path / "probe.py"
    script.write_text(_RSS_PROBE)
    proc = subprocess.run(
        [sys.executable, str(script), str(sample)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    got = json.loads(proc.stdout)
    # The input itself is ~5 MB; the whole scan must stay well inside max_memory (256 MiB).
    assert got["grew_kib"] * 1024 < DEFAULT_LIMITS.max_memory // 2, got
    assert got["verdict"] != Verdict.SAFE.value or not got["limits"], got


def test_live_memory_budget_stops_a_pickle_with_a_reason() -> None:
    # A budget small enough to hit: the run stops with limit.memory, never a crash or "safe".
    limits = DEFAULT_LIMITS.replace(max_memory=8 * MiB)
    report = scan_bytes(b"\x80\x04" + b"N\x85\x940" * 400_000 + b"N.", limits=limits)
    assert report.verdict is Verdict.UNKNOWN
    assert any(f.rule_id == "limit.memory" for f in report.findings)


def test_memo_of_dense_keys_is_a_list() -> None:
    from trainwarden.scan._pickle.machine import Memo

    memo = Memo()
    for i in range(1000):
        memo.put(i, i)
    memo.put(5000, "far")
    memo.put(1000, "next")
    assert len(memo.dense) == 1001
    assert memo.sparse == {5000: "far"}
    assert memo.get(5000) == "far"
    assert memo.get(999) == 999
    assert len(memo) == 1002


# -- work: opcodes ------------------------------------------------------------------------------


def _stored_zip(members: dict[str, bytes]) -> bytes:
    body, cd = b"", b""
    for name, data in members.items():
        raw = name.encode()
        crc = zlib.crc32(data)
        header = struct.pack(
            "<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 0, 0, 0, crc, len(data), len(data), len(raw), 0
        )
        cd += struct.pack(
            "<4sHHHHHHIIIHHHHHII",
            b"PK\x01\x02", 20, 20, 0, 0, 0, 0, crc, len(data), len(data), len(raw),
            0, 0, 0, 0, 0, len(body),
        ) + raw  # fmt: skip
        body += header + raw + data
    eocd = struct.pack(
        "<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(members), len(members), len(cd), len(body), 0
    )
    return body + cd + eocd


def test_opcode_budget_is_per_input_not_per_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    # 40 members of 60k opcodes each: 2.4M opcodes in all, over a 1M budget. Each member
    # alone is within it; the budget counts the whole input, so work stops at ~1M.
    limits = DEFAULT_LIMITS.replace(max_opcodes=1_000_000)
    member = b"\x80\x04" + b"N0" * 30_000 + b"N."
    data = _stored_zip({f"m{i}.pkl": member for i in range(40)})
    spent: list[int] = []
    original = _base.Context.finish

    def spy(self: Any) -> None:
        spent.append(self.opcodes_used)
        original(self)

    monkeypatch.setattr(_base.Context, "finish", spy)
    report = scan_bytes(data, limits=limits)
    assert report.verdict is not Verdict.SAFE
    assert any(f.rule_id == "limit.opcodes" for f in report.findings)
    assert spent
    assert spent[0] <= limits.max_opcodes + 5_000


def test_frame_readings_share_the_opcode_budget() -> None:
    # Every FRAME splits an argument: each split doubles the readings. They are capped and
    # share one opcode budget, so a file of such splits cannot multiply the work.
    def frame(n: int) -> bytes:
        return b"\x95" + struct.pack("<Q", n)

    body = b"\x80\x04"
    for _ in range(12):
        body += frame(3) + b"\x8c\x02ab0"  # SHORT_BINUNICODE "ab" runs past the 3-byte frame
    body += b"N."
    report = scan_bytes(body)
    rules = {f.rule_id for f in report.findings}
    assert "pickle.frame-split" in rules
    assert "limit.readings" in rules
    assert report.verdict is not Verdict.SAFE


# -- work: archives -------------------------------------------------------------------------------


def _zip_one_span(inner: bytes, copies: int, *, deflate: bool) -> bytes:
    """A zip whose ``copies`` central-directory entries all point at one local header."""
    data = zlib.compress(inner, 9)[2:-4] if deflate else inner
    method = 8 if deflate else 0
    crc = zlib.crc32(inner)
    header = struct.pack(
        "<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, method, 0, 0, crc, len(data), len(inner), 1, 0
    )
    body = header + b"m" + data
    cd = b""
    for i in range(copies):
        name = f"m{i}".encode()
        cd += struct.pack(
            "<4sHHHHHHIIIHHHHHII",
            b"PK\x01\x02", 20, 20, 0, method, 0, 0, crc, len(data), len(inner), len(name),
            0, 0, 0, 0, 0, 0,
        ) + name  # fmt: skip
    eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, copies, copies, len(cd), len(body), 0)
    return body + cd + eocd


def test_nested_fan_out_zip_is_analysed_once_per_level(monkeypatch: pytest.MonkeyPatch) -> None:
    # 8 levels of zips whose 10 entries share one span: 10^8 paths through 4 KB of bytes
    # (took 6-7 s). Each distinct span is analysed once.
    data = b"\x80\x04K\x01."
    for _ in range(8):
        data = _zip_one_span(data, 10, deflate=False)
    assert len(data) < 10_000
    calls: list[str | None] = []
    original = _dispatch.analyse

    def spy(ctx: Any, blob: Any, member: str | None, depth: int) -> str:
        calls.append(member)
        return original(ctx, blob, member, depth)

    monkeypatch.setattr(_dispatch, "analyse", spy)
    report = scan_bytes(data)
    assert report.verdict is Verdict.UNKNOWN  # overlapping entries are reported
    assert len(calls) <= 2 * 9
    assert any(f.rule_id == "archive.same-content" for f in report.findings)


def test_overlapping_bomb_zip_inflates_its_data_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # 2,000 entries over one deflate stream of 64 MiB of zeros (a 160 KB file that took 6 s):
    # inflated once, and only until its ratio gives it away.
    data = _zip_one_span(b"\0" * (64 * MiB), 2000, deflate=True)
    assert len(data) < 200_000
    charged: list[int] = []
    original = _base.Context.charge

    def spy(self: Any, nbytes: int, member: str | None) -> None:
        charged.append(nbytes)
        original(self, nbytes, member)

    monkeypatch.setattr(_base.Context, "charge", spy)
    report = scan_bytes(data)
    assert report.verdict is Verdict.UNKNOWN
    assert any(f.rule_id == "limit.compression-ratio" for f in report.findings)
    assert sum(charged) <= 8 * MiB
    # Repeated findings are summarised: thousands of entries do not make thousands of lines.
    assert len(report.findings) < 200


def test_decompression_budget_scales_with_the_input() -> None:
    from trainwarden.scan._formats._base import Context

    small = Context(path="x", policy=None, limits=DEFAULT_LIMITS, input_size=100_000)  # type: ignore[arg-type]
    large = Context(path="x", policy=None, limits=DEFAULT_LIMITS, input_size=10 * 1024 * MiB)  # type: ignore[arg-type]
    assert small.decompression_budget == 100_000_000
    assert large.decompression_budget == DEFAULT_LIMITS.max_total_decompressed
