"""Legitimate model files written by the real libraries, each with the verdict it deserves.

Pure data (state dicts, safetensors, numeric arrays, optimizer and RNG states) must be ``safe``
under the default policy. Framework objects (TrainingArguments, sklearn estimators) are
``unknown`` by default and ``safe`` once their framework profile is enabled. Nothing here is
ever ``unsafe``. Builders are deterministic and cheap except the framework runs, which share one
build per directory (see ``_once``).
"""

from __future__ import annotations

import io
import json
import pickle
import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainwarden.findings import Verdict

__all__ = ["BENIGN", "Benign", "benign_by_id"]

SAFE, UNKNOWN = Verdict.SAFE, Verdict.UNKNOWN


@dataclass(frozen=True)
class Benign:
    """One legitimate file (or checkpoint directory) and its expected verdicts.

    ``expected_default`` holds under ``Policy.default()``; ``expected_with_profiles`` under
    ``Policy.default(profiles=profiles)``. ``pure_data`` marks files that carry nothing but
    tensors, arrays and plain containers (they must be safe with no profile at all).
    """

    id: str
    description: str
    build: Callable[[Path], Path]
    expected_default: Verdict
    expected_with_profiles: Verdict
    profiles: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    pure_data: bool = False


_BUILT: dict[tuple[str, str], Path] = {}


def _once(key: str, directory: Path, fn: Callable[[Path], Path]) -> Path:
    """Build ``fn`` once per (key, parent dir) in this process; framework runs are slow."""
    root = directory.parent / f"_shared-{key}"
    cache_key = (key, str(root))
    if cache_key not in _BUILT:
        root.mkdir(parents=True, exist_ok=True)
        _BUILT[cache_key] = fn(root)
    return _BUILT[cache_key]


def _seed() -> None:
    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def _out(directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory / name


# ---------------------------------------------------------------------------------------------
# torch
# ---------------------------------------------------------------------------------------------


def _tiny_model() -> Any:
    import torch

    _seed()
    return torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.ReLU(), torch.nn.Linear(16, 2)
    )


def torch_state_dict(directory: Path) -> Path:
    import torch

    out = _out(directory, "model.pt")
    torch.save(_tiny_model().state_dict(), out)
    return out


def torch_state_dict_legacy(directory: Path) -> Path:
    import torch

    out = _out(directory, "model_legacy.pt")
    torch.save(_tiny_model().state_dict(), out, _use_new_zipfile_serialization=False)
    return out


def torch_every_dtype(directory: Path) -> Path:
    import torch

    dtypes = [
        torch.float32,
        torch.float64,
        torch.float16,
        torch.bfloat16,
        torch.complex64,
        torch.complex128,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.uint8,
        torch.bool,
        torch.uint16,
        torch.uint32,
        torch.uint64,
        torch.float8_e4m3fn,
        torch.float8_e5m2,
    ]
    tensors = {
        str(dt).removeprefix("torch."): torch.ones(3, dtype=torch.float32).to(dt) for dt in dtypes
    }
    out = _out(directory, "dtypes.pt")
    torch.save(tensors, out)
    return out


def torch_shared_storage(directory: Path) -> Path:
    import torch

    base = torch.arange(12.0)
    out = _out(directory, "views.pt")
    torch.save({"base": base, "view": base[2:8].view(2, 3), "t": base.view(3, 4).t()}, out)
    return out


def torch_quantized(directory: Path) -> Path:
    import torch

    x = torch.linspace(-1, 1, 16)
    q = torch.quantize_per_tensor(x, scale=0.05, zero_point=3, dtype=torch.qint8)
    qc = torch.quantize_per_channel(
        x.view(4, 4),
        torch.tensor([0.1, 0.2, 0.3, 0.4]),
        torch.tensor([0, 1, 2, 3]),
        0,
        torch.quint8,
    )
    out = _out(directory, "quantized.pt")
    torch.save({"per_tensor": q, "per_channel": qc}, out)
    return out


def torch_sparse(directory: Path) -> Path:
    import torch

    dense = torch.eye(5)
    out = _out(directory, "sparse.pt")
    torch.save({"coo": dense.to_sparse(), "csr": dense.to_sparse_csr()}, out)
    return out


