"""Regenerate the bundled example checkpoints (src/trainwarden/examples/checkpoints/).

Every file is written by the real library (torch, numpy, safetensors, transformers) with a
fixed seed, so reruns produce the same bytes. Exactly one file is malicious: a torch checkpoint
whose unpickling runs `echo` (harmless), the kind of payload `trainwarden demo` must catch.

Usage: python scripts/make_examples.py [OUTPUT_DIR]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

DEFAULT_OUT = (
    Path(__file__).resolve().parent.parent / "src" / "trainwarden" / "examples" / "checkpoints"
)


class EchoPayload:
    """Unpickling this runs `echo`: a stand-in for an injected command (technique T1)."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo 'trainwarden demo: this checkpoint ran a shell command'",))


def _save_legacy(state: dict[str, object], path: Path) -> None:
    """torch.save in the legacy format, with its storage keys made deterministic.

    The legacy format keys storages by memory address; we rename each key to a same-length
    counter so the pickles stay valid and reruns write identical bytes.
    """
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer, _use_new_zipfile_serialization=False)
    data = buffer.getvalue()
    keys = sorted({str(t.untyped_storage()._cdata) for t in state.values()})  # type: ignore[attr-defined]
    for index, key in enumerate(keys):
        data = data.replace(key.encode(), str(index).zfill(len(key)).encode())
    path.write_bytes(data)
    loaded = torch.load(path, weights_only=True)
    assert all(torch.equal(loaded[k], v) for k, v in state.items()), "legacy rewrite broke"


def main(out: Path) -> None:
    import numpy as np
    import torch
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 8)).sum().backward()
    optimizer.step()

    # The zip format torch has written since 1.6: a state_dict, and a training checkpoint.
    torch.save(model.state_dict(), out / "tiny_mlp.pt")
    torch.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 1},
        out / "training_state.pt",
    )
    # The legacy (pre-1.6) sequential format, still readable by torch.load.
    _save_legacy(model.state_dict(), out / "tiny_mlp_legacy.pt")
    # safetensors and numpy.
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, out / "tiny_mlp.safetensors"
    )
    np.save(
        out / "embeddings.npy", np.random.default_rng(0).standard_normal((16, 8)).astype("float32")
    )
    # A Hugging Face config for a tiny model (no auto_map: nothing pulls in remote code).
    config = {
        "architectures": ["BertForMaskedLM"],
        "hidden_size": 32,
        "intermediate_size": 64,
        "model_type": "bert",
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "vocab_size": 128,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    # The malicious one: looks like a state_dict, runs `echo` when torch.load unpickles it
    # (torch.load(..., weights_only=False), or any torch older than 2.6).
    torch.save({**model.state_dict(), "_metadata": EchoPayload()}, out / "malicious_checkpoint.pt")
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {len(list(out.iterdir()))} files, {total} bytes, to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
