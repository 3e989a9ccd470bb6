"""verify_runtime in the processes real training jobs run: no false findings, and no free pass.

Popular libraries change torch's process state as a matter of course (transformers adds
``Module.smart_apply`` and an import finder, torch re-wraps ``manual_seed`` when dynamo loads,
Lightning's imports register torch's functional-collective autograd formulas). Judged as
tampering, every such job would carry a finding. What makes them legitimate is checked, not
assumed: the code doing it is a file an installed distribution's RECORD vouches for, and what it
adds replaces nothing of torch's. The attacks below use the same mechanisms from code that
fails one of those conditions, and must stay findings.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from canary import Canary

pytestmark = pytest.mark.torch


def _fresh(code: str, **env: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter; it assigns ``result`` (JSON-able), printed back."""
    script = textwrap.dedent(code) + "\nimport json\nprint(json.dumps(result))\n"
    environ = {**os.environ, **env}
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=environ,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def _install(site: Path, name: str, files: dict[str, str], *, tamper: bool = False) -> None:
    """Write a distribution into ``site`` as pip would: its files, METADATA and a RECORD."""
    rows = []
    for rel, text in files.items():
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        rows.append(f"{rel},{_record_hash(text.encode())},{len(text.encode())}")
    meta = site / f"{name}-1.0.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    rows.append(f"{meta.name}/METADATA,{_record_hash((meta / 'METADATA').read_bytes())},")
    rows.append(f"{meta.name}/RECORD,,")
    (meta / "RECORD").write_text("\n".join(rows) + "\n")
    if tamper:  # changed after installation: RECORD no longer vouches for it
        for rel in files:
            path = site / rel
            path.write_text(path.read_text() + "\n# edited after install\n")


_PATCHES = """
import os
import sys

import torch

CANARY = os.environ["CANARY"]


def _payload(tag):
    with open(CANARY, "a") as fh:
        fh.write(tag + "\\n")


def _added(module):
    return module


def add():
    # A new method on a torch class, as transformers' smart_apply.
    torch.nn.Module.{prefix}_added = _added


def replace():
    original = torch.nn.Module.train

    def train(self, mode=True):
        _payload("train")
        return original(self, mode)

    torch.nn.Module.train = train


def shadow():
    # Adds an attribute AdamW itself never had, shadowing the inherited Optimizer.zero_grad.
    def zero_grad(self, set_to_none=True):
        _payload("zero_grad")
        return torch.optim.Optimizer.zero_grad(self, set_to_none)

    torch.optim.AdamW.zero_grad = zero_grad


def dunder():
    def __init_subclass__(cls, **kwargs):
        _payload("subclass")

    torch.optim.Optimizer.__init_subclass__ = classmethod(__init_subclass__)


class Finder:
    def find_spec(self, name, path=None, target=None):
        if name == "tw_probe_module":
            _payload("finder")
        return None


def hook():
    sys.meta_path.insert(0, Finder())
"""


@pytest.fixture
def sites(tmp_path: Path) -> dict[str, Path]:
    """One verified distribution, one edited after install, and loose code no RECORD lists."""
    verified = tmp_path / "site-verified"
    tampered = tmp_path / "site-tampered"
    loose = tmp_path / "loose"
    for directory in (verified, tampered, loose):
        directory.mkdir()
    _install(verified, "helperlib", {"helperlib/__init__.py": _PATCHES.format(prefix="tw_ok")})
    _install(
        tampered,
        "tamperedlib",
        {"tamperedlib/__init__.py": _PATCHES.format(prefix="tw_tampered")},
        tamper=True,
    )
    (loose / "looselib.py").write_text(_PATCHES.format(prefix="tw_loose"))
    return {"verified": verified, "tampered": tampered, "loose": loose}


