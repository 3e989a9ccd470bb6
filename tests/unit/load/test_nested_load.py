"""Pickled tensors (``torch.storage._load_from_bytes``) load under the policy, nested bytes too."""

from __future__ import annotations

import io
import ipaddress
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from load_helpers import assert_same

from canary import Canary
from trainwarden.errors import UnsafeModelError
from trainwarden.load import load, pickle_load, pickle_loads, protect

pytestmark = pytest.mark.torch


class _System:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


class _Nested:
    """Pickles as ``torch.storage._load_from_bytes(archive)``, as a pickled storage does."""

    def __init__(self, archive: bytes) -> None:
        self.archive = archive

    def __reduce__(self) -> tuple[object, tuple[bytes]]:
        import torch

        return (torch.storage._load_from_bytes, (self.archive,))


def _legacy_archive(obj: object) -> bytes:
    # What Storage.__reduce__ embeds: torch.save in the legacy (non-zip) format.
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def _malicious(canary: Canary) -> bytes:
    return pickle.dumps(_Nested(_legacy_archive(_System(canary.shell_command))), protocol=4)


def _natural_loads(path: Path) -> None:
    code = "import pickle, sys; pickle.loads(open(sys.argv[1], 'rb').read())"
    subprocess.run([sys.executable, "-c", code, str(path)], check=False, capture_output=True)


def _samples() -> list[object]:
    import torch

    linear = torch.nn.Linear(4, 3)
    base = torch.arange(12.0)
    return [
        torch.ones(3),
        torch.arange(10, dtype=torch.int16),
        linear.state_dict(),
        {"view": base[2:8], "base": base, "step": 7},
        torch.nn.Parameter(torch.randn(2, 2)),
    ]


def test_pickled_tensors_load_like_pickle_loads() -> None:
    for obj in _samples():
        data = pickle.dumps(obj)
        assert_same(pickle_loads(data), pickle.loads(data))


def test_pickled_tensor_in_a_file_and_in_a_checkpoint(tmp_path: Path) -> None:
    import torch

    tensor = torch.randn(5)
    path = tmp_path / "tensor.pkl"
    path.write_bytes(pickle.dumps(tensor))
    assert_same(pickle_load(path), tensor)
    # A checkpoint whose pickle holds a pickled tensor: torch's Unpickler meets the same call.
    ckpt = tmp_path / "model.pt"
    torch.save({"nested": _Nested(_legacy_archive(tensor)), "w": tensor}, ckpt, pickle_protocol=4)
    expected = torch.load(ckpt, weights_only=False)
    assert_same(expected["nested"], tensor)
    assert_same(load(ckpt), expected)


def test_pickled_tensors_load_inside_protect() -> None:
    import torch

    data = pickle.dumps({"w": torch.arange(4.0)})
    with protect():
        got = pickle.loads(data)
        with io.BytesIO(data) as f:
            got_stream = pickle.load(f)
    expected = pickle.loads(data)
    assert_same(got, expected)
    assert_same(got_stream, expected)


def test_malicious_nested_archive_is_refused(tmp_path: Path, canary: Canary) -> None:
    data = _malicious(canary)
    with pytest.raises(UnsafeModelError) as info:
        pickle_loads(data)
    canary.assert_absent()
    report = info.value.report
    evidence = {f.evidence for file in report.files for f in file.findings}
    assert evidence & {"os.system", "posix.system"}, report
    assert report.files[0].path == "<bytes>!(nested)"
    assert report.files[0].sha256 is not None
    sample = tmp_path / "tensor.pkl"
    sample.write_bytes(data)
    with pytest.raises(UnsafeModelError):
        pickle_load(sample)
    canary.assert_absent()
    # The same bytes really run their payload under the natural loader.
    _natural_loads(sample)
    canary.assert_present()


def test_malicious_nested_archive_is_refused_under_protect(canary: Canary) -> None:
    data = _malicious(canary)
    with protect(), pytest.raises(UnsafeModelError):
        pickle.loads(data)
    with protect(), pytest.raises(UnsafeModelError), io.BytesIO(data) as f:
        pickle.Unpickler(f).load()
    canary.assert_absent()


def test_nested_load_uses_the_same_policy_and_mode(caplog: pytest.LogCaptureFixture) -> None:
    # IPv4Address is harmless but not allowlisted: the nested archive obeys allow= and mode.
    address = ipaddress.IPv4Address("10.0.0.1")
    data = pickle.dumps(_Nested(_legacy_archive(address)), protocol=4)
    with pytest.raises(UnsafeModelError) as info:
        pickle_loads(data)
    assert "ipaddress.IPv4Address" in {
        f.evidence for file in info.value.report.files for f in file.findings
    }
    assert pickle_loads(data, allow=["ipaddress.IPv4Address"]) == address
    with caplog.at_level(logging.WARNING, logger="trainwarden.load"), protect(mode="unsafe-audit"):
        assert pickle.loads(data) == address
    assert any("audit: would refuse" in r.getMessage() for r in caplog.records)


def test_nested_loader_refuses_a_value_that_is_not_bytes() -> None:
    # torch.storage._load_from_bytes({}): the argument is built at load time, not a literal.
    data = b"\x80\x03ctorch.storage\n_load_from_bytes\n}\x85R."
    with pytest.raises(UnsafeModelError) as info:
        pickle_loads(data)
    rules = {f.rule_id for file in info.value.report.files for f in file.findings}
    assert rules == {"load.nested-payload"}
