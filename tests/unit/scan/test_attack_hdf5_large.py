"""Keras HDF5 files larger than the first window the scanner reads (64 MiB).

The scanner once read only the first 64 MiB of an ``.h5``: a ``model_config`` that starts
there and runs on past it (a layer name padded to 66 MiB) hid its Lambda layer, and a
decoy naming ``model_config`` early let the real config sit past the window. Written by
h5py as Keras' legacy format writes it (a root attribute), so the byte layout is real.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainwarden.findings import Verdict
from trainwarden.scan import scan_path

h5py = pytest.importorskip("h5py")
np = pytest.importorskip("numpy")

_PAST_WINDOW = 66 << 20


def _config(*, pad: int, lambda_layer: bool, escaped: bool = False) -> str:
    layers: list[dict[str, object]] = [
        {"class_name": "InputLayer", "config": {"name": "x" * pad}},
        {"class_name": "Dense", "config": {"name": "d", "units": 2}},
    ]
    if lambda_layer:
        layers.append({"class_name": "Lambda", "config": {"function": ["YWJj", None, None]}})
    text = json.dumps({"class_name": "Sequential", "config": {"layers": layers}})
    return text.replace('"Lambda"', '"\\u004cambda"') if escaped else text


def _write(path: Path, config: str, *, weights_first: bool = False) -> Path:
    with h5py.File(path, "w", libver="latest") as f:
        if weights_first:
            f.attrs["note"] = "model_config"  # a decoy inside the first window
            f.create_dataset("w", data=np.zeros(_PAST_WINDOW, dtype=np.uint8))
        f.attrs["model_config"] = config
    return path


def _verdict(path: Path) -> tuple[Verdict, str]:
    report = scan_path(path)
    return report.verdict, "\n".join(f"{f.rule_id} {f.evidence}" for f in report.findings)


@pytest.mark.parametrize(
    ("name", "config", "weights_first"),
    [
        ("padded-lambda.h5", _config(pad=_PAST_WINDOW, lambda_layer=True), False),
        ("padded-escaped.h5", _config(pad=_PAST_WINDOW, lambda_layer=True, escaped=True), False),
        # Above 64 KiB an attribute goes to dense storage, written after the dataset.
        ("decoy-then-config.h5", _config(pad=100_000, lambda_layer=True), True),
    ],
)
def test_lambda_past_the_first_window_is_unsafe(
    tmp_path: Path, name: str, config: str, weights_first: bool
) -> None:
    path = _write(tmp_path / name, config, weights_first=weights_first)
    assert path.read_bytes().find(b"ambda") > 64 << 20  # the layer really lies past 64 MiB
    verdict, findings = _verdict(path)
    assert verdict is Verdict.UNSAFE, findings
    assert "keras.lambda-layer" in findings


def test_key_padded_past_the_search_overlap_is_not_safe(tmp_path: Path) -> None:
    # JSON allows any whitespace between a key and its value: padded further than the
    # windows overlap, neither window holds both, and the search says so.
    config = _config(pad=_PAST_WINDOW, lambda_layer=True).replace(
        '"class_name": "Lambda"', '"class_name":' + " " * (64 << 10) + '"Lambda"'
    )
    verdict, findings = _verdict(_write(tmp_path / "spaced.h5", config))
    assert verdict in (Verdict.UNKNOWN, Verdict.UNSAFE), findings


def test_large_legitimate_h5_stays_safe(tmp_path: Path) -> None:
    path = _write(tmp_path / "weights.h5", _config(pad=10, lambda_layer=False), weights_first=True)
    verdict, findings = _verdict(path)
    assert verdict is Verdict.SAFE, findings
