"""pickle_load(s), numpy_load and joblib_load keep their library's semantics under the policy."""

from __future__ import annotations

import io
import os
import pickle
from collections import OrderedDict
from pathlib import Path

import pytest

from canary import Canary
from trainwarden.errors import UnsafeModelError
from trainwarden.load import joblib_load, numpy_load, pickle_load, pickle_loads

np = pytest.importorskip("numpy")


class _System:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


def test_pickle_stream_reads_one_pickle_at_a_time() -> None:
    stream = io.BytesIO(pickle.dumps(OrderedDict(a=1)) + pickle.dumps({2, 3}))
    assert pickle_load(stream) == OrderedDict(a=1)
    assert pickle_load(stream) == {2, 3}
    assert stream.read() == b""


def test_pickle_loads_protocols_and_py2_names() -> None:
    value = {"a": [1, 2.5, None], "b": frozenset({1}), "c": b"x", "d": bytearray(b"y")}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert pickle_loads(pickle.dumps(value, protocol=protocol)) == value
    # Protocol 0-2 pickles written by Python 2 name `__builtin__`; mapped like CPython does.
    assert pickle_loads(b"c__builtin__\nset\n((lp0\nI1\natp1\nRp2\n.") == {1}


def test_pickle_loads_refuses(canary: Canary) -> None:
    with pytest.raises(UnsafeModelError) as info:
        pickle_loads(pickle.dumps(_System(canary.shell_command)))
    canary.assert_absent()
    finding = info.value.report.files[0].findings[0]
    assert finding.evidence in ("posix.system", "os.system")
    assert info.value.report.files[0].sha256


def test_numpy_without_allow_pickle_is_numpy(tmp_path: Path) -> None:
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle"):
        numpy_load(path)
    assert numpy_load(path, allow_pickle=True)[0] == {"a": 1}


def test_numpy_npz_object_member_refused_lazily(tmp_path: Path, canary: Canary) -> None:
    good = tmp_path / "good.npz"
    np.savez(good, a=np.arange(3), o=np.array([{"k": (1, "x")}], dtype=object))
    with numpy_load(good, allow_pickle=True) as npz:
        assert npz["a"].tolist() == [0, 1, 2]
        assert npz["o"][0] == {"k": (1, "x")}
    evil = tmp_path / "evil.npz"
    np.savez(evil, o=np.array([_System(canary.shell_command)], dtype=object))
    with pytest.raises(UnsafeModelError):
        numpy_load(evil, allow_pickle=True)
    canary.assert_absent()


def test_numpy_mmap_mode(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    np.save(path, np.arange(10, dtype=np.float32))
    mapped = numpy_load(path, mmap_mode="r", allow_pickle=True)
    assert isinstance(mapped, np.memmap)
    assert mapped.tolist() == list(range(10))


def test_joblib_mmap_and_compression(tmp_path: Path) -> None:
    joblib = pytest.importorskip("joblib")
    value = {"x": np.arange(1000, dtype=np.float64), "o": np.array([{"k": 1}], dtype=object)}
    plain, packed = tmp_path / "plain.joblib", tmp_path / "packed.joblib"
    joblib.dump(value, plain)
    joblib.dump(value, packed, compress=("zlib", 3))
    for path in (plain, packed):
        got = joblib_load(path)
        assert got["x"].tolist() == value["x"].tolist()
        assert got["o"][0] == {"k": 1}
    mapped = joblib_load(plain, mmap_mode="r")
    assert isinstance(mapped["x"], np.memmap)
    assert mapped["x"].tolist() == value["x"].tolist()
