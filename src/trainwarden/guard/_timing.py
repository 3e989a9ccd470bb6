"""Timing: each rank's own work per phase, apart from waits, and robust tests for a stall.

A rank made to sleep (T3) looks, from the job's side, like every other rank being slow: they
all wait for it in the next collective. The guard times each rank's own work per phase
(forward, backward up to its last gradient, optimizer step, and the rest of the step) and,
separately, the time spent waiting (from the last gradient to the optimizer step, where DDP
finishes its all-reduce, plus the guard's own exchange). Time the thread spent runnable but
not running (``/proc/thread-self/schedstat``: CPU contention from other processes) is not
counted as own work, nor, with intra-op workers, as much again (the training thread spinning
at the barriers of workers that wait for a CPU, then blocking on them), so a loaded machine does
not look like a sleeping rank.

The guard's own heavy checks (code integrity, in the watchdog thread) share the interpreter
lock with the training thread. They run paced (:class:`Pacer`): slices of about a millisecond
of work, each followed by a rest nine times as long, so the training thread never
waits long for the lock; and the wall time of every slice is subtracted from the phases it
overlaps, like run-queue delay (the training thread can only have waited for the lock while a
slice ran). No looser threshold is needed while they run: a sleep overlapping a heavy check
loses at most the slices' share of it (a tenth, plus one slice) to that subtraction.

The test is robust: a phase is a stall when it exceeds the median of its own recent history
by ``z`` robust standard deviations (1.4826 x MAD), by ``rel`` of the median and by an absolute
floor at once. Warm-up steps are ignored, checkpoint saves are not counted as own work, stalls
are kept out of the history they are judged against, and slow drift (2 % over a run) moves the
median along with it. Every rank evaluates the same gathered numbers, so all reach the same
verdict in the same step.
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainwarden.findings import Severity
from trainwarden.guard._config import GuardConfig
from trainwarden.guard._findings import GuardFinding

__all__ = [
    "PHASES",
    "Abandoned",
    "Pacer",
    "PhaseClock",
    "StallDetector",
    "busy",
    "phase_label",
]

#: Phases judged, in the order they are exchanged.
PHASES = ("fwd", "bwd", "opt", "other")
_fd: dict[int, int] = {}


# ``thresholds``: the collector's thresholds when the first guard's clock started (what
# "automatic" meant then).
_gc: dict[str, Any] = {
    "total": 0.0, "start": 0.0, "installed": False, "own": False, "thresholds": None,
}  # fmt: skip
# Explicit collections (``gc.collect()`` through the guard's wrapper) in progress, per thread;
# threads inside an optimizer step under a guard's clock.
_explicit = threading.local()
_stepping: set[int] = set()


def _gc_callback(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc["start"] = time.monotonic()
        # A collection asked for while an optimizer step runs is that step's own work: no
        # training framework collects inside optimizer.step() (they do between steps), and
        # subtracting it would let a sleep hide as a loop of gc.collect() calls, or as the
        # collections that thresholds lowered below the ones at attach set off.
        _gc["own"] = bool(_stepping) and (bool(getattr(_explicit, "depth", 0)) or _lowered())
    elif _gc["start"]:
        if not _gc["own"]:
            _gc["total"] += time.monotonic() - _gc["start"]
        _gc["start"] = 0.0
        _gc["own"] = False


def explicit_collections(original: Callable[..., Any]) -> Callable[..., Any]:
    """A ``gc.collect`` that marks its collections as asked for (the guard installs it)."""

    def collect(*args: Any, **kwargs: Any) -> Any:
        _explicit.depth = getattr(_explicit, "depth", 0) + 1
        try:
            return original(*args, **kwargs)
        finally:
            _explicit.depth -= 1

    return collect


def _lowered() -> bool:
    """Whether a collection threshold is below the one recorded when timing started."""
    import gc

    recorded = _gc["thresholds"]
    if recorded is None:
        return False
    now = gc.get_threshold()
    return any(0 < current < before for current, before in zip(now, recorded, strict=False))


def _install_gc_timer() -> None:
    if not _gc["installed"]:
        import gc

        _gc["thresholds"] = gc.get_threshold()
        gc.callbacks.append(_gc_callback)
        _gc["installed"] = True


# TorchDynamo's compilations: (seconds finished, start of the one in progress or 0.0).
# "installed": False until looked up, then Dynamo's callback handler (None: none exists).
_compiles: dict[str, Any] = {"total": 0.0, "start": 0.0, "installed": False}


def _compile_started(args: Any) -> None:
    del args
    _compiles["start"] = time.monotonic()


def _compile_ended(args: Any) -> None:
    del args
    if _compiles["start"]:
        _compiles["total"] += time.monotonic() - _compiles["start"]
        _compiles["start"] = 0.0


def _install_compile_timer() -> None:
    """Time TorchDynamo's compilations, once it is loaded (the guard never loads it).

    A compilation (the first step of a ``torch.compile``'d model, a recompilation for a new
    shape, the last batch of an epoch) takes seconds inside a forward: not a stall. Its
    callbacks run once per outermost compilation, nested ones counted in it.
    """
    handler = _compiles["installed"]
    if handler is None or "torch._dynamo" not in sys.modules:
        return
    if handler is False:
        try:
            from torch._dynamo.callback import callback_handler as handler
        except ImportError:  # a torch without compilation callbacks: compilations stay own work
            _compiles["installed"] = None
            return
        _compiles["installed"] = handler
    # Checked at every step: ``torch._dynamo.reset()`` clears the callbacks.
    if _compile_started not in handler.start_callbacks:
        handler.register_start_callback(_compile_started)
        handler.register_end_callback(_compile_ended)


def compiling() -> float:
    """Seconds spent in TorchDynamo's compilations so far, the one in progress included."""
    since = _compiles["start"]
    return float(_compiles["total"]) + (time.monotonic() - since if since else 0.0)


