"""Convert a checkpoint judged safe into safetensors (sharded with an index when large).

Whole training checkpoints (``{"model": ..., "optimizer": ..., "step": ...}``, Lightning and
Trainer shapes) convert too: tensors under dotted key paths, plain data (param groups, step,
hyper-parameters) as JSON in the safetensors metadata, and what is neither is listed as left
out, never dropped silently. See docs/load.md.
"""

from __future__ import annotations

import base64
import json
import math
import os
import pickle
import struct
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainwarden._fs import atomic_write, check_output_path
from trainwarden.errors import ConfigError, InputError, UnsafeModelError
from trainwarden.findings import Verdict

if TYPE_CHECKING:
    from trainwarden.findings import FileReport
    from trainwarden.scan import Policy

__all__ = ["CONVERTIBLE_FORMATS", "Conversion", "convert_checkpoint", "parse_size"]

INDEX_SUFFIX = ".safetensors.index.json"
#: Formats (as ``trainwarden scan`` names them) that convert reads: torch checkpoints of every
#: vintage, raw pickles of tensors, TorchScript archives (their state dict), safetensors.
CONVERTIBLE_FORMATS = frozenset(
    {"torch-zip", "torch-legacy", "torch-legacy-tar", "pickle", "torchscript", "safetensors"}
)
_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
# Errors torch raises for bytes that are not a checkpoint it can read (a truncated zip, a
# pickle that ends early, an unknown magic number).
# What torch's deserialiser raises on a corrupt file (found by fuzzing real checkpoints: a
# storage key that is not there is an AssertionError, a bad set_() call a TypeError...).
_READ_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    RuntimeError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    AssertionError,
    ArithmeticError,
    struct.error,
    OSError,
)


@dataclass(frozen=True)
class Conversion:
    """What :func:`convert_checkpoint` wrote.

    Attributes:
        files: the safetensors files written, in order.
        index: the ``*.safetensors.index.json`` written for a sharded model, else ``None``.
        tensors: how many tensors were stored.
        total_bytes: bytes of tensor data stored.
        aliases: names stored once because they were exact views of another name.
        cloned: names copied out of a storage they shared with another tensor.
        source_sha256: digest of the converted source file.
        metadata: the provenance metadata written into every file.
        kept: dotted paths of the plain (non-tensor) values kept as JSON in the metadata
            (``trainwarden.non_tensor``).
        left_out: dotted paths of values that are neither tensors nor plain data (objects),
            with their type: not converted, and listed in the metadata too.
        from_numpy: dotted paths of NumPy arrays stored as tensors.
    """

    files: tuple[Path, ...]
    index: Path | None
    tensors: int
    total_bytes: int
    aliases: Mapping[str, str]
    cloned: tuple[str, ...]
    source_sha256: str | None
    metadata: Mapping[str, str]
    kept: tuple[str, ...] = ()
    left_out: Mapping[str, str] = field(default_factory=dict)
    from_numpy: tuple[str, ...] = ()


def parse_size(text: str) -> int:
    """Parse ``"5GB"``, ``"500MiB"`` or ``"1000000"`` into bytes.

    Raises:
        ValueError: not a positive size.
    """
    raw = text.strip().upper().replace(" ", "")
    number = raw.rstrip("KMGTIB")
    unit = raw[len(number) :]
    if unit not in _UNITS or not number:
        raise ValueError(f"invalid size {text!r} (examples: 5GB, 500MiB, 1000000)")
    try:
        value = float(number) * _UNITS[unit]
    except ValueError:
        raise ValueError(f"invalid size {text!r} (examples: 5GB, 500MiB, 1000000)") from None
    if not math.isfinite(value) or value < 1:
        raise ValueError(f"size must be at least one byte, got {text!r}")
    return int(value)


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise ConfigError(
            f"convert needs torch ({exc.name or exc} is not installed): "
            "pip install 'trainwarden[torch]' (install the torch build you want first)"
        ) from None
    return torch


