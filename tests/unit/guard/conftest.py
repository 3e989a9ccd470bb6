"""Fixtures of the guard tests: real torch, a memory sink, a guard that is always closed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("torch")

from trainwarden.events import MemorySink


@pytest.fixture
def sink() -> MemorySink:
    """A fake of the ledger's interface that keeps events in memory."""
    return MemorySink()


@pytest.fixture(autouse=True)
def _no_leaked_guards() -> Iterator[None]:
    """Every test must leave no guard, patch or hook of trainwarden behind."""
    yield
    from trainwarden import patching
    from trainwarden.guard import _process

    leaked = list(_process._live())
    for guard in leaked:
        guard.close()
    assert not leaked, f"a test left {len(leaked)} guard(s) attached"
    assert not [p for p in patching.installed_patches() if p.purpose.startswith("guard")]