# A phase boundary: (the delays so far, their run-queue part, time on a CPU), see _mark.
_Mark = tuple[float, float, float]


def _mark(thread: int | None = None) -> _Mark:
    """Seconds not the job's own work so far, their queued part, and seconds on a CPU.

    ``thread`` is its native id (the caller's by default), so any thread can mark it. Run-queue
    delay and time on a CPU come from its ``schedstat`` (0 where unavailable); the collector's
    pauses are the interpreter's, not the job's (one that another thread runs during a sleep
    hides up to its length: the documented limit), and so are TorchDynamo's compilations
    (:func:`compiling`); :func:`busy` is the time the guard's paced heavy checks may have held
    the interpreter lock.
    """
    on_cpu, queued = _schedstat(thread)
    return queued + float(_gc["total"]) + busy() + compiling(), queued, on_cpu


def _own(wall: float, start: _Mark, end: _Mark, *, workers: bool = False) -> float:
    """Own work in a phase of ``wall`` seconds between two boundaries.

    Not own work: the run-queue delay, the collector's pauses and the guard's slices (see
    :func:`_mark`). With intra-op ``workers`` (more than one intra-op thread), also up to
    as much again as the run-queue delay: under CPU contention the training thread spins at
    their barriers, then blocks, while they wait for a CPU. On a 2-core machine at load 5 a
    2 ms backward measured 120 ms of CPU beside 120 ms of queueing (and at most 50 ms
    blocked, always less than its queueing): contention that was named a stall. Without
    workers there is nothing to wait for, and busy work (a loop in the step) stays whole
    under contention too. A sleep is not run-queue time: it loses at most its phase's
    queueing, which an insider cannot raise without loading the machine for everyone.
    """
    queued = max(0.0, end[1] - start[1]) if workers else 0.0
    return max(0.0, wall - (end[0] - start[0]) - queued)


def _computing(own: float, start: _Mark, end: _Mark) -> float:
    """The part of ``own`` seconds of a phase the thread spent on a CPU (not blocked or asleep).

    What other work on the machine can stretch without the run queue showing it (a
    hyperthread sibling, memory bandwidth, a hypervisor): see :meth:`StallDetector.observe`.
    Unknown on-CPU time (no ``schedstat``) counts as none: the whole phase is judged.
    """
    # Collections and the guard's slices are not own work: their share of the CPU time is
    # taken off too (all of it, even when another thread ran them: never too generous).
    excluded = max(0.0, (end[0] - start[0]) - (end[1] - start[1]))
    return min(own, max(0.0, end[2] - start[2] - excluded))


# (seconds of finished slices, start of the slice in progress or 0.0): one tuple, replaced
# whole by the pacing thread, so the training thread reads a consistent pair without a lock.
_busy: tuple[float, float] = (0.0, 0.0)


def busy() -> float:
    """Wall seconds the guard's paced heavy checks have worked so far, in this process.

    Non-decreasing, but for the garbage collection a finished slice hands back to
    :func:`_mark`. Read from the training thread at a phase boundary, it includes the slice in
    progress up to now: the training thread runs Python, so any slice that started has
    released the lock, and the time until the training thread got it back was a wait.
    """
    total, since = _busy
    return total + (time.monotonic() - since if since else 0.0)


