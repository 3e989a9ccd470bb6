"""diffusers' model_index.json names the module each pipeline component is loaded from.

``DiffusionPipeline.from_pretrained`` imports ``[library, class]`` for every component: a
library other than diffusers or transformers is either a module file in the component's
folder (run with ``trust_remote_code=True``, what model cards tell users to pass) or any
installed module, imported by name. Like ``auto_map`` in a transformers config, such an
index is ``unknown``; the indexes diffusers itself writes stay ``safe``.
"""

from __future__ import annotations

import json

import pytest

from trainwarden.findings import Verdict
from trainwarden.scan import scan_bytes


def _index(**components: object) -> bytes:
    doc = {"_class_name": "DDPMPipeline", "_diffusers_version": "0.42.1", **components}
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "components",
    [
        {"unet": ["my_unet", "MyUNet"]},
        {"unet": ["diffusers", "UNet2DModel"], "scheduler": ["antigravity", "X"]},
        {"_class_name": ["pipeline_evil", "EvilPipeline"]},
    ],
    ids=["component-module-in-repo", "installed-module", "custom-pipeline-class"],
)
def test_components_from_other_modules_are_unknown(components: dict[str, object]) -> None:
    report = scan_bytes(_index(**components), name="model_index.json")
    assert report.verdict is Verdict.UNKNOWN
    assert "diffusers.custom-component" in {f.rule_id for f in report.findings}


def test_index_of_library_components_is_safe() -> None:
    data = _index(
        unet=["diffusers", "UNet2DModel"],
        text_encoder=["transformers", "CLIPTextModel"],
        safety_checker=[None, None],
        requires_safety_checker=True,
    )
    assert scan_bytes(data, name="model_index.json").verdict is Verdict.SAFE
