"""Process facts and controls the supervisor needs: prctl, /proc, wait statuses, signal names.

Linux-specific where it must be (subreaper, non-dumpable, ``/proc``); each helper degrades to
"not available" elsewhere instead of failing, and says so.
"""

# os.path: /proc is read as strings, many times a second.
# ruff: noqa: PTH116, PTH208

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import signal
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ExitStatus",
    "catches_signal",
    "children",
    "cmdline",
    "decode_status",
    "descendants",
    "is_descendant",
    "parent_pid",
    "sender_info",
    "set_child_subreaper",
    "set_non_dumpable",
    "signal_name",
]

_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36
# si_code values (include/uapi/asm-generic/siginfo.h).
_SI_USER = 0
_SI_KERNEL = 0x80
_SI_QUEUE = -1
_SI_TKILL = -6
_MAX_CMDLINE = 4096


def _prctl(option: int, value: int) -> bool:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
    except OSError:
        return False
    prctl = getattr(libc, "prctl", None)
    if prctl is None:
        return False
    return int(prctl(option, value, 0, 0, 0)) == 0


def set_child_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (``PR_SET_CHILD_SUBREAPER``).

    A rank whose parent (torchrun's agent, a shim) dies is re-parented to us instead of
    init, so its exit status is still ours to observe: no rank escapes the record.
    Returns whether it took effect.
    """
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def set_non_dumpable() -> bool:
    """Forbid ptrace, core dumps and ``/proc/<pid>/mem`` access to this process.

    Processes of the same user (the job's ranks) can otherwise attach a debugger to the
    supervisor and read its signing key out of memory. Returns whether it took effect.
    """
    return _prctl(_PR_SET_DUMPABLE, 0)


def signal_name(signo: int) -> str:
    """``SIGTERM`` for 15; ``SIG<n>`` for numbers without a name (real-time signals)."""
    try:
        return signal.Signals(signo).name
    except ValueError:
        rtmin = getattr(signal, "SIGRTMIN", None)
        if rtmin is not None and signo >= rtmin:
            return f"SIGRTMIN+{signo - rtmin}"
        return f"SIG{signo}"


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """How a process ended: ``status`` (exit code) or ``signal`` (name and number)."""

    status: int | None
    signal: str | None
    signo: int | None
    core: bool = False

    @property
    def shell_code(self) -> int:
        """The exit code a shell would report: the status, or 128 + the signal number."""
        if self.status is not None:
            return self.status
        return 128 + (self.signo or 0)


def decode_status(wait_status: int) -> ExitStatus:
    """Decode a ``waitpid`` status."""
    if os.WIFSIGNALED(wait_status):
        signo = os.WTERMSIG(wait_status)
        return ExitStatus(None, signal_name(signo), signo, os.WCOREDUMP(wait_status))
    if os.WIFEXITED(wait_status):
        return ExitStatus(os.WEXITSTATUS(wait_status), None, None)
    return ExitStatus(None, None, None)


def from_returncode(code: int) -> ExitStatus:
    """Decode a ``subprocess`` return code (negative: killed by that signal)."""
    if code < 0:
        return ExitStatus(None, signal_name(-code), -code)
    return ExitStatus(code, None, None)


def _read(path: str, limit: int = _MAX_CMDLINE) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        return os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)


def cmdline(pid: int) -> list[str] | None:
    """The command line of ``pid`` from ``/proc`` (``None`` when gone or not readable)."""
    data = _read(f"/proc/{pid}/cmdline")
    if not data:
        return None
    return [part.decode("utf-8", "replace") for part in data.rstrip(b"\0").split(b"\0")]


def parent_pid(pid: int) -> int | None:
    """The parent of ``pid`` from ``/proc/<pid>/stat`` (``None`` when gone)."""
    data = _read(f"/proc/{pid}/stat", 1024)
    if not data:
        return None
    # The command name (field 2) is in parentheses and may itself hold ") ": split at the
    # last one.
    try:
        rest = data[data.rindex(b")") + 2 :].split()
        return int(rest[1])
    except (ValueError, IndexError):
        return None


def catches_signal(pid: int, signo: int) -> bool:
    """Whether ``pid`` has a handler installed for ``signo`` (``SigCgt`` in ``/proc``).

    Sending a signal nobody handles runs its default action: for the stack-dump signal that
    would kill the rank (e.g. during interpreter shutdown, after ``faulthandler`` let go).
    """
    data = _read(f"/proc/{pid}/status", 8192)
    if not data:
        return False
    for line in data.split(b"\n"):
        if line.startswith(b"SigCgt:"):
            try:
                mask = int(line.split(b":", 1)[1].strip(), 16)
            except ValueError:
                return False
            return bool(mask >> (signo - 1) & 1)
    return False


def process_uid(pid: int) -> int | None:
    """The real uid of ``pid`` (``None`` when gone)."""
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def is_descendant(pid: int, ancestor: int) -> bool:
    """Whether ``pid`` is ``ancestor`` or below it in the process tree (walks ``/proc``)."""
    seen = 0
    current: int | None = pid
    while current is not None and current > 1 and seen < 4096:
        if current == ancestor:
            return True
        current = parent_pid(current)
        seen += 1
    return current == ancestor


def children(pid: int) -> list[int]:
    """The children of ``pid``.

    Read from ``/proc/<pid>/task/*/children`` (each thread's children: a few small files,
    called once a second), falling back to a scan of every process in ``/proc`` on kernels
    without it (which costs a read per process of the whole machine).
    """
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        tasks = []
    lists = [_task_children(pid, task) for task in tasks]
    if tasks and all(item is not None for item in lists):
        return sorted({child for item in lists if item for child in item})
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    return [int(n) for n in entries if n.isdigit() and parent_pid(int(n)) == pid]


def _task_children(pid: int, task: str) -> list[int] | None:
    """The children of one thread; ``None`` when the kernel has no such list."""
    try:
        with open(f"/proc/{pid}/task/{task}/children", "rb") as fh:  # noqa: PTH123
            return [int(p) for p in fh.read().split()]
    except FileNotFoundError:
        return None
    except OSError:
        return []


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (children before grandchildren)."""
    out: list[int] = []
    frontier = [root]
    seen = {root}
    while frontier:
        nxt: list[int] = []
        for pid in frontier:
            for child in children(pid):
                if child not in seen:
                    seen.add(child)
                    out.append(child)
                    nxt.append(child)
        frontier = nxt
    return out


def sender_info(info: Any) -> tuple[dict[str, Any] | None, str | None]:
    """The sender of a signal from a ``siginfo`` (``signal.sigwaitinfo``'s result).

    Returns ``(sender, note)``: the sender as ``{"pid", "uid", "user", "cmdline"}`` when the
    kernel reports a process (``kill``, ``tkill``, ``sigqueue``), else ``None`` with a note
    saying why (the terminal, the kernel itself).
    """
    from trainwarden._system import user_name

    code = getattr(info, "si_code", None)
    pid = getattr(info, "si_pid", 0)
    uid = getattr(info, "si_uid", None)
    if code in (_SI_USER, _SI_TKILL, _SI_QUEUE) and pid:
        line = cmdline(pid)
        return (
            {
                "pid": pid,
                "uid": uid,
                "user": user_name(uid) if uid is not None else None,
                "cmdline": line,
            },
            None if line is not None else "the sender exited before its command line was read",
        )
    if code == _SI_KERNEL:
        return None, "sent by the kernel (a terminal key such as Ctrl-C, or the kernel itself)"
    return None, f"the kernel did not report a sending process (si_code {code})"


def kill_quietly(pid: int, signo: int) -> bool:
    """Send ``signo`` to ``pid``; ``False`` when it is gone (never raises for ESRCH/EPERM)."""
    try:
        os.kill(pid, signo)
    except OSError as exc:
        if exc.errno in (errno.ESRCH, errno.EPERM):
            return False
        raise
    return True


def close_fd(fd: int) -> None:
    """Close ``fd``, ignoring a descriptor that is already closed."""
    with contextlib.suppress(OSError):
        os.close(fd)
