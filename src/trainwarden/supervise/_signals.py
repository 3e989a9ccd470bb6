"""Record catchable termination signals with their sender, then honour them as before.

A signal handler in Python never learns who sent the signal; ``sigwaitinfo`` does (the
kernel fills in the sender's pid and uid). So the signals are blocked in the main thread
before any other thread starts (threads inherit the mask), a dedicated thread waits for them
with ``sigwaitinfo``, reports the sender, and then does what the process would have done:
run the job's Python handler in the main thread, ignore it, or die of it.

Used by ranks when the guard's ``record_signals`` is not available (the guard's is preferred
and writes ``guard.signal``; this one writes ``rank.signal`` with ``source: sigwaitinfo``).
"""

from __future__ import annotations

import _thread
import contextlib
import signal
import threading
from collections.abc import Callable, Iterable
from typing import Any

from trainwarden.supervise._process import sender_info, signal_name

__all__ = ["RECORDED_SIGNALS", "WAKE_SIGNAL", "SignalRecorder", "block_signals"]

#: Catchable signals that end or interrupt a process, recorded with their sender. The same
#: set as the guard's ``record_signals`` default, so whichever is used, every thread of the
#: rank has exactly these blocked.
RECORDED_SIGNALS: tuple[int, ...] = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGQUIT,
)
#: Sent to the main thread to interrupt a blocking system call after a recorded signal was
#: handed to a Python handler (Python retries the call after running the handler).
WAKE_SIGNAL: int = signal.SIGRTMIN + 7


def block_signals(signals: Iterable[int] = RECORDED_SIGNALS) -> None:
    """Block ``signals`` in the calling thread (and so in every thread it starts later)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, set(signals))


class SignalRecorder:
    """Wait for ``signals`` on a thread; report each with its sender; honour it.

    Args:
        report: Called with the ``rank.signal`` data (``signal``, ``signo``, ``sender``,
            ``source``, ``note``, ``action``).
        flush: Called before the process dies of a signal, so the report goes out first.
        signals: The signals to record.
    """

    def __init__(
        self,
        report: Callable[[dict[str, Any]], None],
        *,
        flush: Callable[[], None] = lambda: None,
        signals: Iterable[int] = RECORDED_SIGNALS,
    ) -> None:
        self._report = report
        self._flush = flush
        self._signals = frozenset(signals)
        self._main = threading.main_thread().ident

    def start(self) -> None:
        """Block the signals here and start waiting (call from the main thread, early)."""
        block_signals(self._signals)
        # A Python-level handler on the wake signal makes blocking calls in the main thread
        # fail with EINTR, so the job's own handler runs without waiting for the call.
        signal.signal(WAKE_SIGNAL, _ignore)
        threading.Thread(target=self._loop, name="trainwarden-signals", daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                info = signal.sigwaitinfo(self._signals)
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
            signo = info.si_signo
            sender, note = sender_info(info)
            action = self._action(signo)
            with contextlib.suppress(Exception):  # the signal is honoured whatever happens
                self._report(
                    {
                        "signal": signal_name(signo),
                        "signo": signo,
                        "sender": sender,
                        "source": "sigwaitinfo",
                        "note": note,
                        "action": action,
                    }
                )
            self._honour(signo, action)

    @staticmethod
    def _action(signo: int) -> str:
        handler = signal.getsignal(signo)
        if handler is signal.SIG_IGN:
            return "ignored"
        if callable(handler):
            return "handler"
        return "default"

    def _honour(self, signo: int, action: str) -> None:
        if action == "ignored":
            return
        if action == "handler":
            _thread.interrupt_main(signal.Signals(signo))
            if self._main is not None:
                with contextlib.suppress(OSError, ValueError):
                    signal.pthread_kill(self._main, WAKE_SIGNAL)
            return
        # The default action (terminate, or core dump for SIGQUIT), or a handler installed
        # outside Python: deliver the signal to this thread with it unblocked, so the
        # process ends exactly as it would have, with the same status.
        self._flush()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signo})
        signal.pthread_kill(threading.get_ident(), signo)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signo})


def _ignore(signo: int, frame: object) -> None:
    del signo, frame
