"""convert: safetensors from a checkpoint judged safe, with provenance metadata."""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import pytest

from canary import Canary
from trainwarden.errors import ConfigError, InputError, UnsafeModelError
from trainwarden.load import convert, parse_size

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


def test_objects_are_left_out_and_said_so_plain_values_kept(tmp_path: Path) -> None:
    import argparse

    src = tmp_path / "model.pt"
    torch.save(
        {
            "w": torch.ones(1),
            "betas": (0.9, 0.999),  # a tuple: kept, as a JSON list
            "tags": {1, 2},  # a set is no plain JSON value: left out
            "args": argparse.Namespace(lr=0.1),
            "loss": float("nan"),
            "dtype": torch.float16,
            "blob": b"\x00\x01",
            "empty": {},
        },
        src,
    )
    result = convert(src, tmp_path / "out.safetensors", allow=["argparse.Namespace"])
    assert result.left_out == {"args": "argparse.Namespace", "tags": "builtins.set"}
    assert result.kept == ("betas", "blob", "dtype", "empty", "loss")
    _, meta = _read(tmp_path / "out.safetensors")
    assert json.loads(meta["trainwarden.non_tensor"]) == {
        "betas": [0.9, 0.999],
        "blob": {"$bytes": "AAE="},
        "dtype": {"$dtype": "float16"},
        "empty": {},
        "loss": {"$float": "nan"},
    }
    assert json.loads(meta["trainwarden.left_out"]) == result.left_out


def test_training_checkpoint_model_optimizer_step(tmp_path: Path) -> None:
    # The most common checkpoint: it used to fail on the optimizer's tuple betas.
    from trainwarden.examples.tinygpt import Config, build

    model, optimizer, scheduler = build(Config())
    batch = torch.randint(0, 16, (2, 8))
    loss = model(batch).float().mean()
    loss.backward()
    optimizer.step()
    scheduler.step()
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": 1,
        "rng": {"python": random.getstate(), "cpu": torch.get_rng_state()},
    }
    src, dst = tmp_path / "ckpt.pt", tmp_path / "ckpt.safetensors"
    torch.save(state, src)
    result = convert(src, dst)
    tensors, meta = _read(dst)
    for name, value in model.state_dict().items():
        assert torch.equal(tensors[f"model.{name}"], value), name
    exp_avg = optimizer.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(tensors["optimizer.state.0.exp_avg"], exp_avg)
    assert torch.equal(tensors["rng.cpu"], state["rng"]["cpu"])
    extra = json.loads(meta["trainwarden.non_tensor"])
    groups = extra["optimizer.param_groups"]
    assert groups[0]["betas"] == list(optimizer.param_groups[0]["betas"])
    assert groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    assert extra["step"] == 1
    assert extra["rng.python"][0] == random.getstate()[0]
    assert result.left_out == {}


def test_numpy_rng_state_arrays_become_tensors(tmp_path: Path) -> None:
    import numpy as np

    src = tmp_path / "rng_state.pth"
    state = {"numpy": np.random.get_state(), "cpu": torch.get_rng_state()}
    torch.save(state, src)
    result = convert(src, tmp_path / "rng.safetensors", profiles=["transformers"])
    tensors, meta = _read(tmp_path / "rng.safetensors")
    assert result.from_numpy == ("numpy.1",)
    assert np.array_equal(tensors["numpy.1"].numpy(), state["numpy"][1])
    assert json.loads(meta["trainwarden.non_tensor"])["numpy.0"] == "MT19937"


def test_select_converts_one_subtree(tmp_path: Path) -> None:
    src = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {"fc.weight": torch.ones(2)}, "epoch": 3}, src)
    result = convert(src, tmp_path / "m.safetensors", select="state_dict")
    tensors, meta = _read(tmp_path / "m.safetensors")
    assert set(tensors) == {"fc.weight"}
    assert meta["trainwarden.selected"] == "state_dict"
    assert result.kept == ()
    with pytest.raises(ConfigError, match="no key"):
        convert(src, tmp_path / "n.safetensors", select="model")


def test_colliding_dotted_names_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "model.pt"
    torch.save({"a.b": torch.ones(1), "a": {"b": torch.zeros(1)}}, src)
    with pytest.raises(InputError, match=r"both named 'a\.b'"):
        convert(src, tmp_path / "out.safetensors")


