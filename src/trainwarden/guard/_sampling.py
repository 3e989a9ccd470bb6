"""Secret sampling: which steps and which coordinates the guard verifies.

Everything derives from HMAC-SHA256 of the secret, so an insider who does not hold the secret
cannot tell which coordinates of which step will be recomputed, and cannot aim a perturbation
around them. Each step's ``k`` coordinates are a fresh stratified sample of the flattened
index space of all parameters: the space is cut into ``k`` consecutive strata of (nearly)
equal width and one coordinate is drawn uniformly in each. Whatever set of coordinates an
insider changes, a fraction ``f`` of them, it escapes one verified step with probability
``prod(1 - t_i / w_i)`` (``t_i`` of its coordinates in stratum ``i`` of width ``w_i``), which by
the inequality of arithmetic and geometric means is at most ``(1 - f')**k`` with
``f' = f * (n / k) / ceil(n / k)``: never more than for ``k`` independent uniform draws over
a space a stratum larger. See docs/guard.md for the derivation.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Sample", "Sampler", "commitment"]

# Steps whose draws come from one generator: one HMAC and one generator per block instead of
# per step (building a numpy Generator costs ~13 us). Each step's row is still a fresh sample,
# independent of the other steps' and unpredictable without the secret.
_BLOCK = 16


def commitment(secret: bytes) -> str:
    """A public commitment to the secret (so ranks and reports can tell it was the run's)."""
    return hashlib.sha256(b"trainwarden.guard.secret\x00" + secret).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Sample:
    """The coordinates of one step, sorted, de-duplicated, grouped by parameter.

    ``owners[i]`` is the parameter (table index) of coordinate ``i`` and ``local[i]`` its
    index in that parameter's flattened local tensor. ``starts``/``ends`` delimit the runs of
    coordinates that share a parameter, in parameter order.
    """

    step: int
    count: int
    owners: Any  # numpy int64
    local: Any  # numpy int64
    starts: Any = None  # numpy int64, one per parameter with coordinates
    ends: Any = None

    @property
    def per_param(self) -> tuple[tuple[int, Any], ...]:
        """``(parameter index, sorted local indices)`` for each parameter with coordinates."""
        if self.starts is None:
            return ()
        return tuple(
            (int(self.owners[a]), self.local[a:b])
            for a, b in zip(self.starts.tolist(), self.ends.tolist(), strict=True)
        )


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
        self._block: tuple[int, Any, list[Sample]] | None = None

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

    def _block_for(self, step: int, offsets: Any) -> tuple[int, Any, list[Sample]]:
        """The samples of ``step``'s block of steps, laid out once for all of them.

        Laying out 16 steps together costs little more than one: the guard's work between
        steps runs in caches the training step has just flushed, where every distinct
        operation is paid again, so the per-step part is a lookup.
        """
        import numpy as np

        block = step // _BLOCK
        total = int(offsets[-1])
        cached = self._block
        if cached is None or cached[0] != block or cached[1] is not offsets:
            # Steps may be negative only in tests; the block index is a signed 64-bit value.
            seed = self.derive(b"coords-block", block & 0xFFFFFFFFFFFFFFFF)
            rng = np.random.Generator(np.random.PCG64(seed))
            strata = min(self.k, total)
            bounds = np.arange(strata + 1, dtype=np.int64) * total // strata
            widths = np.diff(bounds)
            # One uniform draw in each stratum: sorted and distinct by construction.
            flat = bounds[:-1] + rng.integers(0, widths, size=(_BLOCK, strata), dtype=np.int64)
            owners = np.searchsorted(offsets, flat, side="right") - 1
            local = flat - offsets[owners]
            # Where each row's runs of one parameter start (and end), for all rows at once.
            change = np.empty(owners.shape, dtype=bool)
            change[:, 0] = True
            np.not_equal(owners[:, 1:], owners[:, :-1], out=change[:, 1:])
            rows, columns = np.nonzero(change)
            cuts = np.searchsorted(rows, np.arange(1, _BLOCK))
            first = block * _BLOCK
            samples = []
            for row, starts in enumerate(np.split(columns, cuts)):
                ends = np.empty_like(starts)
                ends[:-1] = starts[1:]
                ends[-1] = strata
                samples.append(Sample(first + row, strata, owners[row], local[row], starts, ends))
            cached = self._block = (block, offsets, samples)
        return cached

    def coordinates(self, step: int, sizes: Sequence[int]) -> Sample:
        """The coordinates of ``step`` over parameters with ``sizes`` elements each."""
        import numpy as np

        key = tuple(sizes)
        if key != self._offsets_key:
            self._offsets = np.cumsum(np.asarray((0, *key), dtype=np.int64))
            self._offsets_key = key
            self._block = None
        offsets = self._offsets
        if int(offsets[-1]) == 0:
            empty = np.empty(0, dtype=np.int64)
            return Sample(step, 0, empty, empty, empty, empty)
        _, _, samples = self._block_for(step, offsets)
        return samples[step % _BLOCK]

    def block(self, step: int, sizes: Sequence[int]) -> list[Sample]:
        """The samples of every step of ``step``'s block (16 consecutive steps)."""
        first = step - step % _BLOCK
        self.coordinates(step, sizes)
        cached = self._block
        if cached is None:  # no coordinates at all
            return [self.coordinates(first + row, sizes) for row in range(_BLOCK)]
        return cached[2]
