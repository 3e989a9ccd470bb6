"""Digests of files and checkpoint directories: the manifests that signatures and ledgers name.

- One call: :func:`digest_path` returns the :class:`Manifest` of a file or directory as it is
  now (per-file, per-shard SHA-256, hashed in parallel inside the tree, never through a
  symlink); :func:`checkpoint_digest` its ``sha256:<root>`` digest (what ``trainwarden sign``
  and the ledger record); :func:`file_digest` the plain SHA-256 of one file.
- Parts: :func:`walk_tree` lists a tree (:class:`Tree`), :func:`hash_tree` hashes some or all
  of its files (:class:`HashResult`), :class:`Manifest` / :class:`FileEntry` / :class:`Shard`
  hold the digests in OpenSSF model-signing's layout.
- A file that changes while it is hashed raises :class:`TreeChanged` (its digests would
  describe bytes that never existed together); a tree with symlinks or special files raises
  :class:`UnsupportedTree`.

Used by ``sign`` (signed manifests), ``ledger`` (``--check-files``), the supervisor (digests
of data manifests and configs) and the report (re-digesting checkpoints). The layout is
specified in ``docs/manifest.md``.
"""

from __future__ import annotations

from trainwarden.manifest._digest import (
    TreeChanged,
    UnsupportedTree,
    checkpoint_digest,
    digest_path,
    file_digest,
    tree_problems,
)
from trainwarden.manifest._model import (
    DEFAULT_SHARD_SIZE,
    MAX_SHARD_SIZE,
    METHODS,
    MIN_SHARD_SIZE,
    FileEntry,
    Manifest,
    Shard,
    check_shard_size,
    shard_ranges,
)
from trainwarden.manifest._tree import (
    MAX_DEPTH,
    MAX_FILES,
    HashResult,
    ProgressCallback,
    Stamp,
    Tree,
    hash_tree,
    walk_tree,
)

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "MAX_DEPTH",
    "MAX_FILES",
    "MAX_SHARD_SIZE",
    "METHODS",
    "MIN_SHARD_SIZE",
    "FileEntry",
    "HashResult",
    "Manifest",
    "ProgressCallback",
    "Shard",
    "Stamp",
    "Tree",
    "TreeChanged",
    "UnsupportedTree",
    "check_shard_size",
    "checkpoint_digest",
    "digest_path",
    "file_digest",
    "hash_tree",
    "shard_ranges",
    "tree_problems",
    "walk_tree",
]
