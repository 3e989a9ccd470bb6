"""Fuzzing the pickle machine: random and mutated pickles, and a differential oracle.

The oracle is CPython's own C unpickler in a memory-capped subprocess, with a ``find_class``
that records the names and returns inert stub classes: nothing is ever imported. The machine
must see every import the real loader performs and must never stop before the loader does.
"""

from __future__ import annotations

import collections
import datetime
import json
import pickle
import random
import struct
import subprocess
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainwarden.findings import Location, Verdict
from trainwarden.scan._limits import Limits
from trainwarden.scan._pickle import (
    UNRESOLVED,
    analyse_pickle,
    analyse_pickle_stream,
    compat_name,
)
from trainwarden.scan.policy import Policy

SMALL = Limits(max_opcodes=20_000, max_memo=2_000, max_stack_depth=2_000, max_seconds=5.0)
POLICY = Policy.default()


def _su(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def _seeds() -> list[bytes]:
    objects: list[object] = [
        {"w": [1.5, 2, "x", b"y", None, True], "n": {"a": (1, 2, 3)}},
        collections.OrderedDict(a=[1, 2], b={3}),
        [frozenset({1, 2}), set(), bytearray(b"zz"), complex(1, 2), range(4)],
        datetime.date(2020, 1, 1),
        ("s" * 40, 2**80, -5, 3.25),
    ]
    out = [pickle.dumps(o, protocol=p) for o in objects for p in range(6)]
    # Several 64 KiB frames, and a memo past 256 entries (LONG_BINPUT / LONG_BINGET).
    shared = [f"s{i}" for i in range(400)]
    out += [pickle.dumps([shared, shared, list(range(20000))], protocol=p) for p in (2, 4, 5)]
    # Attack-shaped pickles: the oracle never imports, so these are harmless here.
    out += [
        b"cos\nsystem\n(S'echo x'\ntR.",
        b"\x80\x04" + _su("os") + b"\x94" + _su("system") + b"\x94\x93" + _su("id") + b"\x85R.",
        b"(S'x'\nios\nsystem\n.",
        b"\x80\x02c__builtin__\neval\nX\x01\x00\x00\x001\x85R.",
        b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00" + _su("a") + _su("b") + b"\x93)R.",
        b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\n"
        b"FloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQK\x00tR.",
    ]
    return out


SEEDS = _seeds()

_OPCODE_BYTES = [
    b"(", b".", b"0", b"1", b"2", b"N", b"R", b"b", b"a", b"e", b"s", b"u", b"t", b")", b"]",
    b"}", b"l", b"d", b"o", b"\x81", b"\x92", b"\x93", b"\x94", b"\x85", b"\x86", b"\x87",
    b"\x88", b"\x89", b"\x8f", b"\x90", b"\x91", b"\x97", b"\x98", b"Q", b"h\x00", b"h\x01",
    b"q\x00", b"q\x01", b"K\x07", b"\x82\x01", b"\x80\x02", b"\x80\x04", b"cos\nsystem\n",
    b"S'os'\n", _su("os"), _su("system"), b"\x95\x05\x00\x00\x00\x00\x00\x00\x00",
]  # fmt: skip


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(5)
        at = rng.randrange(len(buf) + 1)
        if kind == 0 and buf:
            buf[min(at, len(buf) - 1)] = rng.randrange(256)
        elif kind == 1:
            buf[at:at] = rng.choice(_OPCODE_BYTES)
        elif kind == 2 and buf:
            del buf[at : at + rng.randint(1, 4)]
        elif kind == 3:
            buf = buf[:at]
        else:
            other = rng.choice(SEEDS)
            cut = rng.randrange(len(other) + 1)
            buf[at:at] = other[cut : cut + rng.randint(1, 16)]
    return bytes(buf)


def _check(data: bytes) -> None:
    a = analyse_pickle(data, limits=SMALL)
    assert 0 <= a.start <= a.end <= len(data)
    assert all(i.verdict is not Verdict.SAFE for i in a.issues)
    if a.complete:
        assert data[a.end - 1 : a.end] == b"."
    else:
        # An incomplete analysis always says why, so the file can never come out safe.
        assert a.issues
        findings = POLICY.judge(a, Location("fuzz"))
        assert any(f.verdict is not Verdict.SAFE for f in findings)
    if a.globals:
        assert a.first_import_offset is not None
    analyses, end = analyse_pickle_stream(data, limits=SMALL, max_pickles=20)
    assert 0 <= end <= len(data)
    ends = [x.end for x in analyses]
    assert ends == sorted(ends)


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(seed=st.sampled_from(SEEDS), rnd=st.randoms(use_true_random=False))
def test_mutated_pickles_never_crash(seed: bytes, rnd: random.Random) -> None:
    _check(_mutate(rnd, seed))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(data=st.binary(max_size=200))
