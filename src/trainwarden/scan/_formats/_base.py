"""Shared plumbing of the format readers: random-access byte sources and the scan context.

Readers see bytes only through a :class:`Blob`, so a tensor payload is never read unless a
reader asks for exactly those bytes, and every finding goes through one :class:`Context`.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from trainwarden.findings import Finding, Location, Severity, Verdict
from trainwarden.scan._limits import Limits

if TYPE_CHECKING:
    from trainwarden.scan._policy import Policy

__all__ = [
    "Blob",
    "Context",
    "Dispatcher",
    "FileBlob",
    "MemoryBlob",
    "ScanAborted",
    "SubBlob",
    "join_member",
]


# Findings listed per rule and input file; more are summarised in one (Context.finish).
_MAX_PER_RULE = 50


class ScanAborted(Exception):
    """Internal: stop analysing the current top-level file (a finding says why)."""


class Blob:
    """Random-access, read-only bytes of known size."""

    size: int = 0

    def read(self, offset: int, length: int) -> bytes | memoryview:
        """Return up to ``length`` bytes at ``offset`` (fewer at the end, none past it)."""
        raise NotImplementedError

    def head(self, length: int = 4096) -> bytes:
        """The first ``length`` bytes as ``bytes``."""
        return bytes(self.read(0, length))

    def key(self) -> tuple[object, ...]:
        """Identifies these bytes within one top-level file (equal keys: equal bytes)."""
        return ("blob", id(self))


class MemoryBlob(Blob):
    """Bytes already in memory; reads are zero-copy views."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        self.size = len(self._view)

    def read(self, offset: int, length: int) -> bytes | memoryview:
        """Return a slice of the buffer (a view when the buffer is a memoryview)."""
        if offset >= self.size or length <= 0:
            return b""
        if isinstance(self._view, bytes):
            return memoryview(self._view)[offset : offset + length]
        return self._view[offset : offset + length]

    @property
    def data(self) -> bytes | memoryview:
        """The whole buffer."""
        return self._view

    def key(self) -> tuple[object, ...]:
        """The SHA-256 of the bytes (computed once): decompressed copies of one member match."""
        digest = getattr(self, "_digest", None)
        if digest is None:
            digest = hashlib.sha256(self._view).digest()
            self._digest = digest
        return ("memory", digest)


