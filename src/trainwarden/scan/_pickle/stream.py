"""Entry points: one pickle, or every pickle that repeated loads on one file would read.

A file can hold several pickles (torch's legacy format has five, ``pickle.dump`` called in a
loop many). Each ``pickle.load`` on the same handle starts where the previous one left the
file, and that place depends on the reader (see :attr:`PickleAnalysis.next_starts`): every
place any reader can stand is followed, so a pickle hidden behind a FRAME that one reader
skips and another reads is analysed too.
"""

from __future__ import annotations

import gc
import time
from collections import deque
from dataclasses import replace

from trainwarden.findings import Verdict
from trainwarden.scan._limits import DEFAULT_LIMITS, Limits
from trainwarden.scan._pickle.machine import Memo, Raw, cut, freeze, run_pickle, to_buffer
from trainwarden.scan._pickle.results import PickleAnalysis, PickleIssue

__all__ = ["analyse_pickle", "analyse_pickle_stream", "gc_paused"]


class gc_paused:  # used as a function: ``with gc_paused():``
    """Pause the cyclic garbage collector while the machine runs (restored afterwards).

    The machine allocates hundreds of thousands of small tracked objects (tuples, memo
    entries) that form no cycles, and every collection walks all of them: on a 100k-tensor
    state dict the collector took a quarter of the scan time. Pausing it lets the time bound
    hold; nothing the machine builds needs it (no reference cycles), and a run is bounded by
    ``Limits`` (opcodes, memo, memory, seconds), so garbage of other threads waits at most that
    long.

    A class rather than a ``@contextmanager`` generator: it is entered for every file and
    every pickle, and the generator machinery cost ~2 % of a scan of small files.
    """

    __slots__ = ("_paused",)

    def __init__(self) -> None:
        self._paused = False

    def __enter__(self) -> None:
        # Already paused (a nested call, or the caller's choice): leave it as it is.
        if gc.isenabled():
            gc.disable()
            self._paused = True

    def __exit__(self, *exc: object) -> None:
        if self._paused:
            gc.enable()


def analyse_pickle(
    data: bytes | bytearray | memoryview,
    start: int = 0,
    *,
    limits: Limits = DEFAULT_LIMITS,
    deadline: float | None = None,
    max_ops: int | None = None,
) -> PickleAnalysis:
    """Analyse the pickle that starts at ``start``, as one ``pickle.load`` would read it.

    Args:
        data: the buffer (bytes, or a memoryview of a mapped file: nothing is copied).
        start: offset of the first opcode.
        limits: resource bounds; hitting one yields a ``limit.*`` issue, never an exception.
        deadline: absolute ``time.monotonic()`` value after which the run stops
            (``limit.seconds``); by default ``limits.max_seconds`` from now.
        max_ops: opcodes left to spend (``limits.max_opcodes`` by default).

    Returns:
        The analysis. Never raises on bad input: malformed data is an issue.
    """
    if deadline is None:
        deadline = time.monotonic() + limits.max_seconds
    with gc_paused():
        buf, end, real_end = cut(to_buffer(data), start, limits)
        raw, _ = run_pickle(buf, start, end, real_end, limits, deadline, max_ops=max_ops)
        return freeze([raw])[0]


def analyse_pickle_stream(
    data: bytes | bytearray | memoryview,
    start: int = 0,
    *,
    limits: Limits = DEFAULT_LIMITS,
    max_pickles: int | None = None,
    deadline: float | None = None,
    max_ops: int | None = None,
) -> tuple[list[PickleAnalysis], int]:
    """Analyse consecutive pickles, as repeated ``pickle.load`` calls on one file read them.

    Each pickle is read as a fresh unpickler reads it (``pickle.load`` and ``torch.load``
    create one per load); the reading of an ``Unpickler`` reused for every load (its memo
    kept) is attached as ``shared_memo`` from the second pickle on.

    Args:
        data: the buffer.
        start: offset of the first pickle.
        limits: resource bounds (``max_pickles_per_stream`` caps the pickles analysed).
        max_pickles: how many loads the format performs in a row (torch's legacy format: 5);
            pickles further along a chain of loads are not read.
        deadline: as for :func:`analyse_pickle`.
        max_ops: opcodes left to spend on the whole stream (``limits.max_opcodes`` by
            default); each analysis says what it cost (``work``).

    Returns:
        The analyses in the order they were reached, and the offset where pickle data stops
        (trailing data begins there). A continuation whose pickle fails before any import is
        trailing data (no loader can run code from it) and is not in the list; reading goes
        on after every pickle some loader completes.
    """
    if deadline is None:
        deadline = time.monotonic() + limits.max_seconds
    budget = limits.max_opcodes if max_ops is None else max_ops
    with gc_paused():
        return _analyse_stream(data, start, limits, max_pickles, deadline, budget)


