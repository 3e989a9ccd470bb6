"""What runs inside each process of a supervised job before its own code: the rank runtime.

In order: block the recorded signals (before any thread exists, so every thread inherits the
mask), connect to the supervisor and say who we are (with a fresh per-process Ed25519 public
key), turn on ``protect()``, the egress record, stack dumps on request, signal recording, and
the guard (or, without the guard, a global optimizer hook for heartbeats). The process holds
no long-lived key: everything it observes goes to the supervisor, which signs it into the
ledger. If the supervisor disappears, the process keeps recording into the ledger under its
ephemeral key, whose public half the supervisor already recorded in ``rank.start``.
"""

# os.path: a raw, unbuffered stack file.
# ruff: noqa: PTH123

from __future__ import annotations

import atexit
import base64
import contextlib
import faulthandler
import importlib.abc
import importlib.machinery
import logging
import os
import signal
import socket
import sys
import threading
import time
import types
from collections.abc import Callable, Sequence
from typing import Any

from trainwarden.supervise._names import ENV_CHANNEL, ENV_LEDGER, ENV_RUN_ID
from trainwarden.supervise._signals import RECORDED_SIGNALS, SignalRecorder, block_signals
from trainwarden.supervise._wire import Channel, ChannelLost

__all__ = ["RankRuntime", "after_import", "attach", "current_runtime"]

_RUNTIME: RankRuntime | None = None
_LOCK = threading.Lock()


def current_runtime() -> RankRuntime | None:
    """The runtime attached in this process, if any."""
    return _RUNTIME


def _env_int(*names: str) -> int | None:
    for name in names:
        value = os.environ.get(name)
        if value is not None:
            try:
                return int(value)
            except ValueError:
                continue
    return None


class ChannelSink:
    """An :class:`trainwarden.events.EventSink` that forwards events to the supervisor.

    After the supervisor is gone, events go to the run's ledger under the process's
    ephemeral key instead (see :meth:`RankRuntime._supervisor_lost`).
    """

    def __init__(self, runtime: RankRuntime) -> None:
        self._runtime = runtime

    def append(self, event: str, /, run: str | None = None, **data: Any) -> object:
        """Forward one event (``run`` defaults to this run)."""
        self._runtime.record(event, data, run=run)
        return None


