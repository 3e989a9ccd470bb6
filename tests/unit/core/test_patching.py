"""The patch registry: patches are marked, restored, recognised by identity, applied on import."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from trainwarden import patching
from trainwarden.patching import MARKER, PatchSet, Target


@pytest.fixture
def module() -> Iterator[types.ModuleType]:
    mod = types.ModuleType("tw_patch_target")

    def greet(name: str) -> str:
        return f"hello {name}"

    class Thing:
        def size(self) -> int:
            return 1

    mod.greet = greet  # type: ignore[attr-defined]
    mod.Thing = Thing  # type: ignore[attr-defined]
    sys.modules[mod.__name__] = mod
    yield mod
    del sys.modules[mod.__name__]


def _shout(original: Callable[..., Any]) -> Callable[..., Any]:
    def greet(name: str) -> str:
        return str(original(name)).upper()

    return greet


def test_patch_set_replaces_marks_and_restores(module: types.ModuleType) -> None:
    original = module.greet
    with PatchSet("test", [Target(module.__name__, "greet", _shout)]) as ps:
        assert module.greet("a") == "HELLO A"
        assert getattr(module.greet, MARKER) == "test"
        assert module.greet.__wrapped__ is original
        patch = patching.lookup(module.greet)
        assert patch is not None
        assert patch.original is original
        assert patch.purpose == "test"
        assert patch.name == "tw_patch_target.greet"
        assert ps.patches == (patch,)
    assert module.greet is original
    assert patching.lookup(original) is None
    assert patching.installed_patches() == ()


def test_forged_marker_is_not_recognised(module: types.ModuleType) -> None:
    def impostor(name: str) -> str:
        return "pwned"

    setattr(impostor, MARKER, "protect")
    impostor.__wrapped__ = module.greet  # type: ignore[attr-defined]
    assert patching.lookup(impostor) is None


def test_class_member_target(module: types.ModuleType) -> None:
    def double(original: Callable[..., int]) -> Callable[..., int]:
        def size(self: object) -> int:
            return 2 * original(self)

        return size

    with PatchSet("test", [Target(module.__name__, "Thing.size", double)]):
        assert module.Thing().size() == 2
        patch = patching.lookup(module.Thing.size)
        assert patch is not None
        assert patch.name == "tw_patch_target.Thing.size"
    assert module.Thing().size() == 1


def test_somebody_elses_patch_on_top_is_not_dropped(
    module: types.ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    ps = PatchSet("test", [Target(module.__name__, "greet", _shout)]).install()

    def theirs(name: str) -> str:
        return "theirs"

    module.greet = theirs
    ps.uninstall()
    assert module.greet is theirs
    assert "replaced by someone else" in caplog.text


def test_same_purpose_is_not_wrapped_twice(module: types.ModuleType) -> None:
    a = PatchSet("test", [Target(module.__name__, "greet", _shout)]).install()
    b = PatchSet("test", [Target(module.__name__, "greet", _shout)]).install()
    try:
        assert module.greet("x") == "HELLO X"
        assert b.patches == ()
    finally:
        b.uninstall()
        a.uninstall()


def test_module_imported_later_is_patched_on_import(tmp_path: Any) -> None:
    (tmp_path / "tw_late_module.py").write_text("def value():\n    return 1\n")
    sys.path.insert(0, str(tmp_path))

    def plus_one(original: Callable[[], int]) -> Callable[[], int]:
        return lambda: original() + 1

    ps = PatchSet("test", [Target("tw_late_module", "value", plus_one)]).install()
    try:
        import tw_late_module  # type: ignore[import-not-found]

        assert tw_late_module.value() == 2
    finally:
        ps.uninstall()
        sys.path.remove(str(tmp_path))
        sys.modules.pop("tw_late_module", None)
    assert tw_late_module.value() == 1


def test_tracked_hooks_are_found_by_identity_and_removed() -> None:
    removed: list[bool] = []

    class Handle:
        def remove(self) -> None:
            removed.append(True)

    def hook(*args: object) -> None:
        return None

    tracked = patching.track_hook(Handle(), hook, purpose="guard", target="optimizer pre-hook")
    assert patching.lookup_hook(hook) is tracked
    assert patching.lookup_hook(lambda: None) is None
    assert tracked in patching.hooks()
    patching.untrack_hook(tracked)
    assert removed == [True]
    assert patching.lookup_hook(hook) is None
