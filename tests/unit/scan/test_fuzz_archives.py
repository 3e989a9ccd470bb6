"""Fuzz the archive and header readers: mutated real files never crash a reader.

A reader exception would be caught and turned into an ``error`` verdict (fail closed), so
the property checked is stronger: no reader raises at all, and mutated input is never
reported with an internal error. Bounded: small inputs, a fixed number of examples.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import pickle
import struct
import tarfile
import zipfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainwarden.findings import Verdict
from trainwarden.scan import DEFAULT_LIMITS, scan_bytes

_LIMITS = DEFAULT_LIMITS.replace(max_seconds=5, max_member_bytes=1 << 20)


def _zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"a": 1}, protocol=2))
        zf.writestr("archive/version", b"3\n")
        zf.writestr("archive/data/0", b"\0" * 8)
    with zipfile.ZipFile(out, "a", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/extra.pkl", pickle.dumps([1, 2, 3]))
    return out.getvalue()


def _tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in (("a.pkl", pickle.dumps(1)), ("b.txt", b"hello")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _safetensors() -> bytes:
    header = json.dumps({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}).encode()
    return struct.pack("<Q", len(header)) + header + b"\1\2\3\4"


def _gguf() -> bytes:
    def s(text: str) -> bytes:
        return struct.pack("<Q", len(text)) + text.encode()

    out = b"GGUF" + struct.pack("<IQQ", 3, 1, 1) + s("general.name") + struct.pack("<I", 8)
    out += s("x") + s("t") + struct.pack("<IQIQ", 1, 4, 0, 0)
    return out + b"\0" * (-len(out) % 32) + b"\0" * 32


def _npy() -> bytes:
    header = b"{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }"
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\0" * 8


def _joblib() -> list[bytes]:
    try:
        import joblib
        import numpy as np
    except ImportError:  # the other seeds still run
        return []
    out = io.BytesIO()
    joblib.dump({"a": np.arange(6, dtype=np.int16), "o": np.array([1, None], dtype=object)}, out)
    return [out.getvalue()]


_SEEDS = [
    *_joblib(),
    _zip(),
    _tar(),
    gzip.compress(_tar()),
    bz2.compress(pickle.dumps([1, 2])),
    lzma.compress(pickle.dumps({"k": "v"})),
    _safetensors(),
    _gguf(),
    _npy(),
]


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        action = draw(st.sampled_from(["flip", "cut", "insert", "overwrite"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if action == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif action == "cut":
            del data[pos:]
        elif action == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif data:
            value = draw(st.sampled_from([0, 0xFF, 0x7FFFFFFF, 0xFFFFFFFF]))
            chunk = struct.pack("<I", value)
            data[pos : pos + 4] = chunk
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated())
def test_mutated_containers_never_crash_a_reader(data: bytes) -> None:
    report = scan_bytes(data, limits=_LIMITS)
    internal = [f for f in report.findings if f.rule_id.startswith("scan.")]
    assert not internal, internal
    if report.verdict is Verdict.SAFE:
        # Safe means nothing needed reporting: no finding forces a verdict.
        assert all(f.verdict is Verdict.SAFE for f in report.findings)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_never_crash(data: bytes) -> None:
    report = scan_bytes(data, limits=_LIMITS)
    assert not [f for f in report.findings if f.rule_id.startswith("scan.")]
