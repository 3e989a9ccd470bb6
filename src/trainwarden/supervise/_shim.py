"""The per-rank shim under torchrun: the real rank's parent, so its exact end is known.

torchrun's agent (not the supervisor) is each rank's parent, and it reports failures as a
summary. With ``--no-python`` torchrun starts this shim as the rank's process instead; the
shim starts the real rank as its child, forwards the signals torchrun (or anyone) sends it,
records who sent them, reports the child's exact exit status or signal to the supervisor,
and ends the same way, so torchrun sees what it would have seen.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

from trainwarden.supervise._names import ENV_CHANNEL
from trainwarden.supervise._process import decode_status, sender_info, signal_name
from trainwarden.supervise._signals import RECORDED_SIGNALS
from trainwarden.supervise._wire import Channel, ChannelLost

__all__ = ["run_shim"]


def _env_int(name: str) -> int | None:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        return None


def run_shim(argv: Sequence[str]) -> int:
    """Run ``argv`` as this rank's process and end like it; return the exit code."""
    if not argv:
        sys.stderr.write("trainwarden shim: no rank command\n")
        return 2
    waited = set(RECORDED_SIGNALS) | {signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    rank = _env_int("RANK")
    channel: Channel | None = None
    path = os.environ.get(ENV_CHANNEL)
    if path:
        try:
            channel = Channel(
                path,
                {
                    "role": "shim",
                    "pid": os.getpid(),
                    "rank": rank,
                    "local_rank": _env_int("LOCAL_RANK"),
                    "world_size": _env_int("WORLD_SIZE"),
                    "node": _env_int("GROUP_RANK"),
                    "host": socket.gethostname(),
                    "restart": _env_int("TORCHELASTIC_RESTART_COUNT") or 0,
                },
            )
        except ChannelLost as exc:
            sys.stderr.write(f"trainwarden shim: {exc}\n")
    started = time.monotonic()
    try:
        # posix_spawn with an empty signal mask: the rank must not inherit our blocked set.
        child = os.posix_spawnp(
            argv[0],
            list(argv),
            os.environ,
            setsigmask=(),
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
        )
    except OSError as exc:
        sys.stderr.write(f"trainwarden shim: cannot start {argv[0]}: {exc.strerror or exc}\n")
        _send(
            channel,
            {
                "op": "exit",
                "pid": None,
                "status": 127,
                "signal": None,
                "signo": None,
                "seconds": 0.0,
                "error": str(exc),
            },
        )
        return 127
    _send(channel, {"op": "child", "pid": child})
    status = None
    while status is None:
        info = signal.sigwaitinfo(waited)
        if info.si_signo == signal.SIGCHLD:
            pid, raw = os.waitpid(child, os.WNOHANG)
            if pid == child:
                status = decode_status(raw)
            continue
        sender, note = sender_info(info)
        _send(
            channel,
            {
                "op": "event",
                "event": "rank.signal",
                "data": {
                    "rank": rank,
                    "pid": child,
                    "signal": signal_name(info.si_signo),
                    "signo": info.si_signo,
                    "sender": sender,
                    "source": "shim",
                    "note": "sent to the rank's shim (its parent under torchrun) and forwarded"
                    + (f"; {note}" if note else ""),
                },
            },
        )
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, info.si_signo)
    _send(
        channel,
        {
            "op": "exit",
            "pid": child,
            "status": status.status,
            "signal": status.signal,
            "signo": status.signo,
            "seconds": round(time.monotonic() - started, 3),
        },
    )
    if channel is not None:
        channel.close()
    if status.signo is not None:
        # End the way the rank ended, so torchrun's summary is true too.
        signal.signal(status.signo, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {status.signo})
        os.kill(os.getpid(), status.signo)
        return 128 + status.signo
    return status.status if status.status is not None else 1


def _send(channel: Channel | None, message: dict[str, Any]) -> None:
    if channel is not None:
        channel.send(message)