class Abandoned(Exception):
    """A paced check was stopped at a rest (its guard closed); the pacer's ``with`` ends it."""


class Pacer:
    """Paces a heavy check of the guard's own threads so training keeps the interpreter lock.

    Call it between units of work (a file, a callable, an operator). After ``work`` seconds of
    work it rests ``work * (1 / duty - 1)`` seconds (a slice longer than ``work``, e.g. a
    source file's compile, earns a proportionally longer rest), so the check takes at most
    ``duty`` of the lock; the interpreter forces a switch only every 5 ms, which would let a
    heavy check hold the lock for 5 ms at every one of the training thread's native calls.
    Every slice's wall time is added to :func:`busy` (minus garbage collection, already counted
    by :func:`_mark`), which the phases subtract: the training thread can only have waited
    for the lock while a slice ran.

    Use it as a context manager around the check, in one thread at a time (the watchdog).
    ``stop()`` true at a rest abandons the check (:class:`Abandoned`): a guard closed while
    its paced check still runs does not leave it running for seconds beside the next one.
    """

    def __init__(
        self,
        work: float = 0.001,
        duty: float = 0.1,
        stop: Callable[[], bool] | None = None,
    ) -> None:
        if not 0.0 < duty <= 1.0 or work <= 0.0:
            raise ValueError("a pacer needs work > 0 and 0 < duty <= 1")
        self.work = work
        self.rest = 1.0 / duty - 1.0
        self.rested = 0.0
        self._stop = stop
        self._since = 0.0
        self._gc = 0.0

    def __enter__(self) -> Pacer:
        self._begin()
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> bool:
        self._end()
        return kind is Abandoned

    def __call__(self) -> None:
        """A unit of work is done: rest if this slice has used its share."""
        if not self._since or time.monotonic() - self._since < self.work:
            return
        worked = self._end()
        pause = worked * self.rest
        time.sleep(pause)
        self.rested += pause
        if self._stop is not None and self._stop():
            raise Abandoned
        self._begin()

    def _begin(self) -> None:
        global _busy
        self._gc = _gc["total"]
        self._since = time.monotonic()
        _busy = (_busy[0], self._since)

    def _end(self) -> float:
        global _busy
        if not self._since:
            return 0.0
        worked = time.monotonic() - self._since
        collected = _gc["total"] - self._gc
        _busy = (_busy[0] + max(0.0, worked - collected), 0.0)
        self._since = 0.0
        return worked


def _schedstat(thread: int | None = None) -> tuple[float, float]:
    """Seconds thread ``thread`` (native id; the caller's by default) ran and waited to run.

    ``(0.0, 0.0)`` where the kernel does not say.
    """
    if thread is None:
        thread = threading.get_native_id()
    fd = _fd.get(thread)
    if fd is None:
        try:
            fd = os.open(f"/proc/self/task/{thread}/schedstat", os.O_RDONLY)
        except OSError:
            fd = -1
        _fd[thread] = fd
    if fd < 0:
        return 0.0, 0.0
    try:
        fields = os.pread(fd, 128, 0).split()
        return int(fields[0]) / 1e9, int(fields[1]) / 1e9
    except OSError:  # the thread ended: its id may be reused, open again next time
        os.close(fd)
        del _fd[thread]
        return 0.0, 0.0
    except (IndexError, ValueError):
        return 0.0, 0.0