def convert_checkpoint(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    policy: Policy,
    shard_size: int = 5 * 10**9,
    select: str | None = None,
) -> Conversion:
    """Load ``src`` under ``policy`` and write it as safetensors at ``dst``.

    ``dst`` is a file (``model.safetensors``) or a directory (``model.safetensors`` inside).
    When the tensors exceed ``shard_size`` they are split into
    ``<stem>-00001-of-0000N.safetensors`` files beside an ``<stem>.safetensors.index.json``.
    Each file is written atomically (a new file renamed into place, synced); peak memory is
    the loaded checkpoint plus one shard.

    Args:
        src: The checkpoint.
        dst: Where to write.
        policy: What loading ``src`` may import.
        shard_size: Largest shard in bytes.
        select: A dotted key path (``"state_dict"``, ``"model"``) whose subtree alone is
            converted, with names relative to it.

    Raises:
        UnsafeModelError: the policy refuses ``src``.
        InputError: ``src`` cannot be read or is not a checkpoint, holds a tensor safetensors
            cannot store, or ``dst`` cannot be written (or is ``src``).
        ConfigError: torch or safetensors is not installed, or ``select`` names nothing.
    """
    if shard_size < 1:
        raise InputError("shard size must be positive")
    src_path = Path(src)
    target = _target(Path(dst))
    # Before anything is read: never write over the checkpoint being converted.
    check_output_path(target, [src_path])
    torch = _import_torch()

    from trainwarden import __version__
    from trainwarden.load._torch import load_with_report

    try:
        obj, report = load_with_report(
            src_path,
            "cpu",
            None,
            weights_only=False,
            policy=policy,
            digest=True,
            accept=CONVERTIBLE_FORMATS,
        )
    except UnsafeModelError as exc:
        _not_a_checkpoint(src_path, exc.report.files)
        raise
    except _READ_ERRORS as exc:
        raise InputError(f"{src_path} is not a checkpoint torch can read: {exc}") from exc
    if select:
        obj = _select(obj, select, torch)
    state = _Flattened(torch)
    state.add(obj, "")
    if not state.tensors:
        raise InputError(f"{src_path}: no tensors to convert")
    stored, aliases, cloned = _unshare(state.tensors)
    metadata = {
        "format": "pt",
        "trainwarden.source": os.fspath(src_path),
        "trainwarden.source_sha256": report.sha256 or "",
        "trainwarden.source_format": report.format,
        "trainwarden.verdict": report.verdict.value,
        "trainwarden.version": __version__,
    }
    if select:
        metadata["trainwarden.selected"] = select
    if aliases:
        metadata["trainwarden.aliases"] = json.dumps(aliases, sort_keys=True)
    if cloned:
        metadata["trainwarden.cloned"] = json.dumps(sorted(cloned))
    if state.extra:
        metadata["trainwarden.non_tensor"] = json.dumps(
            state.extra, sort_keys=True, allow_nan=False
        )
    if state.left_out:
        metadata["trainwarden.left_out"] = json.dumps(state.left_out, sort_keys=True)
    if state.from_numpy:
        metadata["trainwarden.from_numpy"] = json.dumps(sorted(state.from_numpy))
    shards = _plan_shards(stored, shard_size)
    total = sum(t.numel() * t.element_size() for t in stored.values())
    if len(shards) == 1:
        _write_shard(torch, stored, target, metadata, src_path)
        files: tuple[Path, ...] = (target,)
        index = None
    else:
        stem = target.name.removesuffix(".safetensors")
        names = [
            target.with_name(f"{stem}-{i:05d}-of-{len(shards):05d}.safetensors")
            for i in range(1, len(shards) + 1)
        ]
        index = target.with_name(stem + INDEX_SUFFIX)
        for path in (*names, index):
            check_output_path(path, [src_path])
        weight_map: dict[str, str] = {}
        written: list[Path] = []
        try:
            for path, shard in zip(names, shards, strict=True):
                _write_shard(torch, {k: stored[k] for k in shard}, path, metadata, src_path)
                written.append(path)
                weight_map.update(dict.fromkeys(shard, path.name))
            document = {"metadata": {"total_size": total, **metadata}, "weight_map": weight_map}
            # The index is written last: its presence means every shard it names is complete.
            atomic_write(
                index,
                json.dumps(document, indent=2, sort_keys=True) + "\n",
                what="safetensors index",
            )
        except InputError as exc:
            # Say exactly what is left: shards without an index are not a model.
            kept = [str(p) for p in written if not _remove(p)]
            left = f"; could not remove {', '.join(kept)}" if kept else ""
            raise InputError(
                f"{exc} (failed after {len(written)} of {len(names)} shards, which were "
                f"removed again{left}; no index was written)"
            ) from exc
        files = tuple(names)
    return Conversion(
        files=files,
        index=index,
        tensors=len(stored),
        total_bytes=total,
        aliases=aliases,
        cloned=tuple(sorted(cloned)),
        source_sha256=report.sha256,
        metadata=metadata,
        kept=tuple(sorted(state.extra)),
        left_out=dict(sorted(state.left_out.items())),
        from_numpy=tuple(sorted(state.from_numpy)),
    )