@pytest.mark.parametrize("content", [b"", b"\x8f random bytes, not a checkpoint \x00" * 20])
def test_empty_or_random_input_is_an_input_error(tmp_path: Path, content: bytes) -> None:
    src = tmp_path / "model.pt"
    src.write_bytes(content)
    with pytest.raises(InputError, match="not a checkpoint"):
        convert(src, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_output_over_the_input_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "model.safetensors"
    safetensors_torch.save_file({"w": torch.ones(2)}, str(src))
    before = src.read_bytes()
    with pytest.raises(InputError, match="over its input"):
        convert(src, src)
    link = tmp_path / "other.safetensors"
    os.link(src, link)  # the same inode by another name
    with pytest.raises(InputError, match="over its input"):
        convert(src, link)
    assert src.read_bytes() == before


def test_a_failed_shard_leaves_no_partial_model(tmp_path: Path) -> None:
    state = {f"layer{i}": torch.full((256,), float(i)) for i in range(3)}
    src = tmp_path / "big.pt"
    torch.save(state, src)
    out = tmp_path / "out"
    out.mkdir()
    (out / "model-00002-of-00003.safetensors").mkdir()  # cannot be written over
    with pytest.raises(InputError, match="1 of 3 shards"):
        convert(src, out, shard_size=1024)
    assert sorted(p.name for p in out.iterdir()) == ["model-00002-of-00003.safetensors"]


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


@pytest.mark.slow
def test_real_lightning_checkpoint_converts_with_its_training_state(tmp_path: Path) -> None:
    import logging
    import warnings

    lightning = pytest.importorskip("lightning")
    logging.getLogger("lightning").setLevel(logging.ERROR)

    class Module(lightning.LightningModule):  # type: ignore[misc]
        def __init__(self, lr: float = 0.1) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.fc = torch.nn.Linear(4, 2)

        def training_step(self, batch: list[torch.Tensor], index: int) -> torch.Tensor:
            return self.fc(batch[0]).sum()

        def configure_optimizers(self) -> dict[str, object]:
            opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1)}

    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(8, 4)), batch_size=4
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = lightning.Trainer(
            max_steps=2,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            accelerator="cpu",
            devices=1,
            default_root_dir=str(tmp_path),
        )
        module = Module()
        trainer.fit(module, data)
        src = tmp_path / "last.ckpt"
        trainer.save_checkpoint(src)
    result = convert(src, tmp_path / "last.safetensors", profiles=["lightning"])
    tensors, meta = _read(tmp_path / "last.safetensors")
    assert torch.equal(tensors["state_dict.fc.weight"], module.fc.weight.detach())
    assert "optimizer_states.0.state.0.exp_avg" in tensors
    extra = json.loads(meta["trainwarden.non_tensor"])
    assert extra["global_step"] == 2
    assert extra["hyper_parameters"] == {"lr": 0.1}
    assert {"loops", "lr_schedulers", "optimizer_states.0.param_groups"} <= set(result.kept)
    assert result.left_out == {}


def test_written_files_read_back_exactly_with_the_safetensors_library(tmp_path: Path) -> None:
    # The writer streams the format itself (no second copy of the tensors): check it against
    # the reference implementation on every dtype and shape it must handle.
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = {
        "f32": base,
        "t": base.t(),  # non-contiguous view, copied out
        "bf16": torch.randn(3, 5).to(torch.bfloat16),
        "f16": torch.randn(7).half(),
        "f64": torch.randn(2, 2, dtype=torch.float64),
        "i8": torch.tensor([-1, 2, -3], dtype=torch.int8),
        "u8": torch.tensor([255, 0], dtype=torch.uint8),
        "i64": torch.tensor(2**40),  # 0-dim
        "flag": torch.tensor([True, False, True]),
        "empty": torch.empty(0, 3),
        "c64": torch.randn(2, dtype=torch.complex64),
    }
    src = tmp_path / "mixed.pt"
    torch.save(state, src)
    result = convert(src, tmp_path / "mixed.safetensors")
    tensors, meta = _read(tmp_path / "mixed.safetensors")
    assert set(tensors) == set(state)
    for name, value in state.items():
        assert tensors[name].dtype == value.dtype, name
        assert torch.equal(tensors[name], value), name
    assert meta == dict(result.metadata)
    # Byte for byte, what the library itself reads as a whole buffer.
    loaded = safetensors_torch.load((tmp_path / "mixed.safetensors").read_bytes())
    assert all(torch.equal(loaded[n], state[n]) for n in state)


def test_a_device_path_is_never_replaced(tmp_path: Path) -> None:
    import stat

    if os.geteuid() != 0:
        pytest.skip("creating a device node needs root")
    src = tmp_path / "model.pt"
    torch.save({"w": torch.ones(2)}, src)
    node = tmp_path / "null.safetensors"
    os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a private /dev/null
    with pytest.raises(InputError, match="device"):
        convert(src, node)
    assert stat.S_ISCHR(node.stat().st_mode)
