"""joblib.dump of NumPy 2 StringDType arrays: read like object arrays, not given up on.

joblib writes a StringDType array's wrapper with the dtype pickled as
``numpy._core._internal._convert_to_stringdtype_kwargs(...)`` (not ``numpy.dtype("T")``) and,
the dtype having ``hasobject``, pickles the strings after it, as for an object array. The
scanner followed only ``numpy.dtype`` specs and called the file ``unknown`` (not analysed);
it now reads the nested pickle: a legitimate file is safe, a malicious one still unsafe.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from trainwarden.findings import Verdict
from trainwarden.scan import scan_path

np = pytest.importorskip("numpy")
joblib = pytest.importorskip("joblib")


def _dump(path: Path, **arrays: object) -> bytes:
    joblib.dump(arrays, path)
    return path.read_bytes()


def test_stringdtype_array_in_joblib_is_safe(tmp_path: Path) -> None:
    path = tmp_path / "vocab.joblib"
    _dump(path, names=np.array(["hello", "world"], dtype="T"), weights=np.arange(3.0))
    assert scan_path(path).files[0].verdict is Verdict.SAFE


def test_malicious_strings_of_a_stringdtype_array_are_found(tmp_path: Path) -> None:
    path = tmp_path / "vocab.joblib"
    data = _dump(path, names=np.array(["hello", "world"], dtype="T"))
    # joblib pickles the array's strings after the wrapper: swap that pickle for another.
    start = data.index(b"\x80", data.index(b"ub") + 1)
    end = data.index(b".", data.index(b"world")) + 1
    evil = pickle.dumps(os.system, protocol=4)[:-1] + b"\x8c\x04true\x85R."
    path.write_bytes(data[:start] + evil + data[end:])
    assert scan_path(path).files[0].verdict is Verdict.UNSAFE
