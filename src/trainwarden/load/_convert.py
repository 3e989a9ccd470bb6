"""Convert a checkpoint judged safe into safetensors (sharded with an index when large).

Shared storages are stored once or cloned, JSON-able extras go to the metadata; see docs/load.md.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainwarden.errors import InputError

if TYPE_CHECKING:
    from trainwarden.scan import Policy

__all__ = ["Conversion", "convert_checkpoint", "parse_size"]

INDEX_SUFFIX = ".safetensors.index.json"
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
    """

    files: tuple[Path, ...]
    index: Path | None
    tensors: int
    total_bytes: int
    aliases: Mapping[str, str]
    cloned: tuple[str, ...]
    source_sha256: str | None
    metadata: Mapping[str, str]


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


def convert_checkpoint(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    policy: Policy,
    shard_size: int = 5 * 10**9,
) -> Conversion:
    """Load ``src`` under ``policy`` and write it as safetensors at ``dst``.

    ``dst`` is a file (``model.safetensors``) or a directory (``model.safetensors`` inside).
    When the tensors exceed ``shard_size`` they are split into
    ``<stem>-00001-of-0000N.safetensors`` files beside an ``<stem>.safetensors.index.json``.

    Raises:
        UnsafeModelError: the policy refuses ``src``.
        InputError: ``src`` cannot be read or holds something safetensors cannot store.
    """
    import torch
    from safetensors.torch import save_file

    from trainwarden import __version__
    from trainwarden.load._torch import load_with_report

    if shard_size < 1:
        raise InputError("shard size must be positive")
    src_path = Path(src)
    obj, report = load_with_report(
        src_path, "cpu", None, weights_only=False, policy=policy, digest=True
    )
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    tensors: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    _flatten(obj, "", tensors, extra)
    if not tensors:
        raise InputError(f"{src_path}: no tensors to convert")
    stored, aliases, cloned = _unshare(tensors)
    metadata = {
        "format": "pt",
        "trainwarden.source": os.fspath(src_path),
        "trainwarden.source_sha256": report.sha256 or "",
        "trainwarden.source_format": report.format,
        "trainwarden.verdict": report.verdict.value,
        "trainwarden.version": __version__,
    }
    if aliases:
        metadata["trainwarden.aliases"] = json.dumps(aliases, sort_keys=True)
    if cloned:
        metadata["trainwarden.cloned"] = json.dumps(sorted(cloned))
    if extra:
        metadata["trainwarden.non_tensor"] = json.dumps(extra, sort_keys=True)
    shards = _plan_shards(stored, shard_size)
    target = _target(Path(dst))
    total = sum(t.numel() * t.element_size() for t in stored.values())
    if len(shards) == 1:
        _atomic_save(save_file, stored, target, metadata)
        files: tuple[Path, ...] = (target,)
        index = None
    else:
        stem = target.name.removesuffix(".safetensors")
        names = [
            target.with_name(f"{stem}-{i:05d}-of-{len(shards):05d}.safetensors")
            for i in range(1, len(shards) + 1)
        ]
        weight_map: dict[str, str] = {}
        for path, shard in zip(names, shards, strict=True):
            _atomic_save(save_file, {k: stored[k] for k in shard}, path, metadata)
            weight_map.update(dict.fromkeys(shard, path.name))
        index = target.with_name(stem + INDEX_SUFFIX)
        document = {"metadata": {"total_size": total, **metadata}, "weight_map": weight_map}
        _atomic_write_text(index, json.dumps(document, indent=2, sort_keys=True) + "\n")
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
    )


def _flatten(obj: Any, prefix: str, tensors: dict[str, Any], extra: dict[str, Any]) -> None:
    import torch

    if isinstance(obj, torch.Tensor):
        name = prefix or "tensor"
        if obj.layout is not torch.strided:
            raise InputError(f"{name}: {obj.layout} tensors cannot be stored in safetensors")
        if obj.is_quantized:
            raise InputError(f"{name}: quantized tensors cannot be stored in safetensors")
        tensors[name] = obj
        return
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise InputError(f"{prefix or '<root>'}: key {key!r} is not a string")
            _flatten(value, f"{prefix}.{key}" if prefix else str(key), tensors, extra)
        return
    if isinstance(obj, (list, tuple)) and any(_has_tensor(v) for v in obj):
        for i, value in enumerate(obj):
            _flatten(value, f"{prefix}.{i}" if prefix else str(i), tensors, extra)
        return
    # Non-tensor leaves go to the metadata only when JSON holds them without loss.
    if not _json_lossless(obj):
        raise InputError(
            f"{prefix or '<root>'}: a {type(obj).__name__} is neither a tensor nor a value "
            "JSON can hold without loss; safetensors cannot store it"
        )
    extra[prefix or "<root>"] = obj


def _has_tensor(obj: Any) -> bool:
    import torch

    if isinstance(obj, torch.Tensor):
        return True
    if isinstance(obj, Mapping):
        return any(_has_tensor(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_has_tensor(v) for v in obj)
    return False


def _json_lossless(obj: Any) -> bool:
    if obj is None or isinstance(obj, (bool, int, str)):
        return True
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, list):
        return all(_json_lossless(v) for v in obj)
    if isinstance(obj, dict):
        return all(isinstance(k, str) and _json_lossless(v) for k, v in obj.items())
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


def _atomic_save(save_file: Any, tensors: dict[str, Any], path: Path, meta: dict[str, str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from exc