def _not_a_checkpoint(src: Path, files: tuple[FileReport, ...]) -> None:
    """Turn a refusal of something that is not a checkpoint at all into an input error.

    An empty or random file, or a format convert does not read, is an operational error
    (exit 2), not a refused checkpoint (exit 1), unless it holds something unsafe.

    Raises:
        InputError: ``src`` is not a checkpoint and nothing in it is unsafe.
    """
    if any(f.verdict is Verdict.UNSAFE for f in files):
        return
    for file in files:
        if file.format not in CONVERTIBLE_FORMATS or file.verdict is Verdict.ERROR:
            reasons = "; ".join(f.message for f in file.findings[:2]) or file.verdict.value
            raise InputError(
                f"{src} is not a checkpoint convert can read (format {file.format}: {reasons})"
            )


def _select(obj: Any, path: str, torch: Any) -> Any:
    """The subtree of ``obj`` at dotted ``path``.

    Raises:
        ConfigError: ``path`` names nothing in ``obj``.
    """
    current = obj
    for part in path.split("."):
        if isinstance(current, torch.nn.Module):
            current = current.state_dict()
        if isinstance(current, Mapping):
            key: Any = part
            if part not in current and part.isdigit() and int(part) in current:
                key = int(part)
            if key not in current:
                keys = ", ".join(sorted(str(k) for k in current)[:10])
                raise ConfigError(f"--select {path}: no key {part!r} (keys: {keys})")
            current = current[key]
        elif isinstance(current, (list, tuple)) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            raise ConfigError(f"--select {path}: {part!r} is not inside a mapping or list")
    return current


class _Flattened:
    """Tensors by dotted name, plain values as JSON, and what was left out (with its type)."""

    def __init__(self, torch: Any) -> None:
        self.torch = torch
        self.tensors: dict[str, Any] = {}
        self.extra: dict[str, Any] = {}
        self.left_out: dict[str, str] = {}
        self.from_numpy: list[str] = []

    def add(self, obj: Any, prefix: str) -> None:
        torch = self.torch
        name = prefix or "<root>"
        if isinstance(obj, torch.Tensor):
            self._tensor(obj, prefix or "tensor")
            return
        if isinstance(obj, torch.nn.Module):
            # A pickled module (or one inside a checkpoint) converts as its state dict.
            obj = obj.state_dict()
        if isinstance(obj, Mapping) and obj:
            if not _has_tensor(obj, torch):
                # Plain data stays one JSON value (Lightning's "loops" is one entry, not
                # eighty); only a mapping holding an object is split, so that just the
                # object is left out.
                try:
                    self._extra(name, _plain(obj, torch))
                except _NotPlainError:
                    pass
                else:
                    return
            for key, value in obj.items():
                if isinstance(key, bool) or not isinstance(key, (str, int)):
                    self.left_out[f"{name}[{key!r}]"] = (
                        f"{type(value).__name__} under a {type(key).__name__} key"
                    )
                    continue
                self.add(value, f"{prefix}.{key}" if prefix else str(key))
            return
        if isinstance(obj, (list, tuple)) and any(_has_tensor(v, torch) for v in obj):
            for i, value in enumerate(obj):
                self.add(value, f"{prefix}.{i}" if prefix else str(i))
            return
        array = _numeric_array(obj)
        if array is not None:
            self._tensor(torch.from_numpy(array), prefix or "array")
            self.from_numpy.append(prefix or "array")
            return
        try:
            value = _plain(obj, torch)
        except _NotPlainError as exc:
            self.left_out[name] = exc.what
            return
        self._extra(name, value)

    def _extra(self, name: str, value: Any) -> None:
        if name in self.extra:
            raise InputError(f"two values are both named {name!r}: rename one key")
        self.extra[name] = value

    def _tensor(self, obj: Any, name: str) -> None:
        torch = self.torch
        if obj.layout is not torch.strided:
            raise InputError(f"{name}: {obj.layout} tensors cannot be stored in safetensors")
        if obj.is_quantized:
            raise InputError(f"{name}: quantized tensors cannot be stored in safetensors")
        if obj.device.type == "meta":
            raise InputError(f"{name}: a tensor on the meta device holds no data to store")
        if name in self.tensors:
            # {"a.b": t1, "a": {"b": t2}} would otherwise lose one of the two silently.
            raise InputError(f"two tensors are both named {name!r}: rename one key")
        self.tensors[name] = obj