class RankRuntime:
    """The attached state of one process (see the module docstring)."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.run_id = os.environ.get(ENV_RUN_ID)
        self.rank = _env_int("RANK", "SLURM_PROCID")
        if self.rank is None and role == "rank":
            self.rank = 0
        self.local_rank = _env_int("LOCAL_RANK", "SLURM_LOCALID")
        self.world_size = _env_int("WORLD_SIZE", "SLURM_NTASKS")
        self.node = _env_int("GROUP_RANK", "SLURM_NODEID")
        self.restart = _env_int("TORCHELASTIC_RESTART_COUNT") or 0
        self.channel: Channel | None = None
        self.welcome: dict[str, Any] = {}
        self.sink = ChannelSink(self)
        self.secret: bytes | None = None
        self.steps = 0
        self._step_time = 0.0
        self._beating = False
        self._interval = 0.5
        self._key: Any = None
        self._fallback: Any = None
        self._fallback_lock = threading.Lock()
        self._stacks_file: Any = None
        self._guard: Any = None

    # -- connection ------------------------------------------------------------------------

    def connect(self, path: str) -> None:
        """Say hello with an ephemeral public key; keep the welcome.

        Raises:
            ChannelLost: The supervisor is not reachable or refused us.
        """
        from trainwarden.keys import PrivateKey

        self._key = PrivateKey.generate(f"{self.role}-{self.rank}@{self.host}:{self.pid}")
        hello = {
            "role": self.role,
            "pid": self.pid,
            "rank": self.rank,
            "local_rank": self.local_rank,
            "world_size": self.world_size,
            "node": self.node,
            "host": self.host,
            "restart": self.restart,
            "key": base64.b64encode(self._key.public.raw).decode("ascii"),
            "argv": list(getattr(sys, "orig_argv", sys.argv))[:64],
        }
        self.channel = Channel(path, hello)
        self.welcome = self.channel.welcome
        secret = self.welcome.get("secret")
        self.secret = bytes.fromhex(secret) if isinstance(secret, str) else None
        interval = self.welcome.get("heartbeat_interval")
        if isinstance(interval, (int, float)) and interval > 0:
            self._interval = float(interval)
        self.run_id = self.welcome.get("run") or self.run_id
        self.channel.start(on_lost=self._supervisor_lost)

    def record(self, event: str, data: dict[str, Any], *, run: str | None = None) -> None:
        """Send one event to the supervisor (or, without one, to the fallback ledger)."""
        payload = dict(data)
        payload.setdefault("rank", self.rank)
        payload.setdefault("pid", os.getpid())
        channel = self.channel
        message = {"op": "event", "event": event, "run": run, "data": payload}
        if channel is not None and channel.send(message):
            return
        self._to_fallback([message])

    def heartbeat(self, step: int | None = None) -> None:
        """Note that this process made progress; a thread tells the supervisor.

        Called after every optimizer step, so it only stores the step and its time: the
        heartbeat thread sends the latest one every ``heartbeat_interval`` seconds when it
        changed (a hung rank sends nothing, which is what the supervisor watches for).
        """
        self.steps = step if step is not None else self.steps + 1
        self._step_time = time.time()
        if not self._beating:
            self._start_beating()

    def _start_beating(self) -> None:
        with _LOCK:
            if self._beating:
                return
            self._beating = True
        threading.Thread(target=self._beat, name="trainwarden-heartbeat", daemon=True).start()

    def _beat(self) -> None:
        sent = None
        while True:
            steps = self.steps
            channel = self.channel
            if steps != sent and channel is not None:
                message = {"op": "heartbeat", "step": steps, "t": self._step_time}
                if not channel.send(message) and channel.lost:
                    return
                sent = steps
            time.sleep(self._interval)

    def close(self) -> None:
        """Close the guard, then flush what is queued (at exit)."""
        guard = self._guard
        if guard is not None:
            # The guard's last telemetry lines, guard.telemetry (the digest that attests
            # them) and guard.close go out over the channel: close it while that is open.
            try:
                guard.close()
            except Exception:  # the exit of the job must not fail for it
                logging.getLogger(__name__).exception("closing the guard at exit failed")
        channel = self.channel
        if channel is not None and not channel.lost:
            if self._beating:  # the last steps since the heartbeat thread's last tick
                channel.send({"op": "heartbeat", "step": self.steps, "t": self._step_time})
            channel.send({"op": "bye", "steps": self.steps})
            channel.flush(3.0)
        with self._fallback_lock:
            if self._fallback is not None:
                with contextlib.suppress(Exception):
                    self._fallback.close()

    # -- supervisor lost ---------------------------------------------------------------------

    def _supervisor_lost(self, reason: str, unsent: list[dict[str, Any]]) -> None:
        # Keep the record going under this process's ephemeral key; rank.start holds its
        # public half, signed by the supervisor, so these entries are attributable.
        note = {
            "op": "event",
            "event": "rank.supervisor-lost",
            "run": None,
            "data": {
                "rank": self.rank,
                "pid": os.getpid(),
                "reason": reason,
                "unsent": len(unsent),
            },
        }
        self._to_fallback([note, *unsent])
        sys.stderr.write(
            f"trainwarden: rank {self.rank}: the run supervisor is gone ({reason}); "
            "recording into the ledger under this rank's own key\n"
        )

    def _to_fallback(self, messages: Sequence[dict[str, Any]]) -> None:
        with self._fallback_lock:
            ledger = self._fallback
            if ledger is None:
                ledger = self._open_fallback()
                if ledger is None:
                    return
            for message in messages:
                if message.get("op") != "event":
                    continue
                with contextlib.suppress(Exception):
                    ledger.append(
                        str(message.get("event")),
                        run=message.get("run") or self.run_id,
                        **dict(message.get("data") or {}),
                    )

    def _open_fallback(self) -> Any:
        path = self.welcome.get("ledger") or os.environ.get(ENV_LEDGER)
        if not path or self._key is None:
            return None
        try:
            from trainwarden.ledger import Ledger

            self._fallback = Ledger(path, key=self._key, fsync="batch")
        except Exception as exc:
            sys.stderr.write(f"trainwarden: cannot record into the ledger {path}: {exc}\n")
            return None
        return self._fallback

    # -- features ----------------------------------------------------------------------------

    def enable_protection(self) -> None:
        """``protect()`` from the environment, and its refusals forwarded as events."""
        from trainwarden.load import protect_from_environment

        protect_from_environment()
        logging.getLogger("trainwarden.load").addHandler(_RefusalForwarder(self))

    def enable_egress(self) -> None:
        """Add the egress audit hook."""
        from trainwarden.supervise._egress import EgressRecorder

        EgressRecorder(lambda event, data: self.record(event, data)).install()

    def enable_stacks(self) -> None:
        """Dump every thread's Python stack to the stacks file on the supervisor's signal.

        ``faulthandler`` writes from a C signal handler, so this works even when a thread
        holds the GIL in native code (a hung collective).
        """
        path = self.welcome.get("stacks_file")
        signo = self.welcome.get("stacks_signal")
        if not isinstance(path, str) or not isinstance(signo, int):
            return
        try:
            self._stacks_file = open(path, "ab", buffering=0)  # noqa: SIM115 - lives forever
            faulthandler.register(signo, file=self._stacks_file, all_threads=True, chain=False)
        except (OSError, ValueError, RuntimeError) as exc:
            sys.stderr.write(f"trainwarden: no stack dumps for this rank: {exc}\n")

    def enable_signals(self) -> None:
        """Record signals with their sender: the guard's recorder, else our own.

        With the guard, one record per signal: ``guard.signal`` (the supervisor counts it as
        it counts ``rank.signal``, by sender, and does not record the exit's signal again).
        Signals from the supervisor, the launcher or the shim (this process's ancestors up to
        the supervisor) are the job's own machinery: recorded, never a guard finding.
        """
        guard = _guard_module() if self._guard_enabled() else None
        channel = self.channel
        if guard is not None and hasattr(guard, "record_signals"):
            try:
                recorder = guard.record_signals(
                    self.sink,
                    run=self.run_id,
                    signals=RECORDED_SIGNALS,
                    trusted=self._is_job_machinery,
                )
            except Exception as exc:  # the job runs, with our own recorder instead
                sys.stderr.write(f"trainwarden: the guard's signal recorder failed ({exc})\n")
            else:
                if channel is not None and hasattr(recorder, "before_termination"):
                    # The default action ends the process: the record must reach the
                    # supervisor first (events go out on the channel's thread).
                    recorder.before_termination(lambda: _flush(channel))
                return
        SignalRecorder(
            lambda data: self.record("rank.signal", data),
            flush=(lambda: _flush(channel)) if channel is not None else lambda: None,
        ).start()

    def _guard_enabled(self) -> bool:
        settings = self.welcome.get("guard") or {}
        return bool(settings.get("enabled", True))

    def _is_job_machinery(self, pid: int) -> bool:
        """Whether ``pid`` is this process's ancestor up to the supervisor (launcher, shim)."""
        supervisor = self.welcome.get("supervisor_pid")
        if not isinstance(supervisor, int):
            return False
        current = os.getppid()
        for _ in range(16):
            if current == pid:
                return True
            if current in (supervisor, 0, 1):
                return False
            current = _parent_of(current)
        return False

    def enable_guard(self) -> None:
        """Configure the guard for this run, or fall back to heartbeats from a global hook."""
        guard_settings = self.welcome.get("guard") or {}
        guard = _guard_module() if self._guard_enabled() else None
        telemetry = self.welcome.get("telemetry_dir")
        if guard is not None:
            on_violation = guard_settings.get("on_violation", "halt")
            guard.configure_defaults(
                sink=self.sink,
                run=self.run_id,
                secret=self.secret,
                on_violation=on_violation,
                telemetry_dir=telemetry,
            )

            def install() -> None:
                self._guard = guard.install_global(
                    sink=self.sink, run=self.run_id, secret=self.secret, on_violation=on_violation
                )
                self._guard.add_step_listener(
                    lambda info: self.heartbeat(getattr(info, "step", None))
                )

            # Once `import torch` has completed (not in the middle of torch/__init__, where
            # torch.optim already exists but torch.distributed does not yet): a process that
            # never imports torch never pays for it.
            after_import("torch", install)
            return
        after_import("torch", self._install_step_hook)

    def _install_step_hook(self) -> None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        from trainwarden.patching import track_hook

        def on_step(optimizer: Any, args: Any, kwargs: Any) -> None:
            del optimizer, args, kwargs
            self.heartbeat()

        handle = register_optimizer_step_post_hook(on_step)
        track_hook(handle, on_step, purpose="supervise", target="global optimizer step post-hook")


class _RefusalForwarder(logging.Handler):
    """Forwards ``protect()`` refusals (warnings of ``trainwarden.load``) as ``load.refused``."""

    def __init__(self, runtime: RankRuntime) -> None:
        super().__init__(logging.WARNING)
        self._runtime = runtime

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self._runtime.record("load.refused", {"message": record.getMessage()[:2000]})


def _parent_of(pid: int) -> int:
    """The parent pid of ``pid`` from ``/proc`` (0 when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        # The command name is in parentheses and may hold spaces: fields follow the last ")".
        return int(stat.rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _unblock_in_child() -> None:
    with contextlib.suppress(OSError, ValueError):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, set(RECORDED_SIGNALS))


def _flush(channel: Channel) -> None:
    channel.flush(2.0)


def _guard_module() -> types.ModuleType | None:
    import importlib

    try:
        guard = importlib.import_module("trainwarden.guard")
    except ImportError:
        return None
    needed = ("configure_defaults", "install_global")
    return guard if all(hasattr(guard, n) for n in needed) else None


# -- running code once a module is imported -----------------------------------------------


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs callbacks right after a watched module has executed (the job imports it)."""

    def __init__(self) -> None:
        self.callbacks: dict[str, list[Callable[[], None]]] = {}
        self._busy = threading.local()

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.callbacks or getattr(self._busy, "on", False):
            return None
        self._busy.on = True
        spec: importlib.machinery.ModuleSpec | None = None
        try:
            for finder in sys.meta_path:
                find = getattr(finder, "find_spec", None)
                if finder is self or find is None:
                    continue
                spec = find(fullname, path, target)
                if spec is not None:
                    break
        finally:
            self._busy.on = False
        if spec is None or spec.loader is None:
            return None
        spec.loader = _CallbackLoader(spec.loader, self, fullname)
        return spec

    def fire(self, name: str) -> None:
        for callback in self.callbacks.pop(name, []):
            _run_callback(name, callback)


def _run_callback(name: str, callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception as exc:  # the job must start even if attaching a feature failed
        sys.stderr.write(f"trainwarden: attaching after import of {name} failed: {exc}\n")


class _CallbackLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, finder: _AfterImport, name: str) -> None:
        self._tw_loader = loader
        self._tw_finder = finder
        self._tw_name = name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        create = getattr(self._tw_loader, "create_module", None)
        if create is None:
            return None
        module: types.ModuleType | None = create(spec)
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        self._tw_loader.exec_module(module)
        self._tw_finder.fire(self._tw_name)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._tw_loader, attr)


