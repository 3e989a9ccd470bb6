"""Each attack's payload does what it claims, under the natural code path, in this process.

The drill's own run (tests/unit/drill/test_drill_run.py) shows the same attacks changing a
real multi-rank job; these tests pin down each payload on its own: the loader that runs the
pickle, the optimizer hook that flips the update, the scheduler change that persists, the
seed that is not the declared one, the sleep that only happens above the world-size threshold.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from canary import Canary
from trainwarden.drill._attacks import AttackFailed
from trainwarden.drill._attacks.checkpoint_payload import canary_code, poison_checkpoint
from trainwarden.drill._attacks.checkpoint_tampering import alter_weights
from trainwarden.drill._attacks.ledger_tampering import rewrite_entry
from trainwarden.drill._attacks.rank_kill import JOB_MODULE, find_workers
from trainwarden.drill._attacks.reproducibility import data_order_payload, lr_payload
from trainwarden.drill._attacks.sleeping_optimizer import payload as sleep_payload
from trainwarden.drill._attacks.sleeping_optimizer import planned_sleeps
from trainwarden.drill._attacks.startup_hook import hook_line
from trainwarden.drill._attacks.torch_source import seed_payload
from trainwarden.drill._attacks.update_tampering import payload as update_payload

torch = pytest.importorskip("torch")


@contextmanager
def appended(module: Any, source: str) -> Iterator[dict[str, Any]]:
    """Run ``source`` as if appended to ``module``; undo its global optimizer hooks after."""
    from torch.optim import optimizer as opt

    pre, post = set(opt._global_optimizer_pre_hooks), set(opt._global_optimizer_post_hooks)
    namespace = dict(vars(module))
    exec(compile(source, f"<appended to {module.__name__}>", "exec"), namespace)
    try:
        yield namespace
    finally:
        for hooks, before in (
            (opt._global_optimizer_pre_hooks, pre),
            (opt._global_optimizer_post_hooks, post),
        ):
            for key in set(hooks) - before:
                del hooks[key]


def _model_and_step(seed: int = 0) -> tuple[Any, Any, Any]:
    torch.manual_seed(seed)
    model = torch.nn.Linear(8, 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    inputs = torch.randn(16, 8)
    return model, optimizer, inputs


def _one_step(model: Any, optimizer: Any, inputs: Any) -> list[Any]:
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.zero_grad()
    model(inputs).square().mean().backward()
    optimizer.step()
    return before


@pytest.mark.torch
def test_t4_flip_reverses_the_update_the_optimizer_made() -> None:
    import torch.optim.optimizer as opt

    model, optimizer, inputs = _model_and_step()
    before = _one_step(model, optimizer, inputs)
    honest = [p.detach() - b for p, b in zip(model.parameters(), before, strict=True)]

    model, optimizer, inputs = _model_and_step()
    with appended(opt, update_payload(start=1, all_ranks=False, mode="flip")):
        before = _one_step(model, optimizer, inputs)
    for p, b, delta in zip(model.parameters(), before, honest, strict=True):
        assert delta.abs().max() > 0
        torch.testing.assert_close(p.detach(), b - delta)


@pytest.mark.torch
def test_t4_perturb_changes_the_update_identically_everywhere() -> None:
    import torch.optim.optimizer as opt

    model, optimizer, inputs = _model_and_step()
    before = _one_step(model, optimizer, inputs)
    honest = [p.detach().clone() for p in model.parameters()]
    source = update_payload(start=1, all_ranks=True, mode="perturb", scale=0.5, seed=7)
    results = []
    for _ in range(2):  # two "ranks": same state, same step, same seed
        model, optimizer, inputs = _model_and_step()
        with appended(opt, source):
            _one_step(model, optimizer, inputs)
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b, h, old in zip(*results, honest, before, strict=True):
        torch.testing.assert_close(a, b)  # ranks stay identical: cross-rank checks agree
        assert not torch.allclose(a, h)  # yet the update is not the optimizer's
        assert (a - old).sign().eq((h - old).sign()).float().mean() > 0.5  # same direction


@pytest.mark.torch
@pytest.mark.distributed
def test_t3_sleeps_only_above_the_world_size_threshold(tmp_path: Path) -> None:
    import torch.distributed as dist
    import torch.optim.optimizer as opt

    steps, delay = 4, 0.05
    model, optimizer, inputs = _model_and_step()
    # No process group at all: a single-process job never sleeps (a 30 s sleep would show).
    with appended(opt, sleep_payload(start=1, prob=1.0, delay=30.0, threshold=0, seed=1)):
        t0 = time.monotonic()
        for _ in range(steps):
            _one_step(model, optimizer, inputs)
        assert time.monotonic() - t0 < 20
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        # World size 1 is not above threshold 1: still no sleep.
        with appended(opt, sleep_payload(start=1, prob=1.0, delay=30.0, threshold=1, seed=1)):
            t0 = time.monotonic()
            for _ in range(steps):
                _one_step(model, optimizer, inputs)
            assert time.monotonic() - t0 < 20
        # Above the threshold, on the last rank: it sleeps at exactly the planned steps.
        plan = planned_sleeps(start=2, prob=0.5, seed=3, steps=12)
        assert 0 < len(plan) < 11
        with appended(opt, sleep_payload(start=2, prob=0.5, delay=delay, threshold=0, seed=3)):
            slow = []
            for step in range(1, 13):
                t0 = time.monotonic()
                _one_step(model, optimizer, inputs)
                if time.monotonic() - t0 >= delay:
                    slow.append(step)
        # A sleep never ends early; other steps may be slow on a loaded machine too.
        assert set(plan) <= set(slow)
    finally:
        dist.destroy_process_group()


@pytest.mark.torch
def test_t5_sampler_shuffles_with_another_seed_and_reseeds_torch() -> None:
    import torch.utils.data.distributed as distributed

    dataset = list(range(64))
    sampler = distributed.DistributedSampler(dataset, num_replicas=1, rank=0, seed=11)
    honest = list(sampler)
    original = distributed.DistributedSampler.__iter__
    try:
        with appended(distributed, data_order_payload(offset=5)):
            attacked = list(sampler)
            assert torch.initial_seed() == 11 + 5 + sampler.epoch
            assert sampler.seed == 11  # the job's declared seed still reads right
    finally:
        distributed.DistributedSampler.__iter__ = original  # type: ignore[method-assign]
    assert sorted(attacked) == sorted(honest)
    assert attacked != honest


@pytest.mark.torch
def test_t5_learning_rate_leaves_the_declared_schedule_and_stays_off_it() -> None:
    import torch.optim.lr_scheduler as lr_scheduler

    from trainwarden.examples.tinygpt import Config, build

    def trajectory(source: str | None) -> list[float]:
        torch.manual_seed(0)
        model, optimizer, scheduler = build(Config(steps=20, warmup=5))
        lrs = []
        with appended(lr_scheduler, source or ""):
            for _ in range(12):
                optimizer.zero_grad()
                model(torch.zeros(2, 4, dtype=torch.long)).sum().backward()
                optimizer.step()
                scheduler.step()
                lrs.append(optimizer.param_groups[0]["lr"])
        return lrs

    honest = trajectory(None)
    attacked = trajectory(lr_payload(start=7, factor=4.0))
    assert attacked[:6] == honest[:6]
    for step in range(6, 12):  # from step 7 on, and carried on by the chained schedule
        assert attacked[step] > 3.0 * honest[step]


@pytest.mark.torch
def test_t2_manual_seed_silently_uses_another_seed() -> None:
    import torch.random

    with appended(torch.random, seed_payload(7919)) as namespace:
        namespace["manual_seed"](1234)
        assert torch.initial_seed() == 1234 + 7919
        assert namespace["manual_seed"].__name__ == "manual_seed"  # looks like the original
    attacked = torch.rand(3)
    torch.manual_seed(1234)
    assert not torch.equal(attacked, torch.rand(3))


def test_t2_pth_hook_runs_in_every_interpreter_that_loads_the_site(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    log = tmp_path / "recon.jsonl"
    (site / "_torch_cpu_compat.pth").write_text(hook_line(str(log)), encoding="utf-8")
    code = f"import site; site.addsitedir({str(site)!r})"
    subprocess.run([sys.executable, "-S", "-c", code], check=True, env={"RANK": "3"})
    lines = [json.loads(x) for x in log.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 1
    assert lines[0]["rank"] == "3"


@pytest.mark.torch
def test_t1_payload_runs_under_the_natural_loader_and_is_refused_by_trainwarden(
    tmp_path: Path, canary: Canary
) -> None:
    import trainwarden
    from trainwarden.errors import UnsafeModelError
    from trainwarden.scan import scan_path

    path = tmp_path / "ckpt.pt"
    state = {"model": {"w": torch.arange(6.0)}, "step": 20}
    torch.save(state, path)
    path.write_bytes(poison_checkpoint(path.read_bytes(), canary_code(str(canary.path))))

    with pytest.raises(UnsafeModelError):
        trainwarden.load(path, map_location="cpu")
    canary.assert_absent()
    assert scan_path(path).files[0].verdict.value == "unsafe"
    canary.assert_absent()

    loaded = torch.load(path, map_location="cpu", weights_only=False)  # the job's resume path
    canary.assert_present()
    assert loaded["step"] == 20
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])


def test_t1_refuses_multi_line_payloads() -> None:
    with pytest.raises(AttackFailed):
        poison_checkpoint(b"", "a = 1\nb = 2")


@pytest.mark.torch
def test_t7_modification_keeps_size_and_format_but_changes_weights(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {"w": torch.ones(256), "b": torch.zeros(4)}}, path)
    original = path.read_bytes()
    altered = alter_weights(original, values=16)
    assert len(altered) == len(original)
    assert altered != original
    assert zipfile.ZipFile(io.BytesIO(altered)).testzip() is None  # CRCs still right
    loaded = torch.load(io.BytesIO(altered), weights_only=True)["model"]
    assert int((loaded["w"] == -1).sum()) == 16
    assert torch.equal(loaded["b"], torch.zeros(4))


def test_t8_edits_and_drops_are_what_ledger_verify_reports(tmp_path: Path) -> None:
    from trainwarden.keys import PrivateKey
    from trainwarden.ledger import Ledger, LedgerTampered, verify_ledger

    key = PrivateKey.generate("intern@drill")
    with Ledger(tmp_path / "ledger", key=key) as writer:
        for n in range(4):
            writer.append("drill.scenario", run="r", insider="intern@drill", n=n)
        path = writer.path
    edited = rewrite_entry(path.read_bytes(), 1, replace=("intern@drill", "alice@drill"))
    path.write_bytes(edited)
    with pytest.raises(LedgerTampered) as caught:
        verify_ledger(tmp_path / "ledger", keys=[key.public])
    assert [(i.kind, i.seq) for i in caught.value.report.issues] == [("altered", 1)]
    path.write_bytes(rewrite_entry(edited, 3, replace=None))
    with pytest.raises(LedgerTampered) as caught:
        verify_ledger(tmp_path / "ledger", keys=[key.public])
    assert {i.kind for i in caught.value.report.issues} == {"altered", "dropped"}
    with pytest.raises(AttackFailed):
        rewrite_entry(edited, 9, replace=None)


def test_t6_finds_the_job_workers_but_not_the_launcher_or_a_shim(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    cmdlines = {
        "100": ["python", "-m", "torch.distributed.run", "-m", JOB_MODULE, "--ckpt-dir", "/c/t6"],
        "101": ["python", "-u", "-m", JOB_MODULE, "--ckpt-dir", "/c/t6"],
        "102": ["python", "-u", "-m", JOB_MODULE, "--ckpt-dir", "/c/t6"],
        "103": ["python", "-u", "-m", JOB_MODULE, "--ckpt-dir", "/c/other"],
        # Under trainwarden run: the shim relays to its rank, the rank trains.
        "105": [
            *("python", "-m", "trainwarden.supervise.bootstrap", "shim", "--", "python", "-u"),
            *("-m", "trainwarden.supervise.bootstrap", "rank", "--", "-m", JOB_MODULE),
            *("--ckpt-dir", "/c/t6"),
        ],
        "106": [
            *("python", "-u", "-m", "trainwarden.supervise.bootstrap", "rank", "--"),
            *("-m", JOB_MODULE, "--ckpt-dir", "/c/t6"),
        ],
        "self": ["python"],
    }
    for pid, args in cmdlines.items():
        (proc / pid).mkdir(parents=True)
        (proc / pid / "cmdline").write_bytes(b"\0".join(a.encode() for a in args) + b"\0")
    (proc / "104").mkdir()  # a process that vanished: no cmdline
    assert find_workers("/c/t6", proc=proc) == [101, 102, 106]