class _NotPlainError(Exception):
    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def _plain(obj: Any, torch: Any) -> Any:
    """``obj`` as JSON, or :class:`_NotPlainError` naming what it is.

    Tuples and ``torch.Size`` become lists; non-finite floats ``{"$float": "nan"}``; bytes
    ``{"$bytes": base64}``; dtypes and devices ``{"$dtype": ...}`` / ``{"$device": ...}``;
    NumPy scalars their Python value. Everything else is an object, not plain data.
    """
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"$float": repr(obj)}
    if isinstance(obj, (list, tuple)):  # torch.Size is a tuple
        return [_plain(v, torch) for v in obj]
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            if not isinstance(key, str):
                raise _NotPlainError(f"dict with a {type(key).__name__} key")
            out[key] = _plain(value, torch)
        return out
    if isinstance(obj, (bytes, bytearray)):
        return {"$bytes": base64.b64encode(bytes(obj)).decode("ascii")}
    if isinstance(obj, torch.dtype):
        return {"$dtype": str(obj).removeprefix("torch.")}
    if isinstance(obj, torch.device):
        return {"$device": str(obj)}
    item = _numpy_scalar(obj)
    if item is not None:
        return _plain(item, torch)
    cls = type(obj)
    raise _NotPlainError(f"{cls.__module__}.{cls.__qualname__}")


def _numpy_scalar(obj: Any) -> Any:
    numpy = _numpy()
    if numpy is not None and isinstance(obj, numpy.generic) and obj.dtype.kind in "biuf":
        return obj.item()
    return None


def _numeric_array(obj: Any) -> Any:
    numpy = _numpy()
    if numpy is None or not isinstance(obj, numpy.ndarray) or obj.dtype.kind not in "biuf":
        return None
    if obj.dtype.byteorder == ">" or obj.dtype.itemsize > 8:
        return None  # torch has no big-endian or 128-bit types: left out, as an object
    return numpy.ascontiguousarray(obj)


def _numpy() -> Any:
    import sys

    # Only when the checkpoint made numpy load: a checkpoint without arrays needs no numpy.
    return sys.modules.get("numpy")


def _has_tensor(obj: Any, torch: Any) -> bool:
    if isinstance(obj, (torch.Tensor, torch.nn.Module)) or _numeric_array(obj) is not None:
        return True
    if isinstance(obj, Mapping):
        return any(_has_tensor(v, torch) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_has_tensor(v, torch) for v in obj)
    return False


