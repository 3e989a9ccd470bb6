"""Signals: who sent a rank SIGTERM (or SIGINT, SIGHUP...), recorded before it is honoured.

A process killed "at random" (T6) leaves nothing behind but an exit status; the kernel,
though, tells the receiver who sent a signal (``si_pid``, ``si_uid``, ``si_code``) when it is
collected with ``sigwaitinfo``. :func:`record_signals` blocks the listed signals in the calling
thread (threads created afterwards inherit the mask, which is why it should run first, before
torch starts its thread pools), collects them on a thread of its own, records the sender's pid,
uid, user and command line (``guard.signal``), and then lets the signal take the effect it would
have had: the handler the job installed runs in the main thread, the default action terminates
the process with that signal, an ignored signal stays ignored.

SIGKILL and SIGSTOP cannot be caught by anyone: the supervisor records those from the exit
status, and the host's audit log (``auditd -S kill``) is what names their sender.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainwarden.errors import ConfigError

if TYPE_CHECKING:
    from trainwarden.events import EventSink

__all__ = ["DEFAULT_SIGNALS", "SignalRecord", "SignalRecorder", "record_signals"]

logger = logging.getLogger("trainwarden.guard")

DEFAULT_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGQUIT,
)
_UNCATCHABLE = {signal.SIGKILL, signal.SIGSTOP}
_SI_CODES = {0: "SI_USER", 0x80: "SI_KERNEL", -1: "SI_QUEUE", -6: "SI_TKILL", -2: "SI_TIMER"}


def _sender(pid: int, uid: int) -> dict[str, Any]:
    cmdline: str | None = None
    if pid > 0:
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            cmdline = raw.replace(b"\0", b" ").decode("utf-8", "replace").strip() or None
        except OSError:
            cmdline = None  # the sender has exited (or is not visible from here)
    try:
        import pwd

        user: str | None = pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        user = None
    return {"pid": pid, "uid": uid, "user": user, "cmdline": cmdline}


@dataclass(frozen=True, slots=True)
class SignalRecord:
    """One signal collected by the recorder."""

    signal: str
    signo: int
    sender: dict[str, Any]
    code: str
    action: str
    time: float = field(default_factory=time.time)


class SignalRecorder:
    """The handle :func:`record_signals` returns; ``stop()`` unblocks and stops the thread.

    Attributes:
        records: Every signal collected so far.
        early: Whether no other thread existed when recording began (every thread then
            blocks the signals; otherwise one created earlier may receive a signal unrecorded).
    """

    def __init__(
        self,
        sink: EventSink | None,
        run: str | None,
        signals: tuple[signal.Signals, ...],
        rank: Callable[[], int | None],
        trusted: Callable[[int], bool] | None = None,
    ) -> None:
        self.sink = sink
        self.run = run
        self.signals = signals
        self.records: list[SignalRecord] = []
        self._rank = rank
        self._trusted = trusted
        self._listeners: list[Callable[[SignalRecord], None]] = []
        self._before_default: list[Callable[[], None]] = []
        self._stop = threading.Event()
        self.unprotected = _threads_not_blocking(signals)
        self.early = not self.unprotected
        self._thread = threading.Thread(target=self._loop, name="trainwarden-signals", daemon=True)
        self._owner = os.getpid()

    def add_listener(self, fn: Callable[[SignalRecord], None]) -> None:
        """Call ``fn`` with each record (the guard turns them into findings)."""
        self._listeners.append(fn)

    def before_termination(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` before a signal's default action terminates the process (flush)."""
        self._before_default.append(fn)

    def _loop(self) -> None:
        # This thread inherited the blocked mask; it is the only one that collects them.
        waited = set(self.signals)
        while not self._stop.is_set():
            try:
                info = signal.sigtimedwait(waited, 0.5)
            except InterruptedError:
                continue
            if info is None:
                continue
            self._handle(info)

    def _handle(self, info: Any) -> None:
        signo = int(info.si_signo)
        sig = signal.Signals(signo)
        handler = signal.getsignal(signo)
        if handler is signal.SIG_IGN:
            action = "ignored"
        elif handler in (signal.SIG_DFL, None):
            action = "default"
        else:
            action = "handler"
        record = SignalRecord(
            sig.name,
            signo,
            _sender(int(info.si_pid), int(info.si_uid)),
            _SI_CODES.get(int(info.si_code), str(int(info.si_code))),
            action,
        )
        self.records.append(record)
        trusted = self._is_trusted(int(info.si_pid))
        self._emit(record, trusted=trusted)
        # The job's own machinery (the supervisor, torchrun's agent, the rank's shim) ends
        # ranks on purpose: recorded, never a finding.
        for fn in [] if trusted else list(self._listeners):
            try:
                fn(record)
            except Exception:  # noqa: PERF203  # recording goes on whatever an observer does
                logger.exception("guard: signal listener failed")
        self._honour(sig, action)

    def _is_trusted(self, pid: int) -> bool:
        if self._trusted is None or pid <= 0:
            return False
        try:
            return bool(self._trusted(pid))
        except Exception:  # an observer's failure must not stop the signal
            logger.exception("guard: could not judge the sender of a signal")
            return False

    def _emit(self, record: SignalRecord, *, trusted: bool = False) -> None:
        if self.sink is None:
            return
        extra = {"trusted": True} if trusted else {}
        try:
            self.sink.append(
                "guard.signal",
                run=self.run,
                rank=self._rank(),
                pid=os.getpid(),
                signal=record.signal,
                signo=record.signo,
                sender=record.sender,
                code=record.code,
                action=record.action,
                **extra,
            )
        except Exception:  # a failing sink must not swallow the signal
            logger.exception("guard: could not record %s", record.signal)

    def _honour(self, sig: signal.Signals, action: str) -> None:
        if action == "ignored":
            return
        if action == "default":
            for fn in list(self._before_default):
                with contextlib.suppress(Exception):
                    fn()
        # Deliver the signal to this thread with it unblocked: Python's C handler (for a
        # handler the job installed) schedules it for the main thread; the default action
        # terminates the whole process with this signal, as it would have.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
        try:
            signal.pthread_kill(threading.get_ident(), sig)
        finally:
            signal.pthread_sigmask(signal.SIG_BLOCK, {sig})

    def start(self) -> SignalRecorder:
        """Block the signals in the calling thread and start collecting."""
        signal.pthread_sigmask(signal.SIG_BLOCK, set(self.signals))
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop collecting and unblock the signals in the calling thread."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, set(self.signals))
        # Signals that arrived since the thread stopped are delivered now, as usual.


