"""No false ``unsafe`` (issue 8): what torch, numpy and common layer factories pickle.

``unsafe`` must rest on a name known to execute, import, open files or sockets, or write.
Every torch tensor type and RNG object that torch.save writes is at most ``unknown`` (most are
allowlisted: ``safe``); pure-data numpy types are safe; pickled nn modules are ``unknown``
unless the opt-in ``torch-modules`` profile is on.
"""

from __future__ import annotations

import functools
import io
import pickle
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from trainwarden.findings import Verdict
from trainwarden.scan import Policy, scan_bytes

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


def _objects() -> dict[str, Callable[[], Any]]:
    def generator() -> Any:
        g = torch.Generator()
        g.manual_seed(3)
        return g

    def jagged() -> Any:
        return torch.nested.nested_tensor(
            [torch.zeros(2, 4), torch.zeros(3, 4)], layout=torch.jagged
        )

    objects: dict[str, Callable[[], Any]] = {
        "generator": generator,
        "generator-state": lambda: generator().get_state(),
        "torch.get_rng_state": torch.get_rng_state,
        "torch.random.get_rng_state": torch.random.get_rng_state,
        "nested-strided": lambda: torch.nested.nested_tensor([torch.zeros(2), torch.zeros(3)]),
        "nested-jagged": jagged,
        "sparse-coo": lambda: torch.eye(3).to_sparse(),
        "sparse-csr": lambda: torch.eye(3).to_sparse_csr(),
        "sparse-csc": lambda: torch.eye(3).to_sparse_csc(),
        "sparse-bsr": lambda: torch.eye(4).to_sparse_bsr((2, 2)),
        "quantized": lambda: torch.quantize_per_tensor(torch.rand(3), 0.1, 1, torch.quint8),
        "quantized-per-channel": lambda: torch.quantize_per_channel(
            torch.rand(2, 3), torch.tensor([0.1, 0.2]), torch.tensor([1, 2]), 0, torch.qint8
        ),
        "meta": lambda: torch.empty(3, device="meta"),
        "parameter": lambda: torch.nn.Parameter(torch.zeros(2)),
        "size": lambda: torch.Size([1, 2]),
        "device": lambda: torch.device("cpu"),
        "layout": lambda: torch.sparse_csr,
    }
    for dtype in (
        torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.complex64,
        torch.complex128, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8,
        torch.uint16, torch.uint32, torch.uint64, torch.bool, torch.float8_e4m3fn,
        torch.float8_e5m2,
    ):  # fmt: skip
        objects[f"dtype-{dtype}"] = functools.partial(torch.zeros, 2, dtype=dtype)
        objects[f"dtype-tag-{dtype}"] = functools.partial(lambda d: d, dtype)
    if hasattr(torch.nn, "Buffer"):
        objects["buffer"] = lambda: torch.nn.Buffer(torch.zeros(2))
    return objects


OBJECTS = _objects()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_torch_save_of_torch_types_is_never_unsafe(name: str, legacy: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obj = OBJECTS[name]()
        buf = io.BytesIO()
        torch.save({"x": obj}, buf, _use_new_zipfile_serialization=not legacy)
    report = scan_bytes(buf.getvalue())
    assert report.verdict is not Verdict.UNSAFE, [
        (f.rule_id, f.evidence) for f in report.findings if f.verdict is not Verdict.SAFE
    ]


@pytest.mark.parametrize(
    "name", ["generator", "nested-jagged", "torch.get_rng_state", "quantized", "sparse-bsr"]
)
def test_torch_rng_and_tensor_types_are_allowlisted(name: str) -> None:
    buf = io.BytesIO()
    torch.save(OBJECTS[name](), buf)
    assert scan_bytes(buf.getvalue()).verdict is Verdict.SAFE


def test_partial_of_a_layer_class_is_at_most_unknown() -> None:
    # timm-style model factories store functools.partial(LayerClass, **kwargs).
    factory = functools.partial(torch.nn.Linear, bias=False)
    for data in (pickle.dumps(factory), _torch_bytes({"norm_layer": factory})):
        report = scan_bytes(data)
        assert report.verdict is Verdict.UNKNOWN, report.findings
        assert any(f.evidence == "functools.partial" for f in report.findings)


def _torch_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_pickled_nn_module_is_unknown_by_default_and_safe_with_the_profile() -> None:
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.GELU(),
        torch.nn.TransformerEncoderLayer(4, 2, 8), torch.nn.LSTM(4, 4),
    )  # fmt: skip
    opt = torch.optim.AdamW(model.parameters())
    data = _torch_bytes({"model": model, "optimizer": opt})
    assert scan_bytes(data).verdict is Verdict.UNKNOWN
    profiled = Policy.default(profiles=["torch-modules"])
    assert scan_bytes(data, policy=profiled).verdict is Verdict.SAFE


def test_torch_modules_profile_does_not_let_a_module_be_called() -> None:
    # NEWOBJ + BUILD (how torch.save writes a module) is allowed; REDUCE with arguments the
    # file chooses is not vetted.
    module, name = b"torch.nn.modules.linear", b"Linear"
    data = (
        b"\x80\x04\x8c" + bytes([len(module)]) + module + b"\x8c" + bytes([len(name)]) + name
        + b"\x93K\x02K\x02\x86R."
    )  # fmt: skip
    report = scan_bytes(data, policy=Policy.default(profiles=["torch-modules"]))
    assert report.verdict is Verdict.UNKNOWN


def test_numpy_masked_and_record_types_are_safe() -> None:
    np = pytest.importorskip("numpy")
    ma = np.ma
    values = [
        ma.masked_array([1, 2, 3], mask=[0, 1, 0]),
        ma.masked,
        ma.masked_array(np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]), mask=[(0, 1)]),
        ma.masked_array(np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]), mask=[(0, 1)])[0],
        np.rec.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]),
        np.finfo(np.float32),
        np.iinfo(np.int8),
    ]
    for value in values:
        for protocol in (2, 4, 5):
            report = scan_bytes(pickle.dumps(value, protocol=protocol))
            assert report.verdict is Verdict.SAFE, (value, protocol, report.findings)
