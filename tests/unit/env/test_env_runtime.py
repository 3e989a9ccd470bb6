"""verify_runtime on the live process: patched callables and kernel overrides are caught."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from envtools import Venv

from trainwarden.env import snapshot_runtime, verify_runtime
from trainwarden.findings import Report, Verdict


def _bad(report: Report) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in report.findings:
        if f.verdict is not Verdict.SAFE:
            out.setdefault(f.rule_id, []).append(f.location.path)
    return out


def _run(code: str) -> dict[str, list[str]]:
    """Run ``code`` in a fresh interpreter; it prints the bad findings of a runtime report."""
    script = textwrap.dedent(code) + textwrap.dedent(
        """
        import json
        from trainwarden.findings import Verdict
        out = {}
        for f in report.findings:
            if f.verdict is not Verdict.SAFE:
                out.setdefault(f.rule_id, []).append(f.location.path)
        print(json.dumps(out))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    last: dict[str, list[str]] = json.loads(result.stdout.strip().splitlines()[-1])
    return last


@pytest.mark.torch
def test_clean_process_has_no_findings() -> None:
    # A fresh interpreter: other tests of this session may legitimately patch things.
    bad = _run(
        """
        import torch, torch.optim, torch.utils.data, torch.distributed, numpy, random
        from trainwarden.env import snapshot_runtime, verify_runtime
        report = verify_runtime(snapshot_runtime(), all_kernels=True)
        """
    )
    assert bad == {}


@pytest.mark.torch
def test_patched_adamw_step_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    reference = snapshot_runtime()
    original = torch.optim.AdamW.step

    def step(self: torch.optim.Optimizer, closure: object = None) -> object:
        return original(self, closure)  # the "sleep at random" would go here

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    bad = _bad(verify_runtime(reference))
    assert "python:torch.optim.adamw:AdamW.step" in bad["env.runtime-patched"]
    monkeypatch.undo()
    assert "env.runtime-patched" not in _bad(verify_runtime(reference))


@pytest.mark.torch
def test_code_swapped_in_place_keeps_identity_but_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch.random

    reference = snapshot_runtime()
    fn = torch.random.manual_seed

    def evil(seed: int) -> object:
        return None

    monkeypatch.setattr(fn, "__code__", evil.__code__)
    assert torch.random.manual_seed is fn  # same object, different behaviour
    bad = _bad(verify_runtime(reference))
    assert "python:torch.random:manual_seed" in bad["env.runtime-patched"]


@pytest.mark.torch
def test_kernel_override_through_torch_library_is_caught() -> None:
    bad = _run(
        """
        import warnings
        import torch
        from trainwarden.env import snapshot_runtime, verify_runtime
        reference = snapshot_runtime()
        warnings.simplefilter("ignore")
        lib = torch.library.Library("aten", "IMPL")
        lib.impl("add.Tensor", lambda a, b, alpha=1: torch.zeros_like(a), "CPU")
        assert torch.add(torch.ones(2), torch.ones(2)).sum().item() == 0  # it is live
        report = verify_runtime(reference)
        """
    )
    assert "dispatcher:aten::add.Tensor" in bad["env.runtime-kernel-override"]


@pytest.mark.torch
def test_kernel_override_registered_before_the_reference_is_caught() -> None:
    bad = _run(
        """
        import warnings
        import torch
        warnings.simplefilter("ignore")
        lib = torch.library.Library("aten", "IMPL")
        lib.impl("mul.Tensor", lambda a, b: a, "AutogradCPU")
        from trainwarden.env import verify_runtime
        report = verify_runtime()
        """
    )
    assert "dispatcher:aten::mul.Tensor" in bad["env.runtime-kernel-override"]


@pytest.mark.torch
def test_patch_applied_before_trainwarden_import_is_caught_by_source() -> None:
    # The saboteur's startup hook patches first; our reference is taken afterwards, so only
    # the comparison with the source on disk can tell.
    bad = _run(
        """
        import torch
        def manual_seed(seed):
            return torch.random.default_generator
        torch.manual_seed = manual_seed
        from trainwarden.env import verify_runtime
        report = verify_runtime()
        """
    )
    assert "python:torch:manual_seed" in bad["env.runtime-source-mismatch"]


def test_without_torch_stdlib_targets_are_checked() -> None:
    bad = _run(
        """
        import random, sys
        from trainwarden.env import snapshot_runtime, verify_runtime
        reference = snapshot_runtime()
        random.seed = lambda *a, **k: None
        report = verify_runtime(reference)
        assert "torch" not in sys.modules
        """
    )
    assert bad == {"env.runtime-patched": ["python:random:seed"]}


def test_patch_from_a_module_planted_in_site_packages_is_caught(venv: Venv) -> None:
    # Compiling the planted file reproduces the patch exactly, so "matches its source" must
    # also mean "its source is the package the callable belongs to", not any site-packages.
    (venv.site / "helpers.py").write_text("def seed(a=None, version=2):\n    return None\n")
    src = Path(__file__).resolve().parents[3] / "src"
    code = (
        "import json, random, helpers\n"
        "random.seed = helpers.seed\n"
        "from trainwarden.env import verify_runtime\n"
        "from trainwarden.findings import Verdict\n"
        "report = verify_runtime()\n"
        "print(json.dumps(sorted({f.rule_id + ' ' + f.location.path for f in report.findings"
        " if f.verdict is not Verdict.SAFE})))\n"
    )
    result = venv.run(code, PYTHONPATH=str(src))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["env.runtime-source-mismatch python:random:seed"]


def test_trainwarden_function_dropping_the_original_is_not_protection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import random

    import trainwarden.env._runtime as runtime

    reference = snapshot_runtime()
    # Our own code, but it does not wrap random.seed: a saboteur reusing it gets no pass.
    monkeypatch.setattr(random, "seed", runtime.critical_targets)
    bad = _bad(verify_runtime(reference))
    assert "python:random:seed" in bad["env.runtime-patched"]


def test_import_hook_added_after_the_reference_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    class Spy:
        def find_spec(self, *args: object, **kwargs: object) -> None:
            return None

    reference = snapshot_runtime()
    monkeypatch.setattr(sys, "meta_path", [Spy(), *sys.meta_path])
    bad = _bad(verify_runtime(reference, kernels=False))
    assert bad["env.import-hook"] == ["<process>"]
