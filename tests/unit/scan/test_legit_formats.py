"""Legitimate files of model repositories and training runs: pure data must come out safe.

Each file is written by the library that writes it in real life (transformers, tokenizers,
torch, numpy, safetensors) or, for formats whose writer is not installed, byte for byte as
that writer lays it out (PNG, msgpack, protobuf). Attacks shaped like those files follow, to
show the rules that make the files safe do not let an attack through.
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import io
import json
import pickle
import random
import struct
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from trainwarden.cli import main
from trainwarden.findings import FileReport, Report, Verdict
from trainwarden.scan import scan_bytes, scan_path, sniff_format


def _problems(report: Report) -> list[str]:
    out = []
    for f in report.files:
        if f.verdict is not Verdict.SAFE:
            rules = [(x.rule_id, x.evidence) for x in f.findings if x.verdict is not Verdict.SAFE]
            out.append(f"{f.path} [{f.format}] {f.verdict.value}: {rules}")
    return out


def _assert_all_safe(path: Path, *, expect_files: int = 1) -> Report:
    report = scan_path(path)
    assert len(report.files) >= expect_files
    assert _problems(report) == []
    return report


def _safe_bytes(data: bytes, fmt: str | None = None) -> FileReport:
    report = scan_bytes(data)
    bad = [(x.rule_id, x.evidence) for x in report.findings if x.verdict is not Verdict.SAFE]
    assert report.verdict is Verdict.SAFE, (report.format, bad)
    if fmt is not None:
        assert report.format == fmt
        assert sniff_format(data) == fmt
    return report


# -- Hugging Face model directories -----------------------------------------------------------


def _hf_model(kind: str) -> Any:
    import transformers as t

    if kind == "bert":
        return t.BertModel(
            t.BertConfig(
                vocab_size=64,
                hidden_size=8,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=16,
            )
        )
    if kind == "gpt2":
        return t.GPT2LMHeadModel(
            t.GPT2Config(vocab_size=64, n_embd=8, n_layer=1, n_head=2, n_positions=16)
        )
    if kind == "llama":
        return t.LlamaForCausalLM(
            t.LlamaConfig(
                vocab_size=64,
                hidden_size=8,
                num_hidden_layers=1,
                num_attention_heads=2,
                num_key_value_heads=1,
                intermediate_size=16,
            )
        )
    if kind == "t5":
        return t.T5ForConditionalGeneration(
            t.T5Config(vocab_size=64, d_model=8, d_ff=16, num_layers=1, num_heads=2, d_kv=4)
        )
    return t.ViTModel(
        t.ViTConfig(
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
            image_size=8,
            patch_size=4,
        )
    )


@pytest.mark.torch
@pytest.mark.parametrize("safe_serialization", [True, False])
@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama", "t5", "vit"])
def test_save_pretrained_directory_is_safe(
    kind: str, safe_serialization: bool, tmp_path: Path
) -> None:
    import torch
    import transformers as t

    torch.manual_seed(0)
    model = _hf_model(kind)
    model.save_pretrained(tmp_path, safe_serialization=safe_serialization)
    t.GenerationConfig(max_new_tokens=4, do_sample=True, temperature=0.7).save_pretrained(tmp_path)
    weights = "model.safetensors" if safe_serialization else "pytorch_model.bin"
    if not safe_serialization:
        # transformers >= 5 always writes safetensors; < 5 wrote this torch.save file.
        (tmp_path / "model.safetensors").unlink(missing_ok=True)
        if not (tmp_path / weights).exists():
            torch.save(model.state_dict(), tmp_path / weights)
    assert (tmp_path / weights).exists()
    report = _assert_all_safe(tmp_path, expect_files=3)
    formats = {Path(f.path).name: f.format for f in report.files}
    assert formats[weights] == ("safetensors" if safe_serialization else "torch-zip")
    assert formats["config.json"] == "hf-config"


@pytest.mark.torch
def test_tokenizer_directory_with_chat_template_is_safe(tmp_path: Path) -> None:
    import transformers as t
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>", "<s>", "</s>"])
    tok.train_from_iterator(["hello world", "the quick brown fox"] * 10, trainer)
    fast = t.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    # A Jinja chat template is ordinary tokenizer configuration, not code that a loader runs.
    fast.chat_template = (
        "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + "
        "message['content'] + eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
    )
    fast.save_pretrained(tmp_path)
    tok.model.save(str(tmp_path))  # vocab.json and merges.txt
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\nworld\n")
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert "chat_template" in config or (tmp_path / "chat_template.jinja").exists()
    _assert_all_safe(tmp_path, expect_files=5)


# -- numpy ------------------------------------------------------------------------------------


def _numpy_files(directory: Path) -> None:
    import numpy as np

    dtypes = [
        "bool",
        "int8",
        "uint8",
        "int16",
        "uint16",
        "int32",
        "uint32",
        "int64",
        "uint64",
        "float16",
        "float32",
        "float64",
        "longdouble",
        "complex64",
        "complex128",
        "clongdouble",
        "datetime64[s]",
        "timedelta64[ms]",
        "S5",
        "U5",
        "V4",
    ]
    for i, dt in enumerate(dtypes):
        np.save(directory / f"dtype{i}.npy", np.zeros(3, dtype=dt))
    nested = [("a", "<i4"), ("b", "<f8", (2,)), ("c", "S3"), ("d", [("x", "u1")])]
    np.save(directory / "structured.npy", np.zeros(3, dtype=nested))
    np.save(
        directory / "aligned.npy",
        np.zeros(2, dtype=np.dtype([("a", "u1"), ("b", "<i8")], align=True)),
    )
    np.save(directory / "fortran.npy", np.asfortranarray(np.arange(6.0).reshape(2, 3)))
    np.save(directory / "big_endian.npy", np.arange(5, dtype=">i4"))
    np.save(directory / "zero_d.npy", np.array(3.5))
    np.save(directory / "empty.npy", np.zeros((0, 3)))
    # 3000 fields: the header outgrows 64 KiB and numpy writes format version 2.
    np.save(directory / "v2.npy", np.zeros(2, dtype=[(f"f{i}", "<i4") for i in range(3000)]))
    np.savez(directory / "plain.npz", a=np.arange(3), b=np.zeros((2, 2), dtype=">f4"))
    np.savez_compressed(directory / "compressed.npz", s=np.zeros(2, dtype=[("x", "<i2")]))
    np.savez(directory / "nothing.npz")


def test_numpy_arrays_of_every_dtype_and_layout_are_safe(tmp_path: Path) -> None:
    _numpy_files(tmp_path)
    report = _assert_all_safe(tmp_path, expect_files=30)
    formats = {Path(f.path).name: f.format for f in report.files}
    # An npz with no array is an empty zip: nothing tells it apart, and it is safe either way.
    assert formats.pop("nothing.npz") in ("numpy-npz", "zip")
    assert set(formats.values()) <= {"numpy-npy", "numpy-npz"}


# -- safetensors ------------------------------------------------------------------------------


@pytest.mark.torch
def test_safetensors_of_every_dtype_with_metadata_are_safe(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    dtypes = [
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.float64,
        torch.int8,
        torch.uint8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.bool,
        torch.float8_e4m3fn,
        torch.float8_e5m2,
        torch.uint16,
        torch.uint32,
        torch.uint64,
        torch.complex64,
    ]
    tensors = {str(d): torch.zeros(2, 2, dtype=d) for d in dtypes}
    save_file(tensors, str(tmp_path / "all.safetensors"), metadata={"format": "pt", "k": "v"})
    save_file({"e": torch.zeros(0), "s": torch.tensor(1.0)}, str(tmp_path / "edge.safetensors"))
    save_file({}, str(tmp_path / "nothing.safetensors"))
    report = _assert_all_safe(tmp_path, expect_files=3)
    assert {f.format for f in report.files} == {"safetensors"}


# -- torch.save -------------------------------------------------------------------------------


def _torch_values() -> dict[str, Any]:
    import numpy as np
    import torch

    dtypes = [
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.float64,
        torch.int8,
        torch.uint8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.bool,
        torch.complex64,
        torch.complex128,
        torch.complex32,
        torch.float8_e4m3fn,
        torch.float8_e5m2,
        torch.float8_e4m3fnuz,
        torch.float8_e5m2fnuz,
        torch.uint16,
        torch.uint32,
        torch.uint64,
    ]
    values: dict[str, Any] = {f"t_{d}": torch.zeros(2, dtype=d) for d in dtypes}
    values.update(
        none=None,
        flag=True,
        complex=1 + 2j,
        raw=b"bytes",
        text="str",
        size=torch.Size([2, 3]),
        nested=(1, 2.5, [3, {"x": {1}, "y": frozenset([2])}]),
        ordered=collections.OrderedDict(a=1),
        big=10**30,
        buffer=bytearray(b"ab"),
        view=torch.zeros(4)[1:3],
        transposed=torch.zeros(2, 3).t(),
        param=torch.nn.Parameter(torch.zeros(3)),
        device=torch.device("cpu"),
        dtype=torch.float16,
        np_array=np.arange(3),
        np_scalar=np.float32(1.5),
        rng=torch.get_rng_state(),
        np_rng=np.random.get_state(),
        py_rng=random.getstate(),
    )
    return values


@pytest.mark.torch
def test_torch_save_of_pure_data_is_safe_in_every_serialization(tmp_path: Path) -> None:
    import torch

    values = _torch_values()
    torch.save(values, tmp_path / "zip.pt")
    torch.save(values, tmp_path / "zip_p2.pt", pickle_protocol=2)
    torch.save(values, tmp_path / "zip_p5.pt", pickle_protocol=5)
    torch.save(values, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    # Regression: the legacy format at protocol 4+ numbers memo entries with MEMOIZE. Read
    # with the memo of the three pickles before it (a reused Unpickler), the main pickle
    # called int.HalfStorage: the file came out unknown though torch reads it fresh.
    torch.save(
        values,
        tmp_path / "legacy_p5.pt",
        _use_new_zipfile_serialization=False,
        pickle_protocol=5,
    )
    torch.save(
        values, tmp_path / "legacy_p4.pt", _use_new_zipfile_serialization=False, pickle_protocol=4
    )
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    torch.save(torch.zeros(3), tmp_path / "tensor_legacy.pt", _use_new_zipfile_serialization=False)
    report = _assert_all_safe(tmp_path, expect_files=8)
    formats = {Path(f.path).name: f.format for f in report.files}
    assert formats["legacy_p5.pt"] == "torch-legacy"
    assert formats["zip_p5.pt"] == "torch-zip"


@pytest.mark.torch
def test_optimizer_scheduler_scaler_swa_and_ema_states_are_safe(tmp_path: Path) -> None:
    import torch
    from torch.optim import lr_scheduler as sched
    from torch.optim.swa_utils import SWALR, AveragedModel, get_ema_multi_avg_fn

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    optimizers: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
        "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
        "adam": lambda p: torch.optim.Adam(p, amsgrad=True),
        "adamw": torch.optim.AdamW,
        "rmsprop": lambda p: torch.optim.RMSprop(p, centered=True, momentum=0.5),
        "adagrad": torch.optim.Adagrad,
        "adadelta": torch.optim.Adadelta,
        "adamax": torch.optim.Adamax,
        "nadam": torch.optim.NAdam,
        "radam": torch.optim.RAdam,
        "lbfgs": torch.optim.LBFGS,
        "asgd": torch.optim.ASGD,
        "rprop": torch.optim.Rprop,
    }
    for name, make in optimizers.items():
        opt = make(model.parameters())

        def closure(opt: torch.optim.Optimizer = opt) -> torch.Tensor:
            opt.zero_grad()
            loss = model(torch.ones(3, 4)).sum()
            loss.backward()
            return loss

        opt.step(closure)
        torch.save(opt.state_dict(), tmp_path / f"opt_{name}.pt")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    schedulers: dict[str, Callable[[], Any]] = {
        "step": lambda: sched.StepLR(opt, 2),
        "cosine": lambda: sched.CosineAnnealingLR(opt, 10),
        "onecycle": lambda: sched.OneCycleLR(opt, max_lr=0.1, total_steps=10),
        "cyclic": lambda: sched.CyclicLR(opt, 0.001, 0.1, cycle_momentum=False),
        "restarts": lambda: sched.CosineAnnealingWarmRestarts(opt, 5),
        "sequential": lambda: sched.SequentialLR(
            opt, [sched.LinearLR(opt), sched.ExponentialLR(opt, 0.9)], milestones=[2]
        ),
        "chained": lambda: sched.ChainedScheduler(
            [sched.LinearLR(opt), sched.ExponentialLR(opt, 0.9)]
        ),
        "lambda": lambda: sched.LambdaLR(opt, lambda e: 0.9**e),
    }
    for name, make in schedulers.items():
        scheduler = make()
        opt.step()
        scheduler.step()
        torch.save(scheduler.state_dict(), tmp_path / f"sched_{name}.pt")
    plateau = sched.ReduceLROnPlateau(opt)
    plateau.step(1.0)
    torch.save(plateau.state_dict(), tmp_path / "sched_plateau.pt")
    torch.save(torch.amp.GradScaler("cpu").state_dict(), tmp_path / "scaler.pt")
    swa = AveragedModel(model)
    swa.update_parameters(model)
    torch.save(swa.state_dict(), tmp_path / "swa.pt")
    torch.save(SWALR(opt, swa_lr=0.05).state_dict(), tmp_path / "swalr.pt")
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.999))
    ema.update_parameters(model)
    torch.save(ema.state_dict(), tmp_path / "ema.pt")
    shadow = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({"shadow": shadow, "decay": 0.999, "num_updates": 3}, tmp_path / "ema_dict.pt")
    _assert_all_safe(tmp_path, expect_files=26)


@pytest.mark.torch
def test_distributed_checkpoint_metadata_is_not_unsafe(tmp_path: Path) -> None:
    import torch
    import torch.distributed.checkpoint as dcp

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "optim": opt.state_dict(), "step": 3}
    dcp.save(state, checkpoint_id=str(tmp_path))
    # Regression: the dataclasses of torch.distributed.checkpoint.metadata matched the
    # "torch.distributed" network entry of the catalogue, so every FSDP/DCP checkpoint's
    # .metadata was called unsafe.
    report = scan_path(tmp_path / ".metadata")
    assert report.files[0].format == "pickle"
    assert _problems(report) == []
    # The .distcp shard is torch.save archives laid end to end; DCP torch.loads the slices
    # .metadata names (bytes items with weights_only=False). Which slices those are is only
    # known across both files, so the shard stays unknown, never unsafe.
    (shard,) = tmp_path.glob("*.distcp")
    assert scan_path(shard).files[0].verdict is Verdict.UNKNOWN


# -- data and text files found next to models -------------------------------------------------


def _png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    rows = b"".join(b"\x00" + bytes(3 * width) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _msgpack(value: object) -> bytes:
    """msgpack as Flax's serialization writes it (fixmap/fixstr/bin/float64/fixarray)."""
    if isinstance(value, dict):
        n = len(value)
        head = bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)
        return head + b"".join(_msgpack(k) + _msgpack(v) for k, v in value.items())
    if isinstance(value, str):
        raw = value.encode()
        return bytes([0xA0 | len(raw)]) + raw
    if isinstance(value, bytes):
        return b"\xc4" + bytes([len(value)]) + value
    if isinstance(value, list):
        return bytes([0x90 | len(value)]) + b"".join(_msgpack(v) for v in value)
    assert isinstance(value, float)
    return b"\xcb" + struct.pack(">d", value)


