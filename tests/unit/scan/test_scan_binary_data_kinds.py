"""Binary files of ML libraries that are neither pickles nor protobuf: named, and judged.

* xgboost writes its models as Universal Binary JSON (``.ubj``, and ``.bin``/any other name
  since xgboost 2): a strict data format its loader parses into numbers and strings. Named
  ``model.bin``, such a file was ``unknown`` ("named like a model file, bytes match no
  format"); it is recognised (``ubjson``) and safe.
* TensorFlow Lite flatbuffers (``TFL3`` at byte 4) can name custom operators and Flex
  (TensorFlow) operators, which the interpreter runs from native code, file readers and
  writers included. They are not parsed, so they stay ``unknown``, saying so in those words.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from trainwarden.findings import Verdict
from trainwarden.scan import scan_bytes, scan_path


def _ubj_key(text: str) -> bytes:
    raw = text.encode()
    return b"L" + struct.pack(">q", len(raw)) + raw


def _ubj_document() -> bytes:
    # {"learner": {"attributes": {}}, "version": [3, 1, 0]} with int64 lengths, as xgboost.
    version = b"[" + b"".join(b"L" + struct.pack(">q", n) for n in (3, 1, 0)) + b"]"
    learner = b"{" + _ubj_key("attributes") + b"{}" + b"}"
    return b"{" + _ubj_key("learner") + learner + _ubj_key("version") + version + b"}"


@pytest.mark.parametrize("name", ["model.bin", "model.ubj", "booster"])
def test_xgboost_ubjson_is_recognised_and_safe(name: str) -> None:
    report = scan_bytes(_ubj_document(), name=name)
    assert (report.format, report.verdict) == ("ubjson", Verdict.SAFE), report.findings


def test_bytes_that_only_start_like_ubjson_are_not_ubjson() -> None:
    report = scan_bytes(b"{L\x00\x00\x00\x00\x00\x00\x00\x07learner" + b"\xff" * 64, name="m.bin")
    assert report.format != "ubjson"
    assert report.verdict is Verdict.UNKNOWN


def test_real_xgboost_models_are_safe(tmp_path: Path) -> None:
    xgb = pytest.importorskip("xgboost")
    import numpy as np

    rows = np.random.default_rng(0).random((20, 3))
    booster = xgb.train({"max_depth": 2}, xgb.DMatrix(rows, label=rows[:, 0] > 0.5), 2)
    for name in ("model.json", "model.ubj", "model.bin"):
        booster.save_model(tmp_path / name)
    report = scan_path(tmp_path)
    assert {Path(f.path).name: f.verdict for f in report.files} == dict.fromkeys(
        ("model.json", "model.ubj", "model.bin"), Verdict.SAFE
    )


def test_tflite_flatbuffer_is_named_and_not_called_safe() -> None:
    data = b"\x1c\x00\x00\x00TFL3" + bytes(range(256)) * 4
    for name in ("model.tflite", "model.dat"):
        report = scan_bytes(data, name=name)
        assert report.format == "tflite"
        assert report.verdict is Verdict.UNKNOWN
        (finding,) = [f for f in report.findings if f.verdict is Verdict.UNKNOWN]
        assert finding.rule_id == "tflite.unanalysed"
        assert "Flex" in finding.message