def torch_nested_containers(directory: Path) -> Path:
    import torch

    state = {
        "model": _tiny_model().state_dict(),
        "step": 1234,
        "loss_history": [0.9, 0.5, 0.25],
        "meta": {"name": "run-7", "tags": ("a", "b"), "nested": [{"x": torch.zeros(2)}]},
    }
    out = _out(directory, "nested.pt")
    torch.save(state, out)
    return out


def torch_large_aligned(directory: Path) -> Path:
    import torch

    out = _out(directory, "large.pt")
    torch.save({"embedding": torch.zeros(256, 1024), "head": torch.ones(1024)}, out)
    return out


def _optimizer_and_scheduler() -> tuple[Any, Any]:
    import torch

    model = _tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    for _ in range(2):
        model(torch.randn(4, 8)).sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return opt, sched


def torch_optimizer(directory: Path) -> Path:
    import torch

    opt, _ = _optimizer_and_scheduler()
    out = _out(directory, "optimizer.pt")
    torch.save(opt.state_dict(), out)
    return out


def torch_scheduler(directory: Path) -> Path:
    import torch

    _, sched = _optimizer_and_scheduler()
    out = _out(directory, "scheduler.pt")
    torch.save(sched.state_dict(), out)
    return out


def torch_rng_state(directory: Path) -> Path:
    import numpy as np
    import torch

    # The layout HF Trainer writes to rng_state.pth.
    _seed()
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "cpu": torch.random.get_rng_state(),
    }
    out = _out(directory, "rng_state.pth")
    torch.save(state, out)
    return out


def torch_full_model(directory: Path) -> Path:
    import torch

    out = _out(directory, "full_model.pt")
    torch.save(_tiny_model(), out)
    return out


def torch_script(directory: Path) -> Path:
    import torch

    out = _out(directory, "scripted.pt")
    torch.jit.save(torch.jit.script(_tiny_model()), out)
    return out


def torch_checkpoint_metadata(directory: Path) -> Path:
    import argparse
    import datetime
    import decimal
    import pathlib
    import uuid

    import numpy as np
    import torch

    # What real training scripts put next to the weights: CLI args, timestamps, paths, ids,
    # numpy scalars from metrics, torch sizes / dtypes / devices.
    state = {
        "model": _tiny_model().state_dict(),
        "args": argparse.Namespace(lr=0.1, epochs=3, name="run"),
        "saved_at": datetime.datetime(2024, 5, 6, 7, 8, 9),
        "elapsed": datetime.timedelta(seconds=90),
        "data_dir": pathlib.PurePosixPath("/data/train"),
        "run_id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "budget": decimal.Decimal("1.50"),
        "best_acc": np.float64(0.93),
        "steps": np.int64(1200),
        "shape": torch.Size([4, 8]),
        "dtype": torch.float16,
        "device": torch.device("cpu"),
    }
    out = _out(directory, "checkpoint_meta.pt")
    torch.save(state, out)
    return out


def torch_state_dict_protocol5(directory: Path) -> Path:
    import torch

    out = _out(directory, "model_p5.pt")
    torch.save(_tiny_model().state_dict(), out, pickle_protocol=5)
    return out


def safetensors_file(directory: Path) -> Path:
    from safetensors.torch import save_file

    out = _out(directory, "model.safetensors")
    save_file(_tiny_model().state_dict(), out, metadata={"format": "pt"})
    return out


# ---------------------------------------------------------------------------------------------
# numpy
# ---------------------------------------------------------------------------------------------


def numpy_npy(directory: Path) -> Path:
    import numpy as np

    out = _out(directory, "weights.npy")
    np.save(out, np.arange(64, dtype=np.float32).reshape(8, 8))
    return out


def numpy_npy_structured(directory: Path) -> Path:
    import numpy as np

    dt = np.dtype([("id", np.int64), ("score", np.float32), ("tag", "S8")])
    out = _out(directory, "records.npy")
    np.save(out, np.array([(1, 0.5, b"a"), (2, 0.25, b"b")], dtype=dt))
    return out


def numpy_npz(directory: Path) -> Path:
    import numpy as np

    out = _out(directory, "arrays.npz")
    np.savez(out, w=np.ones((4, 4)), b=np.zeros(4, dtype=np.int16))
    return out


def numpy_npz_compressed(directory: Path) -> Path:
    import numpy as np

    out = _out(directory, "arrays_compressed.npz")
    np.savez_compressed(out, w=np.ones((32, 32)), mask=np.eye(32, dtype=bool))
    return out


