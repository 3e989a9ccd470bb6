"""Work bounds of the scanner: each pickle byte is parsed once, and the collector is restored.

Deterministic stand-ins for the 2 s time bound: they count the machine's opcodes, never time.
"""

from __future__ import annotations

import gc
import io
import pickle
import pickletools
import zipfile
from pathlib import Path
from typing import Any

import pytest

from trainwarden.findings import Verdict
from trainwarden.scan import DEFAULT_LIMITS, scan_bytes, scan_path
from trainwarden.scan._pickle import machine as machine_module

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.torch

# More than the scanner's first read window used to be (1 MiB): a grown window re-parsed it.
_TENSORS = 15_000


def _count_runs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Record (start, opcodes) of every run of the real machine (a spy, not a mock)."""
    runs: list[tuple[int, int]] = []
    original = machine_module._Machine.run

    def counted(self: Any) -> Any:
        raw = original(self)
        runs.append((raw.start, raw.opcode_count))
        return raw

    monkeypatch.setattr(machine_module._Machine, "run", counted)
    return runs


def _opcodes_of_stream(data: bytes, count: int) -> int:
    """Opcodes of the first ``count`` consecutive pickles, as pickletools reads them."""
    return _opcodes_of_stream_at(io.BytesIO(data), count)


def _opcodes_of_stream_at(stream: io.BytesIO, count: int) -> int:
    total = 0
    for _ in range(count):
        total += sum(1 for _ in pickletools.genops(stream))
    return total


def _state_dict() -> dict[str, Any]:
    return {f"layer{i}.weight": torch.zeros(2) for i in range(_TENSORS)}


def test_legacy_checkpoint_pickle_is_parsed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "legacy.pt"
    torch.save(_state_dict(), path, _use_new_zipfile_serialization=False, pickle_protocol=2)
    data = path.read_bytes()
    # magic number, protocol version, sys info, the state dict, the storage keys
    expected = _opcodes_of_stream(data, 5)
    assert expected > 100_000
    runs = _count_runs(monkeypatch)

    report = scan_path(path, jobs=1)

    assert report.files[0].format == "torch-legacy"
    assert report.files[0].verdict is Verdict.SAFE
    # One reading of each pickle: no re-parse after growing a read window.
    assert sum(ops for _, ops in runs) <= expected + 10


def test_zip_checkpoint_data_pkl_is_parsed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "model.pt"
    torch.save(_state_dict(), path)
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
        pkl = archive.read(name)
    assert len(pkl) > 1 << 20
    expected = _opcodes_of_stream(pkl, 1)
    runs = _count_runs(monkeypatch)

    report = scan_path(path, jobs=1)

    assert report.files[0].format == "torch-zip"
    assert report.files[0].verdict is Verdict.SAFE
    assert sum(ops for _, ops in runs) <= expected + 10


def test_plain_pickle_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    data = pickle.dumps([(i, f"k{i}") for i in range(200_000)], protocol=4)
    assert len(data) > 1 << 20
    expected = _opcodes_of_stream(data, 1)
    runs = _count_runs(monkeypatch)

    report = scan_bytes(data)

    assert report.verdict is Verdict.SAFE
    assert sum(ops for _, ops in runs) <= expected + 10


def test_pickle_larger_than_the_read_budget_still_grows_its_window(tmp_path: Path) -> None:
    # With a read budget below the file size the window grows geometrically (legacy files
    # hold gigabytes of storage bytes after the pickle); the pickle is still fully analysed.
    path = tmp_path / "legacy.pt"
    torch.save(_state_dict(), path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    stream = io.BytesIO(data)
    _opcodes_of_stream_at(stream, 5)
    pickles_end = stream.tell()
    assert pickles_end > 1 << 20  # past the first window
    # A read budget between the end of the pickles and the end of the file.
    budget = (pickles_end + len(data)) // 2
    limits = DEFAULT_LIMITS.replace(max_pickle_bytes=budget)

    report = scan_path(path, limits=limits, jobs=1)

    assert report.files[0].format == "torch-legacy"
    assert report.files[0].verdict is Verdict.SAFE


def test_scanning_restores_the_garbage_collector(tmp_path: Path) -> None:
    path = tmp_path / "p.pkl"
    path.write_bytes(pickle.dumps({"a": [1, 2, 3]}))
    assert gc.isenabled()
    scan_path(path, jobs=1)
    assert gc.isenabled()
    gc.disable()
    try:
        scan_path(path, jobs=1)
        # A caller that paused the collector itself keeps it paused.
        assert not gc.isenabled()
    finally:
        gc.enable()
