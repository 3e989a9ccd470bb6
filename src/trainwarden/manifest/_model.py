"""Manifests as data: per-file, per-shard SHA-256 digests and the root digest over them.

The layout (shards, resource names, their order, the root digest) is OpenSSF model-signing's,
so a manifest computed here is the one a model-signing verifier recomputes; see
``docs/manifest.md``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

from trainwarden.errors import ConfigError

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "MAX_SHARD_SIZE",
    "METHODS",
    "MIN_SHARD_SIZE",
    "FileEntry",
    "Manifest",
    "Shard",
    "check_shard_size",
    "shard_ranges",
]

#: Bytes per shard. Files are split at these offsets (model-signing's shard layout; its
#: verifier reads the size from the statement) and shards are hashed in parallel. 256 MiB
#: keeps every core busy to the end (an 8 GiB file is 32 equal tasks) at 4 KiB of manifest
#: per GiB.
DEFAULT_SHARD_SIZE = 1 << 28
#: Smallest and largest shard size accepted (a tiny shard size would make a manifest of an
#: 8 GB file millions of entries long).
MIN_SHARD_SIZE, MAX_SHARD_SIZE = 1 << 20, 1 << 40
#: Serialization methods: ``shards`` (every file split at ``shard_size``) or ``files``
#: (one digest per whole file, what model-signing writes by default).
METHODS = ("shards", "files")


def check_shard_size(shard_size: int) -> int:
    """Return ``shard_size`` if it is an int in ``[MIN_SHARD_SIZE, MAX_SHARD_SIZE]``.

    Raises:
        ConfigError: It is not.
    """
    if (
        isinstance(shard_size, bool)
        or not isinstance(shard_size, int)
        or not MIN_SHARD_SIZE <= shard_size <= MAX_SHARD_SIZE
    ):
        raise ConfigError(
            f"shard_size must be an integer between {MIN_SHARD_SIZE} and {MAX_SHARD_SIZE}, "
            f"not {shard_size!r}"
        )
    return shard_size


def shard_ranges(size: int, shard_size: int) -> Iterator[tuple[int, int]]:
    """model-signing's layout: ``[0, s), [s, 2s), ..., [ks, size)``; an empty file has none."""
    start = 0
    while start < size:
        end = min(start + shard_size, size)
        yield start, end
        start = end


@dataclass(frozen=True, slots=True)
class Shard:
    """The digest of bytes ``[start, end)`` of a file."""

    start: int
    end: int
    digest: str  # lower-case hex SHA-256


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One regular file of a manifest: relative POSIX path, size and shard digests.

    ``size`` is ``-1`` when a foreign manifest did not record it (model-signing's ``files``
    method).
    """

    path: str
    size: int
    shards: tuple[Shard, ...]

    @property
    def sha256(self) -> str | None:
        """The whole file's SHA-256 (hex) when it was hashed as one shard, else ``None``."""
        return self.shards[0].digest if len(self.shards) == 1 else None


@dataclass(frozen=True, slots=True)
class Manifest:
    """Per-file, per-shard digests of a file or a directory tree.

    ``method`` is model-signing's serialization: ``shards`` (ours; every file is split at
    ``shard_size``) or ``files`` (one digest per file). A single file appears under the path
    ``"."`` as model-signing names it.
    """

    name: str
    files: tuple[FileEntry, ...]
    method: str = "shards"
    shard_size: int = DEFAULT_SHARD_SIZE

    def resources(self) -> list[tuple[str, str]]:
        """``(name, hex digest)`` pairs in model-signing's canonical order.

        model-signing sorts its items by path *components*, then by shard offsets (not by
        the string), and the root digest depends on that order.
        """
        items: list[tuple[tuple[tuple[str, ...], int, int], str, str]] = []
        for entry in self.files:
            parts = tuple(entry.path.split("/")) if entry.path != "." else ()
            if self.method == "files":
                items.append(((parts, 0, 0), entry.path, entry.shards[0].digest))
                continue
            items.extend(
                ((parts, s.start, s.end), f"{entry.path}:{s.start}:{s.end}", s.digest)
                for s in entry.shards
            )
        items.sort(key=lambda item: item[0])
        return [(name, digest) for _, name, digest in items]

    @property
    def root_digest(self) -> str:
        """SHA-256 (hex) over every resource digest in canonical order: the subject digest."""
        hasher = hashlib.sha256()
        for _, digest in self.resources():
            hasher.update(bytes.fromhex(digest))
        return hasher.hexdigest()

    @property
    def digest(self) -> str:
        """The checkpoint digest used by lineage and the ledger: ``sha256:<root digest>``."""
        return f"sha256:{self.root_digest}"

    @property
    def total_size(self) -> int:
        """Sum of the file sizes (sizes a foreign manifest did not record count as 0)."""
        return sum(max(f.size, 0) for f in self.files)

    def by_path(self) -> dict[str, FileEntry]:
        """Entries keyed by relative path."""
        return {f.path: f for f in self.files}