@dataclass
class PhaseClock:
    """Timestamps of one optimizer step, from the guard's hooks (monotonic seconds).

    Own-work durations exclude run-queue delay; ``excluded`` holds time the job spent in
    checkpoint saves and evaluation forwards, which are not part of a training step's work.
    """

    step_start: float = field(default_factory=time.monotonic)
    _start_busy: float = field(default_factory=busy)
    _first_busy: float = 0.0
    fwd: float = 0.0
    bwd: float = 0.0
    opt: float = 0.0
    # Of each phase's own work, the seconds on a CPU (the rest: blocked or asleep).
    computing: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES[:3], 0.0))
    wait: float | None = None
    excluded: float = 0.0
    forwards: int = 0
    _thread: int | None = None  # the training thread's native id (the one that runs forward)
    _workers: bool = False  # more than one intra-op thread (see _own)
    _fwd_start: float | None = None
    _fwd_mark: _Mark = (0.0, 0.0, 0.0)
    _fwd_end: float | None = None
    _fwd_end_mark: _Mark = (0.0, 0.0, 0.0)
    _last_grad: float | None = None
    _last_grad_mark: _Mark = (0.0, 0.0, 0.0)
    _opt_start: float | None = None
    _opt_mark: _Mark = (0.0, 0.0, 0.0)
    first_fwd: float | None = None
    current: str | None = None
    current_since: float = 0.0
    _since_compiling: float = 0.0  # compiling() when the current phase began
    _bwd_end: float | None = None
    _bwd_end_mark: _Mark = (0.0, 0.0, 0.0)
    _call: float | None = None  # when the job called optimizer.step(), before any pre-hook
    _call_mark: _Mark = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        _install_gc_timer()
        _install_compile_timer()

    def forward_start(self) -> None:
        now = time.monotonic()
        self._thread = threading.get_native_id()
        import torch

        self._workers = torch.get_num_threads() > 1
        self._fwd_start, self._fwd_mark = now, _mark()
        if self.first_fwd is None:
            self.first_fwd, self._first_busy = now, busy()
        self._enter("fwd", now)

    def forward_end(self) -> None:
        if self._fwd_start is None:
            return
        now = time.monotonic()
        mark = _mark()
        self.fwd += self._own("fwd", now - self._fwd_start, self._fwd_mark, mark)
        self.forwards += 1
        self._fwd_end, self._fwd_end_mark = now, mark
        self._fwd_start = None
        self._enter("bwd", now)

    def last_gradient(self) -> None:
        # On CUDA the hook runs on an autograd thread: the delays are the training thread's.
        self._last_grad, self._last_grad_mark = time.monotonic(), _mark(self._thread)

    def step_called(self) -> None:
        """The job called ``optimizer.step()``: the first of its pre-hooks runs now.

        Global pre-hooks (an edited torch's among them) run before the guard's own; the time
        they spend is inside the optimizer's step, not the backward's or a collective wait.
        """
        if self._call is None:  # the first mark, when two guards' hooks both mark
            self._call, self._call_mark = time.monotonic(), _mark()

    def in_closure(self) -> None:
        """``step(closure)``: forward and backward run inside the step, after this mark."""
        self._call = None

    def backward_end(self) -> None:
        """The guard's pre-step checks begin: backward (and its collective wait) are over.

        They ended where the job called ``optimizer.step()`` when that was marked; the
        pre-hooks run since count as the optimizer's.
        """
        now = time.monotonic()
        mark = _mark()
        end, end_mark = (now, mark) if self._call is None else (self._call, self._call_mark)
        if self._fwd_end is not None:
            if self._last_grad is not None and end >= self._last_grad >= self._fwd_end:
                self.bwd += self._own(
                    "bwd", self._last_grad - self._fwd_end, self._fwd_end_mark, self._last_grad_mark
                )
                self.wait = max(0.0, end - self._last_grad)
            else:
                self.bwd += self._own("bwd", end - self._fwd_end, self._fwd_end_mark, end_mark)
        if self._call is not None:
            self.opt += self._own("opt", now - self._call, self._call_mark, mark)
        self._bwd_end, self._bwd_end_mark = now, mark
        self._enter("opt", end)

    def optimizer_start(self) -> None:
        """The guard's pre-step checks are done: the optimizer's own work starts now."""
        _stepping.add(threading.get_ident())
        self._opt_start, self._opt_mark = time.monotonic(), _mark()

    def optimizer_end(self) -> float:
        """Close the step; returns the end time."""
        now = time.monotonic()
        if self._opt_start is not None:
            self.opt += self._own("opt", now - self._opt_start, self._opt_mark, _mark())
        _stepping.discard(threading.get_ident())
        self.current = None
        return now

    def _enter(self, phase: str, since: float) -> None:
        self.current, self.current_since = phase, since
        self._since_compiling = compiling()

    def running(self, now: float) -> float:
        """Seconds the current phase has run by ``now``, less compilations meanwhile."""
        return now - self.current_since - (compiling() - self._since_compiling)

    def _own(self, phase: str, wall: float, start: _Mark, end: _Mark) -> float:
        """A stretch of ``phase``'s own work (its on-CPU part added to :attr:`computing`)."""
        own = _own(wall, start, end, workers=self._workers)
        self.computing[phase] += _computing(own, start, end)
        return own

    def other(self, previous_end: float | None) -> float | None:
        """Time between the previous step's end and this step's first forward, minus excluded.

        The guard's paced heavy checks are not the job's time either (see :func:`busy`).
        """
        if previous_end is None or self.first_fwd is None:
            return None
        held = self._first_busy - self._start_busy
        return max(0.0, self.first_fwd - previous_end - self.excluded - held)