def test_random_bytes_never_crash(data: bytes) -> None:
    _check(data)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    parts=st.lists(st.sampled_from(_OPCODE_BYTES), max_size=40),
    tail=st.sampled_from([b".", b"", b"\x00"]),
)
def test_opcode_soup_never_crashes(parts: list[bytes], tail: bytes) -> None:
    _check(b"".join(parts) + tail)


# -- the differential oracle ---------------------------------------------------------------------

_ORACLE = r"""
import io, json, pickle, resource, struct, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
class Stub:
    def __init__(self, *a, **k): pass
    def __call__(self, *a, **k): return Stub()
    def __setstate__(self, state): pass
    def extend(self, items): pass
    def append(self, item): pass
    def add(self, item): pass
    def __setitem__(self, key, value): pass
class Recorder:
    def find_class(self, module, name):
        self.seen.append([module, name])
        if not module or not name:
            raise ValueError("empty name")  # as __import__("") / getattr(module, "") do
        return type("G", (Stub,), {})
    def persistent_load(self, pid):
        return Stub()
blob = open(sys.argv[1], "rb").read()
out = []
pos = 0
while pos < len(blob):
    (n,) = struct.unpack_from("<I", blob, pos)
    data = blob[pos + 4 : pos + 4 + n]
    pos += 4 + n
    row = {}
    with open("sample.pkl", "wb") as out_file:
        out_file.write(data)
    for kind, base in (("c", pickle.Unpickler), ("py", pickle._Unpickler), ("file", None)):
        base = base or pickle.Unpickler
        cls = type("R", (Recorder, base), {"find_class": Recorder.find_class,
                                           "persistent_load": Recorder.persistent_load})
        f = open("sample.pkl", "rb") if kind == "file" else io.BytesIO(data)
        r = cls(f)
        r.seen = []
        try:
            r.load()
            ok, end = True, f.tell()
        except BaseException:
            ok, end = False, -1
        row[kind] = {"ok": ok, "end": end, "seen": r.seen}
        f.close()
    out.append(row)
print(json.dumps(out))
"""


