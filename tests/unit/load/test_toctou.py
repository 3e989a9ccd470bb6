"""What is loaded is what was scanned, even when the file changes while trainwarden.load runs."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest
from load_helpers import assert_same

from canary import Canary
from trainwarden.errors import UnsafeModelError

torch = pytest.importorskip("torch")

import trainwarden  # noqa: E402

pytestmark = pytest.mark.torch


class _System:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


def _pair(tmp_path: Path, canary: Canary) -> tuple[Path, Path, dict[str, object]]:
    """A benign and an evil checkpoint of exactly the same length."""
    benign = {"w": torch.arange(64, dtype=torch.float32), "b": torch.ones(3)}
    good, evil = tmp_path / "good.pt", tmp_path / "evil.pt"
    torch.save(benign, good)
    torch.save(
        {"w": torch.arange(64, dtype=torch.float32), "b": _System(canary.shell_command)}, evil
    )
    # Pad both archives with zip comments so an in-place overwrite covers one with the other.
    for _ in range(4):
        sizes = {p: p.stat().st_size for p in (good, evil)}
        short = min(sizes, key=sizes.__getitem__)
        pad = max(sizes.values()) - sizes[short]
        if not pad:
            break
        with zipfile.ZipFile(short, "a") as z:
            z.comment = z.comment + b"#" * pad
    assert good.stat().st_size == evil.stat().st_size
    return good, evil, benign


@pytest.mark.parametrize(("mmap", "mapped"), [(False, False), (False, True), (True, True)])
def test_path_replaced_during_load(
    tmp_path: Path, canary: Canary, monkeypatch: pytest.MonkeyPatch, mmap: bool, mapped: bool
) -> None:
    from trainwarden.load import _source

    if mapped:  # read through the mapped-file path (large files), not a private snapshot
        monkeypatch.setattr(_source, "SNAPSHOT_BYTES", 0)
    good, evil, benign = _pair(tmp_path, canary)
    target = tmp_path / "model.pt"
    target.write_bytes(good.read_bytes())
    swapped: list[bool] = []

    def swap(storage: object, _location: str) -> object:
        # torch calls this while deserialising: replace the file under the loader's feet.
        if not swapped:
            evil.replace(target)
            swapped.append(True)
        return storage

    got = trainwarden.load(target, map_location=swap, mmap=mmap)
    assert swapped, "the swap happened during the load"
    assert_same(got, benign)
    canary.assert_absent()
    with pytest.raises(UnsafeModelError):  # the path now names the evil file
        trainwarden.load(target)
    canary.assert_absent()


class _AnswersTwice(io.RawIOBase):
    """A file object that returns benign bytes on the first read and evil bytes afterwards."""

    def __init__(self, first: bytes, later: bytes) -> None:
        super().__init__()
        self.first, self.later, self.reads = first, later, 0

    def readable(self) -> bool:
        return True

    def readall(self) -> bytes:
        self.reads += 1
        return self.first if self.reads == 1 else self.later

    def read(self, size: int = -1) -> bytes:
        return self.readall()


def test_file_object_read_once(tmp_path: Path, canary: Canary) -> None:
    good, evil, benign = _pair(tmp_path, canary)
    stream = _AnswersTwice(good.read_bytes(), evil.read_bytes())
    assert_same(trainwarden.load(stream), benign)
    assert stream.reads == 1
    canary.assert_absent()


@pytest.mark.parametrize("mapped", [False, True])
def test_in_place_rewrite_after_scan(
    tmp_path: Path, canary: Canary, monkeypatch: pytest.MonkeyPatch, mapped: bool
) -> None:
    # An attacker rewrites the file in place between the scan and the unpickling. A small
    # file was read into a private snapshot: the rewrite is invisible and the benign content
    # loads. A large (mapped) file shows the new bytes, but torch's pickle is judged again as
    # it is read, and every import is checked by find_class: refused, nothing runs.
    import trainwarden.scan
    from trainwarden.load import _source

    if mapped:
        monkeypatch.setattr(_source, "SNAPSHOT_BYTES", 0)
    good, evil, benign = _pair(tmp_path, canary)
    target = tmp_path / "model.pt"
    target.write_bytes(good.read_bytes())
    real_scan = trainwarden.scan.scan_bytes

    def scan_then_rewrite(data: object, **kwargs: object) -> object:
        report = real_scan(data, **kwargs)  # type: ignore[arg-type]
        with target.open("r+b") as f:
            f.write(evil.read_bytes())
        return report

    monkeypatch.setattr(trainwarden.scan, "scan_bytes", scan_then_rewrite)
    if mapped:
        with pytest.raises(UnsafeModelError):
            trainwarden.load(target)
    else:
        assert_same(trainwarden.load(target), benign)
    canary.assert_absent()
    assert target.read_bytes() == evil.read_bytes(), "the rewrite really happened"
