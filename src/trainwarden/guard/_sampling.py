"""Secret sampling: which steps and which coordinates the guard verifies.

Everything derives from HMAC-SHA256 of the secret, so an insider who does not hold the secret
cannot tell which coordinates of which step will be recomputed, and cannot aim a perturbation
around them. Coordinates are drawn uniformly over the flattened index space of all parameters
(with replacement, then de-duplicated), so a change to a fraction ``f`` of the coordinates
escapes one verified step with probability at most ``(1 - f) ** k``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Sample", "Sampler", "commitment"]


def commitment(secret: bytes) -> str:
    """A public commitment to the secret (so ranks and reports can tell it was the run's)."""
    return hashlib.sha256(b"trainwarden.guard.secret\x00" + secret).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Sample:
    """Coordinates of one step: for each parameter index with hits, its sorted local indices.

    ``owners`` and ``local`` hold the same coordinates flat (parameter index and local index
    of each, sorted), for vectorised layouts.
    """

    step: int
    per_param: tuple[tuple[int, Any], ...]  # (param index, numpy int64 array)
    count: int
    owners: Any = None
    local: Any = None


class Sampler:
    """Derives per-step decisions and coordinates from a secret.

    Args:
        secret: At least 16 bytes; identical on every rank so that samples (and the digests
            compared across ranks) are identical.
        k: Coordinates drawn per step.
        verify_fraction: Fraction of steps whose update is verified.
    """

    def __init__(self, secret: bytes, *, k: int, verify_fraction: float = 1.0) -> None:
        self._secret = bytes(secret)
        self.k = k
        self.verify_fraction = verify_fraction
        self._offsets_key: tuple[int, ...] | None = None
        self._offsets: Any = None

    def __repr__(self) -> str:  # never show the secret
        return f"Sampler(k={self.k}, verify_fraction={self.verify_fraction})"

    def derive(self, purpose: bytes, step: int) -> int:
        """A 64-bit value only the secret's holder can predict."""
        mac = hmac.new(self._secret, purpose + b"\x00" + step.to_bytes(8, "little"), "sha256")
        return int.from_bytes(mac.digest()[:8], "little")

    def verified(self, step: int) -> bool:
        """Whether the update of ``step`` is verified."""
        if self.verify_fraction >= 1.0:
            return True
        return self.derive(b"verify", step) < int(self.verify_fraction * 2**64)

    def coordinates(self, step: int, sizes: Sequence[int]) -> Sample:
        """The coordinates of ``step`` over parameters with ``sizes`` elements each."""
        import numpy as np

        key = tuple(sizes)
        if key != self._offsets_key:
            self._offsets = np.cumsum(np.asarray((0, *key), dtype=np.int64))
            self._offsets_key = key
        offsets = self._offsets
        total = int(offsets[-1])
        if total == 0:
            empty = np.empty(0, dtype=np.int64)
            return Sample(step, (), 0, empty, empty)
        rng = np.random.Generator(np.random.PCG64(self.derive(b"coords", step)))
        flat = np.sort(rng.integers(0, total, size=self.k, dtype=np.int64))
        if flat.size > 1:
            keep = np.empty(flat.size, dtype=bool)
            keep[0] = True
            np.not_equal(flat[1:], flat[:-1], out=keep[1:])
            flat = flat[keep]
        owners = np.searchsorted(offsets, flat, side="right") - 1
        local = flat - offsets[owners]
        starts = np.flatnonzero(np.diff(owners, prepend=-1))
        ends = [*starts[1:].tolist(), int(flat.size)]
        per_param: list[tuple[int, Any]] = []
        for begin, end in zip(starts.tolist(), ends, strict=True):
            per_param.append((int(owners[begin]), local[begin:end]))
        return Sample(step, tuple(per_param), int(flat.size), owners, local)
