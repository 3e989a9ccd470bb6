"""Batch Ed25519 signature checks, in worker processes for large ledgers.

Signature checks are most of the cost of verifying a ledger, and the ``cryptography``
binding holds the GIL while it checks, so only processes run them in parallel.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from collections.abc import Sequence

from trainwarden.errors import VerificationError
from trainwarden.keys import PublicKey

__all__ = ["MAX_WORKERS", "PARALLEL_THRESHOLD", "check_signatures"]

#: Below this many signatures, starting worker processes costs more than it saves (each
#: worker costs about 0.3 CPU-seconds to start; 50,000 checks are about 5 CPU-seconds).
PARALLEL_THRESHOLD = 50_000
_CHUNK = 25_000
#: More worker processes than this stop paying for their start-up on typical ledgers.
MAX_WORKERS = 8

# (signature, signed message) pairs of one key.
_Items = Sequence[tuple[bytes, bytes]]


def check_signatures(
    jobs: Sequence[tuple[PublicKey, _Items]], *, workers: int = 1
) -> list[list[bool]]:
    """For each ``(key, items)`` job, whether each signature verifies under the key."""
    total = sum(len(items) for _, items in jobs)
    if workers <= 1 or total < PARALLEL_THRESHOLD:
        return [_check(key.raw, key.identity, items) for key, items in jobs]
    chunks = [
        (index, start, key, items[start : start + _CHUNK])
        for index, (key, items) in enumerate(jobs)
        for start in range(0, len(items), _CHUNK)
    ]
    results: list[list[bool]] = [[False] * len(items) for _, items in jobs]
    # spawn, not fork: the caller may have threads, and a forked copy of them can deadlock.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {
            pool.submit(_check, key.raw, key.identity, part): (index, start)
            for index, start, key, part in chunks
        }
        for future in concurrent.futures.as_completed(futures):
            index, start = futures[future]
            part_result = future.result()
            results[index][start : start + len(part_result)] = part_result
    return results


def _check(raw: bytes, identity: str, items: _Items) -> list[bool]:
    key = PublicKey(raw=raw, identity=identity)
    return [_one(key, signature, message) for signature, message in items]


def _one(key: PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        key.verify(signature, message)
    except VerificationError:
        return False
    return True
