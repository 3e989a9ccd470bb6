"""Payloads a pickle hands to a nested loader (``torch.storage._load_from_bytes``) are scanned."""

from __future__ import annotations

import pickle
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from canary import Canary
from trainwarden.findings import Verdict
from trainwarden.scan import DEFAULT_LIMITS, scan_bytes, scan_path


def _load_from_bytes(payload: bytes) -> bytes:
    """A pickle calling ``torch.storage._load_from_bytes(payload)``, as pickled tensors do."""
    return (
        b"\x80\x03ctorch.storage\n_load_from_bytes\nB"
        + struct.pack("<I", len(payload))
        + payload
        + b"\x85R."
    )


def _system(canary: Canary) -> bytes:
    return b"cos\nsystem\n(S" + repr(canary.shell_command).encode() + b"\ntR."


def _natural_load(path: Path) -> None:
    # pickle.loads runs torch.load(weights_only=False) on the embedded bytes.
    code = "import pickle, sys; pickle.loads(open(sys.argv[1], 'rb').read())"
    subprocess.run([sys.executable, "-c", code, str(path)], check=False, capture_output=True)


@pytest.mark.torch
def test_pickled_tensors_are_safe() -> None:
    import torch

    linear = torch.nn.Linear(3, 2)
    for obj in (torch.arange(6.0), {"w": torch.zeros(2, 2), "n": 3}, linear.state_dict()):
        report = scan_bytes(pickle.dumps(obj))
        assert report.format == "pickle"
        assert report.verdict is Verdict.SAFE, report.findings


@pytest.mark.torch
def test_malicious_nested_payload_is_unsafe(tmp_path: Path, canary: Canary) -> None:
    sample = tmp_path / "tensor.pkl"
    sample.write_bytes(_load_from_bytes(_system(canary)))
    report = scan_path(sample).files[0]
    canary.assert_absent()
    assert report.verdict is Verdict.UNSAFE
    inner = [f for f in report.findings if f.evidence in ("os.system", "posix.system")]
    assert inner, report.findings
    assert inner[0].location.member == "(nested@39)"
    _natural_load(sample)
    canary.assert_present()


@pytest.mark.torch
def test_malicious_payload_nested_in_torch_zip(tmp_path: Path, canary: Canary) -> None:
    import torch

    class Wrapped:
        def __reduce__(self) -> tuple[object, tuple[bytes]]:
            return (torch.storage._load_from_bytes, (_system(canary),))

    sample = tmp_path / "model.pt"
    # Protocol 4: the payload is a bytes literal (protocol 2 spells it as a _codecs call).
    torch.save({"w": torch.zeros(2), "extra": Wrapped()}, sample, pickle_protocol=4)
    report = scan_path(sample).files[0]
    canary.assert_absent()
    assert report.format == "torch-zip"
    assert report.verdict is Verdict.UNSAFE
    members = {f.location.member for f in report.findings if f.verdict is Verdict.UNSAFE}
    assert any(m is not None and m.startswith("model/data.pkl!(nested@") for m in members)
    # The payload runs as the first pickle of the nested torch.load, which then fails on it.
    with pytest.raises(RuntimeError, match="magic number"):
        torch.load(sample, weights_only=False)
    canary.assert_present()


def test_nested_payloads_recurse_within_the_nesting_limit() -> None:
    data = pickle.dumps({"x": 1})
    for _ in range(3):
        data = _load_from_bytes(data)
    assert scan_bytes(data).verdict is Verdict.SAFE
    report = scan_bytes(data, limits=DEFAULT_LIMITS.replace(max_nesting=2))
    assert report.verdict is Verdict.UNKNOWN
    assert "limit.nesting" in {f.rule_id for f in report.findings}


def test_unreadable_nested_payload_keeps_the_load_unverified() -> None:
    # A truncated archive as payload: not analysable, so the nested load is not cleared.
    report = scan_bytes(_load_from_bytes(b"PK\x03\x04" + b"\0" * 40))
    assert report.verdict is Verdict.UNKNOWN
    assert "policy.nested-load" in {f.rule_id for f in report.findings}


def test_opaque_nested_payload_stays_unknown() -> None:
    # The loader gets a value computed at load time (here a dict), not a bytes literal.
    report = scan_bytes(b"\x80\x03ctorch.storage\n_load_from_bytes\n}\x85R.")
    assert report.verdict is Verdict.UNKNOWN
    assert [f.rule_id for f in report.findings] == ["policy.nested-load"]


def test_same_literal_loaded_twice_is_analysed_once() -> None:
    payload = b"cos\nsystem\n(S'true'\ntR."
    body = (
        b"\x80\x03ctorch.storage\n_load_from_bytes\nq\x00B"
        + struct.pack("<I", len(payload))
        + payload
        + b"q\x01\x85Rh\x00h\x01\x85R\x86."
    )
    report = scan_bytes(body)
    assert report.verdict is Verdict.UNSAFE
    inner = [f for f in report.findings if f.location.member and "nested@" in f.location.member]
    assert len({f.location.member for f in inner}) == 1
