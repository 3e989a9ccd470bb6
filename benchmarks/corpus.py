"""Build the scan benchmark corpus under benchmarks/_work/ (git-ignored); reused when present.

- ``corpus/benign/``: a few hundred real files of every kind a model folder holds: written by
  torch, safetensors, numpy, joblib / sklearn, transformers (save_pretrained), lightning,
  accelerate and onnx, plus JSON/YAML/text configs, tokenizer files, images, GGUF headers and
  nested archives (and the test suite's benign catalogue);
- ``corpus/attacks/<attack-id>/``: every sample of the test suite's attack catalogue;
- ``big/model-8g.pt``: one ~8 GB torch zip checkpoint (needs ~8 GB free disk, ~1 GB RAM).

Run ``python benchmarks/corpus.py [--rebuild] [--no-big]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work"
TESTS = HERE.parent / "tests"
BIG_BYTES = 8 * 1024**3
CORPUS_VERSION = 6


@dataclass(frozen=True)
class Corpus:
    """Where the corpus lives and what each attack directory holds."""

    benign: Path
    attacks: Path
    big: Path | None
    attack_ids: tuple[str, ...]
    attack_expected: dict[str, str]
    benign_files: int


def _tests_on_path() -> None:
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))


def _torch_variants(out: Path) -> int:
    import numpy as np
    import torch

    gen = torch.Generator().manual_seed(1234)
    count = 0
    # MLPs of many widths, saved in the zip and the legacy format.
    for i in range(90):
        width = 16 * (1 + i % 12)
        model = torch.nn.Sequential(
            torch.nn.Linear(32, width), torch.nn.GELU(), torch.nn.Linear(width, 10)
        )
        legacy = i % 5 == 0
        path = out / f"mlp_{i:03d}{'_legacy' if legacy else ''}.pt"
        torch.save(model.state_dict(), path, _use_new_zipfile_serialization=not legacy)
        count += 1
    # Small CNNs with BatchNorm buffers (int64 num_batches_tracked).
    for i in range(40):
        ch = 4 * (1 + i % 8)
        model = torch.nn.Sequential(
            torch.nn.Conv2d(3, ch, 3),
            torch.nn.BatchNorm2d(ch),
            torch.nn.ReLU(),
            torch.nn.Conv2d(ch, ch, 3),
            torch.nn.AdaptiveAvgPool2d(1),
        )
        torch.save({"model": model.state_dict(), "epoch": i}, out / f"cnn_{i:03d}.pth")
        count += 1
    # Transformer blocks: many tensors per file, several MB each.
    for i in range(30):
        d = 64 * (1 + i % 4)
        layer = torch.nn.TransformerEncoderLayer(d, nhead=4, dim_feedforward=4 * d)
        torch.save(layer.state_dict(), out / f"block_{i:03d}.bin")
        count += 1
    # Optimizer states and full training checkpoints.
    for i in range(30):
        linear = torch.nn.Linear(64, 64)
        opt: torch.optim.Optimizer = (
            torch.optim.Adam(linear.parameters(), lr=0.01)
            if i % 2
            else torch.optim.SGD(linear.parameters(), lr=0.01, momentum=0.9)
        )
        linear(torch.randn(4, 64, generator=gen)).sum().backward()
        opt.step()
        torch.save(
            {"model": linear.state_dict(), "optimizer": opt.state_dict(), "step": i},
            out / f"train_ckpt_{i:03d}.ckpt",
        )
        count += 1
    # safetensors.
    from safetensors.torch import save_file

    for i in range(30):
        tensors = {f"layer{j}.weight": torch.randn(32, 32, generator=gen) for j in range(i % 6 + 1)}
        save_file(tensors, out / f"weights_{i:03d}.safetensors")
        count += 1
    # numpy.
    rng = np.random.default_rng(0)
    for i in range(25):
        np.save(out / f"array_{i:03d}.npy", rng.normal(size=(64, 8 * (i + 1))).astype(np.float32))
        count += 1
    for i in range(15):
        np.savez(out / f"arrays_{i:03d}.npz", a=rng.normal(size=(16, 16)), b=np.arange(i + 1))
        count += 1
    return count


def _sklearn_variants(out: Path) -> int:
    import joblib
    import numpy as np
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4))
    y = (x[:, 0] > 0).astype(int)
    models = [
        LogisticRegression().fit(x, y),
        Ridge().fit(x, x[:, 1]),
        StandardScaler().fit(x),
        RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0).fit(x, y),
    ]
    count = 0
    for i in range(12):
        compress = [0, 3, ("lz4", 3), ("gzip", 3)][i % 4]
        joblib.dump(models[i % len(models)], out / f"sk_{i:03d}.joblib", compress=compress)
        count += 1
    return count


def _png(width: int, height: int, seed: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    rows = b"".join(
        b"\0" + bytes((seed + x + y) % 256 for x in range(width)) for y in range(height)
    )
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )  # fmt: skip


def _gguf(n_kv: int) -> bytes:
    import struct

    def kv_str(key: str, value: str) -> bytes:
        k, v = key.encode(), value.encode()
        return struct.pack("<Q", len(k)) + k + struct.pack("<I", 8) + struct.pack("<Q", len(v)) + v

    body = b"".join(kv_str(f"general.key{i}", f"value {i}") for i in range(n_kv))
    return b"GGUF" + struct.pack("<IQQ", 3, 0, n_kv) + body


def _mixed_variants(out: Path) -> int:
    """The rest of a real model folder: configs, tokenizers, images, GGUF, ONNX, archives."""
    import io
    import tarfile
    import zipfile

    import numpy as np

    count = 0
    rng = np.random.default_rng(7)
    for i in range(30):
        (out / f"config_{i:03d}.json").write_text(
            json.dumps({"hidden_size": 64 * (i + 1), "num_layers": i % 12, "act": "gelu"})
        )
        (out / f"train_{i:03d}.yaml").write_text(f"lr: {1e-4 * (i + 1)}\nbatch: {8 * i}\n")
        (out / f"notes_{i:03d}.txt").write_text("epoch loss\n" + "\n".join(map(str, range(i))))
        count += 3
    vocab = [f"tok{i}" for i in range(2000)]
    for i in range(10):
        (out / f"vocab_{i:03d}.txt").write_text("\n".join(vocab[: 200 * (i + 1)]))
        tokenizer = {
            "version": "1.0",
            "model": {"type": "BPE", "vocab": {t: n for n, t in enumerate(vocab)}},
        }
        (out / f"tokenizer_{i:03d}.json").write_text(json.dumps(tokenizer))
        (out / f"merges_{i:03d}.txt").write_text(
            "#version: 0.2\n" + "\n".join(f"t o{n}" for n in range(300))
        )
        count += 3
    for i in range(25):
        (out / f"sample_{i:03d}.png").write_bytes(_png(32 + i, 32, i))
        count += 1
    for i in range(10):
        (out / f"model_{i:03d}.gguf").write_bytes(_gguf(5 + i))
        count += 1
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        onnx = None  # type: ignore[assignment]
    if onnx is not None:
        for i in range(15):
            x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [4])
            y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [4])
            w = numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "W")
            nodes = [
                helper.make_node("Add", ["X", "W"], ["H"]),
                helper.make_node("Relu", ["H"], ["Y"]),
            ]
            onnx.save(
                helper.make_model(helper.make_graph(nodes, f"g{i}", [x], [y], [w])),
                out / f"net_{i:03d}.onnx",
            )
            count += 1
    try:
        from transformers import GPT2Config, GPT2LMHeadModel

        for i in range(3):
            cfg = GPT2Config(n_embd=32, n_layer=1 + i, n_head=2, vocab_size=100, n_positions=32)
            GPT2LMHeadModel(cfg).save_pretrained(out / f"hf_gpt2_{i}")
            count += sum(1 for p in (out / f"hf_gpt2_{i}").rglob("*") if p.is_file())
    except Exception as exc:  # transformers missing or offline quirks: the rest still counts
        print(f"corpus: skipped save_pretrained: {exc!r}", file=sys.stderr)
    for i in range(10):
        buf = io.BytesIO()
        np.savez(buf, a=rng.normal(size=(8, 8)))
        with zipfile.ZipFile(out / f"bundle_{i:03d}.zip", "w") as zf:
            zf.writestr("inner/arrays.npz", buf.getvalue())
            zf.writestr("inner/config.json", json.dumps({"i": i}))
        with tarfile.open(out / f"export_{i:03d}.tar.gz", "w:gz") as tf:
            data = json.dumps({"export": i}).encode()
            info = tarfile.TarInfo("export/config.json")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
            arr = io.BytesIO()
            np.save(arr, rng.normal(size=16))
            info = tarfile.TarInfo("export/weights.npy")
            info.size = len(arr.getvalue())
            tf.addfile(info, io.BytesIO(arr.getvalue()))
        count += 2
    return count


def _catalogue(out: Path) -> int:
    _tests_on_path()
    from benign import BENIGN

    count = 0
    for b in BENIGN:
        if any(importlib.util.find_spec(r) is None for r in b.requires):
            # Written by a library this machine lacks (tensorflow, xgboost...): the corpus
            # holds what can be written here, and its file count says how much that is.
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = b.build(out / "catalogue" / b.id)
        count += 1 if path.is_file() else sum(1 for p in path.rglob("*") if p.is_file())
    return count


def _catalogue_ids() -> list[str]:
    """Every attack id of the test suite's catalogue (built into the corpus, or skipped)."""
    _tests_on_path()
    from attacks import ATTACKS

    return [attack.id for attack in ATTACKS]