class FileBlob(Blob):
    """A file read with ``pread`` on demand, so untouched regions (tensors) cost nothing.

    We do not mmap: a file truncated by someone else while we read it would kill the
    process with SIGBUS, while ``pread`` simply returns fewer bytes.
    """

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self.size = size
        self.bytes_read = 0

    def key(self) -> tuple[object, ...]:
        """The whole file."""
        return ("file", self.size)

    def read(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset`` (fewer at end of file)."""
        if offset >= self.size or length <= 0:
            return b""
        length = min(length, self.size - offset)
        chunks: list[bytes] = []
        got = 0
        while got < length:
            chunk = os.pread(self._fd, length - got, offset + got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        self.bytes_read += got
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class SubBlob(Blob):
    """A window ``[start, start + size)`` of another blob (a stored archive member)."""

    def __init__(self, parent: Blob, start: int, size: int) -> None:
        self._parent = parent
        self._start = start
        self.size = max(0, min(size, parent.size - start))

    def key(self) -> tuple[object, ...]:
        """The parent's key and the window: members that share their data share a key."""
        return ("span", self._parent.key(), self._start, self.size)

    def read(self, offset: int, length: int) -> bytes | memoryview:
        """Read from the parent, clamped to the window."""
        if offset >= self.size or length <= 0:
            return b""
        return self._parent.read(self._start + offset, min(length, self.size - offset))


def join_member(parent: str | None, name: str) -> str:
    """Member chain ``parent!name`` (``name`` alone at top level)."""
    return f"{parent}!{name}" if parent else name


class Dispatcher(Protocol):
    """Routes bytes to the reader of their format (``_dispatch`` provides the one in use).

    Readers of containers (archives, compressed streams, nested payloads) hand their members
    back through the context's dispatcher, so no reader imports the dispatcher module: the
    dispatcher sits above every reader.
    """

    def analyse(self, ctx: Context, blob: Blob, member: str | None, depth: int) -> str:
        """Analyse ``blob`` (an archive member named ``member``); return its format."""
        ...

    def analyse_unrecognised(
        self, ctx: Context, blob: Blob, member: str | None, head: bytes, depth: int
    ) -> str:
        """Judge bytes no magic number names (the pickle rule); return their format."""
        ...


@dataclass
class Context:
    """Everything one top-level file's analysis shares: policy, limits, budgets, findings."""

    path: str
    policy: Policy
    limits: Limits
    deadline: float = 0.0
    findings: list[Finding] = field(default_factory=list)
    decompressed: int = 0
    members_seen: int = 0
    details: dict[str, object] = field(default_factory=dict)
    _expired: bool = False
    _ticks: int = 0
    sniffed: str = "data"  # the top-level format, kept for a report cut short by a limit
    depth: int = 0  # nesting depth of the member being analysed (set by the dispatcher)
    dispatcher: Dispatcher | None = None  # set by the dispatcher on its first call
    input_size: int = 0  # bytes of the top-level file (scales the decompression budget)
    opcodes_used: int = 0  # pickle opcodes executed for this file (Limits.max_opcodes)
    # Findings of one rule past _MAX_PER_RULE are counted, not listed (a hostile archive can
    # repeat one trick 100,000 times); finish() adds one finding that says how many.
    _per_rule: dict[str, int] = field(default_factory=dict)
    _dropped: dict[str, list[Finding]] = field(default_factory=dict)
    # Members already analysed (by Blob.key): one span referenced by many archive entries,
    # or one payload nested many times, is analysed once (zip fan-out bombs).
    analysed: dict[tuple[object, ...], str] = field(default_factory=dict)

    def analyse(self, blob: Blob, member: str | None, depth: int) -> str:
        """Hand a member back to the dispatcher (see :class:`Dispatcher`)."""
        assert self.dispatcher is not None, "the dispatcher sets itself before any reader runs"
        return self.dispatcher.analyse(self, blob, member, depth)

    def analyse_unrecognised(
        self, blob: Blob, member: str | None, head: bytes, depth: int = 0
    ) -> str:
        """Apply the pickle rule to bytes no magic number names (see :class:`Dispatcher`)."""
        assert self.dispatcher is not None, "the dispatcher sets itself before any reader runs"
        return self.dispatcher.analyse_unrecognised(self, blob, member, head, depth)

    def __post_init__(self) -> None:
        if not self.deadline:
            self.deadline = time.monotonic() + self.limits.max_seconds

    def location(self, member: str | None, offset: int | None = None) -> Location:
        """A location in this file."""
        return Location(self.path, member, offset)

    def add(
        self,
        rule_id: str,
        severity: Severity,
        message: str,
        member: str | None,
        *,
        verdict: Verdict,
        offset: int | None = None,
        evidence: str | None = None,
    ) -> None:
        """Record a finding (past _MAX_PER_RULE of one rule, only counted)."""
        self.record(
            Finding(
                rule_id=rule_id,
                severity=severity,
                message=message,
                location=Location(self.path, member, offset),
                evidence=evidence,
                verdict=verdict,
            )
        )

    def record(self, finding: Finding) -> None:
        """Record a finding made elsewhere (the policy's), under the same per-rule cap."""
        rule_id = finding.rule_id
        seen = self._per_rule.get(rule_id, 0)
        self._per_rule[rule_id] = seen + 1
        if seen < _MAX_PER_RULE:
            self.findings.append(finding)
            return
        dropped = self._dropped.setdefault(rule_id, [finding, finding])
        # Keep the first dropped one (for its location) and the worst (for the verdict).
        worst = dropped[1]
        if (finding.verdict.rank, finding.severity) > (worst.verdict.rank, worst.severity):
            dropped[1] = finding

    def finish(self) -> None:
        """Add one summary finding per rule whose findings were only counted."""
        for rule_id, (first, worst) in self._dropped.items():
            more = self._per_rule[rule_id] - _MAX_PER_RULE
            self.findings.append(
                Finding(
                    rule_id=rule_id,
                    severity=worst.severity,
                    message=f"{more} more finding(s) of this rule not listed; the first at "
                    f"this location: {first.message}",
                    location=first.location,
                    evidence=first.evidence,
                    verdict=worst.verdict,
                )
            )
        self._dropped.clear()

    def unknown(
        self,
        rule_id: str,
        message: str,
        member: str | None,
        *,
        offset: int | None = None,
        evidence: str | None = None,
        severity: Severity = Severity.MEDIUM,
    ) -> None:
        """Record a finding that keeps the file from being called safe."""
        self.add(
            rule_id,
            severity,
            message,
            member,
            verdict=Verdict.UNKNOWN,
            offset=offset,
            evidence=evidence,
        )

    def info(
        self, rule_id: str, message: str, member: str | None, *, evidence: str | None = None
    ) -> None:
        """Record an informational finding (does not change the verdict)."""
        self.add(rule_id, Severity.INFO, message, member, verdict=Verdict.SAFE, evidence=evidence)

    def check_time(self, member: str | None) -> None:
        """Abort the file's analysis once its time budget is spent (reported once)."""
        # Reading the clock costs microseconds on some VMs; per-member calls are cheap
        # steps, so every 16th call is enough to keep the overrun small.
        self._ticks += 1
        if self._ticks & 15 != 1 or time.monotonic() <= self.deadline:
            return
        if not self._expired:
            self._expired = True
            self.unknown(
                "limit.seconds",
                f"time budget of {self.limits.max_seconds:g} s per file spent; "
                "the rest of the file was not analysed",
                member,
                evidence=f"max_seconds={self.limits.max_seconds:g}",
            )
        raise ScanAborted

    @property
    def opcodes_left(self) -> int:
        """Pickle opcodes this file may still execute (every pickle, member and reading)."""
        return max(0, self.limits.max_opcodes - self.opcodes_used)

    @property
    def decompression_budget(self) -> int:
        """Decompressed bytes this file may produce: scaled to its size, within the limit.

        A member can expand up to ``max_compression_ratio`` times its compressed size; more
        than that for the whole file means compressed data is read again and again (entries
        sharing one deflate stream, archives nested in archives), a bomb. Small files get
        at least 64 MiB (a little model zipped with a high ratio is not a bomb).
        """
        limit = self.limits.max_total_decompressed
        if not self.input_size:
            return limit
        return min(limit, max(64 << 20, self.limits.max_compression_ratio * self.input_size))

    def charge(self, nbytes: int, member: str | None) -> None:
        """Count decompressed bytes against the per-file budget; abort when it is spent."""
        self.decompressed += nbytes
        budget = self.decompression_budget
        if self.decompressed > budget:
            self.unknown(
                "limit.decompressed",
                f"more decompressed data than this file's budget ({budget} bytes: its size "
                f"times max_compression_ratio, at most max_total_decompressed) allows "
                "(possible decompression bomb); the rest was not analysed",
                member,
                evidence=f"max_total_decompressed={self.limits.max_total_decompressed}",
            )
            raise ScanAborted
