"""Every legitimate checkpoint loads to what its natural loader returns, bit for bit.

Three ways, compared: the natural loader, trainwarden's safe loader, and the natural loader
inside ``protect()``. Tensors are compared byte by byte, with dtypes, layouts and storage
sharing; arrays by dtype and bytes.
"""

from __future__ import annotations

import gzip
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from load_helpers import assert_same, sharing_signature

from benign import BENIGN, Benign
from trainwarden.errors import UnsafeModelError
from trainwarden.findings import Verdict
from trainwarden.load import joblib_load, load, numpy_load, pickle_load, protect

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")


def _torch_natural(path: Path) -> Any:
    import torch

    return torch.load(path, weights_only=False)


def _torch_gzip_natural(path: Path) -> Any:
    import torch

    with gzip.open(path) as f:
        return torch.load(f, weights_only=False)


def _torch_gzip_safe(path: Path, profiles: tuple[str, ...]) -> Any:
    with gzip.open(path) as f:
        return load(f, profiles=profiles)


def _numpy_natural(path: Path) -> Any:
    import numpy as np

    res = np.load(path, allow_pickle=True)
    return {k: res[k] for k in res.files} if hasattr(res, "files") else res


def _numpy_safe(path: Path, profiles: tuple[str, ...]) -> Any:
    res = numpy_load(path, allow_pickle=True, profiles=profiles)
    return {k: res[k] for k in res.files} if hasattr(res, "files") else res


def _pickle_natural(path: Path) -> Any:
    with path.open("rb") as f:
        return pickle.load(f)


def _joblib_natural(path: Path) -> Any:
    import joblib

    return joblib.load(path)


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in TORCH_SUFFIXES)
    return [path]


# natural(path) and safe(path, profiles) for each kind of benign file.
KINDS: dict[str, tuple[Callable[[Path], Any], Callable[[Path, tuple[str, ...]], Any]]] = {
    "torch": (_torch_natural, lambda p, prof: load(p, profiles=prof)),
    "torch-gzip": (_torch_gzip_natural, _torch_gzip_safe),
    "numpy": (_numpy_natural, _numpy_safe),
    "pickle": (_pickle_natural, lambda p, prof: pickle_load(p, profiles=prof)),
    "joblib": (_joblib_natural, lambda p, prof: joblib_load(p, profiles=prof)),
}


def _kind(b: Benign) -> str | None:
    if b.id == "torch-state-dict-gzip":
        return "torch-gzip"
    if b.id in ("plain-pickle", "numpy-pickled-array", "sklearn-pickle"):
        return "pickle"
    if b.id.startswith("numpy-"):
        return "numpy"
    if "joblib" in b.id:
        return "joblib"
    if b.id.startswith(("torch-", "hf-trainer", "hf-pytorch", "lightning", "accelerate")):
        return "torch"
    if b.id == "safetensors":
        return "torch"
    return None  # configs, GGUF, text, safetensors directories: not a loader's input


CASES = [b for b in BENIGN if _kind(b) is not None]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Benign], Path]:
    root = tmp_path_factory.mktemp("benign")
    cache: dict[str, Path] = {}

    def build(b: Benign) -> Path:
        if b.id not in cache:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cache[b.id] = b.build(root / b.id)
        return cache[b.id]

    return build


@pytest.mark.parametrize("case", CASES, ids=lambda b: b.id)
def test_loads_like_the_natural_loader(case: Benign, built: Callable[[Benign], Path]) -> None:
    for name in case.requires:
        pytest.importorskip(name)
    natural, safe = KINDS[_kind(case) or ""]
    path = built(case)
    for file in _files(path):
        if case.expected_with_profiles is not Verdict.SAFE:
            # Legitimate but not provably safe (a pickled nn.Module, TorchScript): refused.
            with pytest.raises(UnsafeModelError):
                safe(file, case.profiles)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = natural(file)
            got = safe(file, case.profiles)
            with protect(profiles=case.profiles):
                protected = natural(file)
        assert_same(got, expected, file.name)
        assert_same(protected, expected, file.name)
        assert sharing_signature(got) == sharing_signature(expected)
        assert sharing_signature(protected) == sharing_signature(expected)


def test_cases_cover_every_library() -> None:
    kinds = {_kind(b) for b in CASES}
    assert {"torch", "numpy", "pickle", "joblib"} <= kinds
    ids = {b.id for b in CASES}
    assert {"lightning-ckpt", "accelerate-save-state", "hf-trainer-training-args"} <= ids