def test_additions_by_verified_installed_code_are_info_and_everything_else_is_caught(
    sites: dict[str, Path], canary: Canary
) -> None:
    result = _fresh(
        f"""
        import site, sys
        import torch
        from trainwarden.env import snapshot_runtime, verify_runtime
        from trainwarden.findings import Verdict

        reference = snapshot_runtime(kernels=False)
        site.addsitedir({str(sites["verified"])!r})
        site.addsitedir({str(sites["tampered"])!r})
        sys.path.insert(0, {str(sites["loose"])!r})
        import helperlib, tamperedlib, looselib

        helperlib.add()
        helperlib.hook()
        tamperedlib.add()
        looselib.add()
        looselib.hook()
        helperlib.replace()
        helperlib.shadow()
        helperlib.dunder()

        # The natural code paths: every payload that was planted runs.
        model = torch.nn.Linear(2, 2)
        model.train()
        opt = torch.optim.AdamW(model.parameters())
        opt.zero_grad()
        class Custom(torch.optim.SGD):
            pass
        try:
            import tw_probe_module
        except ImportError:
            pass

        report = verify_runtime(reference, kernels=False)
        result = [
            [f.rule_id, f.verdict.value, f.location.path, f.message]
            for f in report.findings
            if f.rule_id not in ("env.runtime-targets-checked", "env.runtime-protected")
        ]
        """,
        CANARY=str(canary.path),
    )
    findings = [tuple(r) for r in result]  # type: ignore[attr-defined]

    def about(fragment: str) -> list[tuple[str, str, str, str]]:
        return [f for f in findings if fragment in f[2] or fragment in f[3]]

    # Every planted payload really ran under the natural call path.
    ran = set(canary.path.read_text().split())
    assert ran == {"train", "zero_grad", "subclass", "finder"}
    # Added by verified installed code, replacing nothing: information naming the package.
    added = about("Module.tw_ok_added")
    assert added
    assert all(f[0] == "env.runtime-added" and f[1] == "safe" for f in added)
    assert "helperlib 1.0" in added[0][3]
    known = [f for f in about("helperlib.Finder") if f[0].startswith("env.import-hook")]
    assert len(known) == 1, known
    assert known[0][0] == "env.import-hook-known"
    assert known[0][1] == "safe"
    assert "helperlib 1.0" in known[0][3]
    # The same addition from a file edited after install, or from code no RECORD lists.
    for fragment in ("Module.tw_tampered_added", "Module.tw_loose_added"):
        assert [f[1] for f in about(fragment)] == ["unsafe"], (fragment, findings)
    loose_hook = [f for f in about("looselib.Finder") if f[0].startswith("env.import-hook")]
    assert [f[0] for f in loose_hook] == ["env.import-hook"]
    assert loose_hook[0][1] != "safe"
    # Verified installed code that *replaces* what torch defines, shadows an inherited method
    # or adds a dunder is tampering, whoever installed it.
    for fragment in ("Module.train", "AdamW.zero_grad", "Optimizer.__init_subclass__"):
        verdicts = {f[1] for f in about(fragment)}
        assert "unsafe" in verdicts, (fragment, findings)


def test_a_foreign_autograd_formula_for_a_torch_collective_is_caught(
    tmp_path: Path, canary: Canary
) -> None:
    # register_autograd goes through torch's own helper, so the dispatcher names
    # torch/library.py as the kernel's location whoever called it: the formula itself must be
    # judged. This one flips the gradient through a real functional collective.
    (tmp_path / "evilgrad.py").write_text(
        textwrap.dedent(
            f"""
            import torch

            def backward(ctx, grad):
                {canary.python_code}
                return -grad, None, None

            def install():
                torch.library.register_autograd("_c10d_functional::broadcast", backward)
            """
        )
    )
    result = _fresh(
        f"""
        import sys
        import torch, torch.distributed as dist
        import torch.distributed._functional_collectives
        from trainwarden.env import snapshot_runtime, verify_runtime
        from trainwarden.findings import Verdict

        reference = snapshot_runtime()
        clean = [f.rule_id for f in verify_runtime(reference).findings
                 if f.verdict is not Verdict.SAFE]
        sys.path.insert(0, {str(tmp_path)!r})
        import evilgrad
        evilgrad.install()
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        x = torch.ones(3, requires_grad=True)
        y = torch.ops._c10d_functional.broadcast(x, 0, dist.group.WORLD.group_name)
        torch.ops._c10d_functional.wait_tensor(y).sum().backward()
        grad = x.grad.tolist()
        dist.destroy_process_group()
        after = [[f.rule_id, f.verdict.value, f.message] for f in verify_runtime(reference).findings
                 if f.verdict is not Verdict.SAFE]
        result = {{"clean": clean, "grad": grad, "after": after}}
        """
    )
    canary.assert_present()
    assert result["grad"] == [-1.0, -1.0, -1.0]  # the attack acts
    assert result["clean"] == []  # torch's own lazy registrations are not findings
    after = result["after"]
    assert [f[0] for f in after] == ["env.runtime-library-impl"], after  # type: ignore[index]
    assert "evilgrad.py" in after[0][2]  # type: ignore[index]


