"""The supervisor: pre-flight, launch, watch and attest one training job (``trainwarden run``).

One process, one main thread that owns the job: it waits for signals with
``sigtimedwait`` (its own termination signals with their sender, ``SIGCHLD`` for exits),
reaps every descendant it is given (it is a child subreaper), watches heartbeats for hangs
and polls the checkpoint directories. A second thread serves the control channel; a third
signs checkpoints. Everything observed is appended to the ledger under the supervisor's key,
which was loaded before the job started and never leaves this (non-dumpable) process.
"""

# os.path: string paths; normalised without resolving symlinks.
# ruff: noqa: PTH100, PTH112, PTH117, PTH120, PTH123, PTH208

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainwarden import __version__
from trainwarden.errors import ConfigError, Error, InputError
from trainwarden.keys import PrivateKey, PublicKey
from trainwarden.supervise._channel import ChannelServer, Peer
from trainwarden.supervise._checkpoints import CheckpointWatcher, SignedCheckpoint
from trainwarden.supervise._command import parse_command
from trainwarden.supervise._launch import (
    InterpreterInfo,
    check_bootstrap_importable,
    check_writable_dir,
    plan_launch,
    query_interpreter,
    resolve_program,
    sitecustomize_digest,
    write_sitecustomize,
)
from trainwarden.supervise._policy import Policy
from trainwarden.supervise._preflight import (
    CheckResult,
    check_access,
    check_code,
    check_environment,
    check_inputs,
    check_scan,
    decide,
)
from trainwarden.supervise._process import (
    ExitStatus,
    catches_signal,
    cmdline,
    decode_status,
    descendants,
    kill_quietly,
    parent_pid,
    sender_info,
    set_child_subreaper,
    set_non_dumpable,
    signal_name,
)
from trainwarden.supervise._rundir import (
    SCHEMA_VERSION,
    check_run_id,
    create_run_record,
    new_run_id,
    relative_to,
    utc_now,
    write_run_record,
)

__all__ = ["RunOptions", "RunResult", "run_job"]

logger = logging.getLogger("trainwarden.supervise")

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
_SIGKILL_NOTE = (
    "SIGKILL cannot be caught, and the OS does not report its sender to the victim or its "
    f"parent; on the host, `{SIGKILL_AUDIT_RULE}` then `ausearch -k trainwarden-kill` names "
    "it (the kernel's OOM killer also sends SIGKILL: see the kernel log)"
)
_RELAYED_PREFIXES = ("guard.", "egress.", "load.", "job.")
_RELAYED_EVENTS = frozenset({"rank.signal"})
_MAX_EVENT_BYTES = 64 << 10
_BUCKET = 2000.0
_REFILL = 100.0


