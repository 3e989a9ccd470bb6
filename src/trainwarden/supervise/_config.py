"""Settings read from the job's config files (JSON, TOML, YAML): hyperparameters, paths."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["MODEL_SUFFIXES", "config_values", "referenced_files"]

#: Suffixes of files a config may point the job at to load (scanned before launch).
MODEL_SUFFIXES = frozenset(
    {
        ".pt",
        ".pth",
        ".bin",
        ".ckpt",
        ".safetensors",
        ".pkl",
        ".pickle",
        ".joblib",
        ".npy",
        ".npz",
        ".h5",
        ".keras",
        ".gguf",
        ".msgpack",
        ".model",
    }
)


def config_values(path: Path, *, limit: int) -> dict[str, Any]:
    """Flattened scalar settings of a JSON, TOML or YAML config (``a.b.c`` keys)."""
    if limit <= 0:
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    suffix = path.suffix.lower()
    doc: Any = None
    try:
        if suffix == ".json":
            doc = json.loads(text)
        elif suffix == ".toml":
            from trainwarden.supervise._policy import toml_module

            doc = toml_module().loads(text)
        elif suffix in (".yaml", ".yml"):
            try:
                import yaml  # type: ignore[import-untyped]
            except ImportError:
                return {}
            doc = yaml.safe_load(text)
    except Exception:  # a config we cannot parse is digested, not interpreted
        return {}
    out: dict[str, Any] = {}

    def walk(value: Any, prefix: str) -> None:
        if len(out) >= limit:
            return
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{prefix}.{key}" if prefix else str(key))
        elif isinstance(value, (str, int, float, bool)) or value is None:
            if isinstance(value, float) and value != value:
                return
            out[f"{path.name}:{prefix}"] = value

    walk(doc, "")
    return out


def referenced_files(path: Path, *, base: Path) -> list[str]:
    """Model and checkpoint files (or directories) a config names that exist.

    Relative values are resolved against the config's directory, then ``base`` (the job's
    working directory), as training code commonly does.
    """
    out: list[str] = []
    for value in config_values(path, limit=10_000).values():
        if not isinstance(value, str) or not value or len(value) > 4096 or "\0" in value:
            continue
        candidate = Path(value)
        if candidate.suffix.lower() not in MODEL_SUFFIXES and not (
            candidate.name.startswith("checkpoint") or candidate.name.startswith("ckpt")
        ):
            continue
        roots = (
            [candidate] if candidate.is_absolute() else [path.parent / candidate, base / candidate]
        )
        found = next((r for r in roots if r.exists()), None)
        if found is not None:
            out.append(str(found))
    return out
