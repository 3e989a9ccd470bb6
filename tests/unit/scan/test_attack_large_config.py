"""A configuration too large to parse whole is still searched for the keys that pull in code.

Hugging Face loaders parse ``config.json`` / ``tokenizer_config.json`` whatever their size;
the scanner parses JSON up to a bound. Above it, the file used to be plain text (``safe``),
so padding a config past the bound hid its ``auto_map`` (code run under
``trust_remote_code=True``). Large JSON is now searched for those keys, escapes undone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from trainwarden.findings import Verdict
from trainwarden.scan import scan_path

_PAD = 17 << 20  # above the scanner's 16 MiB JSON parse bound


def _big_config(path: Path, key: str, value: object) -> Path:
    head = json.dumps({"model_type": "bert", "architectures": ["BertModel"]})[:-1]
    # The key goes at the end, after the padding, where a head-only check would not look.
    path.write_text(f'{head}, "pad": "{"a" * _PAD}", {key}: {json.dumps(value)}}}')
    return path


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ('"auto_map"', {"AutoModel": "modeling_evil.EvilModel"}),
        ('"auto\\u005fmap"', {"AutoConfig": "configuration_evil.EvilConfig"}),
        ('"custom_pipelines"', {"evil": {"impl": "pipe.Evil"}}),
        ('"trust_remote_code"', True),
    ],
)
def test_padded_config_with_remote_code_key_is_not_safe(
    tmp_path: Path, key: str, value: object
) -> None:
    path = _big_config(tmp_path / "config.json", key, value)
    assert json.loads(path.read_text())  # a loader parses it
    report = scan_path(path).files[0]
    assert report.verdict is not Verdict.SAFE
    assert any(f.rule_id.startswith("hf.") for f in report.findings)


def test_large_json_without_such_keys_stays_safe_and_fast(tmp_path: Path) -> None:
    vocab = {f"tok{i}": i for i in range(1_200_000)}
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({"model": {"type": "BPE", "vocab": vocab}}))
    assert path.stat().st_size > 16 << 20
    start = time.process_time()
    report = scan_path(path).files[0]
    assert report.verdict is Verdict.SAFE
    assert time.process_time() - start < 2.0
