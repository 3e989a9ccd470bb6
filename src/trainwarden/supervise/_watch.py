"""The supervisor's main thread: its own signals, every exit, orphans, hangs and stacks.

The main thread waits with ``sigtimedwait`` for the signals it blocked (its own termination
signals, with their sender, and ``SIGCHLD``), reaps every process it is given (it is a child
subreaper, so ranks whose parent died come to it), and once a second polls the checkpoint
directories and looks for ranks that made no step for too long.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from trainwarden.errors import Error, InputError
from trainwarden.supervise._process import (
    ExitStatus,
    catches_signal,
    cmdline,
    decode_status,
    descendants,
    kill_quietly,
    sender_info,
    signal_name,
)
from trainwarden.supervise._state import (
    SIGKILL_NOTE,
    STACKS_SIGNAL,
    Proc,
    SupervisorState,
    children,
    file_size,
    is_rank,
)

__all__ = ["Watching"]


class Watching(SupervisorState):
    """The main loop's part of the supervisor."""

    def _watch(self) -> ExitStatus:
        next_tick = 0.0
        ended_at: float | None = None
        terminated = killed = False
        while True:
            try:
                info = signal.sigtimedwait(self.waited, 0.2)
            except InterruptedError:  # pragma: no cover
                info = None
            if info is not None and info.si_signo != signal.SIGCHLD:
                self._on_own_signal(info)
            self._reap()
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + 1.0
                if self.watcher is not None and self._watches_checkpoints():
                    self.watcher.poll()
                self._check_hangs(now)
                self._adopt_orphans()
                with contextlib.suppress(Error):
                    self.ledger.flush()
            if self.leader_exit is None:
                continue
            left = [p for p in descendants(os.getpid()) if p != os.getpid()]
            if not left:
                self._drain_channel()
                return self.leader_exit
            # The job's main process ended but left processes behind: give them a grace
            # period (a rank finishing its checkpoint), then end them.
            ended_at = ended_at or now
            if not terminated and now - ended_at > self.o.orphan_grace:
                terminated = True
                for pid in left:
                    self._note_orphan(pid)
                    kill_quietly(pid, signal.SIGTERM)
            elif terminated and not killed and now - ended_at > self.o.orphan_grace + 10:
                killed = True
                for pid in left:
                    kill_quietly(pid, signal.SIGKILL)

    def _drain_channel(self, timeout: float = 5.0) -> None:
        # Every process of the job has ended, so every connection is closed; what they sent
        # last (a shim's report of its rank's exit) may still be in the channel's buffers.
        server = self.server
        deadline = time.monotonic() + timeout
        while server is not None and server.peers() and time.monotonic() < deadline:
            time.sleep(0.02)

    def _on_own_signal(self, info: Any) -> None:
        signo = info.si_signo
        sender, note = sender_info(info)
        forward = self.leader is not None and self.leader_exit is None
        kernel = sender is None and getattr(info, "si_code", None) == 0x80
        if kernel:
            # From the terminal: the job is in our process group and got it too.
            forward = False
            note = (note or "") + "; the job received it from the terminal as well"
        self.append(
            "supervisor.signal",
            signal=signal_name(signo),
            signo=signo,
            sender=sender,
            note=note,
            action="forwarded to the job" if forward else "recorded",
            # The code says what the note says, for a reader that must not parse prose (the
            # report: a terminal key is the user stopping their job, not an attack).
            **({"code": "SI_KERNEL"} if kernel else {}),
        )
        self.progress(
            "signal",
            f"received {signal_name(signo)}"
            + (f" from pid {sender['pid']}" if sender else "")
            + ("; forwarding it to the job" if forward else ""),
        )
        if forward and self.leader is not None:
            kill_quietly(self.leader, signo)
        if signo in (signal.SIGINT, signal.SIGTERM):
            self.stop_requests += 1
            if self.stop_requests >= 3:
                # Asked three times: the job does not stop on its own; end it for good.
                left = [p for p in descendants(os.getpid()) if p != os.getpid()]
                self.append(
                    "supervisor.escalated",
                    signal="SIGKILL",
                    pids=left,
                    note=f"{self.stop_requests} termination requests; killing the job",
                )
                self.progress("signal", "third termination request: killing the job")
                for pid in left:
                    kill_quietly(pid, signal.SIGKILL)

    def _reap(self) -> None:
        while True:
            try:
                pid, raw = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._on_exit(pid, decode_status(raw), source="supervisor")

    def _on_exit(
        self,
        pid: int,
        status: ExitStatus,
        *,
        source: str,
        seconds: float | None = None,
        reporter: int | None = None,
    ) -> None:
        with self.lock:
            proc = self.procs.get(pid)
            if proc is not None and proc.exited:
                if pid == self.leader and self.leader_exit is None:
                    self.leader_exit = status
                return
            if proc is not None:
                proc.exited = True
        if pid == self.leader:
            self.leader_exit = status
        if proc is not None and proc.role in ("rank", "process"):
            elapsed = seconds if seconds is not None else round(time.monotonic() - proc.started, 3)
            if status.signo is not None and status.signo not in proc.signals_seen:
                self._record_exit_signal(proc, status, source="exit-status")
            self.append(
                "rank.exit" if is_rank(proc) else "process.exit",
                rank=proc.rank,
                pid=pid,
                status=status.status,
                signal=status.signal,
                seconds=elapsed,
                role=proc.role,
                observed_by=source,
                **({"reporter": reporter} if reporter is not None else {}),
            )
            return
        if proc is not None and proc.role == "shim":
            return  # the shim reported its rank's exit already
        if pid == self.leader:
            return  # the launcher (torchrun): its status is the job's, in run.exit
        if pid in self.orphans_seen:
            self.append("process.exit", pid=pid, status=status.status, signal=status.signal)

    def _record_exit_signal(self, proc: Proc, status: ExitStatus, *, source: str) -> None:
        assert status.signo is not None
        note = (
            SIGKILL_NOTE
            if status.signo == signal.SIGKILL
            else (
                "ended by this signal; its sender was not recorded (the signal reached the process "
                "before trainwarden's recorder, or was sent to a thread)"
            )
        )
        self.append(
            "rank.signal" if is_rank(proc) else "process.signal",
            rank=proc.rank,
            pid=proc.pid,
            signal=status.signal,
            signo=status.signo,
            sender=None,
            source=source,
            note=note,
            core=status.core,
        )
        if status.signo == signal.SIGKILL:
            self._count("T6")

    def _adopt_orphans(self) -> None:
        # Processes re-parented to us (their parent died): record each once.
        for pid in children(os.getpid()):
            if pid == self.leader or pid in self.orphans_seen:
                continue
            with self.lock:
                known = self.procs.get(pid)
            if known is not None and known.role == "shim":
                continue
            self._note_orphan(pid)

    def _note_orphan(self, pid: int) -> None:
        if pid in self.orphans_seen or pid == self.leader:
            return
        self.orphans_seen.add(pid)
        with self.lock:
            proc = self.procs.get(pid)
        self.append(
            "process.orphan",
            pid=pid,
            rank=proc.rank if proc is not None else None,
            cmdline=cmdline(pid),
            note="its parent ended; the supervisor (a child subreaper) adopted it",
        )

    def _current_step(self) -> int | None:
        with self.lock:
            steps = [p.last_step for p in self.procs.values() if p.last_step is not None]
        return max(steps) if steps else None

    def _timeouts(self) -> tuple[float, float]:
        """``(between steps, until the first step)``."""
        step = self.o.hang_timeout
        start = self.o.start_timeout if self.o.start_timeout is not None else max(step, 600.0)
        return step, start

    def _check_hangs(self, now: float) -> None:
        step_timeout, start_timeout = self._timeouts()
        with self.lock:
            candidates = [
                p
                for p in self.procs.values()
                if not p.exited
                and not p.closing
                and p.hung_since is None
                and (p.role == "rank" or (p.role == "process" and p.last_beat is not None))
                and (
                    now - p.last_beat > step_timeout
                    if p.last_beat is not None
                    else now - p.started > start_timeout
                )
            ]
            for proc in candidates:
                proc.hung_since = now
                proc.hangs += 1
        for proc in candidates:
            threading.Thread(
                target=self._dump_stacks, args=(proc, now), name="trainwarden-stacks", daemon=True
            ).start()

    def _dump_stacks(self, proc: Proc, now: float) -> None:
        live = self._stacks_live(proc)
        before = file_size(live)
        # Only a process that handles the signal gets it: its default action would kill.
        if catches_signal(proc.pid, STACKS_SIGNAL) and kill_quietly(proc.pid, STACKS_SIGNAL):
            # faulthandler writes from a signal handler: wait until the output stops growing.
            deadline = time.monotonic() + 5.0
            last, quiet_since = before, time.monotonic()
            while time.monotonic() < deadline:
                time.sleep(0.1)
                size = file_size(live)
                if size != last:
                    last, quiet_since = size, time.monotonic()
                elif size > before and time.monotonic() - quiet_since > 0.3:
                    break
        out = (
            self.run_dir
            / "stacks"
            / f"rank-{proc.rank if proc.rank is not None else 'x'}-{proc.hangs}.txt"
        )
        text = b""
        with contextlib.suppress(OSError), live.open("rb") as fh:
            fh.seek(before)
            text = fh.read(4 << 20)
        header = (
            f"# rank {proc.rank} pid {proc.pid} on {proc.host}: no step for "
            f"{now - (proc.last_beat or proc.started):.1f} s (last step {proc.last_step})\n"
        ).encode()
        body = text or b"(no stack dump: the process did not answer the stack signal)\n"
        from trainwarden._fs import atomic_write

        with contextlib.suppress(InputError):
            atomic_write(out, header + body, what="stack dump")
        self.append(
            "rank.hang",
            rank=proc.rank,
            pid=proc.pid,
            last_step=proc.last_step,
            seconds=round(now - (proc.last_beat or proc.started), 3),
            phase="step" if proc.last_beat is not None else "start",
            stacks=str(Path("stacks") / out.name),
            stacks_sha256="sha256:" + hashlib.sha256(header + body).hexdigest(),
            timeout=self._timeouts()[0 if proc.last_beat is not None else 1],
        )
        self.progress(
            "watch",
            f"rank {proc.rank} (pid {proc.pid}) made no step for "
            f"{now - (proc.last_beat or proc.started):.0f} s; stacks in {out}",
        )

    def _stacks_live(self, proc: Proc) -> Path:
        return self.run_dir / "stacks" / f".live-rank-{proc.rank}-{proc.pid}.txt"

    # -- the control channel (server thread) ---------------------------------------------------
