"""The guard's per-step exchange between ranks: halt flags, digests and timings in one gather.

Once per optimizer step, at the end of the step, every rank contributes a small vector of
64-bit integers (flags, sampled-parameter and gradient digests, a full digest every N steps,
its phase timings) to one ``all_gather`` on a process group of the guard's own (gloo, so the
job's collectives on its own groups are never interleaved with ours). Everybody then holds the
same matrix and takes the same decisions: halt if any rank flagged a violation, name the rank
whose digest differs from the others', name the rank that stalled.

The exchange is synchronous: the step in which one rank detects tampering raises on all
ranks. It costs one small gloo collective per step (measured in benchmarks/RESULTS.md); the
time a rank spends in it is, apart from a few tens of microseconds, time it would otherwise
have spent waiting for the slowest rank at the job's next collective.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import Any

__all__ = [
    "FLAG_CATCH_UP",
    "FLAG_FINDING",
    "FLAG_HALT",
    "WIDTH",
    "Exchange",
    "ExchangeError",
]

logger = logging.getLogger("trainwarden.guard")

MAGIC = 0x5457_4755  # "TWGU"
FLAG_HALT = 1
FLAG_FINDING = 2
FLAG_CATCH_UP = 4
# Bit 8 (a rank that overlapped its own heavy checks) is no longer set: those checks are
# paced and subtracted from the phases. Kept unused so rows of older versions still parse.
WIDTH = 21
# Field positions in a rank's row.
F_MAGIC, F_GUARD, F_STEP, F_FLAGS = 0, 1, 2, 3
F_PARAM, F_GRAD, F_FULL, F_COMMIT = 4, 5, 6, 7
F_FWD, F_BWD, F_OPT, F_OTHER, F_WAIT, F_STEP_TIME = 8, 9, 10, 11, 12, 13
F_FINDINGS, F_ROUND_WAIT, F_ROUND, F_REPLICA = 14, 15, 16, 17
# Of F_FWD, F_BWD and F_OPT, the part spent on a CPU (see StallDetector.observe).
F_FWD_CPU, F_BWD_CPU, F_OPT_CPU = 18, 19, 20
UNKNOWN = -1


class ExchangeError(Exception):
    """The exchange failed (a rank is gone, the group timed out)."""


def micro(value: float | None) -> int:
    """Seconds as integer microseconds (``UNKNOWN`` for None)."""
    return UNKNOWN if value is None else round(value * 1e6)


def seconds(value: int) -> float | None:
    """Integer microseconds back to seconds."""
    return None if value == UNKNOWN else value / 1e6


class Exchange:
    """The process's guard group and its rounds (one instance per process).

    Creating it is a collective operation when ``torch.distributed`` is initialised: every
    rank must create its first guard at the same point (the guard does it at attach).
    """

    def __init__(self, *, timeout: float | None) -> None:
        import torch.distributed as dist

        self.lock = threading.RLock()
        self.rounds = 0
        self.last_wait = 0.0
        self.group: Any = None
        self.rank = 0
        self.world = 1
        if dist.is_available() and dist.is_initialized():
            self.rank = dist.get_rank()
            self.world = dist.get_world_size()
            if self.world > 1:
                kwargs: dict[str, Any] = {"backend": "gloo"}
                if timeout is not None:
                    kwargs["timeout"] = timedelta(seconds=timeout)
                self.group = dist.new_group(**kwargs)

    @property
    def distributed(self) -> bool:
        """Whether there are other ranks to exchange with."""
        return self.world > 1

    def gather(self, row: list[int]) -> list[list[int]]:
        """All ranks' rows (this rank's own only, without other ranks).

        Raises:
            ExchangeError: The collective failed.
        """
        if len(row) != WIDTH:
            raise ValueError("exchange row of the wrong width")
        with self.lock:
            self.rounds += 1
            row = list(row)
            row[F_ROUND] = self.rounds
            if not self.distributed:
                return [row]
            import torch
            import torch.distributed as dist

            mine = torch.tensor(row, dtype=torch.int64)
            out = [torch.empty(WIDTH, dtype=torch.int64) for _ in range(self.world)]
            start = time.monotonic()
            try:
                dist.all_gather(out, mine, group=self.group)
            except (RuntimeError, ValueError) as exc:
                raise ExchangeError(f"the guard's exchange failed: {exc}") from exc
            self.last_wait = time.monotonic() - start
            return [t.tolist() for t in out]

    def broadcast_bytes(self, data: bytes | None, *, source: int = 0) -> bytes:
        """Send ``data`` from ``source`` to every rank (used for a locally generated secret)."""
        if not self.distributed:
            return data or b""
        import torch
        import torch.distributed as dist

        with self.lock:
            length = torch.tensor([len(data or b"")], dtype=torch.int64)
            dist.broadcast(length, src=source, group=self.group)
            buf = torch.zeros(int(length.item()), dtype=torch.uint8)
            if self.rank == source and data:
                buf = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            dist.broadcast(buf, src=source, group=self.group)
            return bytes(buf.numpy().tobytes())

    def close(self) -> None:
        """Release the guard's group."""
        if self.group is not None:
            import torch.distributed as dist

            try:
                if dist.is_initialized():
                    dist.destroy_process_group(self.group)
            except (RuntimeError, ValueError) as exc:  # the job may have torn down already
                logger.debug("guard: destroying the guard group: %s", exc)
            self.group = None
