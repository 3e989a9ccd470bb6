"""The ``convert`` command: write safetensors from a checkpoint judged safe."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainwarden.cli._common import (
    EXIT_OK,
    SCHEMA_VERSION,
    add_output_arguments,
    check_output,
    dumps,
    path_arg,
    shown,
    write_output,
)
from trainwarden.errors import InputError

if TYPE_CHECKING:
    from trainwarden.load import Conversion

__all__ = ["register"]

_EPILOG = """\
exit status: 0 written; 1 SRC refused (it would run code, or holds what the policy does not
allow); 2 error (SRC missing or not a checkpoint, DST not writable or the same file as SRC,
torch not installed).

Whole training checkpoints convert too: tensors under their dotted key paths
(model.fc.weight, optimizer.state.0.exp_avg), plain values (param groups, step,
hyper-parameters) as JSON in the safetensors metadata (trainwarden.non_tensor), and objects
that are neither are listed as left out (trainwarden.left_out), never dropped silently.
"""


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register ``trainwarden convert``."""
    parser = subparsers.add_parser(
        "convert",
        help="convert a checkpoint judged safe to safetensors",
        description=(
            "Load SRC under the policy (refusing it if unsafe) and write its tensors to DST as\n"
            "safetensors, sharded with a model.safetensors.index.json when larger than\n"
            "--shard-size."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("src", metavar="SRC", type=path_arg, help="checkpoint to convert")
    parser.add_argument(
        "dst",
        metavar="DST",
        type=_nonempty,
        help="a .safetensors file, or a directory (DIR/ is created when only it is missing)",
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
    parser.add_argument(
        "--select",
        metavar="KEY.PATH",
        help="convert only the subtree at this dotted key path, e.g. state_dict or model",
    )
    add_output_arguments(parser, ("text", "json"))
    parser.set_defaults(handler=_convert)


def _nonempty(text: str) -> str:
    """An argparse type: DST as typed (its trailing slash means "a directory"), never empty."""
    path_arg(text)
    return text


def _destination(text: str) -> tuple[Path, bool]:
    """DST, and whether this call created it.

    ``convert ckpt.pt out/`` (the README's own example) names a directory by its slash, which
    ``Path`` drops; it is created when only it is missing (one level, as ``keygen`` does). A
    deeper missing path is a typo, refused.
    """
    path = Path(text)
    if not text.endswith(("/", os.sep)) or os.path.lexists(path):
        return path, False
    if not path.parent.is_dir():
        raise InputError(f"{path.parent}: no such directory")
    try:
        path.mkdir()
    except OSError as exc:
        raise InputError(f"cannot create directory {path}: {exc.strerror or exc}") from exc
    return path, True


def _convert(args: argparse.Namespace) -> int:
    from trainwarden.errors import ConfigError
    from trainwarden.load import convert, parse_size
    from trainwarden.scan import Policy

    try:
        shard_size = parse_size(args.shard_size)
    except ValueError as exc:
        raise ConfigError(f"--shard-size: {exc}") from None
    # The summary must not land on the checkpoint either (checked before any work).
    check_output(args.output, [args.src])
    policy = Policy.from_pyproject(profiles=tuple(args.profile), allow=tuple(args.allow))
    # The loader logs each refusal for applications; here the command says it itself, so
    # Python's last-resort handler must not print it a second time (a configured logging
    # setup still receives it).
    logging.getLogger("trainwarden.load").addHandler(logging.NullHandler())
    dst, created = _destination(args.dst)
    try:
        result = convert(args.src, dst, policy=policy, shard_size=shard_size, select=args.select)
    except BaseException:
        if created:  # refused or failed: leave no empty directory behind
            with contextlib.suppress(OSError):
                dst.rmdir()
        raise
    if args.format == "json":
        write_output(dumps(_document(args, result)), args.output)
        return EXIT_OK
    write_output(_text(args, result), args.output)
    return EXIT_OK


def _document(args: argparse.Namespace, result: Conversion) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "source": str(args.src),
        "source_sha256": result.source_sha256,
        "selected": args.select,
        "files": [str(p) for p in result.files],
        "index": str(result.index) if result.index else None,
        "tensors": result.tensors,
        "total_bytes": result.total_bytes,
        "aliases": dict(sorted(result.aliases.items())),
        "cloned": list(result.cloned),
        "kept": list(result.kept),
        "left_out": dict(sorted(result.left_out.items())),
        "from_numpy": list(result.from_numpy),
    }


def _text(args: argparse.Namespace, result: Conversion) -> str:
    lines = [
        f"converted {shown(args.src)} -> {', '.join(shown(p) for p in result.files)}",
        f"  {result.tensors} tensors, {result.total_bytes} bytes, "
        f"source sha256 {result.source_sha256}",
    ]
    if result.index is not None:
        lines.append(f"  index: {shown(result.index)}")
    if result.aliases:
        lines.append(f"  {len(result.aliases)} shared tensor(s) stored once (see metadata)")
    if result.cloned:
        lines.append(f"  {len(result.cloned)} tensor(s) copied out of shared storage")
    if result.from_numpy:
        lines.append(f"  {len(result.from_numpy)} NumPy array(s) stored as tensors")
    if result.kept:
        kept = ", ".join(map(shown, result.kept[:6])) + (", ..." if len(result.kept) > 6 else "")
        lines.append(
            f"  {len(result.kept)} plain value(s) kept as JSON metadata "
            f"(trainwarden.non_tensor): {kept}"
        )
    if result.left_out:
        lines.append(
            f"  LEFT OUT: {len(result.left_out)} value(s) that are neither tensors nor plain "
            "data (listed in trainwarden.left_out):"
        )
        lines.extend(f"    {shown(k)}: {shown(v)}" for k, v in result.left_out.items())
    return "\n".join(lines) + "\n"