def _unshare(tensors: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    # safetensors refuses tensors that share memory. Exact views (same storage, offset, shape,
    # strides, dtype) are stored once and recorded as aliases; other overlaps are cloned.
    stored: dict[str, Any] = {}
    aliases: dict[str, str] = {}
    cloned: list[str] = []
    seen: dict[tuple[Any, ...], str] = {}
    storages: dict[int, str] = {}
    for name, tensor in tensors.items():
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        view = (ptr, tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype)
        if tensor.numel() and view in seen:
            aliases[name] = seen[view]
            continue
        if tensor.numel() and ptr in storages:
            stored[name] = tensor.detach().clone().contiguous()
            cloned.append(name)
        else:
            owns_all = tensor.is_contiguous() and tensor.numel() * tensor.element_size() == (
                storage.nbytes()
            )
            stored[name] = tensor.detach() if owns_all else tensor.detach().clone().contiguous()
            if tensor.numel():
                storages[ptr] = name
        seen[view] = name
    return stored, aliases, cloned


def _plan_shards(tensors: dict[str, Any], shard_size: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    used = 0
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        if shards[-1] and used + size > shard_size:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def _target(dst: Path) -> Path:
    if dst.is_dir() or str(dst).endswith(os.sep):
        return dst / "model.safetensors"
    if dst.suffix != ".safetensors":
        raise InputError(f"{dst}: the destination must end in .safetensors or be a directory")
    if not dst.parent.is_dir():
        raise InputError(f"{dst.parent}: no such directory")
    return dst


# safetensors dtype names (the format's own, as in safetensors.torch) of the torch dtypes.
_DTYPES = (
    ("float64", "F64"), ("float32", "F32"), ("float16", "F16"), ("bfloat16", "BF16"),
    ("int64", "I64"), ("int32", "I32"), ("int16", "I16"), ("int8", "I8"), ("uint8", "U8"),
    ("uint16", "U16"), ("uint32", "U32"), ("uint64", "U64"), ("bool", "BOOL"),
    ("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2"),
    ("float8_e4m3fnuz", "F8_E4M3FNUZ"), ("float8_e5m2fnuz", "F8_E5M2FNUZ"),
    ("complex64", "C64"),
)  # fmt: skip


def _dtype_names(torch: Any) -> dict[Any, str]:
    return {getattr(torch, t): n for t, n in _DTYPES if hasattr(torch, t)}


def _safetensors_chunks(
    torch: Any, tensors: Mapping[str, Any], metadata: Mapping[str, str]
) -> tuple[bytes, list[Any]]:
    """The safetensors header and the tensors in file order, ready to be written.

    The format (huggingface/safetensors): an 8-byte little-endian header length, a JSON header
    (``{"__metadata__": {...}, name: {"dtype", "shape", "data_offsets": [begin, end]}}``,
    padded with spaces to a multiple of 8), then every tensor's bytes, contiguous, little
    endian. Tensors are laid out by element size, largest first, then by name, so every
    tensor starts aligned to its element size (as the library itself does).

    Raises:
        InputError: a dtype safetensors cannot store.
    """
    names = _dtype_names(torch)
    order = sorted(tensors, key=lambda n: (-tensors[n].element_size(), n))
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name in order:
        tensor = tensors[name]
        dtype = names.get(tensor.dtype)
        if dtype is None:
            raise InputError(f"{name}: safetensors cannot store {tensor.dtype} tensors")
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": dtype,
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text, [tensors[n] for n in order]


def _tensor_bytes(torch: Any, tensor: Any) -> memoryview:
    """A view of ``tensor``'s bytes (no copy for a contiguous CPU tensor)."""
    flat = tensor.detach().contiguous().reshape(-1)
    if flat.device.type != "cpu":
        flat = flat.cpu()
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


def _write_shard(
    torch: Any, tensors: dict[str, Any], path: Path, meta: dict[str, str], src: Path
) -> None:
    # The format is written here, streaming from the tensors' own memory: no second copy of
    # the tensor bytes (safetensors' save() builds one buffer of them all).
    check_output_path(path, [src])
    header, ordered = _safetensors_chunks(torch, tensors, meta)
    if sys.byteorder != "little":  # safetensors is little-endian; so are all torch targets
        raise InputError("writing safetensors needs a little-endian machine")

    def chunks() -> Iterator[Any]:
        yield header
        for tensor in ordered:
            if tensor.numel():
                yield _tensor_bytes(torch, tensor)

    # One atomic write: a fresh temporary file, fsync, rename, directory fsync.
    atomic_write(path, chunks(), what="safetensors file")


def _remove(path: Path) -> bool:
    try:
        path.unlink()
    except OSError:
        return False
    return True
