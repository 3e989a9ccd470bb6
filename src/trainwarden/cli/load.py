"""The ``convert`` command: write safetensors from a checkpoint judged safe."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from trainwarden.cli._common import write_output

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register ``trainwarden convert``."""
    parser = subparsers.add_parser(
        "convert",
        help="convert a checkpoint judged safe to safetensors",
        description=(
            "Load SRC under the policy (refusing it if unsafe) and write its tensors to DST as "
            "safetensors, sharded with a model.safetensors.index.json when larger than "
            "--shard-size. Exit 0: written; 1: SRC refused; 2: error."
        ),
    )
    parser.add_argument("src", metavar="SRC", type=Path, help="checkpoint to convert")
    parser.add_argument(
        "dst", metavar="DST", type=Path, help="a .safetensors file or an existing directory"
    )
    parser.add_argument(
        "--allow",
        metavar="MODULE.NAME",
        action="append",
        default=[],
        help="also allow this global (repeatable)",
    )
    parser.add_argument(
        "--profile",
        metavar="NAME",
        action="append",
        default=[],
        help="enable an allowlist profile, e.g. transformers, lightning (repeatable)",
    )
    parser.add_argument(
        "--shard-size",
        metavar="SIZE",
        default="5GB",
        help="largest shard, e.g. 5GB (default), 500MiB, 1000000",
    )
    parser.add_argument("--format", choices=("text", "json"), default="text", help="summary format")
    parser.set_defaults(handler=_convert)


def _convert(args: argparse.Namespace) -> int:
    from trainwarden.errors import ConfigError
    from trainwarden.load import convert
    from trainwarden.load._convert import parse_size
    from trainwarden.scan import Policy

    try:
        shard_size = parse_size(args.shard_size)
    except ValueError as exc:
        raise ConfigError(f"--shard-size: {exc}") from None
    policy = Policy.from_pyproject(profiles=tuple(args.profile), allow=tuple(args.allow))
    result = convert(args.src, args.dst, policy=policy, shard_size=shard_size)
    if args.format == "json":
        document = {
            "source": str(args.src),
            "source_sha256": result.source_sha256,
            "files": [str(p) for p in result.files],
            "index": str(result.index) if result.index else None,
            "tensors": result.tensors,
            "total_bytes": result.total_bytes,
            "aliases": dict(sorted(result.aliases.items())),
            "cloned": list(result.cloned),
        }
        write_output(json.dumps(document, indent=2, sort_keys=True) + "\n", None)
        return 0
    lines = [
        f"converted {args.src} -> {', '.join(str(p) for p in result.files)}",
        f"  {result.tensors} tensors, {result.total_bytes} bytes, "
        f"source sha256 {result.source_sha256}",
    ]
    if result.index is not None:
        lines.append(f"  index: {result.index}")
    if result.aliases:
        lines.append(f"  {len(result.aliases)} shared tensor(s) stored once (see metadata)")
    if result.cloned:
        lines.append(f"  {len(result.cloned)} tensor(s) copied out of shared storage")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
