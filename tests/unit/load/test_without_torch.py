"""trainwarden.load on a core install (no torch): a clear error, not a bare import failure."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest

import trainwarden
from trainwarden.errors import ConfigError


def test_load_without_torch_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `pip install trainwarden` (the core, as the README offers) then trainwarden.load(...)
    # ended in "ModuleNotFoundError: No module named 'torch'" from deep inside the loader.
    path = tmp_path / "state.pt"
    path.write_bytes(pickle.dumps({"step": 1}))
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(ConfigError, match=r"needs torch .*pip install 'trainwarden\[torch\]'"):
        trainwarden.load(path)
