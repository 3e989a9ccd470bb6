"""Facts about the machine and process that several capabilities need: CPUs, host, user.

Private to trainwarden, shared by all of its packages.
"""

from __future__ import annotations

import os
import socket

__all__ = ["cpu_count", "host_name", "user_name"]


def cpu_count(*, cap: int | None = None) -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's total), >= 1.

    A job pinned to 4 of 64 cores by Slurm or ``taskset`` gets 4: more workers than that
    only add contention. ``cap`` bounds the answer.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    cpus = max(1, cpus)
    return min(cpus, cap) if cap is not None else cpus


def host_name() -> str:
    """This host's name as the OS reports it (``socket.gethostname``)."""
    return socket.gethostname() or "localhost"


def user_name(uid: int | None = None) -> str:
    """The login name of ``uid`` (default: the real uid), or ``uid:<n>`` when it has none."""
    uid = os.getuid() if uid is None else uid
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return f"uid:{uid}"