def numpy_object_array(directory: Path) -> Path:
    import numpy as np

    # Legitimate object array: ragged token lists and labels, only builtin types inside.
    arr = np.empty(3, dtype=object)
    arr[0], arr[1], arr[2] = [1, 2, 3], "label", {"k": 1.5}
    out = _out(directory, "ragged.npy")
    np.save(out, arr, allow_pickle=True)
    return out


def numpy_pickled_array(directory: Path) -> Path:
    import numpy as np

    out = _out(directory, "array.pkl")
    with out.open("wb") as f:
        pickle.dump({"x": np.arange(10.0), "dtype": np.dtype("float16")}, f, protocol=4)
    return out


def plain_pickle(directory: Path) -> Path:
    import collections
    import datetime

    data = {
        "epochs": 10,
        "lr": 3e-4,
        "when": datetime.datetime(2024, 1, 2, 3, 4, 5),
        "counts": collections.OrderedDict(a=1, b=2),
        "names": {"x", "y"},
        "blob": b"\x00\x01",
    }
    out = _out(directory, "metadata.pkl")
    out.write_bytes(pickle.dumps(data, protocol=2))
    return out


# ---------------------------------------------------------------------------------------------
# sklearn / joblib
# ---------------------------------------------------------------------------------------------


def _sklearn_pipeline() -> Any:
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    y = (x[:, 0] > 0).astype(int)
    return make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)


def _sklearn_tree() -> Any:
    import numpy as np
    from sklearn.tree import DecisionTreeClassifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    return DecisionTreeClassifier(max_depth=3, random_state=0).fit(x, x[:, 1] > 0)


def sklearn_joblib(compress: object, name: str, model: Callable[[], Any]) -> Callable[[Path], Path]:
    def build(directory: Path) -> Path:
        import joblib

        out = _out(directory, name)
        joblib.dump(model(), out, compress=compress)
        return out

    return build


def sklearn_pickle(directory: Path) -> Path:
    out = _out(directory, "model.pkl")
    out.write_bytes(pickle.dumps(_sklearn_pipeline(), protocol=5))
    return out


def sklearn_skops(name: str, model: Callable[[], Any]) -> Callable[[Path], Path]:
    """``skops.io.dump`` of a fitted estimator: schema.json names sklearn's classes."""

    def build(directory: Path) -> Path:
        import skops.io as sio

        out = _out(directory, name)
        sio.dump(model(), out)
        return out

    return build


def joblib_numpy(directory: Path) -> Path:
    import joblib
    import numpy as np

    out = _out(directory, "features.joblib")
    joblib.dump({"mean": np.arange(5.0), "std": np.ones(5)}, out)
    return out


# ---------------------------------------------------------------------------------------------
# transformers
# ---------------------------------------------------------------------------------------------


def _tiny_bert() -> Any:
    from transformers import BertConfig, BertForSequenceClassification

    _seed()
    config = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    return BertForSequenceClassification(config)


def hf_save_pretrained(directory: Path) -> Path:
    out = directory / "tiny-bert"
    _tiny_bert().save_pretrained(out)
    return out


def hf_pytorch_model_bin(directory: Path) -> Path:
    import torch

    # transformers < 5 wrote this with save_pretrained(safe_serialization=False).
    out = directory / "tiny-bert-bin"
    model = _tiny_bert()
    model.config.save_pretrained(out)
    torch.save(model.state_dict(), out / "pytorch_model.bin")
    return out


def _trainer_run(root: Path) -> Path:
    import torch
    from transformers import Trainer, TrainingArguments

    model = _tiny_bert()

    class Data(torch.utils.data.Dataset[dict[str, Any]]):
        def __len__(self) -> int:
            return 8

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {
                "input_ids": torch.tensor([1, 2, 3, i % 5 + 4]),
                "attention_mask": torch.ones(4, dtype=torch.long),
                "labels": torch.tensor(i % 2),
            }

    args = TrainingArguments(
        output_dir=str(root / "out"),
        max_steps=2,
        save_steps=2,
        per_device_train_batch_size=4,
        report_to=[],
        logging_strategy="no",
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Trainer(model=model, args=args, train_dataset=Data()).train()
    ckpt = root / "out" / "checkpoint-2"
    assert (ckpt / "training_args.bin").exists(), sorted(p.name for p in ckpt.iterdir())
    return ckpt


def trainer_file(name: str) -> Callable[[Path], Path]:
    def build(directory: Path) -> Path:
        ckpt = _once("trainer", directory, _trainer_run)
        return ckpt if name == "." else ckpt / name

    return build


# ---------------------------------------------------------------------------------------------
# lightning / accelerate
# ---------------------------------------------------------------------------------------------


def _lightning_run(root: Path) -> Path:
    import lightning as L
    import torch

    class Tiny(L.LightningModule):
        def __init__(self, lr: float = 0.01, hidden: int = 8) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, _idx: int) -> Any:
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=self.hparams["lr"])
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, 1)]

    _seed()
    data = torch.utils.data.TensorDataset(torch.randn(8, 4), torch.randn(8, 1))
    trainer = L.Trainer(
        max_steps=2,
        default_root_dir=str(root),
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Tiny(), torch.utils.data.DataLoader(data, batch_size=4))
    ckpts = sorted(root.rglob("*.ckpt"))
    assert ckpts, "lightning wrote no checkpoint"
    return ckpts[0]


