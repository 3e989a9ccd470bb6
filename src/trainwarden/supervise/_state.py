"""What the supervisor's parts share: the state of the job's processes, and the constants.

The supervisor is split by concern: :mod:`._watch` (the main thread: signals, exits, hangs),
:mod:`._relay` (the control channel's messages) and :mod:`._supervisor` (pre-flight, launch,
attestation). They share one object; :class:`SupervisorState` declares what each part may
rely on.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainwarden.keys import PublicKey
from trainwarden.supervise._process import ExitStatus, children

if TYPE_CHECKING:
    from trainwarden.supervise._channel import ChannelServer
    from trainwarden.supervise._checkpoints import CheckpointWatcher
    from trainwarden.supervise._supervisor import RunOptions

__all__ = [
    "FORWARDED",
    "SIGKILL_AUDIT_RULE",
    "STACKS_SIGNAL",
    "Proc",
    "SupervisorState",
    "as_int",
    "children",
    "file_size",
    "host",
    "is_rank",
    "user",
]

Progress = Callable[[str, str], None]

#: Signals the supervisor records (with their sender) and forwards to the job.
FORWARDED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
#: Each rank dumps its Python stacks (faulthandler) when it receives this signal.
STACKS_SIGNAL: int = signal.SIGRTMIN + 6
#: Host audit rule that names the sender of a SIGKILL (the kernel does not tell the victim).
SIGKILL_AUDIT_RULE = (
    "auditctl -a always,exit -F arch=b64 -S kill,tkill,tgkill -F a1=9 -k trainwarden-kill"
)
SIGKILL_NOTE = (
    "SIGKILL cannot be caught, and the OS does not report its sender to the victim or its "
    f"parent; on the host, `{SIGKILL_AUDIT_RULE}` then `ausearch -k trainwarden-kill` names "
    "it (the kernel's OOM killer also sends SIGKILL: see the kernel log)"
)
# A rank's events over the channel: at most this many at once, refilled at this rate.
BUCKET = 2000.0
REFILL = 100.0


@dataclass
class Proc:
    """A process of the job the supervisor knows (a rank, a shim, another Python process)."""

    pid: int
    role: str
    rank: int | None
    host: str
    started: float
    public_key: PublicKey | None = None
    last_beat: float | None = None
    last_step: int | None = None
    hung_since: float | None = None
    hangs: int = 0
    exited: bool = False
    signals_seen: set[int] = field(default_factory=set)
    closing: bool = False
    shim: int | None = None
    tokens: float = BUCKET
    refill_at: float = 0.0
    dropped: int = 0


class SupervisorState:
    """Attributes and operations shared by the supervisor's parts (set by the supervisor)."""

    o: RunOptions
    progress: Progress
    lock: threading.RLock
    procs: dict[int, Proc]
    run_id: str
    run_dir: Path
    ledger_dir: Path
    leader: int | None
    leader_exit: ExitStatus | None
    waited: set[int]
    watcher: CheckpointWatcher | None
    orphans_seen: set[int]
    egress: dict[tuple[str, Any], dict[str, Any]]
    native: dict[str, dict[str, Any]]
    findings: dict[str, int]
    guard_findings: list[dict[str, Any]]
    nodes: list[str]
    world_size: int | None
    secret: bytes | None
    refused_peers: int
    stop_requests: int
    ledger: Any
    server: ChannelServer | None

    def append(self, event: str, /, **data: Any) -> None:
        """Sign and append one event to the ledger."""
        raise NotImplementedError

    def _watches_checkpoints(self) -> bool:
        raise NotImplementedError

    def _on_exit(
        self,
        pid: int,
        status: ExitStatus,
        *,
        source: str,
        seconds: float | None = None,
        reporter: int | None = None,
    ) -> None:
        raise NotImplementedError

    def _count(self, technique: str) -> None:
        with self.lock:
            self.findings[technique] = self.findings.get(technique, 0) + 1


def is_rank(proc: Proc) -> bool:
    """A rank: started through the bootstrap, or any process with a rank (``RANK``)."""
    return proc.role == "rank" or proc.rank is not None


def file_size(path: Path) -> int:
    """Size of ``path``, 0 when it does not exist."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def as_int(value: Any) -> int | None:
    """``value`` if it is an int (not a bool), else ``None``."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def host() -> str:
    """This host's name."""
    from trainwarden._system import host_name

    return host_name()


def user() -> str:
    """The effective user's name."""
    from trainwarden._system import user_name

    return user_name(os.geteuid())
