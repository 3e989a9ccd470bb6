"""Techniques from the peer scanners' own test suites that the scanner called ``safe``.

Each sample is rebuilt here in code with our own inert payloads; the source test is cited.
Running the peers' suites (picklescan, ModelScan, fickling, ModelAudit) against the scanner
found these classes, none of which a loader runs by itself:

- a pickle hidden as data in a pickle (raw bytes, base64 or hex text): whoever unpickles the
  field (``torch.distributed.checkpoint`` does for non-tensor state) runs it;
- structure no pickler writes (a PROTO after the first opcode, DUP, bytes data running past
  the end of its FRAME): crafted to make readers disagree.

So each is ``unknown``, never ``safe``; and the same shapes written by Python stay ``safe``.
"""

from __future__ import annotations

import base64
import pickle
import struct

import pytest

from trainwarden.findings import Verdict
from trainwarden.scan import scan_bytes

# What every embedded sample hides: a pickle that calls posix.system (never loaded here).
_BODY = b"\x8c\x05posix\x8c\x06system\x93\x8c\x04true\x85R."
_INNER = b"\x80\x04\x95" + struct.pack("<Q", len(_BODY)) + _BODY


def _rules(data: bytes) -> set[str]:
    return {f.rule_id for f in scan_bytes(data).findings}


# ModelAudit tests/test_nested_pickle_integration.py (assets from
# tests/assets/generators/generate_nested_pickle_assets.py):
# https://github.com/promptfoo/modelaudit/blob/main/tests/test_nested_pickle_integration.py
EMBEDDED = {
    "raw-bytes": {"weights": [1, 2, 3], "hidden": _INNER},
    "base64-text": {"encoded_weights": base64.b64encode(_INNER).decode()},
    "hex-text": {"hex_data": _INNER.hex()},
    "raw-in-raw": {"stage1": pickle.dumps({"stage2": _INNER}, protocol=4)},
    "base64-of-raw-in-raw": {"s": base64.b64encode(pickle.dumps({"s2": _INNER})).decode()},
}


@pytest.mark.parametrize("name", sorted(EMBEDDED))
def test_embedded_pickle_is_not_safe(name: str) -> None:
    report = scan_bytes(pickle.dumps(EMBEDDED[name], protocol=4))
    assert report.verdict is Verdict.UNKNOWN, report.findings
    assert "pickle.embedded-pickle" in {f.rule_id for f in report.findings}
    # the hidden call is named, but this load does not run it: never reported as unsafe
    assert any("posix.system" in (f.evidence or "") for f in report.findings)


@pytest.mark.parametrize(
    "value",
    [
        pickle.dumps({"step": 3, "lr": [0.1, 0.01]}),  # a benign pickle kept as bytes
        base64.b64encode(pickle.dumps([1, 2, 3])).decode(),
        "gASTROENTEROLOGY_gASTRO_" * 3,  # base64-looking text that is no pickle
        "8004" + "ab" * 40,  # hex-looking text that is no pickle
        b"\x80\x04" + bytes(range(256)),  # bytes starting like a pickle, not one
    ],
)
def test_embedded_benign_or_non_pickle_stays_safe(value: object) -> None:
    assert scan_bytes(pickle.dumps({"x": value}, protocol=4)).verdict is Verdict.SAFE


# fickling test/test_bypasses.py::test_duplicate_proto
# https://github.com/trailofbits/fickling/blob/master/test/test_bypasses.py
def test_proto_after_first_opcode_is_not_safe() -> None:
    data = pickle.dumps([1, 2, 3], protocol=4)[:-1] + b"\x80\x01\x80\x02."
    assert pickle.loads(data) == [1, 2, 3]
    assert scan_bytes(data).verdict is Verdict.UNKNOWN
    assert "pickle.malformed" in _rules(data)


# fickling test/test_expansion_attack_analysis.py::test_dup_expansion_detection
def test_dup_is_not_safe() -> None:
    data = b"\x80\x04]" + b"2" * 120 + b"0" * 120 + b"."
    assert pickle.loads(data) == []
    assert scan_bytes(data).verdict is Verdict.UNKNOWN


# fickling test/test_bypasses.py::test_frame_boundary_straddle_variants ("BINBYTES")
def test_bytes_data_past_its_frame_is_not_safe() -> None:
    body = b"B" + struct.pack("<I", 20) + b"A" * 20
    data = b"\x80\x05\x95" + struct.pack("<Q", 5) + body + b"."
    assert pickle.loads(data) == b"A" * 20
    assert scan_bytes(data).verdict is Verdict.UNKNOWN
    assert "pickle.frame-split" in _rules(data)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_python_written_pickles_stay_safe(protocol: int) -> None:
    obj = [1, b"y" * 100_000, {"a": (3, 4)}, "z" * 70_000, list(range(5000))]
    assert scan_bytes(pickle.dumps(obj, protocol=protocol)).verdict is Verdict.SAFE


def test_decoys_cannot_exhaust_the_candidates_before_the_hidden_pickle() -> None:
    # Text that starts like base64 of a pickle ("gA") is a candidate; a thousand decoys ahead
    # of the real one must not leave it unanalysed and the file safe.
    decoys = [f"gA{i:030d}" for i in range(1_200)]
    report = scan_bytes(pickle.dumps({"d": decoys, "h": base64.b64encode(_INNER).decode()}))
    assert report.verdict is Verdict.UNKNOWN
    assert "pickle.embedded-pickle" in {f.rule_id for f in report.findings}


def test_names_that_only_start_like_base64_are_no_candidates() -> None:
    # A GPT-NeoX state dict's keys all start with "g": neither candidates nor a capped scan.
    keys = {f"gpt_neox.layers.{i}.attention.query_key_value.weight": i for i in range(2_000)}
    keys["h"] = base64.b64encode(_INNER).decode()
    report = scan_bytes(pickle.dumps(keys))
    assert report.verdict is Verdict.UNKNOWN
    assert any("posix.system" in (f.evidence or "") for f in report.findings)
    assert not any("not analysed" in f.message for f in report.findings)