_SETS = {
    "protect": "from trainwarden.load import protect\nhandles['protect'] = protect()",
    "guard-rng": (
        "from trainwarden.guard import _process, _rng\n"
        "handles['guard-rng'] = _rng.reseed_patches(_process._on_reseed).install()"
    ),
    "guard-data": (
        "from trainwarden.guard import _process, _data\n"
        "handles['guard-data'] = _data.sampler_patches(_process._on_order).install()"
    ),
    "guard": (
        "from trainwarden.guard import _process\n"
        "handles['guard'] = _process._clip_and_save_patches().install()"
    ),
    "guard-global": (
        "from trainwarden.guard import install_global\nhandles['guard-global'] = install_global()"
    ),
}
_ORDERS = [
    ["protect", "guard-rng", "guard-data", "guard", "guard-global"],
    ["guard-global", "guard", "guard-data", "guard-rng", "protect"],
    ["guard-rng", "protect", "guard-global", "guard-data", "guard"],
    ["guard-data", "guard-global", "protect", "guard", "guard-rng"],
]


@pytest.mark.parametrize("order", _ORDERS, ids=lambda o: "-".join(o))
def test_every_patch_set_of_trainwarden_in_any_order_verifies_clean(order: list[str]) -> None:
    # `random.seed` is a bound method of `random._inst` and `random.Random.seed` is its
    # function: the guard wraps both, and the check once judged the standard library's
    # function behind the method as trainwarden's own (foreign) code.
    installs = "\n".join(_SETS[name] for name in order)
    result = _fresh(
        f"""
        import random
        import torch, torch.utils.data
        from trainwarden.env import snapshot_runtime, verify_runtime
        from trainwarden.findings import Verdict

        def bad(report):
            return [[f.rule_id, f.message] for f in report.findings
                    if f.verdict is not Verdict.SAFE]

        handles = {{}}
        before = snapshot_runtime()
{textwrap.indent(installs, " " * 8)}
        during = snapshot_runtime()
        random.seed(3)
        torch.manual_seed(3)
        result = {{"before": bad(verify_runtime(before)), "during": bad(verify_runtime(during)),
                  "protected": sorted({{f.rule_id for f in verify_runtime(before).findings}})}}
        for name in reversed({order!r}):
            handle = handles[name]
            for method in ("close", "disable", "uninstall"):
                if hasattr(handle, method):
                    getattr(handle, method)()
                    break
        result["after"] = bad(verify_runtime(before))
        """
    )
    assert result["before"] == [], result["before"]
    assert result["during"] == [], result["during"]
    assert result["after"] == [], result["after"]
    assert "env.runtime-protected" in result["protected"]  # type: ignore[operator]


@pytest.mark.slow
def test_a_clean_process_with_popular_training_libraries_has_no_findings() -> None:
    result = _fresh(
        """
        import warnings
        warnings.simplefilter("ignore")
        import torch
        from trainwarden.env import snapshot_runtime, verify_runtime
        from trainwarden.findings import Verdict

        early = snapshot_runtime()
        import numpy, safetensors.torch, torchmetrics, transformers, accelerate, lightning
        torch.manual_seed(0)
        config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1,
                                         n_head=2)
        model = transformers.GPT2LMHeadModel(config)  # adds Module.smart_apply
        accelerator = accelerate.Accelerator(cpu=True)
        model, opt = accelerator.prepare(model, torch.optim.AdamW(model.parameters()))
        metric = torchmetrics.MeanMetric()
        metric.update(torch.ones(2))
        blob = safetensors.torch.save({"w": torch.ones(2)})
        safetensors.torch.load(blob)
        numpy.random.default_rng(0).random(3)

        class Tiny(lightning.LightningModule):
            def __init__(self):
                super().__init__()
                self.layer = torch.nn.Linear(2, 1)

        Tiny()
        late = snapshot_runtime()

        def bad(report):
            return [[f.rule_id, f.message] for f in report.findings
                    if f.verdict is not Verdict.SAFE]

        early_report = verify_runtime(early)
        result = {
            "early": bad(early_report),
            "late": bad(verify_runtime(late)),
            "added": [f.message for f in early_report.findings
                      if f.rule_id == "env.runtime-added"],
        }
        """
    )
    assert result["early"] == [], result["early"]
    assert result["late"] == [], result["late"]
    added = result["added"]
    assert any("Module.smart_apply" in m and "transformers" in m for m in added)  # type: ignore[union-attr]