def lightning_ckpt(directory: Path) -> Path:
    return _once("lightning", directory, _lightning_run)


def _accelerate_run(root: Path) -> Path:
    import torch
    from accelerate import Accelerator

    _seed()
    acc = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.Adam(model.parameters())
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    model, opt, sched = acc.prepare(model, opt, sched)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    sched.step()
    out = root / "accelerate_state"
    acc.save_state(str(out))
    return out


def accelerate_file(name: str) -> Callable[[Path], Path]:
    def build(directory: Path) -> Path:
        state = _once("accelerate", directory, _accelerate_run)
        return state if name == "." else state / name

    return build


# ---------------------------------------------------------------------------------------------
# configs and headers
# ---------------------------------------------------------------------------------------------


def hf_config_json(directory: Path) -> Path:
    out = _out(directory, "config.json")
    out.write_text(
        json.dumps({"model_type": "bert", "hidden_size": 16, "architectures": ["BertModel"]}),
        encoding="utf-8",
    )
    return out


def gguf_benign(directory: Path) -> Path:
    import struct

    def kv(key: str, value: str) -> bytes:
        k, v = key.encode(), value.encode()
        return struct.pack("<Q", len(k)) + k + struct.pack("<IQ", 8, len(v)) + v

    template = (
        "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}"
        "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    kvs = [kv("general.architecture", "llama"), kv("tokenizer.chat_template", template)]
    out = _out(directory, "tiny.gguf")
    out.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs))
    return out


def text_file(directory: Path) -> Path:
    out = _out(directory, "README.md")
    out.write_text("# tiny model\n\nTrained for two steps.\n", encoding="utf-8")
    return out


def compressed_state_dict(directory: Path) -> Path:
    import gzip

    import torch

    buf = io.BytesIO()
    torch.save(_tiny_model().state_dict(), buf)
    out = _out(directory, "model.pt.gz")
    out.write_bytes(gzip.compress(buf.getvalue(), mtime=0))
    return out


def pandas_to_pickle(suffix: str) -> Callable[[Path], Path]:
    """``pandas.to_pickle`` of plain data, compression inferred from ``suffix`` as pandas does.

    Plain containers and NumPy arrays (pandas' own classes need a profile the scanner does not
    have yet): what must come out safe is the compression, whichever pandas chose.
    """

    def build(directory: Path) -> Path:
        import numpy as np
        import pandas as pd

        out = _out(directory, f"stats.pkl{suffix}")
        pd.to_pickle({"mean": np.arange(4.0), "steps": [1, 2, 3], "name": "run-7"}, out)
        return out

    return build


def joblib_compressed(method: str) -> Callable[[Path], Path]:
    """``joblib.dump`` of arrays with ``compress=(method, 3)``: each compressor's framing."""

    def build(directory: Path) -> Path:
        import joblib
        import numpy as np

        out = _out(directory, f"features_{method}.joblib")
        joblib.dump({"mean": np.arange(5.0), "std": np.ones(5)}, out, compress=(method, 3))
        return out

    return build