@dataclass
class _History:
    values: deque[float]


class StallDetector:
    """Judges every rank's phases each step; the same inputs give the same verdict everywhere."""

    def __init__(self, config: GuardConfig) -> None:
        self.config = config
        self._hist: dict[tuple[int, str], deque[float]] = {}
        self.contended = 0  # phases that ran long only while computing: contention, not stalls
        # (median, MAD, appends since computed): recomputed every 8 values, or when a value
        # looks like a stall against the cached figures (so 64 ranks cost little per step).
        self._stats: dict[tuple[int, str], tuple[float, float, int]] = {}
        self.cost = 0.0

    def _figures(
        self, key: tuple[int, str], hist: deque[float], fresh: bool
    ) -> tuple[float, float]:
        cached = self._stats.get(key)
        if cached is None or fresh or cached[2] >= 8:
            median = statistics.median(hist)
            mad = statistics.median(abs(v - median) for v in hist)
            self._stats[key] = (median, mad, 0)
            return median, mad
        return cached[0], cached[1]

    def _append(self, key: tuple[int, str], hist: deque[float], value: float) -> None:
        hist.append(value)
        cached = self._stats.get(key)
        if cached is not None:
            self._stats[key] = (cached[0], cached[1], cached[2] + 1)

    def observe(
        self,
        step: int,
        phases: Sequence[Sequence[float | None]],
        waits: Sequence[float | None],
        *,
        reporter: int,
        computing: Sequence[Sequence[float | None]] | None = None,
    ) -> list[GuardFinding]:
        """Judge ``phases[rank][i]`` (seconds, ``None`` unknown) of one step.

        A phase that ran long while computing is not judged the way one that ran long while
        blocked is. Other work on the machine can stretch a CPU-bound phase without the run
        queue showing it: a hyperthread sibling, memory bandwidth, a hypervisor (measured
        here: a 73 ms backward took 201 ms of own time, on a CPU, the step another process
        started writing). A sleep is off the CPU and is judged whole; computing beyond
        ``timing_cpu_slack`` times the phase's median is judged too (a busy loop, collections
        the step asks for), so contention is forgiven only up to what it can plausibly do.

        Args:
            step: The step.
            phases: Per rank, the durations of :data:`PHASES`.
            waits: Per rank, seconds it waited for the others at the last exchange.
            reporter: This process's rank (findings carry it as the observer).
            computing: Per rank, the part of each phase spent on a CPU (``None``: unknown,
                the whole phase is judged).
        """
        start = time.thread_time()
        cfg = self.config
        findings: list[GuardFinding] = []
        world = len(phases)
        for rank, row in enumerate(phases):
            for name, value in zip(PHASES, row, strict=False):
                if value is None:
                    continue
                key = (rank, name)
                hist = self._hist.setdefault(key, deque(maxlen=cfg.timing_window))
                if step <= cfg.timing_warmup or len(hist) < 8:
                    if step > cfg.timing_warmup:
                        self._append(key, hist, value)
                    continue
                median, mad, threshold = self._threshold(key, hist, name, fresh=False)
                if value - median > threshold:
                    median, mad, threshold = self._threshold(key, hist, name, fresh=True)
                excess = value - median
                if excess > threshold:
                    forgiven = self._contention(computing, rank, name, median)
                    if excess - forgiven <= threshold:
                        self.contended += 1  # an outlier, kept out of the history
                        continue
                # Between steps live data loading, logging and evaluation: a pause every rank
                # shares (an epoch boundary) is not one rank stalling.
                if (
                    name == "other"
                    and excess > threshold
                    and world > 1
                    and self._shared(phases, PHASES.index(name), rank)
                ):
                    self._append(key, hist, value)
                    continue
                if excess <= threshold:
                    self._append(key, hist, value)
                    continue
                others = [w for r, w in enumerate(waits) if r != rank and w is not None]
                waited = f"; the other ranks waited up to {max(others):.3g} s" if others else ""
                findings.append(
                    GuardFinding(
                        rule_id="guard.timing",
                        severity=Severity.HIGH,
                        message=(
                            f"rank {rank} spent {value:.3g} s of its own time in the "
                            f"{_label(name)} of step {step}, against a median of "
                            f"{median:.3g} s{waited}"
                        ),
                        rank=rank,
                        step=step,
                        evidence=f"rank {rank} phase {name}: {value:.3g} s (median {median:.3g} s, "
                        f"MAD {mad:.3g} s)",
                        established=False,
                        subject=f"timing:{rank}:{name}:{step}",
                    )
                )
        if world > 1 and step > cfg.timing_warmup and step % 16 == 0:
            findings.extend(self._consistently_slow(step, world))
        del reporter
        self.cost += time.thread_time() - start
        return findings

    def _contention(
        self,
        computing: Sequence[Sequence[float | None]] | None,
        rank: int,
        name: str,
        median: float,
    ) -> float:
        """Seconds of a phase's excess that contention could explain (0 when unknown).

        Its on-CPU time beyond the median, up to ``timing_cpu_slack - 1`` times the median.
        """
        if computing is None or rank >= len(computing):
            return 0.0
        row = computing[rank]
        index = PHASES.index(name)
        on_cpu = row[index] if index < len(row) else None
        if on_cpu is None:
            return 0.0
        extra = max(0.0, on_cpu - median)
        return min(extra, (self.config.timing_cpu_slack - 1.0) * median)

    def _consistently_slow(self, step: int, world: int) -> list[GuardFinding]:
        """A rank whose own work is always slower than the others' (a sleep in every step).

        Replicas do the same work per step; a rank whose median in a phase exceeds the other
        ranks' by half again and by the absolute floor is named (once per rank and phase).
        """
        out: list[GuardFinding] = []
        for name in ("fwd", "bwd", "opt"):
            medians = {}
            for rank in range(world):
                hist = self._hist.get((rank, name))
                if hist is not None and len(hist) >= 8:
                    medians[rank] = statistics.median(hist)
            if len(medians) < 2:
                continue
            for rank, mine in medians.items():
                others = [m for r, m in medians.items() if r != rank]
                typical = statistics.median(others)
                if mine > 1.5 * typical + self.config.timing_min_excess:
                    # Medium: a slow device is slow too; to look into, not to halt for.
                    out.append(
                        GuardFinding(
                            rule_id="guard.timing",
                            severity=Severity.MEDIUM,
                            message=(
                                f"rank {rank} is consistently slower in the {_label(name)}: "
                                f"median {mine:.3g} s against {typical:.3g} s on the other ranks"
                            ),
                            rank=rank,
                            step=step,
                            evidence=f"rank {rank} phase {name}: median {mine:.3g} s, others "
                            f"{typical:.3g} s",
                            established=False,
                            subject=f"timing-slow:{rank}:{name}",
                        )
                    )
        return out

    def _threshold(
        self, key: tuple[int, str], hist: deque[float], name: str, *, fresh: bool
    ) -> tuple[float, float, float]:
        cfg = self.config
        median, mad = self._figures(key, hist, fresh)
        threshold = max(cfg.timing_z * 1.4826 * mad, cfg.timing_rel * median, cfg.timing_min_excess)
        if name == "other":
            # Between steps live data loading, logging and evaluation: only a stall far
            # beyond the usual counts.
            threshold *= 4
        return median, mad, threshold

    def _shared(self, phases: Sequence[Sequence[float | None]], i: int, rank: int) -> bool:
        """Whether most ranks show the same spike in phase ``i`` this step."""
        spikes = 0
        counted = 0
        for r, row in enumerate(phases):
            value = row[i] if i < len(row) else None
            hist = self._hist.get((r, PHASES[i]))
            if value is None or not hist:
                continue
            counted += 1
            if value > 2 * statistics.median(hist) + self.config.timing_min_excess:
                spikes += 1
        return counted > 1 and spikes * 2 > counted and rank >= 0

    def overrun(self, phase: str, seconds: float, rank: int) -> bool:
        """Whether a phase still running after ``seconds`` is already a stall."""
        hist = self._hist.get((rank, phase))
        if not hist or len(hist) < 8:
            return seconds > self.config.timing_overrun
        median = statistics.median(hist)
        limit = min(
            self.config.timing_overrun, max(20 * median, 2 * self.config.timing_min_excess, 1.0)
        )
        return seconds > limit

    def median(self, rank: int, phase: str) -> float | None:
        """Median of a phase's history, if any."""
        hist = self._hist.get((rank, phase))
        return statistics.median(hist) if hist else None


def phase_label(name: str) -> str:
    """A phase's name in words."""
    return _label(name)


def _label(name: str) -> str:
    return {
        "fwd": "forward pass",
        "bwd": "backward pass",
        "opt": "optimizer step",
        "other": "time between steps",
    }[name]