@dataclass(frozen=True, slots=True)
class RunOptions:
    """What ``trainwarden run`` was asked to do (the CLI's flags; see ``docs/run.md``).

    Attributes:
        command: The job command (after ``--``).
        key: The supervisor's signing key (``None``: an ephemeral key for this run only,
            whose public half is written to ``RUN_DIR/supervisor.pub``).
        run_id: The run id (default: ``slurm-<job>`` under Slurm, else time + random).
        run_dir: The run directory (default ``./trainwarden-runs/<run-id>``).
        ledger: The ledger directory (default ``RUN_DIR/ledger``).
        lock: A signed environment lock to verify the environment against.
        lock_key: The public key the lock must be signed by.
        scan: Checkpoints and model files the job will read (added to those found).
        checkpoints: Directories where the job writes checkpoints (added to those found).
        inputs: Data manifests and config files to digest.
        outputs: Files the job writes that are outputs (subjects of the provenance).
        hang_timeout: Seconds without a step after which a rank is recorded as hung.
        start_timeout: Seconds a rank may take to its first step (imports, data loading,
            rendezvous) before it is recorded as hung (default: ``max(hang_timeout, 600)``).
        settle: Seconds without change after which a checkpoint is complete.
        env_check: ``fast``, ``full`` or ``off``.
        access_check: Run the access audit.
        policy: Pre-flight policy.
        launcher: ``auto`` or a launcher name.
        guard: Turn the guard on in every rank (when installed).
        on_violation: The guard's action, ``halt`` or ``warn``.
        protect: ``protect()`` in every rank.
        protect_profiles: Allowlist profiles for ``protect()``.
        egress: Record egress in every rank.
        seal: Seal the ledger at the end (default: when it is the run's own ledger).
        signatures: Directory for checkpoint signatures (default: ``PATH.sig`` beside each).
        orphan_grace: Seconds processes left behind by the job may run before being ended.
        cwd: The job's working directory (default: the current one).
        environ: The job's environment (default: this process's).
    """

    command: tuple[str, ...]
    key: PrivateKey | None = None
    run_id: str | None = None
    run_dir: Path | None = None
    ledger: Path | None = None
    lock: Path | None = None
    lock_key: Path | None = None
    scan: tuple[Path, ...] = ()
    checkpoints: tuple[Path, ...] = ()
    inputs: tuple[Path, ...] = ()
    outputs: tuple[Path, ...] = ()
    hang_timeout: float = 300.0
    start_timeout: float | None = None
    settle: float = 2.0
    env_check: str = "fast"
    access_check: bool = True
    policy: Policy = field(default_factory=Policy)
    launcher: str = "auto"
    guard: bool = True
    on_violation: str = "halt"
    protect: bool = True
    protect_profiles: tuple[str, ...] = ()
    egress: bool = True
    seal: bool | None = None
    signatures: Path | None = None
    orphan_grace: float = 10.0
    cwd: Path | None = None
    environ: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class RunResult:
    """What happened.

    Attributes:
        run_id: The run id.
        run_dir: The run directory.
        ledger: The ledger directory.
        decision: ``proceed`` or ``refuse`` (pre-flight).
        refusals: Why it was refused.
        warnings: Pre-flight warnings.
        exit: How the job ended (``None`` when it was not launched).
        exit_code: What ``trainwarden run`` exits with (the job's, like a shell; 2 if refused).
        provenance: The signed statement, when written.
        checkpoints: Checkpoints signed during the run.
        egress: Distinct endpoints contacted.
        findings: Counts by technique (``T2``...).
        seconds: Wall time of the job.
        key: Fingerprint of the supervisor's key.
        ephemeral_key: The key was generated for this run.
        problems: The supervisor's own problems that did not stop the run (ledger errors...).
    """

    run_id: str
    run_dir: Path
    ledger: Path
    decision: str
    refusals: tuple[str, ...]
    warnings: tuple[str, ...]
    exit: ExitStatus | None
    exit_code: int
    provenance: Path | None
    checkpoints: tuple[SignedCheckpoint, ...]
    egress: tuple[Mapping[str, Any], ...]
    findings: Mapping[str, int]
    seconds: float
    key: str
    ephemeral_key: bool
    problems: tuple[str, ...] = ()


@dataclass
class _Proc:
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
    tokens: float = _BUCKET
    refill_at: float = 0.0
    dropped: int = 0


def _noop(stage: str, message: str) -> None:
    del stage, message


def run_job(options: RunOptions, *, progress: Progress | None = None) -> RunResult:
    """Pre-flight, launch, watch and attest the job; return when it (and its orphans) ended.

    Raises:
        ConfigError: A misconfiguration (no command, unknown launcher flag, run id in use...).
        InputError: A directory cannot be written, an input cannot be read.
    """
    return _Supervisor(options, progress or _noop).run()