def torch_export_program(dynamic: bool) -> Callable[[Path], Path]:
    """``torch.export.save`` of a small module (dynamic batch: symbolic shape expressions)."""

    def build(directory: Path) -> Path:
        import torch

        class Net(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.proj = torch.nn.Linear(3, 4)
                self.register_buffer("scale", torch.ones(4))

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                y = self.proj(x) * self.scale
                return y.reshape(-1)  # dynamic: a size of 4 * batch (a sympy Mul)

        shapes = {"x": {0: torch.export.Dim("batch", min=2, max=64)}} if dynamic else None
        program = torch.export.export(Net(), (torch.ones(4, 3),), dynamic_shapes=shapes)
        out = _out(directory, f"net_{'dynamic' if dynamic else 'static'}.pt2")
        torch.export.save(program, out)
        return out

    return build


# ---------------------------------------------------------------------------------------------
# Other frameworks' own save functions (each skipped where its library is not installed)
# ---------------------------------------------------------------------------------------------


def torch_grad_scaler(directory: Path) -> Path:
    import torch

    scaler = torch.amp.GradScaler("cpu")
    out = _out(directory, "scaler.pt")
    torch.save(scaler.state_dict(), out)
    return out


def onnx_from_torch(directory: Path) -> Path:
    import torch

    _seed()
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    out = _out(directory, "model.onnx")
    torch.onnx.export(model, (torch.randn(1, 4),), str(out), dynamo=False)
    return out


def tf_saved_model(directory: Path) -> Path:
    """tf.saved_model.save of a tf.Module: saved_model.pb, fingerprint.pb, variables/."""
    import tensorflow as tf

    class Scale(tf.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            self.w = tf.Variable(tf.ones([4, 2]))

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def __call__(self, x: Any) -> Any:
            return tf.matmul(x, self.w)

    out = directory / "saved_model"
    tf.saved_model.save(Scale(), str(out))
    return out


def _keras_model() -> Any:
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras
    import numpy as np

    inputs = keras.Input((4,))
    hidden = keras.layers.BatchNormalization()(keras.layers.Dense(3, activation="relu")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    model.compile("adam", "mse")
    rng = np.random.default_rng(0)
    model.fit(rng.random((8, 4)), rng.random((8, 1)), verbose=0)
    return model


def _keras_run(root: Path) -> Path:
    """One fitted functional model saved three ways (.keras, legacy .h5, .weights.h5)."""
    model = _keras_model()
    model.save(root / "model.keras")
    model.save_weights(root / "model.weights.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # .h5 is "legacy" to keras 3
        model.save(root / "model.h5")
    return root


def keras_file(name: str) -> Callable[[Path], Path]:
    """A file of the shared keras run."""

    def build(directory: Path) -> Path:
        return _once("keras", directory, _keras_run) / name

    return build


def xgboost_models(directory: Path) -> Path:
    """Booster.save_model as JSON, UBJSON, and .bin (UBJSON too since xgboost 2)."""
    import numpy as np
    import xgboost as xgb

    rows = np.random.default_rng(0).random((20, 3))
    booster = xgb.train({"max_depth": 2}, xgb.DMatrix(rows, label=rows[:, 0] > 0.5), 2)
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("model.json", "model.ubj", "model.bin"):
        booster.save_model(directory / name)
    return directory


def lightgbm_model(directory: Path) -> Path:
    import lightgbm as lgb
    import numpy as np

    rows = np.random.default_rng(0).random((50, 3))
    data = lgb.Dataset(rows, rows[:, 0] > 0.5)
    booster = lgb.train({"verbose": -1, "num_leaves": 4}, data, 2)
    out = _out(directory, "model.txt")
    booster.save_model(out)
    return out


def catboost_model(directory: Path) -> Path:
    import catboost
    import numpy as np

    rows = np.random.default_rng(0).random((30, 3))
    model = catboost.CatBoostClassifier(iterations=2, verbose=0, allow_writing_files=False)
    model.fit(rows, (rows[:, 0] > 0.5).astype(int))
    out = _out(directory, "model.cbm")
    model.save_model(str(out))
    return out


def sentencepiece_model(directory: Path) -> Path:
    """A trained sentencepiece tokenizer (protobuf ModelProto) and its vocabulary."""
    import sentencepiece as spm

    directory.mkdir(parents=True, exist_ok=True)
    text = directory / "corpus.txt"
    lines = ["the quick brown fox jumps over the lazy dog", "hello world again and again"]
    text.write_text("\n".join(lines * 40), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(text),
        model_prefix=str(directory / "spm"),
        vocab_size=40,
        model_type="bpe",
        minloglevel=2,
    )
    text.unlink()
    return directory


def gguf_written(directory: Path) -> Path:
    """gguf.GGUFWriter: metadata, a token list, a chat template, f32 and f16 tensors."""
    import gguf
    import numpy as np

    out = _out(directory, "model.gguf")
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_block_count(1)
    writer.add_context_length(16)
    writer.add_chat_template(
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{% endfor %}"
    )
    writer.add_token_list(["<s>", "</s>", "a", "b"])
    writer.add_tensor("tok_embd.weight", np.ones((4, 8), np.float32))
    writer.add_tensor("norm.weight", np.ones(8, np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def flax_msgpack(directory: Path) -> Path:
    """flax.serialization.to_bytes of initialised Dense parameters (flax_model.msgpack)."""
    import jax
    import jax.numpy as jnp
    from flax import linen, serialization

    params = linen.Dense(3).init(jax.random.PRNGKey(0), jnp.ones((1, 4)))
    out = _out(directory, "flax_model.msgpack")
    out.write_bytes(serialization.to_bytes(params))
    return out


def peft_adapter(directory: Path) -> Path:
    """get_peft_model(LoRA).save_pretrained, safetensors and pickle."""
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    _seed()
    config = GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=50, n_positions=16)
    peft_model = get_peft_model(GPT2LMHeadModel(config), LoraConfig(r=2, target_modules=["c_attn"]))
    peft_model.save_pretrained(directory / "safetensors")
    peft_model.save_pretrained(directory / "bin", safe_serialization=False)
    return directory


def diffusers_pipeline(directory: Path) -> Path:
    """DDPMPipeline.save_pretrained (model_index.json, unet/, scheduler/), both serialisations."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    _seed()
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(8, 8),
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=10))
    pipe.save_pretrained(directory / "safetensors")
    pipe.save_pretrained(directory / "bin", safe_serialization=False)
    return directory


# ---------------------------------------------------------------------------------------------
# The catalogue
# ---------------------------------------------------------------------------------------------

TORCH = ("torch",)
SK = ("sklearn", "joblib")


def _pure(
    id: str,
    description: str,
    build: Callable[[Path], Path],
    requires: tuple[str, ...] = TORCH,
) -> Benign:
    return Benign(id, description, build, SAFE, SAFE, (), requires, pure_data=True)


BENIGN: tuple[Benign, ...] = (
    _pure("torch-state-dict", "torch.save(model.state_dict()) zip format", torch_state_dict),
    _pure("torch-state-dict-legacy", "legacy (pre-zip) state dict", torch_state_dict_legacy),
    _pure("torch-every-dtype", "one tensor of every dtype torch saves", torch_every_dtype),
    _pure("torch-shared-storage", "views sharing one storage", torch_shared_storage),
    _pure("torch-quantized", "per-tensor and per-channel quantized tensors", torch_quantized),
    _pure("torch-sparse", "sparse COO and CSR tensors", torch_sparse),
    _pure(
        "torch-nested-containers",
        "state dict nested with ints, lists, tuples",
        torch_nested_containers,
    ),
    _pure(
        "torch-large-aligned", "1 MiB tensors, mmap-friendly aligned storages", torch_large_aligned
    ),
    _pure("torch-optimizer-state", "AdamW state_dict after two steps", torch_optimizer),
    _pure("torch-scheduler-state", "StepLR state_dict", torch_scheduler),
    _pure(
        "torch-rng-state",
        "rng_state.pth as HF Trainer writes it (python, numpy, torch)",
        torch_rng_state,
        ("torch", "numpy"),
    ),
    # Pure data, but torch 2.13's weights_only unpickler rejects FRAME (protocol >= 4), so the
    # weights_only ground-truth test cannot vouch for it: not counted as "pure data" there.
    Benign(
        "torch-state-dict-protocol5",
        "state dict pickled with protocol 5 (FRAME, MEMOIZE, STACK_GLOBAL)",
        torch_state_dict_protocol5,
        SAFE,
        SAFE,
        (),
        TORCH,
    ),
    # Standard-library metadata is allowlisted data, but torch's weights_only refuses some of
    # it (Namespace, Decimal...), so it is not counted as "pure data" here.
    Benign(
        "torch-checkpoint-metadata",
        "checkpoint with argparse.Namespace, datetime, path, uuid, Decimal, numpy scalars",
        torch_checkpoint_metadata,
        SAFE,
        SAFE,
        (),
        ("torch", "numpy"),
    ),
    _pure("safetensors", "safetensors state dict", safetensors_file, ("torch", "safetensors")),
    _pure("torch-state-dict-gzip", "gzip-compressed torch state dict", compressed_state_dict),
    # A pickled nn.Module imports arbitrary classes: legitimate, but not provably safe.
    Benign(
        "torch-full-model",
        "torch.save(nn.Sequential) (full module pickle)",
        torch_full_model,
        UNKNOWN,
        UNKNOWN,
        (),
        TORCH,
    ),
    # TorchScript runs its own (restricted) code on load: not pure data.
    Benign(
        "torchscript-module",
        "torch.jit.save of a scripted module",
        torch_script,
        UNKNOWN,
        UNKNOWN,
        (),
        TORCH,
    ),
    _pure("numpy-npy", "float32 .npy", numpy_npy, ("numpy",)),
    _pure("numpy-npy-structured", "structured dtype .npy", numpy_npy_structured, ("numpy",)),
    _pure("numpy-npz", "numeric .npz", numpy_npz, ("numpy",)),
    _pure("numpy-npz-compressed", "numeric savez_compressed", numpy_npz_compressed, ("numpy",)),
    _pure("numpy-object-array", "object .npy of builtin values", numpy_object_array, ("numpy",)),
    _pure(
        "numpy-pickled-array", "pickle.dump of arrays and a dtype", numpy_pickled_array, ("numpy",)
    ),
    _pure("plain-pickle", "datetime, OrderedDict, set, bytes", plain_pickle, ()),
    _pure("joblib-numpy", "joblib.dump of arrays only", joblib_numpy, ("joblib", "numpy")),
    Benign(
        "sklearn-joblib",
        "fitted StandardScaler+LogisticRegression pipeline, joblib",
        sklearn_joblib(0, "pipeline.joblib", _sklearn_pipeline),
        UNKNOWN,
        SAFE,
        ("sklearn",),
        SK,
    ),
    *(
        Benign(
            f"sklearn-joblib-{method}",
            f"fitted pipeline, joblib {method}",
            sklearn_joblib((method, 3), f"pipeline_{method}.joblib", _sklearn_pipeline),
            UNKNOWN,
            SAFE,
            ("sklearn",),
            SK,
        )
        for method in ("zlib", "gzip", "bz2", "lzma", "lz4")
    ),
    Benign(
        "sklearn-tree-joblib",
        "fitted DecisionTreeClassifier, joblib",
        sklearn_joblib(3, "tree.joblib", _sklearn_tree),
        UNKNOWN,
        SAFE,
        ("sklearn",),
        SK,
    ),
    *(
        Benign(
            f"sklearn-skops-{kind}",
            f"fitted {kind}, skops.io.dump",
            sklearn_skops(f"{kind}.skops", model),
            UNKNOWN,
            SAFE,
            ("sklearn",),
            ("sklearn", "skops"),
        )
        for kind, model in (("pipeline", _sklearn_pipeline), ("tree", _sklearn_tree))
    ),
    Benign(
        "sklearn-pickle",
        "fitted pipeline, plain pickle protocol 5",
        sklearn_pickle,
        UNKNOWN,
        SAFE,
        ("sklearn",),
        SK,
    ),
    _pure(
        "hf-save-pretrained",
        "save_pretrained dir (config.json + model.safetensors)",
        hf_save_pretrained,
        ("torch", "transformers"),
    ),
    _pure(
        "hf-pytorch-model-bin",
        "pytorch_model.bin + config.json (pre-v5 layout)",
        hf_pytorch_model_bin,
        ("torch", "transformers"),
    ),
    Benign(
        "hf-trainer-training-args",
        "Trainer checkpoint training_args.bin",
        trainer_file("training_args.bin"),
        UNKNOWN,
        SAFE,
        ("transformers",),
        ("torch", "transformers"),
    ),
    _pure(
        "hf-trainer-optimizer",
        "Trainer checkpoint optimizer.pt",
        trainer_file("optimizer.pt"),
        ("torch", "transformers"),
    ),
    _pure(
        "hf-trainer-scheduler",
        "Trainer checkpoint scheduler.pt",
        trainer_file("scheduler.pt"),
        ("torch", "transformers"),
    ),
    _pure(
        "hf-trainer-rng-state",
        "Trainer checkpoint rng_state.pth",
        trainer_file("rng_state.pth"),
        ("torch", "transformers"),
    ),
    Benign(
        "hf-trainer-checkpoint-dir",
        "a whole Trainer checkpoint-N directory",
        trainer_file("."),
        UNKNOWN,
        SAFE,
        ("transformers",),
        ("torch", "transformers"),
    ),
    # Lightning stores hyperparameters and callback state as plain containers: pure data.
    _pure(
        "lightning-ckpt",
        "Trainer.fit for 2 steps, ModelCheckpoint .ckpt",
        lightning_ckpt,
        ("torch", "lightning"),
    ),
    Benign(
        "accelerate-save-state",
        "Accelerator.save_state directory",
        accelerate_file("."),
        SAFE,
        SAFE,
        ("accelerate",),
        ("torch", "accelerate"),
    ),
    _pure("hf-config-json", "plain config.json without auto_map", hf_config_json, ()),
    _pure("gguf-header", "GGUF header with a plain chat template", gguf_benign, ()),
    _pure("text-readme", "a README next to the weights", text_file, ()),
    # pandas.read_pickle decompresses by extension; joblib by its own framing.
    *(
        _pure(
            f"pandas-to-pickle{suffix.replace('.', '-') or '-plain'}",
            f"pandas.to_pickle of plain data as stats.pkl{suffix}",
            pandas_to_pickle(suffix),
            ("pandas", "numpy", *(("zstandard",) if suffix == ".zst" else ())),
        )
        for suffix in ("", ".gz", ".bz2", ".xz", ".zip", ".tar", ".tar.gz", ".zst")
    ),
    *(
        _pure(
            f"joblib-numpy-{method}",
            f"joblib.dump of arrays, compress=({method!r}, 3)",
            joblib_compressed(method),
            ("joblib", "numpy"),
        )
        for method in ("zlib", "gzip", "bz2", "lzma", "xz", "lz4")
    ),
    # Not torch.load files (weights_only cannot vouch for them): safe, not "pure data".
    *(
        Benign(
            f"pt2-export-{kind}",  # not "torch-*": the load tests torch.load those ids
            f"torch.export.save, {kind} shapes (dynamic: sympy shape expressions)",
            torch_export_program(kind == "dynamic"),
            SAFE,
            SAFE,
            (),
            TORCH,
        )
        for kind in ("static", "dynamic")
    ),
    # Other frameworks' files, written by their own save functions: data to every loader.
    _pure("torch-grad-scaler", "torch.amp.GradScaler state_dict", torch_grad_scaler),
    _pure(
        "onnx-torch-export",
        "torch.onnx.export (TorchScript exporter)",
        onnx_from_torch,
        ("torch", "onnx"),
    ),
    _pure(
        "tf-saved-model",
        "tf.saved_model.save directory (fingerprint.pb...)",
        tf_saved_model,
        ("tensorflow",),
    ),
    *(
        _pure(
            f"keras-{kind}",
            f"keras 3 functional model, {name}",
            keras_file(name),
            ("keras", "torch", "h5py"),
        )
        for kind, name in (
            ("native", "model.keras"),
            ("h5", "model.h5"),
            ("weights-h5", "model.weights.h5"),
        )
    ),
    _pure(
        "xgboost-native",
        "Booster.save_model .json, .ubj, .bin",
        xgboost_models,
        ("xgboost", "numpy"),
    ),
    _pure("lightgbm-native", "Booster.save_model model.txt", lightgbm_model, ("lightgbm", "numpy")),
    _pure(
        "catboost-native",
        "CatBoostClassifier.save_model model.cbm",
        catboost_model,
        ("catboost", "numpy"),
    ),
    _pure(
        "sentencepiece-model",
        "trained sentencepiece .model and .vocab",
        sentencepiece_model,
        ("sentencepiece",),
    ),
    _pure(
        "gguf-writer",
        "gguf.GGUFWriter with tensors and a chat template",
        gguf_written,
        ("gguf", "numpy"),
    ),
    _pure(
        "flax-msgpack", "flax serialization.to_bytes of Dense params", flax_msgpack, ("flax", "jax")
    ),
    _pure(
        "peft-lora-adapter",
        "LoRA adapter save_pretrained, both serialisations",
        peft_adapter,
        ("torch", "transformers", "peft"),
    ),
    _pure(
        "diffusers-pipeline",
        "DDPMPipeline.save_pretrained, both serialisations",
        diffusers_pipeline,
        ("torch", "diffusers"),
    ),
)


def benign_by_id() -> dict[str, Benign]:
    """The catalogue keyed by id."""
    return {b.id: b for b in BENIGN}
