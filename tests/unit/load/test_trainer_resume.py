"""A Hugging Face Trainer resumes from a real checkpoint with protect() on."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import pytest

from trainwarden.load import protect

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

pytestmark = pytest.mark.torch


def _trainer(output: Path, max_steps: int) -> Any:
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=32,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
    )

    class Data(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return 8

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {
                "input_ids": torch.tensor([1, 2, 3, i % 5 + 4]),
                "attention_mask": torch.ones(4, dtype=torch.long),
                "labels": torch.tensor(i % 2),
            }

    args = TrainingArguments(
        output_dir=str(output),
        max_steps=max_steps,
        save_steps=2,
        per_device_train_batch_size=4,
        report_to=[],
        logging_strategy="no",
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    return Trainer(model=BertForSequenceClassification(config), args=args, train_dataset=Data())


def test_trainer_resumes_under_protect(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer(tmp_path, max_steps=2).train()
        checkpoint = tmp_path / "checkpoint-2"
        assert (checkpoint / "optimizer.pt").exists()
        caplog.set_level(logging.DEBUG, logger="trainwarden.load")
        trainer = _trainer(tmp_path, max_steps=3)
        with protect(profiles=("transformers",)):
            trainer.train(resume_from_checkpoint=str(checkpoint))
    assert trainer.state.global_step == 3
    loaded = {Path(r.args[0]).name for r in caplog.records if r.getMessage().startswith("loading")}
    # The resume went through trainwarden: optimizer, scheduler and RNG states were scanned.
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth"} <= loaded


def test_from_pretrained_bin_under_protect(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import os

    from transformers import BertConfig, BertModel

    from trainwarden.errors import UnsafeModelError

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=32,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
    )
    model = BertModel(config)
    config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    caplog.set_level(logging.DEBUG, logger="trainwarden.load")
    with warnings.catch_warnings(), protect():
        warnings.simplefilter("ignore")
        loaded = BertModel.from_pretrained(tmp_path)
    assert any("pytorch_model.bin" in str(r.args[0]) for r in caplog.records if r.args)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name

    class System:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {tmp_path / 'canary'}",))

    torch.save({**model.state_dict(), "x": System()}, tmp_path / "pytorch_model.bin")
    with warnings.catch_warnings(), protect():
        warnings.simplefilter("ignore")
        with pytest.raises(UnsafeModelError):
            BertModel.from_pretrained(tmp_path)
    assert not (tmp_path / "canary").exists()


def test_accelerate_load_state_under_protect(tmp_path: Path) -> None:
    pytest.importorskip("accelerate")
    from accelerate import Accelerator

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    accelerator = Accelerator(cpu=True)
    model, optimizer = accelerator.prepare(model, optimizer)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    accelerator.save_state(str(tmp_path / "state"))
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    with protect(profiles=("accelerate",)):
        accelerator.load_state(str(tmp_path / "state"))
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