_active: SignalRecorder | None = None
_lock = threading.Lock()


def _threads_not_blocking(signals: Iterable[int]) -> int:
    """How many *other* threads of this process can receive one of ``signals`` unrecorded.

    A thread created after the signals were blocked inherits the mask (the supervisor's
    bootstrap blocks them before its channel thread starts), so the count of threads alone
    says nothing; each thread's mask is read from ``/proc/self/task/*/status`` (``SigBlk``).
    Where ``/proc`` cannot be read, every other thread is counted.
    """
    wanted = 0
    for signo in signals:
        wanted |= 1 << (int(signo) - 1)
    me = threading.get_native_id()
    try:
        tasks = [int(t.name) for t in Path("/proc/self/task").iterdir()]
    except (OSError, ValueError):
        return threading.active_count() - 1
    count = 0
    for tid in tasks:
        if tid == me:
            continue
        try:
            text = Path(f"/proc/self/task/{tid}/status").read_text()
        except OSError:
            continue  # the thread has ended
        blocked = next(
            (int(line.split()[1], 16) for line in text.splitlines() if line.startswith("SigBlk:")),
            0,
        )
        if blocked & wanted != wanted:
            count += 1
    return count


def record_signals(
    sink: EventSink | None,
    *,
    run: str | None = None,
    signals: Iterable[int] = DEFAULT_SIGNALS,
    trusted: Callable[[int], bool] | None = None,
) -> SignalRecorder:
    """Record catchable termination signals with their sender, then honour them.

    Call it as early as possible in the process, from the main thread, ideally before torch is
    imported: the signals are blocked in the calling thread and in every thread created after,
    and collected by a thread that records ``guard.signal`` (rank, pid, signal, sender pid,
    uid, user, command line, ``si_code``, what the process does with it) and then lets the
    signal act as it would have.

    Args:
        sink: Where ``guard.signal`` events go (``None``: only listeners and ``records``).
        run: The run id for the events.
        signals: Signals to record (SIGKILL and SIGSTOP cannot be).
        trusted: ``trusted(pid)`` says whether a sender is the job's own machinery (the
            supervisor, the launcher, the rank's shim): its signals are recorded as
            ``guard.signal`` (``trusted: true``) and become no finding.

    Returns:
        The recorder (a process has at most one; a second call returns the first).

    Raises:
        ConfigError: Called outside the main thread, or with an uncatchable signal.
    """
    global _active
    chosen = tuple(signal.Signals(int(s)) for s in signals)
    bad = [s.name for s in chosen if s in _UNCATCHABLE]
    if bad:
        raise ConfigError(f"{', '.join(bad)} cannot be caught; the supervisor records them")
    if threading.current_thread() is not threading.main_thread():
        raise ConfigError("record_signals() must be called from the main thread")
    with _lock:
        if _active is not None and _active._owner == os.getpid():
            return _active
        recorder = SignalRecorder(sink, run, chosen, _current_rank, trusted)
        if not recorder.early:
            logger.warning(
                "trainwarden: record_signals() called with %d thread(s) running that do not "
                "block the signals; a signal delivered to one of them is not recorded (call it "
                "before importing torch)",
                recorder.unprotected,
            )
        _active = recorder.start()
        return recorder


def active_recorder() -> SignalRecorder | None:
    """The process's recorder, if :func:`record_signals` was called in this process."""
    current = _active
    return current if current is not None and current._owner == os.getpid() else None


def _current_rank() -> int | None:
    rank = os.environ.get("RANK")
    try:
        return int(rank) if rank is not None else None
    except ValueError:
        return None
