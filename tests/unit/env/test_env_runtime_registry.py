"""verify_runtime and trainwarden's own patches and hooks: recognised by identity, never by name.

Each attack here is live: the patched callable really runs the saboteur's code under the
natural call path, and the check must name it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from canary import Canary
from trainwarden import patching
from trainwarden.env import check_runtime, critical_targets, snapshot_runtime, verify_runtime
from trainwarden.findings import Report, Verdict


def _bad(report: Report) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in report.findings:
        if f.verdict is not Verdict.SAFE:
            out.setdefault(f.rule_id, []).append(f.location.path)
    return out


def _rules(report: Report) -> set[str]:
    return {f.rule_id for f in report.findings}


def _fresh(code: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter; it assigns ``result`` (JSON-able), printed back."""
    script = textwrap.dedent(code) + "\nimport json\nprint(json.dumps(result))\n"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    out: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


@pytest.mark.torch
def test_importing_env_takes_no_snapshot_and_a_lazy_reference_says_so() -> None:
    result = _fresh(
        """
        import torch, numpy
        import trainwarden.env
        from trainwarden.env import _runtime
        before = _runtime._default is None
        report = trainwarden.env.verify_runtime(kernels=False)
        again = trainwarden.env.verify_runtime(kernels=False)
        rules = lambda r: sorted({f.rule_id for f in r.findings})
        result = {"before": before, "first": rules(report), "second": rules(again)}
        """
    )
    assert result["before"] is True, "importing trainwarden.env took a snapshot"
    assert "env.runtime-reference-taken" in result["first"]  # type: ignore[operator]
    assert "env.runtime-reference-taken" not in result["second"]  # type: ignore[operator]


@pytest.mark.torch
def test_protect_wrappers_are_ours_by_identity_and_restored_originals_are_clean() -> None:
    import torch

    from trainwarden.load import protect

    reference = snapshot_runtime(kernels=False)
    with protect():
        during = verify_runtime(reference, kernels=False)
        # A reference taken while protected records the originals behind our wrappers ...
        inside = snapshot_runtime(kernels=False)
        assert torch.load is not inside.refs["torch:load"].obj
    assert "env.runtime-protected" in _rules(during)
    assert _bad(during) == {}
    # ... so removing protection is no change at all (it used to read as "patched").
    assert _bad(verify_runtime(inside, kernels=False)) == {}
    assert _bad(verify_runtime(reference, kernels=False)) == {}


@pytest.mark.torch
def test_a_forged_marker_on_an_attackers_function_is_not_accepted(
    monkeypatch: pytest.MonkeyPatch, canary: Canary
) -> None:
    import torch

    import trainwarden

    reference = snapshot_runtime(kernels=False)
    original = torch.load
    # The attacker's wrapper claims everything a trainwarden wrapper carries: the marker,
    # __wrapped__ pointing at the original, and code whose file name is inside trainwarden.
    fake_file = str(Path(trainwarden.__file__).parent / "load" / "_protect.py")
    namespace: dict[str, object] = {"original": original, "canary": str(canary.path)}
    source = (
        "def load(f, *a, **k):\n    open(canary, 'w').close()\n    return original(f, *a, **k)\n"
    )
    exec(compile(source, fake_file, "exec"), namespace)
    evil = namespace["load"]
    assert isinstance(evil, types.FunctionType)
    evil.__trainwarden_patch__ = "protect"  # type: ignore[attr-defined]
    evil.__trainwarden_wrapper__ = True  # type: ignore[attr-defined]
    evil.__wrapped__ = original  # type: ignore[attr-defined]
    monkeypatch.setattr(torch, "load", evil)
    buffer = __import__("io").BytesIO()
    torch.save({"w": torch.ones(1)}, buffer)
    buffer.seek(0)
    torch.load(buffer)
    canary.assert_present()  # the patch is live
    bad = _bad(verify_runtime(reference, kernels=False))
    assert "python:torch:load" in bad["env.runtime-patched"]


@pytest.mark.torch
def test_our_wrapper_altered_in_place_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import trainwarden
    from trainwarden.load import protect

    reference = snapshot_runtime(kernels=False)
    with protect():
        wrapper = torch.load
        assert patching.lookup(wrapper) is not None
        # Same object (the registry still knows it), different code: compiled with a file
        # name inside trainwarden, so a location check would pass it.
        fake_file = str(Path(trainwarden.__file__).parent / "load" / "_protect.py")
        namespace: dict[str, object] = {}
        source = (
            "def outer(original):\n"
            "    def load(f, *a, **k):\n"
            "        return None if original else None\n"
            "    return load\n"
            "load = outer(None)\n"
        )
        exec(compile(source, fake_file, "exec"), namespace)
        swapped = namespace["load"]
        assert isinstance(swapped, types.FunctionType)
        monkeypatch.setattr(wrapper, "__code__", swapped.__code__)
        assert torch.load("no-such-file") is None  # the altered wrapper is live
        bad = _bad(verify_runtime(reference, kernels=False))
        monkeypatch.undo()
    assert "python:torch:load" in bad["env.runtime-patched"]


