"""Resource limits on untrusted input, in one frozen dataclass.

The defaults hold on hostile input (zip bombs, deep nesting, huge memo, gigantic lengths).

A limit that is hit never makes a file ``safe``: the scanner reports which limit, its value,
and gives the file an ``unknown`` (or ``error``) verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

MiB = 1024 * 1024
GiB = 1024 * MiB


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on the work the scanner does for one input file.

    Attributes:
        max_pickle_bytes: largest single pickle stream analysed (bytes).
        max_opcodes: most pickle opcodes executed symbolically for one input: every pickle,
            archive member and reading of it counts (about 1-2 s of work).
        max_memo: most memo entries in one pickle.
        max_stack_depth: deepest stack / mark nesting in one pickle.
        max_pickles_per_stream: most consecutive pickles read from one stream.
        max_member_bytes: largest decompressed archive member read into memory.
        max_total_decompressed: decompressed bytes read for one top-level file, all members.
        max_compression_ratio: decompressed/compressed ratio above which a member is a bomb.
        max_archive_members: most members looked at in one archive.
        max_nesting: deepest archive-in-archive nesting followed.
        max_header_bytes: largest safetensors / GGUF / npy header parsed.
        max_seconds: wall-clock budget for one top-level file.
        max_memory: peak memory the scanner allows itself for one input: the readers size
            their buffers by it, and the pickle machine stops (``limit.memory``) when what a
            pickle makes it keep alive passes a quarter of it.
        max_globals: most distinct imported names in one pickle.
        max_readings: most readings of one pickle analysed when loaders read its bytes
            differently (arguments that run past a FRAME).
    """

    max_pickle_bytes: int = 256 * MiB
    max_opcodes: int = 10_000_000
    max_memo: int = 5_000_000
    max_stack_depth: int = 100_000
    max_pickles_per_stream: int = 1_000
    max_member_bytes: int = 512 * MiB
    max_total_decompressed: int = 2 * GiB
    max_compression_ratio: int = 1_000
    max_archive_members: int = 100_000
    max_nesting: int = 8
    max_header_bytes: int = 100 * MiB
    max_seconds: float = 60.0
    max_memory: int = 256 * MiB
    max_globals: int = 20_000
    max_readings: int = 32

    def replace(self, **changes: Any) -> Limits:
        """Return a copy with ``changes`` applied (validated)."""
        names = {f.name for f in fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown limit(s): {', '.join(sorted(unknown))}")
        for key, value in changes.items():
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"limit {key} must be a positive number, got {value!r}")
        return replace(self, **changes)


DEFAULT_LIMITS = Limits()

__all__ = ["DEFAULT_LIMITS", "GiB", "Limits", "MiB"]