def _inert(raw: Raw) -> bool:
    # See PickleAnalysis.inert: a persistent id alone runs nothing.
    return not raw.complete and raw.first_import is None and not raw.limited


class _Node:
    """One pickle reached by the walk, and what the readers that reach it carry in."""

    __slots__ = ("depth", "frame_end", "memo", "start", "stop_end")

    def __init__(
        self, start: int, depth: int, memo: Memo | None, frame_end: int | None, stop_end: bool
    ) -> None:
        self.start = start
        self.depth = depth
        self.memo = memo  # the memo a reused unpickler carries here (None for the first)
        self.frame_end = frame_end  # the exact frame buffer a reused C unpickler still holds
        self.stop_end = stop_end  # reached right after the previous STOP (not a frame end)


def _analyse_stream(
    data: bytes | bytearray | memoryview,
    start: int,
    limits: Limits,
    max_pickles: int | None,
    deadline: float,
    budget: int,
) -> tuple[list[PickleAnalysis], int]:
    cap = limits.max_pickles_per_stream
    depth_cap = max_pickles if max_pickles is not None else cap
    analyses: list[PickleAnalysis] = []
    # The reading of one Unpickler reused for every load: its memo is kept between loads,
    # and MEMOIZE numbers entries by the memo's size, so from the second pickle on it can
    # read different names than a fresh unpickler (what pickle.load and torch.load use).
    # `shared[i]` is that reading where it can differ, else None.
    shared: list[Raw | None] = []
    whole = to_buffer(data)
    total = len(whole)
    data_end = start
    hit_cap = False
    seen = {start}
    queue = deque([_Node(start, 1, None, None, True)])
    while queue:
        node = queue.popleft()
        pos = node.start
        if pos >= total:
            continue  # end of file: the next load raises EOFError
        if len(analyses) >= cap:
            hit_cap = True
            break
        buf, end, real_end = cut(whole, pos, limits)
        raw, memo = run_pickle(buf, pos, end, real_end, limits, deadline, max_ops=budget)
        budget -= raw.ops_total
        other: Raw | None = None
        carried: Memo | None = None
        if node.memo is not None and len(node.memo):
            if raw.memo_dependent:
                carry = node.memo.copy()
                frame_end = node.frame_end if node.stop_end else None
                other, carried = run_pickle(
                    buf, pos, end, real_end, limits, deadline, carry, frame_end, budget
                )
                budget -= other.ops_total
            else:
                # This pickle neither memoizes nor misses: its PUTs and GETs read the same
                # entries either way, and the reused memo gains the same entries.
                carried = node.memo.copy()
                for idx, value in enumerate(memo.dense):
                    carried.put(idx, value)
                for idx, value in memo.sparse.items():
                    carried.put(idx, value)
        else:
            carried = memo
        if _inert(raw) and (other is None or _inert(other)):
            # The loader fails here before it could import or call anything: trailing data.
            continue
        analyses.append(freeze([raw])[0])
        shared.append(other)
        data_end = max(data_end, raw.end, *raw.next_starts)
        if node.depth >= depth_cap:
            hit_cap = hit_cap or any(nxt < total for nxt in raw.next_starts)
            continue
        for nxt in raw.next_starts:
            if nxt not in seen:
                seen.add(nxt)
                queue.append(_Node(nxt, node.depth + 1, carried, raw.frame_end, nxt == raw.end))
    for i, other in enumerate(shared):
        if other is not None:
            analyses[i] = replace(analyses[i], shared_memo=freeze([other])[0])
    return _finish(analyses, data_end, hit_cap=hit_cap, limits=limits)


def _finish(
    analyses: list[PickleAnalysis], pos: int, *, hit_cap: bool, limits: Limits
) -> tuple[list[PickleAnalysis], int]:
    if hit_cap and analyses:
        last = analyses[-1]
        issue = PickleIssue(
            "limit.pickles-per-stream",
            "more pickles follow than the limit allows; the rest were not analysed",
            pos,
            Verdict.UNKNOWN,
            f"max_pickles_per_stream={limits.max_pickles_per_stream}",
        )
        analyses[-1] = replace(last, issues=(*last.issues, issue))
    return analyses, pos
