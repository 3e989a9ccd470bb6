"""Streaming summaries of per-rank telemetry (``RUN_DIR/telemetry/rank-<R>.jsonl``).

A 100k-step, 64-rank run writes 6.4 million lines (about 1.5 GB). They are never held in
memory: each file is read line by line and folded into a fixed number of step bins (count,
min, max, median and mean of every metric per bin), so the report stays small and the memory
bounded whatever the run's length. The files are written by the job itself, so every line is
hostile input: bad lines are counted and named, never fatal.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import json.decoder
import json.scanner
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any

from trainwarden._fs import open_regular
from trainwarden.errors import InputError

__all__ = [
    "METRICS",
    "Bins",
    "RankTelemetry",
    "Telemetry",
    "read_telemetry",
]

#: Metrics summarised per bin. ``work`` is derived: the rank's own work in a step
#: (``fwd + bwd + opt``, else ``step_time - wait``), the number that tells a slow (sleeping)
#: rank from one that only waits for a slow peer in a collective.
METRICS = (
    "fwd",
    "bwd",
    "opt",
    "wait",
    "step_time",
    "work",
    "loss",
    "grad_norm",
    "residual",
    "lr",
)
# The fields read from each line, in the order of the tuple a line is reduced to.
_FIELDS = (
    "step",
    "rank",
    "t",
    "checked",
    "data",
    "fwd",
    "bwd",
    "opt",
    "wait",
    "step_time",
    "loss",
    "grad_norm",
    "residual",
    "lr",
)
_GET = itemgetter(*_FIELDS)
_RANK_FILE = re.compile(r"rank-(0|[1-9][0-9]{0,6})\.jsonl")
#: Longest line accepted (a guard line is ~250 bytes); longer ones are skipped as bad, read
#: in bounded pieces so a file of one 10 GB line cannot exhaust memory.
MAX_LINE = 64 << 10
#: Most rank files read; more are listed as not read.
MAX_RANKS = 8192
#: Below this many bytes of telemetry, files are read in this process (starting worker
#: processes costs more than it saves).
PARALLEL_MIN_BYTES = 64 << 20
# Bad lines named in the report per file (all are counted).
_MAX_EXAMPLES = 5
_CHUNK = 1 << 20
# Bytes parsed at a time (lines are cut from these blocks; a block's lines are held at once).
_BLOCK = 256 << 10

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class Bins:
    """Statistics of one metric of one rank, per step bin (``None`` where a bin had no value).

    Attributes:
        count: Finite values per bin.
        low: Smallest value per bin.
        high: Largest value per bin.
        median: Median per bin.
        mean: Mean per bin.
        nonfinite: Values that were NaN or infinite (a diverged loss), all bins together.
        first_nonfinite_step: The first step that had one.
    """

    count: tuple[int, ...]
    low: tuple[float | None, ...]
    high: tuple[float | None, ...]
    median: tuple[float | None, ...]
    mean: tuple[float | None, ...]
    nonfinite: int = 0
    first_nonfinite_step: int | None = None

    @property
    def values(self) -> int:
        """Finite values summarised."""
        return sum(self.count)

    def overall_high(self) -> float | None:
        """Largest value over all bins."""
        highs = [v for v in self.high if v is not None]
        return max(highs) if highs else None


@dataclass(frozen=True, slots=True)
class RankTelemetry:
    """What one rank's telemetry file held, binned by step.

    Attributes:
        rank: The rank, from the file name.
        path: The file.
        size: Bytes read.
        sha256: ``sha256:<hex>`` of the bytes read (compared with ``guard.telemetry``).
        lines: Lines read (complete or not).
        records: Lines that were valid step records.
        bad: Lines that were not (not JSON, not an object, no integer ``step``, too long,
            another rank's, a torn final line).
        bad_examples: The first few bad lines as ``line N: reason``.
        first_step: Smallest step seen.
        last_step: Largest step seen.
        first_time: ``t`` of the first record (UNIX time).
        last_time: ``t`` of the last record.
        checked: Coordinates verified by the sampled update check, all steps together.
        sampled_steps: Steps where the update check ran (``checked`` > 0).
        out_of_order: Records whose step was not above the one before (resumed runs,
            duplicated or edited lines).
        metrics: Per metric (:data:`METRICS`), its bins.
        data_digests: Per bin, a digest of the data-order fingerprints of its steps (for the
            comparison with a clean run); ``None`` where the bin had none.
        segment_digests: ``sha256:`` of each byte range asked for (``segments``), for the
            ranges the file is long enough to hold.
        error: Why the file could not be read at all, else ``None``.
    """

    rank: int
    path: str
    size: int = 0
    sha256: str | None = None
    lines: int = 0
    records: int = 0
    bad: int = 0
    bad_examples: tuple[str, ...] = ()
    first_step: int | None = None
    last_step: int | None = None
    first_time: float | None = None
    last_time: float | None = None
    checked: int = 0
    sampled_steps: int = 0
    out_of_order: int = 0
    metrics: Mapping[str, Bins] = field(default_factory=dict)
    data_digests: tuple[str | None, ...] = ()
    segment_digests: tuple[str, ...] = ()
    error: str | None = None

    def metric(self, name: str) -> Bins | None:
        """The bins of ``name``, or ``None`` when the file had no such values."""
        bins = self.metrics.get(name)
        return bins if bins is not None and bins.values else None


@dataclass(frozen=True, slots=True)
class Telemetry:
    """Every rank's telemetry, on one common grid of step bins.

    Attributes:
        directory: The telemetry directory.
        width: Steps per bin (bin ``i`` covers steps ``i*width+1 .. (i+1)*width``).
        bins: Number of bins.
        ranks: Per rank, sorted by rank.
        notes: What could not be read, one sentence each.
    """

    directory: str
    width: int
    bins: int
    ranks: tuple[RankTelemetry, ...]
    notes: tuple[str, ...] = ()

    def bin_steps(self, index: int) -> tuple[int, int]:
        """First and last step of bin ``index``."""
        return index * self.width + 1, (index + 1) * self.width

    def bin_of(self, step: int) -> int:
        """The bin holding ``step`` (clamped to the grid)."""
        return min(max(0, (step - 1) // self.width), max(0, self.bins - 1))

    @property
    def records(self) -> int:
        """Valid records over all ranks."""
        return sum(r.records for r in self.ranks)

    def rank(self, rank: int) -> RankTelemetry | None:
        """The telemetry of ``rank``, if any."""
        for r in self.ranks:
            if r.rank == rank:
                return r
        return None


def read_telemetry(
    directory: str | os.PathLike[str],
    *,
    bins: int = 200,
    width: int | None = None,
    segments: Mapping[int, Sequence[int]] | None = None,
    workers: int = 1,
    progress: ProgressCallback | None = None,
) -> Telemetry:
    """Summarise every ``rank-<R>.jsonl`` under ``directory`` into ``bins`` step bins.

    Args:
        directory: The run's ``telemetry/`` directory.
        bins: Bins on the step axis (the resolution of every plot and of the heatmap).
        width: Steps per bin, instead of what ``bins`` implies (to put two runs on one grid
            for a comparison); the number of bins then follows from the run's length, up to
            ``4 * bins``.
        segments: Per rank, the byte counts the guard sessions that wrote the file attested
            (``guard.telemetry`` ``bytes``, in order): each range is hashed on its own.
        workers: Processes reading files in parallel (files are independent; worth it only
            for hundreds of MB). Started with ``spawn``: a script calling this with
            ``workers > 1`` needs an ``if __name__ == "__main__"`` guard.
        progress: Called with ``(bytes_done, bytes_total)`` as files are read.

    Returns:
        The summary; a directory that is missing or empty gives no ranks and a note.
    """
    if bins < 1:
        raise InputError(f"bins must be at least 1, not {bins}")
    root = Path(directory)
    notes: list[str] = []
    files, listing_notes = _rank_files(root)
    notes.extend(listing_notes)
    if not files:
        return Telemetry(str(root), 1, 0, (), tuple(notes))
    # First pass: lines and last step of each file (newline counting runs at memory speed),
    # so every rank is binned on one common grid without holding anything.
    sizes: dict[int, int] = {}
    results: list[RankTelemetry] = []
    readable: list[tuple[int, Path]] = []
    span = 1
    for rank, path in files:
        try:
            lines, last_step, size = _survey(path)
        except InputError as exc:
            results.append(RankTelemetry(rank=rank, path=str(path), error=exc.diagnostics()))
            continue
        sizes[rank] = size
        readable.append((rank, path))
        span = max(span, lines, last_step or 0)
    if width is None or width < 1:
        width = max(1, math.ceil(span / bins))
    nbins = min(max(1, math.ceil(span / width)), 4 * bins)
    total = sum(sizes.values()) or 1
    jobs = [
        (rank, str(path), width, nbins, tuple(segments.get(rank, ()) if segments else ()))
        for rank, path in readable
    ]
    done = 0
    for result in _map(
        _summarise_file, jobs, workers=workers if total >= PARALLEL_MIN_BYTES else 1
    ):
        results.append(result)
        done += result.size
        if progress is not None:
            progress(done, total)
    results.sort(key=lambda r: r.rank)
    for r in results:
        if r.error is not None:
            notes.append(f"telemetry of rank {r.rank} could not be read: {r.error}")
        elif r.bad:
            notes.append(
                f"telemetry of rank {r.rank}: {r.bad} of {r.lines} line(s) were not valid "
                f"records and were skipped ({'; '.join(r.bad_examples)})"
            )
    return Telemetry(str(root), width, nbins, tuple(results), tuple(notes))


def _rank_files(root: Path) -> tuple[list[tuple[int, Path]], list[str]]:
    notes: list[str] = []
    try:
        if root.is_symlink() or not root.is_dir():
            what = "a symlink" if root.is_symlink() else "missing"
            return [], [f"no telemetry: {root} is {what}"]
        names = sorted(p.name for p in root.iterdir())
    except OSError as exc:
        return [], [f"telemetry directory {root} cannot be listed: {exc.strerror or exc}"]
    files: list[tuple[int, Path]] = []
    other = []
    for name in names:
        match = _RANK_FILE.fullmatch(name)
        if match is None:
            other.append(name)
            continue
        files.append((int(match.group(1)), root / name))
    files.sort()
    if other:
        shown = ", ".join(repr(n) for n in other[:5])
        more = f" and {len(other) - 5} more" if len(other) > 5 else ""
        notes.append(f"telemetry directory holds files that are not rank-<R>.jsonl: {shown}{more}")
    if len(files) > MAX_RANKS:
        notes.append(f"{len(files) - MAX_RANKS} rank file(s) beyond the first {MAX_RANKS} not read")
        files = files[:MAX_RANKS]
    if not files:
        notes.append(f"no telemetry files (rank-<R>.jsonl) in {root}")
    return files, notes


def _survey(path: Path) -> tuple[int, int | None, int]:
    """Lines, last step (from the last complete line) and size of one file."""
    fd = open_regular(path, what="telemetry file")
    try:
        lines = 0
        size = 0
        tail = b""
        while True:
            chunk = os.read(fd, _CHUNK)
            if not chunk:
                break
            size += len(chunk)
            lines += chunk.count(b"\n")
            tail = (tail + chunk)[-4096:]
        if tail and not tail.endswith(b"\n"):
            lines += 1
    except OSError as exc:
        raise InputError(f"cannot read telemetry file {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    last_step = None
    for raw in reversed(tail.split(b"\n")):
        match = re.search(rb'"step"\s*:\s*([0-9]{1,12})[,}\s]', raw)
        if match:
            last_step = int(match.group(1))
            break
    # A hostile file could claim step 10**12 on its last line and blow the grid up to
    # nothing but empty bins; the step span used for the grid is bounded by the line count.
    if last_step is not None and last_step > 4 * max(lines, 1) + 1000:
        last_step = None
    return lines, last_step, size


def _map(
    fn: Callable[[_Job], RankTelemetry],
    jobs: Sequence[_Job],
    *,
    workers: int,
) -> Iterable[RankTelemetry]:
    if workers <= 1 or len(jobs) < 2:
        return map(fn, jobs)
    import concurrent.futures
    import multiprocessing

    # spawn, not fork: the caller may be a training process with threads (torch, NCCL).
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn")
    )

    def results() -> Iterable[RankTelemetry]:
        with pool:
            yield from pool.map(fn, jobs, chunksize=1)

    return results()


_Job = tuple[int, str, int, int, tuple[int, ...]]


def _summarise_file(job: _Job) -> RankTelemetry:
    rank, path, width, nbins, segments = job
    try:
        return _Summariser(rank, width, nbins, segments).run(path)
    except InputError as exc:
        return RankTelemetry(rank=rank, path=path, error=str(exc))


_NUMBER = (float, int)
_BLANK = frozenset({" ", "\t", "\r"})
# json's own scanner (the C one when available), as json.loads uses it: same grammar, same
# floats, NaN and Infinity accepted as json.loads does (they are counted as non-finite).
# (typeshed types make_scanner as a class taking itself; it takes the decoder.)
_DECODER: Any = json.decoder.JSONDecoder()
_SCAN: Callable[[str, int], tuple[Any, int]] = json.scanner.make_scanner(_DECODER)


def _to_float(value: float) -> float:
    # JSON integers are unbounded: one with 400 digits must not raise OverflowError.
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _work(fwd: Any, bwd: Any, opt: Any, step_time: Any, wait: Any) -> Any:
    """Own work of a step: forward + backward + optimizer, else step time minus waits."""
    if type(fwd) in _NUMBER and type(bwd) in _NUMBER and type(opt) in _NUMBER:
        return fwd + bwd + opt
    if type(step_time) in _NUMBER and type(wait) in _NUMBER:
        return step_time - wait
    return None


def _finite(value: object) -> float | None:
    if type(value) not in _NUMBER:
        return None
    number = _to_float(value)  # type: ignore[arg-type]
    return number if math.isfinite(number) else None


class _Summariser:
    """Folds one rank's lines into bins; holds only the lines of bins still open."""

    def __init__(self, rank: int, width: int, nbins: int, segments: tuple[int, ...] = ()) -> None:
        self.rank = rank
        # Ends of the byte ranges each guard session attested (its bytes written).
        self.bounds = list(itertools.accumulate(segments))
        self.width = width
        self.nbins = nbins
        self.stats: dict[str, list[Any]] = {
            m: [[0] * nbins, [None] * nbins, [None] * nbins, [None] * nbins, [None] * nbins]
            for m in METRICS
        }
        self.nonfinite: dict[str, int] = dict.fromkeys(METRICS, 0)
        self.first_nonfinite: dict[str, int | None] = dict.fromkeys(METRICS)
        self.open: dict[int, list[tuple[Any, ...]]] = {}
        # The bin being filled, for the common case of lines in step order.
        self.current = -2
        self.bucket: list[tuple[Any, ...]] = []
        self.data_digests: list[str | None] = [None] * nbins
        self.closed: set[int] = set()
        self.lines = 0
        self.records = 0
        self.bad = 0
        self.examples: list[str] = []
        self.min_step = 1 << 62
        self.max_step = -1
        self.prev_step = -1
        self.first_time: float | None = None
        self.last_time: float | None = None
        self.checked = 0
        self.sampled = 0
        self.out_of_order = 0

    def run(self, path: str) -> RankTelemetry:
        digest = hashlib.sha256()
        segment = hashlib.sha256()
        segment_digests: list[str] = []
        size = 0
        fd = open_regular(path, what="telemetry file")
        # Read in large chunks and cut them into lines here: a line is bounded (MAX_LINE),
        # so a file of one endless line costs one chunk of memory, never the file.
        pending = b""
        skipping = False  # inside a line already reported as too long
        try:
            while chunk := os.read(fd, _BLOCK):
                digest.update(chunk)
                # Each attested byte range is hashed on its own, as each guard session
                # hashed what it appended.
                offset = 0
                while len(segment_digests) < len(self.bounds):
                    end = self.bounds[len(segment_digests)]
                    if size + len(chunk) < end:
                        break
                    segment.update(chunk[offset : end - size])
                    segment_digests.append("sha256:" + segment.hexdigest())
                    segment = hashlib.sha256()
                    offset = end - size
                segment.update(chunk[offset:])
                size += len(chunk)
                start = 0
                if skipping:
                    newline = chunk.find(b"\n")
                    if newline < 0:
                        continue
                    start, skipping = newline + 1, False
                last = chunk.rfind(b"\n", start)
                if last < 0:
                    pending += chunk[start:]
                else:
                    self._block(pending + chunk[start:last])
                    pending = chunk[last + 1 :]
                if len(pending) > MAX_LINE:
                    self.lines += 1
                    self._bad(f"line {self.lines}: longer than {MAX_LINE} bytes")
                    pending, skipping = b"", True
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc
        finally:
            os.close(fd)
        if pending:
            # A torn final line: an append in progress or a crash mid-write.
            self.lines += 1
            self._bad(f"line {self.lines}: incomplete final line")
        for index in sorted(self.open):
            self._close(index)
        return RankTelemetry(
            rank=self.rank,
            path=path,
            size=size,
            sha256="sha256:" + digest.hexdigest(),
            segment_digests=tuple(segment_digests),
            lines=self.lines,
            records=self.records,
            bad=self.bad,
            bad_examples=tuple(self.examples),
            first_step=self.min_step if self.records else None,
            last_step=self.max_step if self.records else None,
            first_time=self.first_time,
            last_time=self.last_time,
            checked=self.checked,
            sampled_steps=self.sampled,
            out_of_order=self.out_of_order,
            metrics={
                m: Bins(
                    count=tuple(s[0]),
                    low=tuple(s[1]),
                    high=tuple(s[2]),
                    median=tuple(s[3]),
                    mean=tuple(s[4]),
                    nonfinite=self.nonfinite[m],
                    first_nonfinite_step=self.first_nonfinite[m],
                )
                for m, s in self.stats.items()
            },
            data_digests=tuple(self.data_digests),
        )

    def _bad(self, reason: str) -> None:
        self.bad += 1
        if len(self.examples) < _MAX_EXAMPLES:
            self.examples.append(reason)

    def _block(self, block: bytes) -> None:
        """Complete lines (without their final newline), decoded and parsed one by one."""
        try:
            lines = block.decode("utf-8").split("\n")
        except UnicodeDecodeError:
            for raw in block.split(b"\n"):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    self.lines += 1
                    self._bad(f"line {self.lines}: not UTF-8")
                    continue
                self.lines += 1
                self._line(text)
            return
        for line in lines:
            self.lines += 1
            self._line(line)

    def _line(self, line: str) -> None:
        if len(line) > MAX_LINE:
            self._bad(f"line {self.lines}: longer than {MAX_LINE} bytes")
            return
        # The C scanner behind json.loads, called directly: it parses exactly one value from
        # this one line (what follows it must be blank), at a third of json.loads' cost.
        if line[:1] in _BLANK:
            line = line.lstrip(" \t\r")
        try:
            obj, end = _SCAN(line, 0)
        except (StopIteration, ValueError, RecursionError):
            self._bad(f"line {self.lines}: not JSON")
            return
        if end != len(line) and line[end:].strip(" \t\r"):
            self._bad(f"line {self.lines}: not JSON")
            return
        if type(obj) is not dict:
            self._bad(f"line {self.lines}: not a JSON object")
            return
        try:
            row = _GET(obj)
        except KeyError:  # fields may be missing; they read as None
            row = tuple(obj.get(f) for f in _FIELDS)
        step = row[0]
        if type(step) is not int or step < 0:
            self._bad(f"line {self.lines}: no integer step")
            return
        rank = row[1]
        if rank is not None and (type(rank) is not int or rank != self.rank):
            # A line of another rank in this rank's file is either a bug or a forgery;
            # either way it must not be plotted as this rank's.
            self._bad(f"line {self.lines}: rank {rank!r} in the file of rank {self.rank}")
            return
        self.records += 1
        if step <= self.prev_step:
            self.out_of_order += 1
        self.prev_step = step
        if step < self.min_step:
            self.min_step = step
        if step > self.max_step:
            self.max_step = step
        index = (step - 1) // self.width
        if index == self.current:
            self.bucket.append(row)
            return
        index = min(max(0, index), self.nbins - 1)
        if index in self.closed:
            # A record for a bin already summarised (lines out of order): it counts as a
            # record, but the bin's statistics are not reopened.
            return
        bucket = self.open.get(index)
        if bucket is None:
            bucket = self.open[index] = []
            # Bins are filled in step order; anything two bins back is complete.
            for old in [i for i in self.open if i < index - 1]:
                self._close(old)
        self.current, self.bucket = index, bucket
        bucket.append(row)

    def _close(self, index: int) -> None:
        rows = self.open.pop(index, [])
        self.closed.add(index)
        if index == self.current:
            self.current, self.bucket = -2, []
        if not rows:
            return
        by_name = dict(zip(_FIELDS, zip(*rows, strict=True), strict=True))
        steps = by_name["step"]
        data = [(s, d) for s, d in zip(steps, by_name["data"], strict=True) if type(d) is str]
        if data:
            data.sort()
            h = hashlib.sha256()
            for step, fingerprint in data:
                h.update(f"{step}\x00{fingerprint}\x01".encode("utf-8", "surrogatepass"))
            self.data_digests[index] = h.hexdigest()[:16]
        times = [t for t in (_finite(v) for v in by_name["t"]) if t is not None]
        if times:
            if self.first_time is None:
                self.first_time = times[0]
            self.last_time = times[-1]
        checked = [c for c in by_name["checked"] if type(c) is int and c > 0]
        self.checked += sum(checked)
        self.sampled += len(checked)
        fwd, bwd, opt = by_name["fwd"], by_name["bwd"], by_name["opt"]
        step_time, wait = by_name["step_time"], by_name["wait"]
        by_name["work"] = tuple(
            a + b + c
            if a.__class__ is float and b.__class__ is float and c.__class__ is float
            else _work(a, b, c, st, w)
            for a, b, c, st, w in zip(fwd, bwd, opt, step_time, wait, strict=True)
        )
        for name in METRICS:
            self._fold(name, index, by_name[name], steps)

    def _fold(self, name: str, index: int, column: Sequence[Any], steps: Sequence[int]) -> None:
        # Fast path: every value a float (the guard writes floats or null).
        values = [v for v in column if v.__class__ is float]
        if len(values) != len(column):
            values = [v if type(v) is float else _to_float(v) for v in column if type(v) in _NUMBER]
        # v - v is 0.0 for every finite float, NaN for NaN and infinities.
        finite = [v for v in values if v - v == 0.0]
        if len(finite) != len(values):
            self.nonfinite[name] += len(values) - len(finite)
            bad_steps = [
                s
                for s, v in zip(steps, column, strict=True)
                if type(v) in _NUMBER and _finite(v) is None
            ]
            first = min(bad_steps)
            current = self.first_nonfinite[name]
            self.first_nonfinite[name] = first if current is None else min(current, first)
        if not finite:
            return
        finite.sort()
        n = len(finite)
        mid = n // 2
        median = finite[mid] if n % 2 else (finite[mid - 1] + finite[mid]) / 2
        stats = self.stats[name]
        stats[0][index] = n
        stats[1][index] = finite[0]
        stats[2][index] = finite[-1]
        stats[3][index] = median
        total = sum(finite)
        stats[4][index] = total / n if total - total == 0.0 else None
