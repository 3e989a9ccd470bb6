"""The supervisor's side of the control channel: hellos, relayed events, heartbeats, exits.

Runs on the channel's thread. What a rank reports is recorded as reported by that rank (the
kernel's pid, the rank from its hello), rate-limited, and only in the namespaces a rank may
speak for (``guard.*``, ``egress.*``, ``load.*``, ``job.*``, ``rank.signal``): a rank cannot
make the supervisor sign a ``checkpoint.signed`` or a ``run.exit``.
"""

from __future__ import annotations

import base64
import contextlib
import os
import time
from typing import Any

from trainwarden.errors import Error
from trainwarden.events import CONTEXT_RULES
from trainwarden.keys import PublicKey
from trainwarden.supervise._channel import Peer
from trainwarden.supervise._process import ExitStatus, cmdline
from trainwarden.supervise._state import (
    BUCKET,
    REFILL,
    STACKS_SIGNAL,
    Proc,
    SupervisorState,
    as_int,
    host,
    is_rank,
)

__all__ = ["Relaying"]

_RELAYED_PREFIXES = ("guard.", "egress.", "load.", "job.")
_RELAYED_EVENTS = frozenset({"rank.signal"})
_MAX_EVENT_BYTES = 64 << 10


class Relaying(SupervisorState):
    """The control channel's part of the supervisor."""

    def _on_message(self, peer: Peer, message: dict[str, Any]) -> dict[str, Any] | None:
        op = message.get("op")
        if op == "hello":
            return self._on_hello(peer, message)
        with self.lock:
            proc = self.procs.get(peer.pid)
        if proc is None:
            return None
        if op == "heartbeat":
            step = message.get("step")
            now = time.monotonic()
            with self.lock:
                previous = proc.last_beat or proc.started
                proc.last_beat = now
                if isinstance(step, int) and not isinstance(step, bool):
                    proc.last_step = step
                hung = proc.hung_since
                proc.hung_since = None
            if hung is not None:
                self.append(
                    "rank.recovered",
                    rank=proc.rank,
                    pid=proc.pid,
                    step=proc.last_step,
                    seconds_without_step=round(now - previous, 3),
                )
            return None
        if op == "event":
            self._relay(proc, message)
            return None
        if op == "bye":
            with self.lock:
                proc.closing = True  # exiting: no hang check, no stack signal from now on
            return None
        if op == "child" and proc.role == "shim":
            child = message.get("pid")
            if isinstance(child, int):
                with self.lock:
                    proc.shim = child
            return None
        if op == "exit" and proc.role == "shim":
            self._shim_exit(proc, message)
            return None
        return None

    def _on_hello(self, peer: Peer, message: dict[str, Any]) -> dict[str, Any]:
        role = message.get("role")
        if role not in ("rank", "shim", "process", "worker"):
            return {"op": "refused", "reason": f"unknown role {role!r}"}
        peer.hello = message
        rank = peer.rank
        where = str(message.get("host") or host())[:255]
        public = None
        raw = message.get("key")
        if isinstance(raw, str):
            with contextlib.suppress(ValueError, Error):
                public = PublicKey(
                    base64.b64decode(raw, validate=True), f"{role}-{rank}@{where}:{peer.pid}"
                )
        now = time.monotonic()
        with self.lock:
            proc = self.procs.get(peer.pid)
            if proc is None:
                proc = Proc(peer.pid, str(role), rank, where, now)
                self.procs[peer.pid] = proc
            proc.role, proc.rank, proc.host, proc.public_key = str(role), rank, where, public
            if role in ("rank", "process") and where not in self.nodes:
                self.nodes.append(where)
            world = message.get("world_size")
            if isinstance(world, int) and role == "rank":
                self.world_size = world
        if role in ("rank", "process"):
            self.append(
                "rank.start" if is_rank(proc) else "process.start",
                rank=rank,
                local_rank=as_int(message.get("local_rank")),
                node=as_int(message.get("node")),
                pid=peer.pid,
                host=where,
                role=role,
                world_size=as_int(message.get("world_size")),
                restart=as_int(message.get("restart")),
                uid=peer.uid,
                key=public.fingerprint if public else None,
                public_key=raw if public else None,
                argv=[str(a)[:512] for a in (message.get("argv") or [])][:32]
                if isinstance(message.get("argv"), list)
                else None,
            )
        welcome: dict[str, Any] = {
            "op": "welcome",
            "run": self.run_id,
            "run_dir": str(self.run_dir),
            "ledger": str(self.ledger_dir),
            "telemetry_dir": str(self.run_dir / "telemetry"),
            "egress": self.o.egress,
            "guard": {"enabled": self.o.guard, "on_violation": self.o.on_violation},
            "heartbeat_interval": 0.5,
            # Signals from the supervisor and the processes between it and a rank (the
            # launcher, the shim) are the job's own machinery, not an insider's.
            "supervisor_pid": os.getpid(),
        }
        if role in ("rank", "process"):
            # The sampling secret goes only over this channel, only to the job's own
            # processes (checked by the kernel's peer credentials), never via the environment.
            if self.secret is not None:
                welcome["secret"] = self.secret.hex()
            welcome["stacks_signal"] = STACKS_SIGNAL
            welcome["stacks_file"] = str(
                self.run_dir / "stacks" / f".live-rank-{rank}-{peer.pid}.txt"
            )
        return welcome

    def _relay(self, proc: Proc, message: dict[str, Any]) -> None:
        event = message.get("event")
        data = message.get("data")
        if not isinstance(event, str) or not isinstance(data, dict):
            return
        if not (event.startswith(_RELAYED_PREFIXES) or event in _RELAYED_EVENTS):
            self._note_refused_event(proc, event)
            return
        now = time.monotonic()
        with self.lock:
            # A job that floods the channel must not bloat the ledger without bound.
            proc.tokens = min(BUCKET, proc.tokens + (now - proc.refill_at) * REFILL)
            proc.refill_at = now
            if proc.tokens < 1:
                proc.dropped += 1
                if proc.dropped == 1:
                    flood = True
                else:
                    return
            else:
                proc.tokens -= 1
                flood = False
        if flood:
            self.append(
                "rank.flood",
                rank=proc.rank,
                pid=proc.pid,
                note="events over the rate limit are dropped",
            )
            return
        payload = dict(data)
        # pid and rank are what the kernel and the hello say, not what the message claims
        # (a shim reports about its child, the rank process).
        actual = (proc.shim or payload.get("pid")) if proc.role == "shim" else proc.pid
        if payload.get("pid") not in (None, actual):
            payload["claimed_pid"] = payload.get("pid")
        payload["pid"] = actual
        if payload.get("rank") != proc.rank and proc.rank is not None:
            if payload.get("rank") is not None:
                payload["claimed_rank"] = payload.get("rank")
            payload["rank"] = proc.rank
        payload.setdefault("rank", proc.rank)
        if event == "egress.endpoint":
            if not self._new_endpoint(proc, payload):
                return
        elif event == "egress.native-load":
            library = str(payload.get("library"))
            with self.lock:
                known = library in self.native
                entry = self.native.setdefault(library, {"library": library, "ranks": []})
                if proc.rank not in entry["ranks"]:
                    entry["ranks"].append(proc.rank)
            if known:
                return
        elif event in ("rank.signal", "guard.signal"):
            # The guard's recorder in the rank reports guard.signal instead of rank.signal:
            # one record per signal either way, counted (T6) by its sender.
            signo = payload.get("signo")
            target = proc.shim if proc.role == "shim" and proc.shim else proc.pid
            with self.lock:
                target_proc = self.procs.get(target) or proc
                if isinstance(signo, int):
                    target_proc.signals_seen.add(signo)
            sender = payload.get("sender")
            # SI_KERNEL: a terminal key (Ctrl-C reaches the whole foreground job) or the kernel
            # itself, never another process (none can send that code to another): recorded,
            # not counted as an attack.
            kernel = payload.get("code") == "SI_KERNEL"
            if isinstance(sender, dict) and not kernel and not self._is_ours(sender.get("pid")):
                self._count("T6")
        elif event == "guard.finding":
            technique = payload.get("technique")
            # A signal is counted once, from its guard.signal record (which says whether the
            # sender was the job's own machinery), not again from the guard's finding.
            # Context (anomalies, updates not verified) is not a finding.
            if payload.get("rule_id") not in ("guard.signal", *CONTEXT_RULES):
                self._count(str(technique) if isinstance(technique, str) else "other")
            with self.lock:
                if len(self.guard_findings) < 200:
                    self.guard_findings.append(
                        {
                            k: payload.get(k)
                            for k in (
                                "rule_id",
                                "technique",
                                "check",
                                "rank",
                                "step",
                                "severity",
                                "established",
                            )
                        }
                    )
        elif event == "load.refused":
            self._count("T1")
        try:
            size = len(repr(payload))
        except Exception:
            return
        if size > _MAX_EVENT_BYTES:
            payload = {"rank": proc.rank, "pid": proc.pid, "truncated": True, "bytes": size}
        if event == "rank.signal" and not is_rank(proc) and proc.role != "shim":
            event = "process.signal"  # a helper process of the job, not a rank
        self.append(event, **payload)

    def _is_ours(self, pid: Any) -> bool:
        """Whether ``pid`` is the supervisor, the job's launcher or one of its shims."""
        if not isinstance(pid, int):
            return False
        if pid in (os.getpid(), self.leader):
            return True
        with self.lock:
            proc = self.procs.get(pid)
        return proc is not None and proc.role == "shim"

    def _new_endpoint(self, proc: Proc, payload: dict[str, Any]) -> bool:
        key = (str(payload.get("host")), payload.get("port"))
        with self.lock:
            entry = self.egress.get(key)
            if entry is not None:
                if proc.rank not in entry["ranks"]:
                    entry["ranks"].append(proc.rank)
                if entry.get("address") is None and payload.get("address"):
                    entry["address"] = payload.get("address")
                return False
            self.egress[key] = {
                "host": payload.get("host"),
                "port": payload.get("port"),
                "address": payload.get("address"),
                "via": payload.get("via"),
                "ranks": [proc.rank],
            }
        return True

    def _note_refused_event(self, proc: Proc, event: str) -> None:
        # A rank may only report what it observed; supervisor events (run.*, checkpoint.*,
        # preflight.*) from a rank would be forgeries signed with our key.
        self.append(
            "channel.refused-event",
            rank=proc.rank,
            pid=proc.pid,
            event=event[:128],
            note="only guard.*, egress.*, load.*, job.* and rank.signal may be reported by a rank",
        )

    def _shim_exit(self, shim: Proc, message: dict[str, Any]) -> None:
        child = message.get("pid")
        if not isinstance(child, int):
            self.append(
                "rank.exit",
                rank=shim.rank,
                pid=None,
                status=message.get("status"),
                signal=None,
                seconds=0.0,
                error=str(message.get("error"))[:500],
            )
            return
        signo = message.get("signo")
        status = ExitStatus(
            as_int(message.get("status")),
            str(message["signal"]) if message.get("signal") else None,
            signo if isinstance(signo, int) else None,
        )
        with self.lock:
            proc = self.procs.get(child)
            if proc is None:
                proc = Proc(child, "rank", shim.rank, shim.host, shim.started)
                self.procs[child] = proc
        seconds = message.get("seconds")
        self._on_exit(
            child,
            status,
            source="shim",
            seconds=float(seconds) if isinstance(seconds, (int, float)) else None,
            reporter=shim.pid,
        )

    def _on_close(self, peer: Peer) -> None:
        del peer

    def _on_refused(self, pid: int, uid: int, reason: str) -> None:
        self.refused_peers += 1
        if self.refused_peers > 100:
            return
        from trainwarden._system import user_name

        self.append(
            "channel.refused",
            pid=pid,
            uid=uid,
            user=user_name(uid),
            cmdline=cmdline(pid),
            reason=reason,
        )

    # -- the end ---------------------------------------------------------------------------------