_FINDER = _AfterImport()


def after_import(name: str, callback: Callable[[], None]) -> None:
    """Run ``callback`` once ``name`` is imported (now, if it already is)."""
    if name in sys.modules:
        callback()
        return
    _FINDER.callbacks.setdefault(name, []).append(callback)
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


# -- attaching -------------------------------------------------------------------------------


def attach(role: str) -> RankRuntime | None:
    """Attach this process to the run's supervisor (once); ``None`` when not supervised.

    Never raises for a missing supervisor (the job runs, recording into the fallback and
    saying so on stderr); raises only when protection was requested and cannot be enabled.

    Raises:
        trainwarden.errors.ConfigError: ``TRAINWARDEN_PROTECT*`` holds an invalid value.
    """
    global _RUNTIME
    with _LOCK:
        if _RUNTIME is not None:
            return _RUNTIME
        path = os.environ.get(ENV_CHANNEL)
        if not path:
            return None
        # First of all, before any thread exists: every thread started from here on (ours,
        # torch's, the job's) inherits the blocked mask, so only the recorder receives them.
        block_signals(RECORDED_SIGNALS)
        # A forked child (a DataLoader worker) has no recorder thread: give it back the
        # signals, or it would never see a SIGTERM.
        os.register_at_fork(after_in_child=_unblock_in_child)
        runtime = RankRuntime(role)
        _RUNTIME = runtime
    try:
        runtime.connect(path)
    except ChannelLost as exc:
        sys.stderr.write(f"trainwarden: {exc}; this process runs unsupervised\n")
        runtime.welcome = {"ledger": os.environ.get(ENV_LEDGER), "egress": True}
    if os.environ.get("TRAINWARDEN_PROTECT"):
        runtime.enable_protection()
    if runtime.welcome.get("egress", True):
        runtime.enable_egress()
    runtime.enable_stacks()
    runtime.enable_signals()
    runtime.enable_guard()
    atexit.register(runtime.close)
    return runtime