def test_machine_sees_every_import_of_the_c_unpickler(tmp_path: Path) -> None:
    rng = random.Random(20240601)
    samples = list(SEEDS)
    samples.extend(_mutate(rng, rng.choice(SEEDS)) for _ in range(600))
    blob = b"".join(struct.pack("<I", len(s)) + s for s in samples)
    path = tmp_path / "samples.bin"
    path.write_bytes(blob)
    script = tmp_path / "oracle.py"
    script.write_text(_ORACLE)
    proc = subprocess.run(
        [sys.executable, "-I", str(script), str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        cwd=tmp_path,
    )
    results = json.loads(proc.stdout)
    assert len(results) == len(samples)
    loaded = 0
    for data, row in zip(samples, results, strict=True):
        a = analyse_pickle(data)
        ours = {(g.module, g.name) for g in a.globals if g.resolved}
        has_unresolved = any(not g.resolved for g in a.globals)
        for kind, res in row.items():
            for module, name in res["seen"]:
                if not module:
                    continue  # __import__("") raises before importing anything
                mapped = compat_name(module, name)
                assert (module, name) in ours or mapped in ours or has_unresolved, (kind, data)
            split = any(i.rule_id == "pickle.frame-split" for i in a.issues)
            if res["ok"] and not split:
                loaded += 1
                # The loader finished: the machine must not have stopped earlier.
                assert a.complete, (kind, data, a.issues)
                if kind == "c":
                    assert a.read_end == res["end"], data
        assert UNRESOLVED not in {g.module for g in a.globals if g.resolved}
    assert loaded > 100  # the corpus exercises successful loads, not only failures


# -- multi-pickle streams with inserted FRAME opcodes, read by every reader -----------------------

_STREAM_ORACLE = r"""
import io, json, pickle, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
class Stub:
    def __init__(self, *a, **k): pass
    def __call__(self, *a, **k): return Stub()
    def __setstate__(self, state): pass
    def extend(self, items): pass
    def append(self, item): pass
    def add(self, item): pass
    def __setitem__(self, key, value): pass
def recorder(base, seen):
    class R(base):
        def find_class(self, module, name):
            seen.append([module, name])
            if not module or not name:
                raise ValueError("empty name")
            return type("G", (Stub,), {})
        def persistent_load(self, pid):
            return Stub()
    return R
def loads_until_error(make_file, base, reuse, seen):
    f = make_file()
    loads = 0
    unpickler = recorder(base, seen)(f) if reuse else None
    try:
        while loads < 20:
            u = unpickler if reuse else recorder(base, seen)(f)
            try:
                u.load()
            except BaseException:
                break
            loads += 1
    finally:
        f.close()
    return loads
blob = open(sys.argv[1], "rb").read()
samples = json.loads(open(sys.argv[2]).read())
out = []
for start, end in samples:
    data = blob[start:end]
    with open("sample.pkl", "wb") as fh:
        fh.write(data)
    readers = {
        "c-bytes": (lambda: io.BytesIO(data), pickle.Unpickler, False, 1),
        "c-file": (lambda: open("sample.pkl", "rb"), pickle.Unpickler, False, 20),
        "c-file-16": (lambda: open("sample.pkl", "rb", buffering=16), pickle.Unpickler, False, 20),
        "c-bytesio": (lambda: io.BytesIO(data), pickle.Unpickler, False, 20),
        "c-reused": (lambda: open("sample.pkl", "rb"), pickle.Unpickler, True, 20),
        "py-file": (lambda: open("sample.pkl", "rb"), pickle._Unpickler, False, 20),
        "py-reused": (lambda: open("sample.pkl", "rb"), pickle._Unpickler, True, 20),
    }
    row = {}
    for kind, (make, base, reuse, cap) in readers.items():
        seen = []
        if kind == "c-bytes":
            try:
                recorder(base, seen)(make()).load()
            except BaseException:
                pass
        else:
            loads_until_error(make, base, reuse, seen)
        row[kind] = seen
    out.append(row)
print(json.dumps(out))
"""


def _frame_op(length: int) -> bytes:
    return b"\x95" + struct.pack("<Q", length)


def _insert_frames(rng: random.Random, data: bytes) -> bytes:
    """Insert 1-3 FRAME opcodes at opcode-ish positions, with lengths that end anywhere."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        at = rng.choice([2, 2, 0, rng.randrange(len(buf) + 1)]) if buf else 0
        at = min(at, len(buf))
        rest = len(buf) - at
        length = rng.choice(
            [0, rng.randint(0, max(0, rest)), rest, rest + rng.randint(1, 8), rng.randint(1, 12)]
        )
        buf[at:at] = _frame_op(length)
    return bytes(buf)


def _stream_samples(rng: random.Random, count: int) -> list[bytes]:
    payloads = [
        b"\x80\x04" + _su("posix") + _su("system") + b"\x93" + _su("true") + b"\x85R.",
        b"cos\nsystem\n(S'true'\ntR.",
        b"\x80\x02c__builtin__\neval\nX\x01\x00\x00\x001\x85R.",
    ]
    benign = [pickle.dumps(o, protocol=p) for o in (1, [1, 2], {"a": b"xy"}) for p in (2, 4, 5)]
    out: list[bytes] = []
    for _ in range(count):
        parts = [rng.choice(benign + payloads) for _ in range(rng.randint(1, 3))]
        data = b"".join(parts)
        data = _insert_frames(rng, data)
        if rng.random() < 0.3:
            data = _mutate(rng, data)
        out.append(data)
    return out


def test_machine_follows_every_reader_through_frames_and_streams(tmp_path: Path) -> None:
    # The scanner must see every import any real reader performs in a stream of pickles read
    # by repeated loads on one handle: bytes, buffered files (large and tiny buffers),
    # io.BytesIO, pickle._Unpickler, and reused unpicklers, with FRAMEs that end anywhere.
    rng = random.Random(20261203)
    samples = _stream_samples(rng, 500)
    blob = b"".join(samples)
    spans, pos = [], 0
    for s in samples:
        spans.append([pos, pos + len(s)])
        pos += len(s)
    (tmp_path / "samples.bin").write_bytes(blob)
    (tmp_path / "spans.json").write_text(json.dumps(spans))
    script = tmp_path / "oracle.py"
    script.write_text(_STREAM_ORACLE)
    proc = subprocess.run(
        [sys.executable, "-I", str(script), "samples.bin", "spans.json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
        cwd=tmp_path,
    )
    results = json.loads(proc.stdout)
    assert len(results) == len(samples)
    imports_seen = 0
    for data, row in zip(samples, results, strict=True):
        analyses, _ = analyse_pickle_stream(data, limits=SMALL, max_pickles=20)
        ours: set[tuple[str, str]] = set()
        unresolved = False
        for a in analyses:
            for view in (a, a.shared_memo):
                if view is None:
                    continue
                ours.update((g.module, g.name) for g in view.globals if g.resolved)
                unresolved = unresolved or any(not g.resolved for g in view.globals)
        for kind, seen in row.items():
            for module, name in seen:
                if not module:
                    continue
                imports_seen += 1
                mapped = compat_name(module, name)
                assert (module, name) in ours or mapped in ours or unresolved, (kind, data)
    assert imports_seen > 300  # the corpus makes readers import, not only fail
