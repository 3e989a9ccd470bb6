"""Fixtures for signing tests: real Ed25519 keys on disk and a small checkpoint directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from sign_helpers import KeyPair, keypair, make_checkpoint


@pytest.fixture
def alice(tmp_path: Path) -> KeyPair:
    return keypair(tmp_path / "keys", "alice")


@pytest.fixture
def mallory(tmp_path: Path) -> KeyPair:
    return keypair(tmp_path / "keys", "mallory")


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return make_checkpoint(tmp_path / "run-a" / "step-100")