def _flax_params(n: int) -> bytes:
    layer = {"kernel": b"\x00" * 16, "bias": [0.5, 1.5]}
    return _msgpack({f"layer_{i}": layer for i in range(n)})


def _protobuf_field(number: int, payload: bytes) -> bytes:
    return bytes([number << 3 | 2, len(payload)]) + payload


_TEXT_AND_DATA: dict[str, tuple[bytes, str]] = {
    "png": (_png(4, 3), "data"),
    "png_large": (_png(300, 256), "data"),
    "jpeg": (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00", "data"),
    "gif": (b"GIF89a\x04\x00\x03\x01\xf7\x00\x00" + bytes(40), "data"),
    "csv": (b"a,b,c\n1,2,3\n4,5,6\n", "text"),
    "json": (b'{"a": [1, 2, 3]}', "json"),
    "jsonl": (b'{"text": "row 0"}\n{"text": "row 1"}\n', "text"),
    "readme": (b"---\nlicense: mit\n---\n# Model card\n\nSome (text).\n", "text"),
    "gitattributes": (b"*.bin filter=lfs diff=lfs merge=lfs -text\n", "text"),
    "license": (b"MIT License\n\nCopyright (c) 2024\n", "text"),
    "lfs_pointer": (
        b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"a" * 64 + b"\nsize 9\n",
        "text",
    ),
    "utf16": ("hello world\nline two\n".encode("utf-16"), "data"),
    "utf16le_no_bom": ("hello world\n".encode("utf-16-le"), "data"),
    # Regression: text beginning with "c" or "i" is GLOBAL / INST of a module named by the
    # rest of the line; such a name is not a Python identifier, so no import can succeed.
    "accelerate_config": (
        b"compute_environment: LOCAL_MACHINE\ndebug: false\nnum_processes: 1\n",
        "text",
    ),
    "hparams_yaml": (b"checkpoint_dir: runs/1\nlr: 0.001\n", "text"),
    "python_source": (
        b"import torch\nimport torch.nn as nn\n\nclass M(nn.Module):\n    pass\n",
        "text",
    ),
    "crlf_text": (b"cos\r\nsystem\r\n", "text"),
    # Regression: msgpack maps of 2-4 keys begin with EXT1/EXT2/EXT4 (flax_model.msgpack).
    "msgpack_1": (_flax_params(1), "data"),
    "msgpack_2": (_flax_params(2), "data"),
    "msgpack_3": (_flax_params(3), "data"),
    "msgpack_4": (_flax_params(4), "data"),
    "msgpack_15": (_flax_params(15), "data"),
    "onnx_like": (
        b"\x08\x08" + _protobuf_field(2, b"pytorch") + _protobuf_field(7, b"\x12\x01g"),
        "onnx",
    ),
    "sentencepiece_like": (_protobuf_field(1, _protobuf_field(1, "\u2581hello".encode())), "data"),
    "gzip_json": (gzip.compress(b'{"a": 1}'), "gzip"),
    "empty": (b"", "empty"),
}


@pytest.mark.parametrize("name", sorted(_TEXT_AND_DATA))
def test_text_and_data_files_are_safe(name: str) -> None:
    data, fmt = _TEXT_AND_DATA[name]
    _safe_bytes(data, fmt)


@pytest.mark.parametrize(
    "data",
    [
        *(b"N", b"\x80", b"\x80\x02", b"\x80\x05\x95", b"(", b"]", b"}", b".", b"\n"),
        *(b"ab", b"{}", b"I1\n", b"N.", b"\x89", b"PK", b"\x00", b"\xff"),
    ],
)
def test_tiny_files_are_safe(data: bytes) -> None:
    # pickle.load returns None for b"N." (a complete pickle of pure data) and fails on the
    # rest before any import: all of them are safe, none an error.
    with contextlib.suppress(Exception):
        pickle.loads(data)
    _safe_bytes(data)


@pytest.mark.torch
def test_tar_of_a_checkpoint_directory_is_safe(tmp_path: Path) -> None:
    import torch

    run = tmp_path / "run"
    run.mkdir()
    torch.save({"w": torch.zeros(2)}, run / "model.pt")
    (run / "config.json").write_text(json.dumps({"hidden_size": 8}))
    (run / "default_config.yaml").write_text("compute_environment: LOCAL_MACHINE\n")
    with tarfile.open(tmp_path / "run.tar.gz", "w:gz") as tar:
        tar.add(run, arcname="run")
    report = _assert_all_safe(tmp_path / "run.tar.gz", expect_files=1)
    assert report.files[0].format == "gzip"


def test_json_and_text_report_for_legitimate_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("png", "accelerate_config", "msgpack_2", "python_source", "empty"):
        (tmp_path / name).write_bytes(_TEXT_AND_DATA[name][0])
    assert main(["scan", str(tmp_path), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {Path(f["path"]).name: f["verdict"] for f in doc["files"]} == dict.fromkeys(
        ("png", "accelerate_config", "msgpack_2", "python_source", "empty"), "safe"
    )
    assert all(f["findings"] == [] for f in doc["files"])
    assert main(["scan", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "unsafe" not in text.lower()
    assert "unknown" not in text.lower()


# -- attacks shaped like the files above stay caught ------------------------------------------


def test_text_pickle_importing_a_real_module_is_still_unsafe() -> None:
    report = scan_bytes(b"cos\nsystem\n(S'true'\ntR.")
    assert report.verdict is Verdict.UNSAFE
    assert scan_bytes(b"cmy_plugin\nrun\n").verdict is Verdict.UNKNOWN


def test_png_header_before_a_pickle_is_still_analysed() -> None:
    data = b"\x89PNG\r\ncos\nsystem\n(S'true'\ntR."
    assert scan_bytes(data).verdict is Verdict.UNSAFE


def test_extension_code_followed_by_an_import_is_not_data() -> None:
    # Complete: a program that registered code 1 would go on to call os.system.
    assert scan_bytes(b"\x82\x01cos\nsystem\n(S'true'\ntR.").verdict is Verdict.UNSAFE
    # Incomplete, but another import follows the extension code.
    assert scan_bytes(b"\x82\x01cos\nsystem\n(S'true'\ntR").verdict is Verdict.UNSAFE


def test_reused_unpickler_reading_of_a_stream_is_still_judged() -> None:
    # A fresh unpickler fails on the second pickle (memo miss); one Unpickler reused for both
    # loads keeps the memo and imports os.system.
    def su(text: str) -> bytes:
        return b"\x8c" + bytes([len(text)]) + text.encode()

    first = b"\x80\x04" + su("os") + b"\x94" + su("system") + b"\x94\x86."
    second = b"\x80\x04h\x00h\x01\x93)R."
    report = scan_bytes(first + second)
    assert report.verdict is Verdict.UNSAFE
    # The reading is real: the memo survives between loads (shown without the call).
    up = pickle.Unpickler(io.BytesIO(first + b"\x80\x04h\x00h\x01\x93."))
    assert up.load() == ("os", "system")
    import os

    assert up.load() is os.system


def test_memoize_shift_between_pickles_is_judged() -> None:
    # Read fresh, the second pickle builds collections.OrderedDict (allowlisted); read by an
    # Unpickler reused from the first load, MEMOIZE numbers its entries 2 and 3, so BINGET 0
    # and 1 fetch "os" and "system" from the first pickle.
    def su(text: str) -> bytes:
        return b"\x8c" + bytes([len(text)]) + text.encode()

    first = b"\x80\x04" + su("os") + b"\x94" + su("system") + b"\x94\x86."
    second = b"\x80\x04" + su("collections") + b"\x94" + su("OrderedDict") + b"\x94h\x00h\x01\x93."
    assert pickle.loads(second) is collections.OrderedDict
    report = scan_bytes(first + second)
    assert report.verdict is Verdict.UNSAFE
    assert any(f.evidence == "os.system" for f in report.findings)


@pytest.mark.torch
def test_hugging_face_cache_snapshot_of_symlinks_is_scanned(tmp_path: Path) -> None:
    import torch

    # snapshot_download() returns snapshots/<rev>, whose files are links to ../../blobs/<sha>:
    # the directory a user scans holds nothing but links leading out of it. Regression: they
    # were all unknown ("not followed"); loaders read the blobs, so the blobs are scanned.
    repo = tmp_path / "models--org--name"
    blobs = repo / "blobs"
    snapshot = repo / "snapshots" / "0123abc"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (blobs / "a1").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    torch.save({"w": torch.zeros(2)}, blobs / "b2")
    (blobs / "c3").write_bytes(pickle.dumps(_Payload()))
    (snapshot / "config.json").symlink_to("../../blobs/a1")
    (snapshot / "pytorch_model.bin").symlink_to("../../blobs/b2")
    (snapshot / "evil.bin").symlink_to("../../blobs/c3")
    report = scan_path(snapshot)
    by_name = {Path(f.path).name: f for f in report.files}
    assert by_name["config.json"].format == "hf-config"
    assert by_name["pytorch_model.bin"].format == "torch-zip"
    for name in ("config.json", "pytorch_model.bin"):
        assert by_name[name].verdict is Verdict.SAFE
        assert by_name[name].findings[0].rule_id == "file.symlink-followed"
    assert by_name["evil.bin"].verdict is Verdict.UNSAFE


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, ("true",))


def _py2_npy(descr: str, shape: str, payload: bytes) -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}"
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + payload


def test_npy_header_written_by_python_2_is_read_as_numpy_reads_it(tmp_path: Path) -> None:
    import numpy as np

    # Python 2 wrote long integers as "2L"; numpy.load still reads such headers (numpy's own
    # test data has one). Regression: the header was called malformed (unknown).
    data = _py2_npy("<f8", "(2L, 2L)", struct.pack("<4d", 1, 2, 3, 4))
    (tmp_path / "py2.npy").write_bytes(data)
    assert np.load(tmp_path / "py2.npy").tolist() == [[1.0, 2.0], [3.0, 4.0]]
    _safe_bytes(data, "numpy-npy")


def test_npy_python_2_header_of_an_object_array_is_analysed() -> None:
    data = _py2_npy("|O", "(1L,)", pickle.dumps([_Payload()], protocol=2))
    report = scan_bytes(data)
    assert report.verdict is Verdict.UNSAFE
    assert any(f.evidence == "posix.system" or f.evidence == "os.system" for f in report.findings)


@pytest.mark.parametrize("protocol", range(6))
def test_numpy_matrix_pickles_are_safe(protocol: int) -> None:
    import numpy as np

    # Regression: np.matrix (kept by older scikit-learn/scipy code, 42 of joblib's own test
    # files) was an unknown global; it is only the subtype _reconstruct is handed.
    _safe_bytes(pickle.dumps(np.matrix([[1, 2], [3, 4]]), protocol=protocol), "pickle")


def test_numpy_matrix_in_joblib_is_safe_but_calling_it_is_not() -> None:
    import joblib
    import numpy as np

    buffer = io.BytesIO()
    joblib.dump({"m": np.matrix([[1.0, 2.0]])}, buffer)
    _safe_bytes(buffer.getvalue())
    # Allowlisted as a value: a pickle that calls the class itself (np.matrix parses
    # strings) is not a pickle numpy writes.
    assert scan_bytes(b"cnumpy\nmatrix\n(S'1 2'\ntR.").verdict is Verdict.UNKNOWN


@pytest.mark.torch
def test_torchrun_rendezvous_state_is_safe_and_its_module_is_not() -> None:
    import datetime

    from torch.distributed.elastic.rendezvous import dynamic_rendezvous as dr

    from trainwarden.load import pickle_loads

    # torchrun's agents (`--standalone`, every c10d rendezvous) keep this state in the store
    # as pickle.dumps(state) and read it back with pickle.loads: under `trainwarden run` that
    # load goes through protect(). Regression: the class sat under the catalogue's
    # "torch.distributed.elastic" network entry, so `run -- torchrun --standalone` failed.
    state = dr._RendezvousState()
    node = dr._NodeDesc("host", 4242, 0)
    state.round = 3
    state.participants[node] = 0
    state.wait_list.add(node)
    state.redundancy_list.add(dr._NodeDesc("other", 7, 1))
    state.last_heartbeats[node] = datetime.datetime(2026, 1, 1, 12, 0)
    state.deadline = datetime.datetime(2026, 1, 1, 12, 5)
    data = pickle.dumps(state)
    _safe_bytes(data, "pickle")
    loaded = pickle_loads(data)
    assert loaded.participants == state.participants
    assert loaded.last_heartbeats == state.last_heartbeats
    # Only the two exact dataclasses: the module's functions still open connections.
    for name in ("create_handler", "DynamicRendezvousHandler"):
        payload = b"\x80\x04c" + dr.__name__.encode() + b"\n" + name.encode() + b"\n)R."
        assert scan_bytes(payload, name="x.pkl").verdict is Verdict.UNSAFE, name
