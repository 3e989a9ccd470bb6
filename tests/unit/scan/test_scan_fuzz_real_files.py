"""Deterministic fuzzing of files the real libraries write, one seed file per format.

``test_fuzz_archives.py`` mutates hand-built seeds with hypothesis; these seeds are what
torch, numpy, safetensors, h5py, onnx, joblib and pandas actually write, mutated with fixed
seeds (the same mutations every run, so a failure reproduces). Checked for every mutation:
no reader raises (an internal error finding), each scan ends within seconds, and a file cut
short (every loader refuses it) is never reported safe.
"""

from __future__ import annotations

import io
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from trainwarden.findings import Verdict
from trainwarden.scan import DEFAULT_LIMITS, scan_bytes

_LIMITS = DEFAULT_LIMITS.replace(max_seconds=5, max_member_bytes=1 << 20)
_MUTATIONS = 200
_SLOWEST = 3.0  # seconds of CPU for one mutated file of a few KiB


def _torch_zip() -> bytes:
    import torch

    out = io.BytesIO()
    torch.save({"w": torch.arange(6.0).reshape(2, 3), "step": 3}, out)
    return out.getvalue()


def _torch_legacy() -> bytes:
    import torch

    out = io.BytesIO()
    torch.save({"w": torch.ones(4)}, out, _use_new_zipfile_serialization=False)
    return out.getvalue()


def _torch_export() -> bytes:
    import torch

    class Double(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    shapes = {"x": {0: torch.export.Dim("n", min=2, max=8)}}
    program = torch.export.export(Double(), (torch.ones(4, 3),), dynamic_shapes=shapes)
    out = io.BytesIO()
    torch.export.save(program, out)
    return out.getvalue()


def _npz() -> bytes:
    import numpy as np

    out = io.BytesIO()
    np.savez_compressed(out, a=np.arange(10), b=np.ones((2, 2)))
    return out.getvalue()


def _safetensors() -> bytes:
    import numpy as np
    from safetensors.numpy import save

    return save({"a": np.arange(8, dtype=np.float32), "b": np.zeros(3, dtype=np.int64)})


def _h5(tmp: Path) -> bytes:
    import h5py
    import numpy as np

    path = tmp / "m.h5"
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = '{"class_name": "Sequential", "config": {"layers": []}}'
        f.create_dataset("w", data=np.arange(16, dtype=np.float32))
    return path.read_bytes()


def _onnx() -> bytes:
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    return bytes(onnx.helper.make_model(graph).SerializeToString())


def _joblib_lz4() -> bytes:
    import joblib
    import numpy as np

    out = io.BytesIO()
    joblib.dump({"a": np.arange(6)}, out, compress=("lz4", 3))
    return out.getvalue()


def _pandas_zstd(tmp: Path) -> bytes:
    import pandas as pd

    pytest.importorskip("zstandard")
    path = tmp / "s.pkl.zst"
    pd.to_pickle({"a": [1, 2, 3]}, path)
    return path.read_bytes()


_SEEDS: dict[str, tuple[tuple[str, ...], Callable[..., bytes]]] = {
    "torch-zip": (("torch",), _torch_zip),
    "torch-legacy": (("torch",), _torch_legacy),
    "torch-export": (("torch",), _torch_export),
    "npz": (("numpy",), _npz),
    "safetensors": (("safetensors", "numpy"), _safetensors),
    "hdf5": (("h5py", "numpy"), _h5),
    "onnx": (("onnx",), _onnx),
    "joblib-lz4": (("joblib", "numpy", "lz4"), _joblib_lz4),
    "pandas-zstd": (("pandas", "zstandard"), _pandas_zstd),
}


def _seed(name: str, tmp: Path) -> bytes:
    requires, build = _SEEDS[name]
    for module in requires:
        pytest.importorskip(module)
    return build(tmp) if build in (_h5, _pandas_zstd) else build()


def _mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    out = bytearray(data)
    action = rng.choice(["flip", "flip", "cut", "insert", "overwrite", "zero-run"])
    pos = rng.randrange(len(out))
    if action == "flip":
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    elif action == "cut":
        del out[pos:]
    elif action == "insert":
        out[pos:pos] = rng.randbytes(rng.randint(1, 16))
    elif action == "overwrite":
        out[pos : pos + 4] = rng.choice([b"\0\0\0\0", b"\xff\xff\xff\xff", b"\xff\xff\xff\x7f"])
    else:
        out[pos : pos + 64] = bytes(min(64, len(out) - pos))
    return action, bytes(out)


@pytest.mark.parametrize("name", sorted(_SEEDS))
def test_mutated_real_files_never_crash_hang_or_pass_cut(name: str, tmp_path: Path) -> None:
    seed = _seed(name, tmp_path)
    assert scan_bytes(seed, limits=_LIMITS).verdict is not Verdict.ERROR
    rng = random.Random(f"trainwarden-fuzz-{name}")
    for index in range(_MUTATIONS):
        action, data = _mutate(seed, rng)
        start = time.process_time()
        report = scan_bytes(data, limits=_LIMITS)
        spent = time.process_time() - start
        where = f"{name} mutation {index} ({action}, {len(data)} bytes)"
        internal = [f for f in report.findings if f.rule_id.startswith("scan.")]
        assert not internal, f"{where}: {internal}"
        assert spent < _SLOWEST, f"{where}: {spent:.2f} s"
        if action == "cut" and len(data) >= 16 and name not in _CUT_MAY_STAY_VALID:
            assert report.verdict is not Verdict.SAFE, f"{where}: a truncated file scanned safe"


# Formats whose prefix can itself be a whole, valid file of some kind: a cut HDF5 or ONNX
# file is still "data" no loader runs code from; a cut legacy torch file can end exactly
# after its first complete pickle (the magic number), which is a harmless pickle.
_CUT_MAY_STAY_VALID = frozenset({"hdf5", "onnx", "torch-legacy", "safetensors"})


def test_fuzz_seeds_are_real_files() -> None:
    # The seeds are what the libraries read back (guards the builders), and scan safe:
    # every finding on a mutation comes from the mutation.
    torch = pytest.importorskip("torch")
    np = pytest.importorskip("numpy")

    assert torch.load(io.BytesIO(_torch_zip()), weights_only=True)["step"] == 3
    assert torch.load(io.BytesIO(_torch_legacy()), weights_only=True)["w"].shape == (4,)
    assert np.load(io.BytesIO(_npz()))["a"].shape == (10,)
    for build in (_torch_zip, _torch_legacy, _npz, _torch_export):
        assert scan_bytes(build()).verdict is Verdict.SAFE, build.__name__
