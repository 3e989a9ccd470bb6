"""Every attack on a torch / pickle / numpy / joblib loader is refused, canary absent.

Twice: by trainwarden's safe loader, and by the natural loader called inside ``protect()``.
That each sample really runs its payload under the natural loader is proven by
tests/regression/test_attacks.py (same catalogue, fresh interpreters).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import attacks
from attacks import ATTACKS, Attack, missing_requirements
from canary import Canary
from trainwarden.errors import UnsafeModelError
from trainwarden.load import (
    joblib_load,
    load,
    numpy_load,
    pickle_load,
    pickle_loads,
    protect,
)


def _safe_pickle_load_all(path: Path) -> object:
    out = []
    with path.open("rb") as f:
        while f.peek(1):
            out.append(pickle_load(f))
    return out


def _safe_accelerate(path: Path) -> object:
    return load(path / "custom_checkpoint_0.pkl", map_location="cpu")


# The natural loader of each attack -> trainwarden's equivalent safe loader.
SAFE_LOADERS: dict[str, Callable[[Path], object]] = {
    "pickle_load": pickle_load,
    "pickle_load_all": _safe_pickle_load_all,
    "pickle_load_with_dir_on_path": pickle_load,
    "torch_load_unsafe": load,
    "torch_load_default": load,
    "numpy_load_pickle": lambda p: numpy_load(p, allow_pickle=True),
    "joblib_load": joblib_load,
    "unpack_and_pickle_load": lambda p: pickle_loads(attacks._unpack_first(p)),
    "accelerate_load_custom_state": _safe_accelerate,
}

LOADER_ATTACKS = [a for a in ATTACKS if a.natural_load.__name__ in SAFE_LOADERS]


@pytest.fixture
def isolated_imports() -> Iterator[None]:
    # Some natural loaders put the sample's folder on sys.path: undo it after each attack.
    path, modules = list(sys.path), set(sys.modules)
    yield
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        if name.startswith(("evil", "planted", "attack")):
            del sys.modules[name]


def _build(attack: Attack, tmp_path: Path, canary: Canary) -> Path:
    missing = missing_requirements(attack)
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    return attack.build(tmp_path / "sample", canary)


def _expect_refused(fn: Callable[[], Any], canary: Canary) -> None:
    with pytest.raises(UnsafeModelError) as info:
        fn()
    canary.assert_absent()
    assert info.value.report.files, "the refusal carries a report"


@pytest.mark.parametrize("attack", LOADER_ATTACKS, ids=lambda a: a.id)
def test_safe_loader_refuses(
    attack: Attack, tmp_path: Path, canary: Canary, isolated_imports: None
) -> None:
    sample = _build(attack, tmp_path, canary)
    loader = SAFE_LOADERS[attack.natural_load.__name__]
    _expect_refused(lambda: loader(sample), canary)


@pytest.mark.parametrize("attack", LOADER_ATTACKS, ids=lambda a: a.id)
def test_natural_loader_refused_under_protect(
    attack: Attack, tmp_path: Path, canary: Canary, isolated_imports: None
) -> None:
    sample = _build(attack, tmp_path, canary)
    with protect(profiles=("transformers", "accelerate")):
        _expect_refused(lambda: attack.natural_load(sample), canary)
    canary.assert_absent()


def test_catalogue_covers_every_loader() -> None:
    # A guard against the catalogue drifting away from what this file exercises.
    names = {a.natural_load.__name__ for a in LOADER_ATTACKS}
    assert {"pickle_load", "torch_load_unsafe", "numpy_load_pickle", "joblib_load"} <= names
    assert len(LOADER_ATTACKS) >= 50
