"""The control channel's client side, used inside the job (ranks, shims, other processes).

One JSON object a line over a Unix stream socket. A rank says ``hello`` (who it is, its
ephemeral public key) and gets ``welcome`` (the run, the sampling secret, where to write);
afterwards it only sends (events, heartbeats, exits). Sending never blocks training: messages
go through a bounded queue and a sender thread. When the supervisor goes away the reader
thread notices (end of file) and the rank switches to its fallback (see ``_rank.py``).

Imports stay minimal: this module loads in every rank before the training script starts.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["MAX_LINE", "Channel", "ChannelLost", "decode_line", "encode"]

#: Longest accepted message line, newline included.
MAX_LINE = 1 << 20
_QUEUE_LIMIT = 10_000


class ChannelLost(OSError):
    """The supervisor is gone (or refused us)."""


def encode(message: dict[str, Any]) -> bytes:
    """One message as a line of compact JSON."""
    data = json.dumps(message, separators=(",", ":"), allow_nan=False, default=str).encode()
    return data + b"\n"


def decode_line(line: bytes) -> dict[str, Any] | None:
    """Parse one line; ``None`` when it is not a JSON object."""
    try:
        value = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _read_line(sock: socket.socket) -> bytes:
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            raise ChannelLost("the supervisor closed the control channel")
        data += chunk
        if len(data) > MAX_LINE:
            raise ChannelLost("the supervisor sent an oversized reply")
    return bytes(data)


class Channel:
    """A connection to the supervisor.

    Args:
        path: The socket path (``TRAINWARDEN_RUN_CHANNEL``).
        hello: The hello message (``op`` is set here).
        timeout: Seconds to connect and get the welcome.

    Raises:
        ChannelLost: The supervisor is not there or refused us.
    """

    def __init__(self, path: str, hello: dict[str, Any], *, timeout: float = 10.0) -> None:
        self.path = path
        self._hello = dict(hello, op="hello")
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue: collections.deque[bytes] = collections.deque()
        self._dropped = 0
        self._lost = False
        self._threaded = False
        self._pid = os.getpid()
        self._on_lost: Callable[[str, list[dict[str, Any]]], None] | None = None
        self._sock: socket.socket | None = None
        self.welcome = self._connect(self._hello, timeout)
        os.register_at_fork(after_in_child=self._after_fork)

    # -- connection ------------------------------------------------------------------------

    def _connect(self, hello: dict[str, Any], timeout: float) -> dict[str, Any]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(self.path)
            sock.sendall(encode(hello))
            reply = decode_line(_read_line(sock))
        except OSError as exc:
            sock.close()
            raise ChannelLost(f"cannot reach the supervisor at {self.path}: {exc}") from exc
        if reply is None or reply.get("op") != "welcome":
            sock.close()
            reason = (reply or {}).get("reason", "no welcome")
            raise ChannelLost(f"the supervisor refused this process: {reason}")
        sock.settimeout(None)
        self._sock = sock
        return reply

    def _after_fork(self) -> None:
        # A forked child (a DataLoader worker) must not write into its parent's connection:
        # the two streams would interleave. It reconnects on its first message, as a worker.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue = collections.deque()
        self._threaded = False
        self._sock = None
        self._parent = self._pid
        self._pid = os.getpid()

    # -- sending ---------------------------------------------------------------------------

    def start(self, on_lost: Callable[[str, list[dict[str, Any]]], None] | None = None) -> None:
        """Start the sender and reader threads (ranks); without it, sends are synchronous.

        ``on_lost(reason, unsent)`` is called once when the supervisor goes away, with the
        messages that were still queued, so that the caller can record them elsewhere.
        """
        self._on_lost = on_lost
        self._threaded = True
        threading.Thread(target=self._sender, name="trainwarden-channel", daemon=True).start()
        threading.Thread(target=self._reader, name="trainwarden-channel-rx", daemon=True).start()

    @property
    def lost(self) -> bool:
        """Whether the supervisor is gone."""
        return self._lost

    def send(self, message: dict[str, Any]) -> bool:
        """Queue (or, unthreaded, send) one message; ``False`` when it could not go out."""
        if self._lost:
            return False
        line = encode(message)
        if len(line) > MAX_LINE:
            return False
        if not self._threaded:
            return self._send_sync(line)
        with self._cond:
            if len(self._queue) >= _QUEUE_LIMIT:
                self._dropped += 1
                return False
            self._queue.append(line)
            self._cond.notify()
        return True

    def _send_sync(self, line: bytes) -> bool:
        with self._lock:
            try:
                if self._sock is None:
                    hello = dict(
                        self._hello,
                        role="worker",
                        pid=os.getpid(),
                        parent=getattr(self, "_parent", None),
                    )
                    self._connect(hello, 10.0)
                assert self._sock is not None
                self._sock.sendall(line)
            except OSError:
                self._lost = True
                return False
        return True

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the queue is empty (before the process dies); ``False`` on timeout."""
        if not self._threaded:
            return not self._lost
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue or self._lost, timeout)

    def close(self) -> None:
        """Flush and close the connection."""
        self.flush(2.0)
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _sender(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._lost:
                    self._cond.wait()
                if self._lost:
                    return
                batch = b"".join(self._queue)
                count = len(self._queue)
            sock = self._sock
            try:
                if sock is None:
                    raise ChannelLost("closed")
                sock.sendall(batch)
            except OSError as exc:
                self._mark_lost(f"cannot write to the supervisor: {exc}")
                return
            with self._cond:
                for _ in range(count):
                    self._queue.popleft()
                self._cond.notify_all()

    def _reader(self) -> None:
        sock = self._sock
        try:
            while sock is not None:
                if not sock.recv(4096):
                    break
        except OSError:
            pass
        if self._sock is not None and os.getpid() == self._pid:
            self._mark_lost("the supervisor closed the control channel")

    def _mark_lost(self, reason: str) -> None:
        with self._cond:
            if self._lost:
                return
            self._lost = True
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        callback = self._on_lost
        if callback is not None:
            unsent = [m for m in (decode_line(line.rstrip(b"\n")) for line in pending) if m]
            callback(reason, unsent)
