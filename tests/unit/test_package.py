from __future__ import annotations

import subprocess
import sys

import pytest


def _run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return done.stdout.strip()


def test_import_is_light() -> None:
    # `trainwarden scan` must start fast and work without torch: importing the package or the
    # scanner must not import torch, numpy or the loaders.
    out = _run(
        "import sys, trainwarden, trainwarden.scan; "
        "print(sorted(m for m in ('torch', 'numpy', 'trainwarden.load') if m in sys.modules))"
    )
    assert out == "[]"


@pytest.mark.torch
@pytest.mark.parametrize(
    "prelude",
    [
        "import trainwarden; trainwarden.protect; f = trainwarden.load",
        "import trainwarden.load._torch, trainwarden; f = trainwarden.load",
        "import trainwarden.protect, trainwarden; f = trainwarden.load",
        "from trainwarden import load as f",
    ],
)
def test_trainwarden_load_is_callable_whatever_was_imported_first(prelude: str) -> None:
    # `trainwarden.load` is both a subpackage and the drop-in for torch.load.
    out = _run(
        f"{prelude}\n"
        "import io, torch\n"
        "b = io.BytesIO(); torch.save({'a': torch.ones(3)}, b); b.seek(0)\n"
        "print(f(b)['a'].sum().item())"
    )
    assert out == "3.0"
