"""RFC 6962 Merkle tree hash over the writers' chain heads, as signed in seals."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from trainwarden.ledger._format import HASH_PREFIX, canonical_bytes

__all__ = ["leaf_bytes", "merkle_root"]


def leaf_bytes(writer: str, count: int, head: str) -> bytes:
    """The leaf input for one writer: canonical JSON ``{"count":N,"head":H,"writer":W}``."""
    return canonical_bytes({"count": count, "head": head, "writer": writer})


def merkle_root(leaves: Sequence[bytes]) -> str:
    """``sha256:`` Merkle Tree Hash of ``leaves`` (RFC 6962 section 2.1).

    Leaves hash as ``SHA-256(0x00 || leaf)``, interior nodes as ``SHA-256(0x01 || left ||
    right)``, the split is at the largest power of two below ``n``, and the empty tree
    hashes to ``SHA-256("")``. The prefixes keep a leaf from posing as an interior node.
    """
    return HASH_PREFIX + _mth(leaves).hex()


def _mth(leaves: Sequence[bytes]) -> bytes:
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + _mth(leaves[:k]) + _mth(leaves[k:])).digest()
