"""The adapters on real frameworks: a transformers Trainer, a Lightning Trainer, accelerate.

Each trains a small model built from its config (random weights, synthetic data) on CPU with
the guard attached through the adapter, once clean (no findings) and once with an insider's
change made through the framework's own extension point (detected, training halted).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from trainwarden.errors import GuardViolation
from trainwarden.events import MemorySink
from trainwarden.guard import GuardConfig

pytestmark = [pytest.mark.torch, pytest.mark.slow]

# The test machine is shared: timing is checked elsewhere, with thresholds for that.
CONFIG = GuardConfig().without("timing")


def _tampering(findings: Any) -> list[Any]:
    """Findings that say the run was tampered with.

    transformers adds a ``smart_apply`` method to torch's Module classes when it initialises
    weights (for the rest of the process); trainwarden.env judges that foreign code on a torch
    class. Present before a guard attaches, it is reported once as such (suspected, not
    halting), never as tampering during the run.
    """
    return [f for f in findings if f.halts or f.established]


# --------------------------------------------------------------------------- transformers


def _hf_trainer(tmp_path: Path, sink: MemorySink, extra: list[Any], steps: int = 16) -> Any:
    transformers = pytest.importorskip("transformers")
    from trainwarden.integrations.transformers import GuardCallback

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=128, n_positions=32, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.0
    )
    model = transformers.GPT2LMHeadModel(config)
    gen = torch.Generator().manual_seed(1)
    data = [
        {"input_ids": ids, "labels": ids} for ids in torch.randint(0, 128, (64, 16), generator=gen)
    ]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        warmup_steps=3,
        lr_scheduler_type="cosine",
        max_grad_norm=1.0,
        weight_decay=0.01,
        logging_steps=100,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    guard = GuardCallback(sink=sink, config=CONFIG, telemetry_dir=tmp_path / "telemetry")
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=data, callbacks=[guard, *extra]
    )
    return trainer, guard


def test_transformers_trainer_clean(tmp_path: Path, sink: MemorySink) -> None:
    trainer, callback = _hf_trainer(tmp_path, sink, [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    guard = callback.guard
    assert guard is not None
    assert not guard.active
    assert _tampering(guard.findings) == []
    assert all(f.message.startswith("present when") for f in guard.findings)
    attach = sink.named("guard.attach")[0].data
    assert attach["reference"] == "AdamW"
    assert attach["lr"] == "replica of LambdaLR"
    assert attach["not_checked"] == {"timing": "disabled by configuration"}
    assert sink.named("guard.close")[0].data["verified_steps"] == 16
    assert sink.named("guard.telemetry")[0].data["lines"] == 16


def test_transformers_trainer_tampered(tmp_path: Path, sink: MemorySink) -> None:
    transformers = pytest.importorskip("transformers")

    class Insider(transformers.TrainerCallback):  # a callback that raises the learning rate
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 9:
                kwargs["optimizer"].param_groups[0]["lr"] *= 10

    trainer, callback = _hf_trainer(tmp_path, sink, [Insider()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(GuardViolation) as info:
            trainer.train()
    assert info.value.step == 10  # type: ignore[attr-defined]
    assert {f.rule_id for f in callback.guard.findings} >= {"guard.hyperparam"}
    callback.guard.close()


# ------------------------------------------------------------------------------ lightning


def _lightning(sink: MemorySink, extra: list[Any], steps: int = 16) -> tuple[Any, Any, Any]:
    pl = pytest.importorskip("lightning.pytorch")
    from trainwarden.integrations.lightning import GuardCallback

    class Regressor(pl.LightningModule):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 1)
            )

        def forward(self, x: Any) -> Any:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            return torch.nn.functional.mse_loss(self(x), y)

        def configure_optimizers(self) -> Any:
            opt = torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=0.01)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    torch.manual_seed(0)
    x = torch.randn(128, 8)
    data = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))
    loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=True)
    callback = GuardCallback(sink=sink, config=CONFIG)
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
        callbacks=[callback, *extra],
    )
    return trainer, Regressor(), (callback, loader)


def test_lightning_trainer_clean(sink: MemorySink) -> None:
    trainer, module, (callback, loader) = _lightning(sink, [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, loader)
    assert callback.guards == []
    assert [e for e in sink.named("guard.finding") if e.data["established"]] == []
    attach = sink.named("guard.attach")[0].data
    assert attach["reference"] == "AdamW"
    assert attach["lr"] == "replica of StepLR"
    close = sink.named("guard.close")[0].data
    assert close["verified_steps"] == 16


def test_lightning_trainer_tampered(sink: MemorySink) -> None:
    pl = pytest.importorskip("lightning.pytorch")

    class Insider(pl.Callback):  # type: ignore[misc]
        def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, idx: int) -> None:
            if trainer.global_step == 7:
                with torch.no_grad():
                    module.net[0].weight.mul_(1.05)  # weights edited between steps

    trainer, module, (callback, loader) = _lightning(sink, [Insider()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(GuardViolation) as info:
            trainer.fit(module, loader)
    assert info.value.step == 8  # type: ignore[attr-defined]
    findings = [e.data for e in sink.named("guard.finding")]
    assert any(f["rule_id"] == "guard.weights" for f in findings)
    for guard in callback.guards:
        guard.close()


# ----------------------------------------------------------------------------- accelerate


def _accelerated(sink: MemorySink) -> tuple[Any, Any, Any, Any, Any]:
    accelerate = pytest.importorskip("accelerate")
    from trainwarden.examples.tinygpt import Config, build, make_dataset
    from trainwarden.integrations.accelerate import attach

    torch.manual_seed(0)
    cfg = Config(steps=16, samples=128, width=32, layers=1)
    model, opt, sched = build(cfg)
    loader = torch.utils.data.DataLoader(make_dataset(cfg), batch_size=8, shuffle=True)
    accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=2)
    model, opt, loader, sched = accelerator.prepare(model, opt, loader, sched)
    guard = attach(accelerator, model, opt, sched, data=loader, sink=sink, config=CONFIG)
    return accelerator, model, opt, (loader, sched), (guard, cfg)


def _accelerate_loop(
    accelerator: Any, model: Any, opt: Any, loader: Any, sched: Any, cfg: Any, tamper: Any = None
) -> int:
    steps = 0
    for i, (x, y) in enumerate(loader):
        with accelerator.accumulate(model):
            if tamper is not None:
                tamper(i)
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg.vocab), y.reshape(-1))
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            steps += int(accelerator.sync_gradients)
    return steps


def test_accelerate_clean(sink: MemorySink) -> None:
    accelerator, model, opt, (loader, sched), (guard, cfg) = _accelerated(sink)
    with guard:
        steps = _accelerate_loop(accelerator, model, opt, loader, sched, cfg)
        assert _tampering(guard.findings) == []
    assert steps == 8
    assert sink.named("guard.close")[0].data["verified_steps"] == 8


def test_accelerate_tampered(sink: MemorySink) -> None:
    accelerator, model, opt, (loader, sched), (guard, cfg) = _accelerated(sink)

    def reseed(i: int) -> None:
        if i == 9:
            torch.manual_seed(123)

    with guard, pytest.raises(GuardViolation) as info:
        _accelerate_loop(accelerator, model, opt, loader, sched, cfg, tamper=reseed)
    assert info.value.step == 5  # type: ignore[attr-defined]
    assert "guard.reseed" in {f.rule_id for f in guard.findings}