def _attacks(out: Path, canaries: Path) -> tuple[tuple[str, ...], dict[str, str]]:
    _tests_on_path()
    from attacks import ATTACKS
    from canary import Canary

    ids, expected = [], {}
    for attack in ATTACKS:
        try:
            attack.build(out / attack.id, Canary(canaries / attack.id))
        except Exception as exc:
            print(f"corpus: skipped attack {attack.id}: {exc!r}", file=sys.stderr)
            continue
        ids.append(attack.id)
        expected[attack.id] = attack.expected.value
    return tuple(ids), expected


def build_big(path: Path, size: int = BIG_BYTES) -> Path:
    """Write one ~``size``-byte torch zip checkpoint (reused when already complete)."""
    import torch

    marker = path.with_suffix(".done")
    if path.exists() and marker.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # torch.empty pages are never touched before torch.save streams them out (untouched anonymous
    # pages read as zeros), so peak memory stays far below the file size.
    n_tensors = 64
    per = size // n_tensors // 4
    state = {f"layers.{i}.weight": torch.empty(per, dtype=torch.float32) for i in range(n_tensors)}
    torch.save(state, path)
    marker.write_text(str(path.stat().st_size), encoding="utf-8")
    return path


def build_corpus(*, rebuild: bool = False, big: bool = True) -> Corpus:
    """Build (or reuse) the corpus and return where everything is."""
    root = WORK / "corpus"
    manifest = root / "manifest.json"
    if rebuild and root.exists():
        shutil.rmtree(root)
    if manifest.exists():
        meta = json.loads(manifest.read_text(encoding="utf-8"))
        # A corpus of another layout, or of another catalogue (attacks added since): rebuilt.
        if meta.get("version") != CORPUS_VERSION or meta.get("catalogue") != _catalogue_ids():
            shutil.rmtree(root)
    if not manifest.exists():
        if root.exists():
            shutil.rmtree(root)  # a build that stopped half-way (it writes the manifest last)
        started = time.perf_counter()
        benign, attacks = root / "benign", root / "attacks"
        benign.mkdir(parents=True)
        attacks.mkdir(parents=True)
        n = (
            _torch_variants(benign)
            + _sklearn_variants(benign)
            + _mixed_variants(benign)
            + _catalogue(benign)
        )
        ids, expected = _attacks(attacks, WORK / "canaries")
        meta = {
            "version": CORPUS_VERSION,
            "benign_files": n,
            "attack_ids": list(ids),
            "attack_expected": expected,
            "catalogue": _catalogue_ids(),
        }
        manifest.write_text(json.dumps(meta, indent=1), encoding="utf-8")
        print(f"corpus: built in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    meta = json.loads(manifest.read_text(encoding="utf-8"))
    big_path = build_big(WORK / "big" / "model-8g.pt") if big else None
    return Corpus(
        benign=root / "benign",
        attacks=root / "attacks",
        big=big_path,
        attack_ids=tuple(meta["attack_ids"]),
        attack_expected=dict(meta["attack_expected"]),
        benign_files=int(meta["benign_files"]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rebuild", action="store_true", help="rebuild the small-file corpus")
    parser.add_argument("--no-big", action="store_true", help="skip the 8 GB checkpoint")
    args = parser.parse_args()
    corpus = build_corpus(rebuild=args.rebuild, big=not args.no_big)
    print(
        json.dumps(
            {
                "benign": str(corpus.benign),
                "attacks": str(corpus.attacks),
                "big": str(corpus.big),
                "benign_files": corpus.benign_files,
                "attacks_count": len(corpus.attack_ids),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
