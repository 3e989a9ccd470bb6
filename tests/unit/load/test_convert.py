"""convert: safetensors from a checkpoint judged safe, with provenance metadata."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from canary import Canary
from trainwarden.errors import InputError, UnsafeModelError
from trainwarden.load import convert
from trainwarden.load._convert import parse_size

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

pytestmark = pytest.mark.torch


def _read(path: Path) -> tuple[dict[str, object], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118


def test_single_file_with_metadata_aliases_and_clones(tmp_path: Path) -> None:
    base = torch.randn(4, 4)
    state = {
        "w": base,
        "tied": base,  # the same tensor twice (tied weights): stored once
        "row": base[1],  # part of base's storage: copied out
        "nested": {"b": torch.arange(3, dtype=torch.bfloat16)},
        "step": 7,
        "name": "tiny",
    }
    src, dst = tmp_path / "model.pt", tmp_path / "model.safetensors"
    torch.save(state, src)
    result = convert(src, dst)
    assert result.files == (dst,)
    assert result.index is None
    tensors, meta = _read(dst)
    assert set(tensors) == {"w", "row", "nested.b"}
    assert torch.equal(tensors["w"], base)
    assert torch.equal(tensors["row"], base[1])
    assert tensors["nested.b"].dtype == torch.bfloat16
    assert json.loads(meta["trainwarden.aliases"]) == {"tied": "w"}
    assert json.loads(meta["trainwarden.cloned"]) == ["row"]
    assert json.loads(meta["trainwarden.non_tensor"]) == {"step": 7, "name": "tiny"}
    assert meta["trainwarden.source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert meta["trainwarden.verdict"] == "safe"
    assert meta["trainwarden.version"]
    assert meta["trainwarden.source"] == str(src)


def test_sharded_with_index(tmp_path: Path) -> None:
    state = {f"layer{i}": torch.full((256,), float(i)) for i in range(5)}  # 1 KiB each
    src = tmp_path / "big.pt"
    torch.save(state, src)
    out = tmp_path / "out"
    out.mkdir()
    result = convert(src, out, shard_size=2048)
    assert len(result.files) == 3
    assert result.index == out / "model.safetensors.index.json"
    index = json.loads(result.index.read_text())
    assert index["metadata"]["total_size"] == 5 * 1024
    assert set(index["weight_map"]) == set(state)
    for name, file in index["weight_map"].items():
        tensors, _ = _read(out / file)
        assert torch.equal(tensors[name], state[name])


def test_unsafe_source_refused_and_nothing_written(tmp_path: Path, canary: Canary) -> None:
    class System:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (canary.shell_command,))

    src, dst = tmp_path / "evil.pt", tmp_path / "out.safetensors"
    torch.save({"w": torch.ones(1), "x": System()}, src)
    with pytest.raises(UnsafeModelError):
        convert(src, dst)
    canary.assert_absent()
    assert not dst.exists()


def test_values_json_cannot_hold_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "model.pt"
    torch.save({"w": torch.ones(1), "t": (1, 2), "s": {1, 2}}, src)
    with pytest.raises(InputError, match="JSON"):
        convert(src, tmp_path / "out.safetensors")


def test_sparse_tensors_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "model.pt"
    torch.save({"s": torch.eye(3).to_sparse()}, src)
    with pytest.raises(InputError, match="sparse"):
        convert(src, tmp_path / "out.safetensors")


@pytest.mark.parametrize(
    ("text", "size"), [("5GB", 5 * 10**9), ("500MiB", 500 * 2**20), ("1000", 1000), ("1.5kb", 1500)]
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "GB", "-1", "0", "5XB", "nan"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)
