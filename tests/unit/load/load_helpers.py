"""Deep comparison of loaded objects: tensors bitwise, dtypes, layouts and storage sharing."""

from __future__ import annotations

import math
from typing import Any


def _tensor_bytes(t: Any) -> Any:
    import torch

    flat = t.detach().reshape(-1).contiguous()
    if flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    return flat.view(torch.uint8)


def assert_same(a: Any, b: Any, where: str = "root") -> None:
    """Fail unless ``a`` and ``b`` are equal, tensors bit for bit, arrays by dtype and value."""
    import numpy as np
    import torch

    assert type(a) is type(b), f"{where}: {type(a)} != {type(b)}"
    if isinstance(a, torch.Tensor):
        assert (a.dtype, a.layout, a.device) == (b.dtype, b.layout, b.device), where
        assert a.shape == b.shape, where
        if a.device.type == "meta":
            return
        if a.is_quantized:
            assert a.qscheme() == b.qscheme(), where
            assert torch.equal(a.int_repr(), b.int_repr()), where
            if a.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
                assert (a.q_scale(), a.q_zero_point()) == (b.q_scale(), b.q_zero_point()), where
            else:
                assert torch.equal(a.q_per_channel_scales(), b.q_per_channel_scales()), where
            return
        if a.layout == torch.sparse_coo:
            assert_same(a._indices(), b._indices(), where + ".indices")
            assert_same(a._values(), b._values(), where + ".values")
            return
        if a.layout == torch.sparse_csr:
            assert_same(a.crow_indices(), b.crow_indices(), where + ".crow")
            assert_same(a.col_indices(), b.col_indices(), where + ".col")
            assert_same(a.values(), b.values(), where + ".values")
            return
        assert a.stride() == b.stride(), where
        assert a.storage_offset() == b.storage_offset(), where
        assert torch.equal(_tensor_bytes(a), _tensor_bytes(b)), f"{where}: bytes differ"
        assert a.requires_grad == b.requires_grad, where
        return
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype, where
        assert a.shape == b.shape, where
        if a.dtype.hasobject:
            for i, (x, y) in enumerate(zip(a.ravel(), b.ravel(), strict=True)):
                assert_same(x, y, f"{where}[{i}]")
        else:
            assert a.tobytes() == b.tobytes(), where
        return
    if isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys differ"
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
        return
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
        return
    if isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
        return
    if type(a).__eq__ is object.__eq__ and hasattr(a, "__dict__"):
        assert_same(vars(a), vars(b), f"{where}.__dict__")
        return
    if type(a).__eq__ is object.__eq__ and a is not None and not callable(a):
        # Extension types without __dict__ (sklearn's Tree): compare what pickling saves.
        ra, rb = a.__reduce_ex__(4), b.__reduce_ex__(4)
        if isinstance(ra, str):  # a global by name (dtypes, enums): identity
            assert a is b, where
            return
        assert ra[0] is rb[0], where
        assert_same(tuple(ra[1:]), tuple(rb[1:]), f"{where}.__reduce__")
        return
    if hasattr(a, "files") and hasattr(a, "__getitem__"):  # NpzFile
        assert list(a.files) == list(b.files), where
        for key in a.files:
            assert_same(a[key], b[key], f"{where}[{key}]")
        return
    assert a == b, f"{where}: {a!r} != {b!r}"


def sharing_signature(obj: Any) -> list[int]:
    """For every strided tensor in traversal order, the index of the first one sharing storage."""
    import torch

    first: dict[int, int] = {}
    out: list[int] = []

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            if x.layout == torch.strided and not x.is_quantized and x.device.type != "meta":
                ptr = x.untyped_storage().data_ptr()
                out.append(first.setdefault(ptr, len(out)) if x.numel() else -1)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(obj)
    return out
