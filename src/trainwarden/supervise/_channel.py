"""The control channel's supervisor side: a Unix socket only the job's own processes may use.

The socket lives in a directory of mode 0700 (other users cannot even reach it), and each
connection's peer is identified by the kernel (``SO_PEERCRED``: pid and uid, which a process
cannot fake) and must be a descendant of the supervisor. A process of the same user that is
*not* part of the job (an insider's shell) is refused and the attempt recorded. What a
legitimate rank sends is recorded as *reported by that rank*, never as the supervisor's own
observation: a compromised rank can lie about itself, not about others or the supervisor.
"""

# os.path: the socket path is a string.
# ruff: noqa: PTH101

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainwarden.supervise._process import is_descendant
from trainwarden.supervise._wire import MAX_LINE, decode_line, encode

__all__ = ["ChannelServer", "Peer"]

logger = logging.getLogger("trainwarden.supervise")

_CRED = struct.Struct("3i")


@dataclass(eq=False)
class Peer:
    """One connected process of the job (as the kernel identified it)."""

    sock: socket.socket
    pid: int
    uid: int
    gid: int
    buffer: bytearray = field(default_factory=bytearray)
    hello: dict[str, Any] | None = None
    closed: bool = False

    @property
    def role(self) -> str | None:
        """``rank``, ``shim``, ``process`` or ``worker`` once it said hello."""
        return None if self.hello is None else str(self.hello.get("role"))

    @property
    def rank(self) -> int | None:
        """The global rank it claimed in its hello."""
        value = None if self.hello is None else self.hello.get("rank")
        return value if isinstance(value, int) and not isinstance(value, bool) else None


MessageHandler = Callable[[Peer, dict[str, Any]], "dict[str, Any] | None"]


class ChannelServer:
    """Accept the job's processes on ``path`` and hand their messages to ``on_message``.

    Args:
        path: The socket path (its directory must be private to the supervisor).
        ancestor: Peers must descend from this pid (the supervisor).
        uids: Peers must run as one of these uids.
        on_message: Called (on the server thread) for each message; its return value, if
            any, is sent back (the welcome to a hello).
        on_close: Called when a peer disconnects.
        on_refused: Called with ``(pid, uid, reason)`` for a refused connection.
    """

    def __init__(
        self,
        path: Path,
        *,
        ancestor: int,
        uids: Iterable[int],
        on_message: MessageHandler,
        on_close: Callable[[Peer], None],
        on_refused: Callable[[int, int, str], None],
    ) -> None:
        self.path = path
        self._ancestor = ancestor
        self._uids = frozenset(uids)
        self._on_message = on_message
        self._on_close = on_close
        self._on_refused = on_refused
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        os.chmod(path, 0o600)
        self._listener.listen(256)
        self._listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._stop = False
        self._peers: dict[int, Peer] = {}
        self._thread = threading.Thread(target=self._serve, name="trainwarden-channel", daemon=True)

    def start(self) -> None:
        """Serve on a thread."""
        self._thread.start()

    def peers(self) -> list[Peer]:
        """The connected peers."""
        # Copied in one C-level step under the GIL: the server thread may change the dict.
        return [p for p in tuple(self._peers.values()) if not p.closed]

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, close every connection and remove the socket."""
        self._stop = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread.is_alive():
            self._thread.join(timeout)
        for peer in list(self._peers.values()):
            with contextlib.suppress(OSError):
                peer.sock.close()
        with contextlib.suppress(OSError):
            self._listener.close()
        with contextlib.suppress(OSError):
            self._wake_r.close()
            self._wake_w.close()
        with contextlib.suppress(OSError):
            self.path.unlink()

    def _serve(self) -> None:
        while not self._stop:
            try:
                events = self._selector.select(timeout=1.0)
            except OSError:  # pragma: no cover - selector closed under us
                return
            for key, _ in events:
                if key.data == "wake":
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(64)
                elif key.data is None:
                    self._accept()
                else:
                    self._read(key.data)
        self._selector.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # pragma: no cover - EMFILE and friends
                logger.warning("control channel: accept failed: %s", exc)
                return
            try:
                pid, uid, gid = _CRED.unpack(
                    conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size)
                )
            except OSError:
                conn.close()
                continue
            reason = self._refusal(pid, uid)
            if reason is not None:
                with contextlib.suppress(OSError):
                    conn.sendall(encode({"op": "refused", "reason": reason}))
                conn.close()
                self._on_refused(pid, uid, reason)
                continue
            conn.setblocking(False)
            peer = Peer(conn, pid, uid, gid)
            self._peers[conn.fileno()] = peer
            self._selector.register(conn, selectors.EVENT_READ, peer)

    def _refusal(self, pid: int, uid: int) -> str | None:
        if uid not in self._uids:
            return f"uid {uid} is not the job's user"
        if not is_descendant(pid, self._ancestor):
            return f"process {pid} is not part of the supervised job"
        return None

    def _read(self, peer: Peer) -> None:
        try:
            chunk = peer.sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._drop(peer)
            return
        peer.buffer += chunk
        while True:
            newline = peer.buffer.find(b"\n")
            if newline < 0:
                if len(peer.buffer) > MAX_LINE:
                    logger.warning("control channel: pid %d sent an oversized line", peer.pid)
                    self._drop(peer)
                return
            line = bytes(peer.buffer[:newline])
            del peer.buffer[: newline + 1]
            message = decode_line(line)
            if message is None:
                continue
            if message.get("op") == "hello":
                if peer.hello is not None:
                    continue  # one identity per connection
                peer.hello = message
            elif peer.hello is None:
                continue  # nothing counts before a hello
            try:
                reply = self._on_message(peer, message)
            except Exception:  # a bug in a handler must not stop the channel
                logger.exception("control channel: handling a message from pid %d", peer.pid)
                continue
            if reply is not None:
                try:
                    peer.sock.setblocking(True)
                    peer.sock.sendall(encode(reply))
                    peer.sock.setblocking(False)
                except OSError:
                    self._drop(peer)
                    return

    def _drop(self, peer: Peer) -> None:
        if peer.closed:
            return
        peer.closed = True
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(peer.sock)
        self._peers.pop(peer.sock.fileno(), None)
        with contextlib.suppress(OSError):
            peer.sock.close()
        try:
            self._on_close(peer)
        except Exception:
            logger.exception("control channel: closing pid %d", peer.pid)
