"""Digest a file or checkpoint directory in one call: walk, refuse what cannot be covered, hash."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from trainwarden._fs import open_regular
from trainwarden.errors import ConfigError, InputError
from trainwarden.manifest._model import DEFAULT_SHARD_SIZE, Manifest, check_shard_size
from trainwarden.manifest._tree import ProgressCallback, Stamp, Tree, hash_tree, walk_tree

__all__ = [
    "TreeChanged",
    "UnsupportedTree",
    "checkpoint_digest",
    "digest_path",
    "file_digest",
    "tree_problems",
]

_CHUNK = 1 << 20


class UnsupportedTree(InputError):
    """The tree holds what a manifest does not cover: a symlink, special file, unreadable dir."""


class TreeChanged(InputError):
    """A file changed while it was being hashed.

    Its digests would describe bytes that never existed together; hash again once the
    writer has finished.
    """


def tree_problems(tree: Tree) -> list[str]:
    """What in ``tree`` a manifest cannot cover, one phrase each (empty when nothing)."""
    problems = ["it is a symlink" if rel == "." else f"{rel} is a symlink" for rel in tree.symlinks]
    problems += [
        "it is not a regular file or directory"
        if rel == "."
        else f"{rel} is not a regular file or directory"
        for rel in tree.special
    ]
    problems += [f"{rel}: {reason}" for rel, reason in tree.unreadable]
    return problems


def digest_path(
    path: str | os.PathLike[str],
    *,
    method: str = "shards",
    shard_size: int = DEFAULT_SHARD_SIZE,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    verb: str = "digest",
) -> Manifest:
    """The manifest of a regular file or a directory of regular files, as it is now.

    Args:
        path: A file or a checkpoint directory.
        method: ``shards`` (default) or ``files``.
        shard_size: Bytes per shard.
        workers: Hashing threads (default: the CPUs this process may use).
        progress: Called with ``(bytes_done, bytes_total)`` while hashing.
        verb: What the caller is doing, for error messages (``sign``, ``digest``...).

    Returns:
        The manifest; its ``digest`` is the checkpoint digest (``sha256:<root>``).

    Raises:
        UnsupportedTree: The tree holds symlinks or special files, or cannot be read.
        TreeChanged: A file changed while it was hashed.
        InputError: ``path`` is missing or a file vanished or became unreadable.
        ConfigError: A bad ``shard_size``, ``method`` or ``workers``, or an empty path.
    """
    if os.fspath(path) == "":
        # Path("") is "."; an empty setting must not digest the current directory.
        raise ConfigError("no path given")
    path = Path(path)
    check_shard_size(shard_size)
    tree = walk_tree(path)
    problems = tree_problems(tree)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UnsupportedTree(
            f"refusing to {verb} {path}: {problems[0]}{more}; manifests cover regular files "
            "only, and a symlink could point verification outside the checkpoint"
        )
    result = hash_tree(
        tree, method=method, shard_size=shard_size, workers=workers, progress=progress
    )
    if result.failed:
        rel, reason = result.failed[0]
        more = f" (and {len(result.failed) - 1} more)" if len(result.failed) > 1 else ""
        where = str(path) if rel == "." else f"{path}/{rel}"
        if rel in result.changed:
            raise TreeChanged(
                f"cannot {verb} {where}: {reason}{more}; its digests would mix bytes that "
                "never existed together: wait until it is written completely, then try again"
            )
        raise InputError(f"cannot {verb} {where}: {reason}{more}")
    name = path.name or path.absolute().name
    return Manifest(name=name, files=result.entries, method=method, shard_size=shard_size)


def checkpoint_digest(
    path: str | os.PathLike[str],
    *,
    shard_size: int = DEFAULT_SHARD_SIZE,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> str:
    """The checkpoint digest (``sha256:<root digest>``) of a file or directory as it is now.

    Exactly what ``trainwarden sign`` records (same walk, same shards), without a key: for
    comparing what is on disk with a digest recorded elsewhere (the ledger, provenance).

    Raises:
        UnsupportedTree, TreeChanged, InputError: As :func:`digest_path`.
    """
    manifest = digest_path(
        path, shard_size=shard_size, workers=workers, progress=progress, verb="hash"
    )
    return manifest.digest


def file_digest(path: str | os.PathLike[str]) -> str:
    """``sha256:<hex>`` of one regular file's bytes (symlinks to regular files are followed).

    The file is opened without blocking (a FIFO or device is refused, never read) and must
    keep its identity while it is read.

    Raises:
        InputError: Missing, not a regular file, unreadable, or changed while read.
    """
    fd = open_regular(path)
    try:
        before = Stamp.of(os.fstat(fd))
        hasher = hashlib.sha256()
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        while True:
            n = os.readv(fd, [view])
            if n <= 0:
                break
            hasher.update(view[:n])
        change = before.changes(Stamp.of(os.fstat(fd)))
        if change is not None:
            raise TreeChanged(f"{path} changed while it was being hashed: {change}")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    return "sha256:" + hasher.hexdigest()
