"""The egress record: every distinct network endpoint a job's Python code resolves or contacts.

An audit hook (PEP 578) sees ``socket.getaddrinfo``, ``socket.connect``, ``socket.sendto``,
``http.client.connect`` and name lookups in every thread of the process, and cannot be
removed once added. A name lookup followed by a connect to the same port in the same thread
is one endpoint (name and address together). Native code that opens sockets itself bypasses
Python's audit hooks, so every ``ctypes.dlopen`` is recorded as well.

The hook runs for every audited event of the process (file opens, imports...): it costs one
set lookup for those, and does real work only for the events above.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["EgressRecorder"]

_NAME_EVENTS = {
    "socket.getaddrinfo": "getaddrinfo",
    "socket.gethostbyname": "getaddrinfo",
    "socket.gethostbyname_ex": "getaddrinfo",
    "http.client.connect": "http",
}
_WATCHED = frozenset({*_NAME_EVENTS, "socket.connect", "socket.sendto", "ctypes.dlopen"})
# A lookup not followed by a connect within this time is recorded on its own.
_PENDING_SECONDS = 2.0


class EgressRecorder:
    """Report each distinct endpoint and native library once.

    Args:
        report: Called with ``(event, data)``: ``egress.endpoint`` with ``host``, ``port``,
            ``address``, ``via``; ``egress.native-load`` with ``library``.
    """

    def __init__(self, report: Callable[[str, dict[str, Any]], None]) -> None:
        self._report = report
        self._seen: set[tuple[str, Any]] = set()
        self._libraries: set[str] = set()
        self._lock = threading.Lock()
        self._local = threading.local()
        # (thread id, port) -> (host, via, monotonic time) of lookups awaiting a connect.
        self._pending: dict[tuple[int, Any], tuple[str, str, float]] = {}
        self._installed = False

    def install(self) -> None:
        """Add the audit hook (for the life of the process) and start the flusher."""
        if self._installed:
            return
        self._installed = True
        sys.addaudithook(self._hook)
        threading.Thread(target=self._flusher, name="trainwarden-egress", daemon=True).start()

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if event not in _WATCHED:
            return
        local = self._local
        if getattr(local, "busy", False):
            return
        local.busy = True
        try:
            # An audit hook that raises aborts the audited call: never let one escape.
            with contextlib.suppress(Exception):
                self._handle(event, args)
        finally:
            local.busy = False

    def _handle(self, event: str, args: tuple[Any, ...]) -> None:
        if event == "ctypes.dlopen":
            name = args[0] if args else None
            if isinstance(name, bytes):
                name = name.decode("utf-8", "replace")
            if isinstance(name, str) and name:
                with self._lock:
                    if name in self._libraries:
                        return
                    self._libraries.add(name)
                self._report("egress.native-load", {"library": name})
            return
        via = _NAME_EVENTS.get(event)
        if via is not None:
            host, port = _name_and_port(event, args)
            if host is None:
                return
            key = (threading.get_ident(), port)
            with self._lock:
                earlier = self._pending.get(key)
                # http.client.connect resolves the same name next: keep the first "via".
                if earlier is None or earlier[0] != host:
                    self._pending[key] = (host, via, time.monotonic())
            return
        # socket.connect / socket.sendto: (socket, address)
        if len(args) < 2 or not isinstance(args[1], tuple) or len(args[1]) < 2:
            return  # AF_UNIX paths, netlink...: local, not egress
        address, port = args[1][0], args[1][1]
        if not isinstance(address, str):
            return
        key = (threading.get_ident(), port)
        with self._lock:
            pending = self._pending.pop(key, None)
        if pending is not None:
            host, first_via = pending[0], pending[1]
        else:
            host, first_via = address, "connect" if event == "socket.connect" else "sendto"
        self._emit(host, port, address, first_via)

    def _emit(self, host: str, port: Any, address: str | None, via: str) -> None:
        with self._lock:
            if (host, port) in self._seen:
                return
            self._seen.add((host, port))
        self._report(
            "egress.endpoint", {"host": host, "port": port, "address": address, "via": via}
        )

    def flush(self, *, older_than: float = 0.0) -> None:
        """Record lookups that were not followed by a connect."""
        now = time.monotonic()
        with self._lock:
            stale = [k for k, v in self._pending.items() if now - v[2] >= older_than]
            items = [self._pending.pop(k) for k in stale]
            ports = [k[1] for k in stale]
        for (host, via, _), port in zip(items, ports, strict=True):
            self._emit(host, port, None, via)

    def _flusher(self) -> None:
        while True:
            time.sleep(_PENDING_SECONDS)
            with contextlib.suppress(Exception):  # never let the flusher die
                self.flush(older_than=_PENDING_SECONDS)


def _name_and_port(event: str, args: tuple[Any, ...]) -> tuple[str | None, Any]:
    if event == "http.client.connect":
        # (connection, host, port)
        host = args[1] if len(args) > 1 else None
        port = args[2] if len(args) > 2 else None
    elif event == "socket.getaddrinfo":
        host = args[0] if args else None
        port = args[1] if len(args) > 1 else None
    else:  # gethostbyname(_ex): (hostname,)
        host, port = (args[0] if args else None), None
    if isinstance(host, bytes):
        host = host.decode("idna", "replace")
    if isinstance(port, bytes):
        port = port.decode("ascii", "replace")
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    return (host if isinstance(host, str) and host else None), port