@pytest.mark.torch
def test_the_original_swapped_behind_our_wrapper_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from trainwarden.load import protect

    reference = snapshot_runtime(kernels=False)
    original = torch.serialization.load

    def evil(*args: object, **kwargs: object) -> object:
        return original(*args, **kwargs)

    # Patched first, then protect() wraps the attacker's function: the original recorded by
    # the registry is not the reference's.
    monkeypatch.setattr(torch.serialization, "load", evil)
    with protect():
        bad = _bad(verify_runtime(reference, kernels=False))
    assert "python:torch.serialization:load" in bad["env.runtime-patched"]


def test_patching_finder_is_ours_by_identity_and_an_impostor_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reference = snapshot_runtime(kernels=False)
    patch_set = patching.PatchSet("test-finder", [patching.Target("no_such_mod_tw", "x", id)])
    patch_set.install()
    try:
        [finder] = patching.import_hooks()
        assert finder in sys.meta_path
        report = verify_runtime(reference, kernels=False)
        assert "env.import-hook-trainwarden" in _rules(report)
        assert "env.import-hook" not in _bad(report)

        # An impostor that claims to be the registry's finder class.
        class _PatchOnImport:
            def find_spec(self, *args: object, **kwargs: object) -> None:
                return None

        _PatchOnImport.__module__ = "trainwarden.patching"
        monkeypatch.setattr(sys, "meta_path", [_PatchOnImport(), *sys.meta_path])
        bad = _bad(verify_runtime(reference, kernels=False))
        assert bad["env.import-hook"] == ["<process>"]
    finally:
        patch_set.uninstall()
    assert patching.import_hooks() == ()


@pytest.mark.torch
def test_global_optimizer_hook_is_caught_unless_tracked_as_ours(canary: Canary) -> None:
    import torch

    reference = snapshot_runtime(kernels=False)

    def flip(optimizer: object, args: object, kwargs: object) -> None:
        canary.path.touch()
        for group in optimizer.param_groups:  # type: ignore[attr-defined]
            for p in group["params"]:
                p.data.neg_()

    from torch.optim.optimizer import register_optimizer_step_post_hook

    handle = register_optimizer_step_post_hook(flip)
    try:
        w = torch.nn.Parameter(torch.ones(2))
        opt = torch.optim.SGD([w], lr=0.1)
        w.sum().backward()
        opt.step()
        canary.assert_present()  # the hook runs on every step of every optimizer
        bad = _bad(verify_runtime(reference, kernels=False))
        assert bad["env.runtime-global-hook"] == ["<process>"]
        # The same kind of hook registered by trainwarden (the guard) is tracked: not flagged.
        tracked = patching.track_hook(handle, flip, purpose="guard", target="test")
        assert "env.runtime-global-hook" not in _bad(verify_runtime(reference, kernels=False))
        patching.untrack_hook(tracked, remove=False)
    finally:
        handle.remove()
    assert "env.runtime-global-hook" not in _bad(verify_runtime(reference, kernels=False))


@pytest.mark.torch
def test_check_runtime_returns_only_problems(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    reference = snapshot_runtime()
    verify_runtime(reference)  # pays for the source compiles once
    assert check_runtime(reference) == ()
    original = torch.optim.AdamW.step

    def step(self: torch.optim.Optimizer, closure: object = None) -> object:
        return original(self, closure)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    found = check_runtime(reference)
    assert [f.location.path for f in found] == ["python:torch.optim.adamw:AdamW.step"]
    assert all(f.verdict is not Verdict.SAFE for f in found)


def test_source_budget_spreads_compiles_over_calls() -> None:
    result = _fresh(
        """
        import random, json
        import email.message  # not a target: keeps the example to the stdlib
        from trainwarden.env import snapshot_runtime, verify_runtime
        ref = snapshot_runtime(kernels=False)
        first = verify_runtime(ref, kernels=False, source_budget=0.0)
        rest = verify_runtime(ref, kernels=False)
        ids = lambda r: sorted({f.rule_id for f in r.findings})
        result = {"first": ids(first), "rest": ids(rest), "sourced": len(ref.sourced),
                  "targets": ref.target_count}
        """
    )
    assert "env.runtime-source-pending" in result["first"]  # type: ignore[operator]
    assert "env.runtime-source-pending" not in result["rest"]  # type: ignore[operator]
    assert result["sourced"] == result["targets"]


@pytest.mark.torch
def test_critical_targets_name_what_a_saboteur_patches() -> None:
    import torch.optim  # noqa: F401

    targets = critical_targets()
    for name in (
        "torch:manual_seed",
        "torch.optim.adamw:AdamW.step",
        "torch.optim.sgd:SGD.step",
        "random:seed",
        "torch.serialization:load",
    ):
        assert name in targets
    with pytest.raises(TypeError):
        targets["x"] = ("y", "z")  # type: ignore[index]