class _Supervisor:
    def __init__(self, options: RunOptions, progress: Progress) -> None:
        self.o = options
        self.progress = progress
        self.environ = dict(os.environ if options.environ is None else options.environ)
        self.cwd = Path(os.path.abspath(options.cwd or Path.cwd()))
        self.run_id = check_run_id(options.run_id or new_run_id(self.environ))
        run_dir = options.run_dir or Path("trainwarden-runs") / self.run_id
        self.run_dir = Path(os.path.abspath(self.cwd / run_dir))
        self.ledger_dir = Path(
            os.path.abspath(self.cwd / (options.ledger or self.run_dir / "ledger"))
        )
        self.own_ledger = options.ledger is None
        self.lock = threading.RLock()
        self.procs: dict[int, _Proc] = {}
        self.egress: dict[tuple[str, Any], dict[str, Any]] = {}
        self.native: dict[str, dict[str, Any]] = {}
        self.findings: dict[str, int] = {}
        self.guard_findings: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.nodes: list[str] = []
        self.world_size: int | None = None
        self.secret = os.urandom(32)
        self.commitment = (
            "sha256:"
            + hashlib.sha256(b"trainwarden-sampling-secret-v1\0" + self.secret).hexdigest()
        )
        self.leader: int | None = None
        self.leader_exit: ExitStatus | None = None
        self.ledger: Any = None
        self.watcher: CheckpointWatcher | None = None
        self.server: ChannelServer | None = None
        self.private: Path | None = None
        self.preflight: list[CheckResult] = []
        self.refused_peers = 0
        self.orphans_seen: set[int] = set()

    # -- the whole run -------------------------------------------------------------------------

    def run(self) -> RunResult:
        o = self.o
        # First: the key is in memory already, and the checks below start processes of the
        # job's environment (its interpreter, git). Same-user processes must not be able to
        # ptrace us or read our memory from here on.
        self.dumpable_off = set_non_dumpable()
        job = parse_command(o.command, launcher=o.launcher, environ=self.environ, cwd=self.cwd)
        self.job = job
        resolve_program(job.argv[0], environ=self.environ, cwd=self.cwd)
        self.info: InterpreterInfo | None = None
        if job.interpreter is not None:
            self.progress("launch", f"inspecting the job's Python ({job.interpreter})")
            self.info = query_interpreter(job.interpreter, environ=self.environ, cwd=self.cwd)
            check_bootstrap_importable(self.info, environ=self.environ, cwd=self.cwd)
        self.ephemeral = o.key is None
        self.key = o.key if o.key is not None else PrivateKey.generate("trainwarden-run-ephemeral")
        self.multinode = bool(job.nnodes and job.nnodes > 1)
        self.node_label = str(job.node_rank) if job.node_rank is not None else None
        check_writable_dir(self.run_dir, what="run directory")
        check_writable_dir(self.ledger_dir, what="ledger directory")
        for sub in ("telemetry", "stacks"):
            (self.run_dir / sub).mkdir(exist_ok=True)
        self.started = utc_now()
        self.t0 = time.monotonic()
        self.record_path = self.run_dir / "run.json"
        # On several nodes, the node of rank 0 keeps run.json and the statement; the others
        # write nodes/<node-rank>.json (first come, when the node rank is not known).
        self.primary = not (self.multinode and job.node_rank not in (None, 0)) and (
            create_run_record(self.record_path, self._record(), shared=self.multinode)
        )
        if not self.primary:
            label = self.node_label or f"{_host()}-{os.getpid()}"
            self.record_path = self.run_dir / "nodes" / f"{label}.json"
            self.record_path.parent.mkdir(exist_ok=True)
            create_run_record(self.record_path, self._record(), shared=False)
        if self.ephemeral:
            from trainwarden._fs import atomic_write

            atomic_write(self._pub_path(), self.key.public.to_pem(), what="public key")
        from trainwarden.ledger import Ledger

        self.ledger = Ledger(self.ledger_dir, key=self.key, fsync="batch")
        # Orphans of the job (a rank whose torchrun agent died) are re-parented to us.
        self.subreaper = set_child_subreaper()
        self._block_signals()
        try:
            return self._supervise()
        finally:
            self._cleanup()

    def _pub_path(self) -> Path:
        return self.run_dir / (
            "supervisor.pub" if self.primary else f"supervisor-{os.getpid()}.pub"
        )

    def _supervise(self) -> RunResult:
        job = self.job
        self.append(
            "run.start",
            command=list(job.argv),
            launcher=job.launcher,
            cwd=str(self.cwd),
            run_dir=str(self.run_dir),
            world_size=job.world_size,
            config=self._config_digests(),
            seed_commitment=self.commitment,
            seed_commitment_scheme="sha256(b'trainwarden-sampling-secret-v1\\0' + secret)",
            ledger=str(self.ledger_dir),
            node=self.node_label,
            primary=self.primary,
            supervisor={
                "pid": os.getpid(),
                "host": _host(),
                "user": _user(),
                "key": self.key.public.fingerprint,
                "ephemeral_key": self.ephemeral,
                "non_dumpable": self.dumpable_off,
                "subreaper": self.subreaper,
            },
            sitecustomize=sitecustomize_digest(),
            trainwarden=__version__,
        )
        decision, refusals, warnings = self._preflight()
        if decision == "refuse":
            self.append(
                "run.exit",
                status=None,
                signal=None,
                seconds=0.0,
                findings=self._technique_counts(),
                refused=True,
            )
            self._write_record(None, ended=True)
            return self._result(decision, refusals, warnings, None, 2, None, 0.0)
        self._launch()
        exit_status = self._watch()
        seconds = round(time.monotonic() - self.job_t0, 3)
        signed = self.watcher.finish() if self.watcher is not None else []
        self.progress("attest", "job ended; recording and signing the provenance")
        self.append(
            "run.exit",
            status=exit_status.status,
            signal=exit_status.signal,
            seconds=seconds,
            findings=self._technique_counts(),
            egress=len(self.egress),
            checkpoints=len(signed),
        )
        seal = self._seal()
        provenance = self._attest(exit_status, seconds, signed, seal, warnings, refusals)
        self._write_record(exit_status, ended=True)
        return self._result(
            decision,
            refusals,
            warnings,
            exit_status,
            exit_status.shell_code,
            provenance,
            seconds,
            signed,
        )

    def _result(
        self,
        decision: str,
        refusals: Sequence[str],
        warnings: Sequence[str],
        exit_status: ExitStatus | None,
        code: int,
        provenance: Path | None,
        seconds: float,
        signed: Sequence[SignedCheckpoint] = (),
    ) -> RunResult:
        return RunResult(
            run_id=self.run_id,
            run_dir=self.run_dir,
            ledger=self.ledger_dir,
            decision=decision,
            refusals=tuple(refusals),
            warnings=tuple(warnings),
            exit=exit_status,
            exit_code=code,
            provenance=provenance,
            checkpoints=tuple(signed),
            egress=tuple(self.egress.values()),
            findings=self._technique_counts(),
            seconds=seconds,
            key=self.key.public.fingerprint,
            ephemeral_key=self.ephemeral,
            problems=tuple(self.problems),
        )

    # -- ledger ----------------------------------------------------------------------------------

    def append(self, event: str, /, **data: Any) -> None:
        """Sign and append one event; a failing ledger is reported, never fatal to the job."""
        try:
            self.ledger.append(event, run=self.run_id, **data)
        except Error as exc:
            message = f"cannot record {event} in the ledger: {exc.diagnostics()}"
            with self.lock:
                if message not in self.problems:
                    self.problems.append(message)
            logger.error("%s", message)

    # -- pre-flight ------------------------------------------------------------------------------

    def _config_digests(self) -> dict[str, str]:
        from trainwarden.supervise._preflight import file_digest

        out: dict[str, str] = {}
        for path in self._configs():
            with contextlib.suppress(InputError):
                out[relative_to(path, self.cwd)] = file_digest(path)[0]
        return out

    def _configs(self) -> list[Path]:
        configs = [self.cwd / p for p in self.job.facts.configs]
        configs += [
            self.cwd / p for p in self.o.inputs if Path(p).suffix.lower() in _CONFIG_SUFFIXES
        ]
        return list(dict.fromkeys(Path(os.path.abspath(p)) for p in configs))

    def _checkpoint_dirs(self) -> list[Path]:
        dirs = [*self.o.checkpoints, *(Path(d) for d in self.job.facts.checkpoint_dirs)]
        return list(dict.fromkeys(Path(os.path.abspath(self.cwd / d)) for d in dirs))

    def _scan_paths(self) -> list[str]:
        paths = [*self.o.scan, *(Path(p) for p in self.job.facts.resume)]
        return list(dict.fromkeys(os.path.abspath(self.cwd / p) for p in paths))

    def _preflight(self) -> tuple[str, list[str], list[str]]:
        o = self.o
        results: list[CheckResult] = []
        site_dirs = self.info.site_dirs if self.info is not None else None
        results.append(
            check_environment(
                site_dirs,
                lock=str(o.lock) if o.lock else None,
                lock_key=str(o.lock_key) if o.lock_key else None,
                mode=o.env_check,
                progress=self.progress,
            )
        )
        # Existing checkpoints in the checkpoint directories are what a resume would load.
        self.watcher = CheckpointWatcher(
            self._checkpoint_dirs(),
            key=self.key,
            run_id=self.run_id,
            record=lambda event, data: self.append(event, **data),
            settle=o.settle,
            signatures=Path(os.path.abspath(self.cwd / o.signatures)) if o.signatures else None,
            current_step=self._current_step,
        )
        existing = self.watcher.baseline() if self._watches_checkpoints() else []
        scan = check_scan([*self._scan_paths(), *existing], progress=self.progress)
        if scan is not None:
            results.append(scan)
        results.append(check_code(str(self._code_root()), script=self._script()))
        configs = self._configs()
        data_inputs = [
            Path(os.path.abspath(self.cwd / p))
            for p in o.inputs
            if Path(p).suffix.lower() not in _CONFIG_SUFFIXES
        ]
        if configs:
            results.append(
                check_inputs([str(p) for p in configs], kind="config", progress=self.progress)
            )
        if data_inputs:
            results.append(
                check_inputs(
                    [str(p) for p in data_inputs], kind="data-manifest", progress=self.progress
                )
            )
        if o.access_check:
            results.extend(
                check_access(self._access_roots(), policy=o.policy, progress=self.progress)
            )
        decision, refusals, warnings = decide(results, o.policy)
        for result in results:
            data = dict(result.data)
            if result.check is not None:
                data.setdefault("action", o.policy.action(result.check))
            self.append(result.event, **data)
            self.progress(
                "preflight",
                ("! " if result.check and o.policy.action(result.check) != "ignore" else "")
                + result.summary,
            )
        self.preflight = results
        self.append("preflight.decision", decision=decision, reasons=refusals or warnings)
        return decision, refusals, warnings

    def _watches_checkpoints(self) -> bool:
        # On several nodes, the node that runs global rank 0 signs (it writes them, usually);
        # every node watching a shared directory would sign each checkpoint twice.
        return not self.multinode or self.job.node_rank in (None, 0)

    def _script(self) -> str | None:
        py = self.job.python
        if py is not None and py.kind == "script":
            return str(self.cwd / py.target)
        run = self.job.torchrun
        if run is not None and run.kind == "script":
            return str(self.cwd / run.target)
        return None

    def _code_root(self) -> Path:
        script = self._script()
        if script is not None:
            return Path(os.path.dirname(os.path.abspath(script)))
        module = None
        if self.job.python is not None and self.job.python.kind == "module":
            module = self.job.python.target
        if self.job.torchrun is not None and self.job.torchrun.kind == "module":
            module = self.job.torchrun.target
        if module is not None:
            top = module.split(".")[0]
            candidates = [str(self.cwd)]
            if self.info is not None:
                candidates += [*self.info.python_path, *self.info.site_dirs]
            for base in candidates:
                for name in (top, top + ".py"):
                    found = Path(base if os.path.isabs(base) else self.cwd / base) / name
                    if found.exists():
                        return found if found.is_dir() else found.parent
        return self.cwd

    def _access_roots(self) -> list[tuple[str, str, bool]]:
        roots: list[tuple[str, str, bool]] = []
        info = self.info
        if info is not None:
            roots.append((os.path.realpath(info.executable), "environment", False))
            if info.stdlib:
                # The standard library is code the job runs too (random, pickle...).
                roots.append((info.stdlib, "environment", True))
            roots.extend((site, "environment", True) for site in info.site_dirs)
            if info.torch and not any(info.torch.startswith(s + os.sep) for s in info.site_dirs):
                roots.append((info.torch, "environment", True))
            roots.extend((str(self.cwd / e), "environment", True) for e in info.python_path)
        roots.append((str(self._code_root()), "code", True))
        roots.extend((str(d), "checkpoints", True) for d in self._checkpoint_dirs())
        roots.extend((p, "checkpoints", True) for p in self._scan_paths())
        data = [*self.o.inputs, *(Path(p) for p in self.job.facts.data)]
        roots.extend((os.path.abspath(self.cwd / p), "data", True) for p in data)
        roots.append((str(self.ledger_dir), "ledger", True))
        roots.append((str(self.run_dir), "run", False))
        seen: dict[str, tuple[str, str, bool]] = {}
        for root in roots:
            seen.setdefault(os.path.abspath(root[0]), root)
        return list(seen.values())

    # -- launch ----------------------------------------------------------------------------------

    def _block_signals(self) -> None:
        # Blocked before any thread of ours exists: threads inherit the mask, so these
        # signals reach only sigtimedwait in the main loop, with their sender.
        self.waited = {*FORWARDED, signal.SIGCHLD}
        signal.pthread_sigmask(signal.SIG_BLOCK, self.waited)

    def _launch(self) -> None:
        o, job = self.o, self.job
        base = os.environ.get("XDG_RUNTIME_DIR")
        base = base if base and os.path.isdir(base) and os.access(base, os.W_OK) else None
        # Private to the supervisor's user (0700): nobody else can reach the socket.
        self.private = Path(tempfile.mkdtemp(prefix="tw-run-", dir=base))
        site = self.private / "site"
        site.mkdir(mode=0o700)
        write_sitecustomize(site)
        sock = self.private / "ctl.sock"
        self.server = ChannelServer(
            sock,
            ancestor=os.getpid(),
            uids={os.geteuid()},
            on_message=self._on_message,
            on_close=self._on_close,
            on_refused=self._on_refused,
        )
        self.server.start()
        plan = plan_launch(
            job,
            environ=self.environ,
            channel=str(sock),
            run_id=self.run_id,
            run_dir=str(self.run_dir),
            ledger=str(self.ledger_dir),
            site_dir=str(site),
            protect=o.protect,
            protect_profiles=o.protect_profiles,
        )
        self.progress(
            "launch", f"starting {' '.join(job.argv[:6])}{' ...' if len(job.argv) > 6 else ''}"
        )
        self.job_t0 = time.monotonic()
        self.job_started = utc_now()
        try:
            self.leader = os.posix_spawnp(
                plan.argv[0],
                list(plan.argv),
                dict(plan.env),
                setsigmask=(),
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
            )
        except OSError as exc:
            raise ConfigError(f"cannot start {plan.argv[0]}: {exc.strerror or exc}") from exc
        if job.launcher in ("python", "srun"):
            # The leader is rank 0's process itself (its hello will tell the rank).
            with self.lock:
                self.procs.setdefault(
                    self.leader, _Proc(self.leader, "rank", None, _host(), time.monotonic())
                )

    # -- watching --------------------------------------------------------------------------------

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

    def _on_own_signal(self, info: Any) -> None:
        signo = info.si_signo
        sender, note = sender_info(info)
        forward = self.leader is not None and self.leader_exit is None
        if sender is None and getattr(info, "si_code", None) == 0x80:
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
        )
        self.progress(
            "signal",
            f"received {signal_name(signo)}"
            + (f" from pid {sender['pid']}" if sender else "")
            + ("; forwarding it to the job" if forward else ""),
        )
        if forward and self.leader is not None:
            kill_quietly(self.leader, signo)

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
                "rank.exit" if _is_rank(proc) else "process.exit",
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

    def _record_exit_signal(self, proc: _Proc, status: ExitStatus, *, source: str) -> None:
        assert status.signo is not None
        note = (
            _SIGKILL_NOTE
            if status.signo == signal.SIGKILL
            else (
                "ended by this signal; its sender was not recorded (the signal reached the process "
                "before trainwarden's recorder, or was sent to a thread)"
            )
        )
        self.append(
            "rank.signal" if _is_rank(proc) else "process.signal",
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
        for pid in _children(os.getpid()):
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

    def _dump_stacks(self, proc: _Proc, now: float) -> None:
        live = self._stacks_live(proc)
        before = _size(live)
        # Only a process that handles the signal gets it: its default action would kill.
        if catches_signal(proc.pid, STACKS_SIGNAL) and kill_quietly(proc.pid, STACKS_SIGNAL):
            # faulthandler writes from a signal handler: wait until the output stops growing.
            deadline = time.monotonic() + 5.0
            last, quiet_since = before, time.monotonic()
            while time.monotonic() < deadline:
                time.sleep(0.1)
                size = _size(live)
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
        with contextlib.suppress(OSError), open(live, "rb") as fh:
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

    def _stacks_live(self, proc: _Proc) -> Path:
        return self.run_dir / "stacks" / f".live-rank-{proc.rank}-{proc.pid}.txt"

    # -- the control channel (server thread) ---------------------------------------------------

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
        host = str(message.get("host") or _host())[:255]
        public = None
        raw = message.get("key")
        if isinstance(raw, str):
            with contextlib.suppress(ValueError, Error):
                public = PublicKey(
                    base64.b64decode(raw, validate=True), f"{role}-{rank}@{host}:{peer.pid}"
                )
        now = time.monotonic()
        with self.lock:
            proc = self.procs.get(peer.pid)
            if proc is None:
                proc = _Proc(peer.pid, str(role), rank, host, now)
                self.procs[peer.pid] = proc
            proc.role, proc.rank, proc.host, proc.public_key = str(role), rank, host, public
            if role in ("rank", "process") and host not in self.nodes:
                self.nodes.append(host)
            world = message.get("world_size")
            if isinstance(world, int) and role == "rank":
                self.world_size = world
        if role in ("rank", "process"):
            self.append(
                "rank.start" if _is_rank(proc) else "process.start",
                rank=rank,
                local_rank=_int(message.get("local_rank")),
                node=_int(message.get("node")),
                pid=peer.pid,
                host=host,
                role=role,
                world_size=_int(message.get("world_size")),
                restart=_int(message.get("restart")),
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
        }
        if role in ("rank", "process"):
            # The sampling secret goes only over this channel, only to the job's own
            # processes (checked by the kernel's peer credentials), never via the environment.
            welcome["secret"] = self.secret.hex()
            welcome["stacks_signal"] = STACKS_SIGNAL
            welcome["stacks_file"] = str(
                self.run_dir / "stacks" / f".live-rank-{rank}-{peer.pid}.txt"
            )
        return welcome

    def _relay(self, proc: _Proc, message: dict[str, Any]) -> None:
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
            proc.tokens = min(_BUCKET, proc.tokens + (now - proc.refill_at) * _REFILL)
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
        elif event == "rank.signal":
            signo = payload.get("signo")
            target = proc.shim if proc.role == "shim" and proc.shim else proc.pid
            with self.lock:
                target_proc = self.procs.get(target) or proc
                if isinstance(signo, int):
                    target_proc.signals_seen.add(signo)
            sender = payload.get("sender")
            if isinstance(sender, dict) and not self._is_ours(sender.get("pid")):
                self._count("T6")
        elif event == "guard.finding":
            technique = payload.get("technique")
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

    def _new_endpoint(self, proc: _Proc, payload: dict[str, Any]) -> bool:
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

    def _note_refused_event(self, proc: _Proc, event: str) -> None:
        # A rank may only report what it observed; supervisor events (run.*, checkpoint.*,
        # preflight.*) from a rank would be forgeries signed with our key.
        self.append(
            "channel.refused-event",
            rank=proc.rank,
            pid=proc.pid,
            event=event[:128],
            note="only guard.*, egress.*, load.*, job.* and rank.signal may be reported by a rank",
        )

    def _shim_exit(self, shim: _Proc, message: dict[str, Any]) -> None:
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
            _int(message.get("status")),
            str(message["signal"]) if message.get("signal") else None,
            signo if isinstance(signo, int) else None,
        )
        with self.lock:
            proc = self.procs.get(child)
            if proc is None:
                proc = _Proc(child, "rank", shim.rank, shim.host, shim.started)
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

    def _count(self, technique: str) -> None:
        with self.lock:
            self.findings[technique] = self.findings.get(technique, 0) + 1

    def _technique_counts(self) -> dict[str, int]:
        counts = dict(self.findings)
        for result in self.preflight:
            if result.check in ("scan-unsafe",):
                counts["T1"] = counts.get("T1", 0) + 1
            elif result.check in ("env-unsafe",):
                counts["T2"] = counts.get("T2", 0) + 1
        return dict(sorted(counts.items()))

    def _seal(self) -> Any:
        seal = self.o.seal if self.o.seal is not None else self.own_ledger
        if not seal:
            return None
        from trainwarden.ledger import LedgerTampered, seal_ledger

        with contextlib.suppress(Error):
            self.ledger.flush()
        with self.lock:
            writers = [
                self.key.public,
                *(p.public_key for p in self.procs.values() if p.public_key),
            ]
        try:
            return seal_ledger(
                self.ledger_dir,
                key=self.key,
                writer_keys=writers if self.own_ledger else (),
            )
        except LedgerTampered as exc:
            message = f"the ledger did not verify at the end of the run, it was not sealed: {exc}"
            self.problems.append(message)
            self.append("run.ledger-tampered", error=exc.diagnostics()[:4000])
            return None
        except Error as exc:
            self.problems.append(f"cannot seal the ledger: {exc.diagnostics()}")
            return None

    def _attest(
        self,
        exit_status: ExitStatus,
        seconds: float,
        signed: Sequence[SignedCheckpoint],
        seal: Any,
        warnings: Sequence[str],
        refusals: Sequence[str],
    ) -> Path | None:
        from trainwarden.supervise._attest import build_run_provenance

        path = self.run_dir / (
            "provenance.intoto.json"
            if self.primary
            else f"provenance-{self.node_label or os.getpid()}.intoto.json"
        )
        try:
            self.ledger.flush()
            from trainwarden.provenance import build_statement, write_provenance

            run = build_run_provenance(
                self,
                exit_status=exit_status,
                seconds=seconds,
                signed=signed,
                seal=seal,
                warnings=warnings,
                refusals=refusals,
            )
            written = write_provenance(path, build_statement(run), self.key)
        except Error as exc:
            self.problems.append(f"cannot write the provenance statement: {exc.diagnostics()}")
            return None
        self.append(
            "provenance.signed",
            path=relative_to(written.path, self.run_dir),
            digest=written.digest,
            subjects=written.subjects,
        )
        return written.path

    def _record(
        self, exit_status: ExitStatus | None = None, *, ended: bool = False
    ) -> dict[str, Any]:
        ledger = relative_to(self.ledger_dir, self.run_dir)
        return {
            "schema_version": SCHEMA_VERSION,
            "run_id": self.run_id,
            "command": list(self.o.command),
            "launcher": self.job.launcher,
            "cwd": str(self.cwd),
            "ledger": ledger,
            "world_size": self.world_size or self.job.world_size,
            "nodes": list(self.nodes),
            "started": self.started,
            "ended": utc_now() if ended else None,
            "exit": None
            if exit_status is None
            else {
                "status": exit_status.status,
                "signal": exit_status.signal,
            },
            "supervisor": {
                "pid": os.getpid(),
                "host": _host(),
                "user": _user(),
                "key": self.key.public.fingerprint,
            },
            "node": self.node_label,
            "primary": self.primary if hasattr(self, "primary") else True,
            "ephemeral_key": self.ephemeral,
        }

    def _write_record(self, exit_status: ExitStatus | None, *, ended: bool) -> None:
        try:
            write_run_record(self.record_path, self._record(exit_status, ended=ended))
        except Error as exc:
            self.problems.append(f"cannot rewrite {self.record_path}: {exc.diagnostics()}")

    def _cleanup(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self.ledger is not None:
            try:
                self.ledger.close()
            except Error as exc:
                self.problems.append(f"cannot close the ledger: {exc.diagnostics()}")
        if self.private is not None:
            shutil.rmtree(self.private, ignore_errors=True)
        with contextlib.suppress(OSError, ValueError):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, getattr(self, "waited", set()))


_CONFIG_SUFFIXES = frozenset({".json", ".yaml", ".yml", ".toml", ".ini", ".cfg"})


def _is_rank(proc: _Proc) -> bool:
    """A rank: started through the bootstrap, or any process with a rank (``RANK``)."""
    return proc.role == "rank" or proc.rank is not None


def _children(pid: int) -> list[int]:
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    return [int(n) for n in entries if n.isdigit() and parent_pid(int(n)) == pid]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _host() -> str:
    from trainwarden._system import host_name

    return host_name()


def _user() -> str:
    from trainwarden._system import user_name

    return user_name(os.geteuid())
