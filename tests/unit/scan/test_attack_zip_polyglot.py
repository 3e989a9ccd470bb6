"""A file of any format that also ends with a zip is a zip to ``zipfile``.

``zipfile`` finds an archive by its end record, whatever precedes it, and Keras, skops and
anything built on ``zipfile`` read it that way; the scanner looked for a zip behind leading
bytes only when it recognised no other format. Each prefix here is a complete, valid file of
its own format (the catalogue's ``keras-lambda-behind-gzip`` proves a loader real).
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import pickle
import struct
import zipfile

import pytest

from trainwarden.findings import Verdict
from trainwarden.scan import scan_bytes

_EVIL = b"\x80\x04\x8c\x05posix\x8c\x06system\x93\x8c\x04true\x85R."


def _zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("model.pkl", _EVIL)
    return out.getvalue()


def _safetensors() -> bytes:
    header = json.dumps({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}).encode()
    return struct.pack("<Q", len(header)) + header + b"\1\2\3\4"


def _npy() -> bytes:
    header = b"{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }"
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\0" * 8


_PREFIXES = {
    "gzip": gzip.compress(b"hello", mtime=0),
    "bz2": bz2.compress(b"hello"),
    "xz": lzma.compress(b"hello"),
    "lzma-alone": lzma.compress(b"hello", format=lzma.FORMAT_ALONE),
    "pickle": pickle.dumps({"weights": [0.5, 0.25]}),
    "npy": _npy(),
    "safetensors": _safetensors(),
}


@pytest.mark.parametrize("prefix", sorted(_PREFIXES))
def test_zip_behind_a_valid_file_is_analysed(prefix: str) -> None:
    data = _PREFIXES[prefix] + _zip()
    assert zipfile.ZipFile(io.BytesIO(data)).read("model.pkl") == _EVIL  # zipfile reads it
    report = scan_bytes(data)
    assert report.verdict is Verdict.UNSAFE, [f.rule_id for f in report.findings]


@pytest.mark.parametrize("prefix", sorted(_PREFIXES))
def test_valid_files_without_a_zip_stay_as_they_were(prefix: str) -> None:
    report = scan_bytes(_PREFIXES[prefix])
    assert not any(f.rule_id == "archive.zip-polyglot" for f in report.findings)
