"""The supervisor: pre-flight, launch, watch and attest one training job (``trainwarden run``).

One process, one main thread that owns the job: it waits for signals with
``sigtimedwait`` (its own termination signals with their sender, ``SIGCHLD`` for exits),
reaps every descendant it is given (it is a child subreaper), watches heartbeats for hangs
and polls the checkpoint directories. A second thread serves the control channel; a third
signs checkpoints. Everything observed is appended to the ledger under the supervisor's key,
which was loaded before the job started and never leaves this (non-dumpable) process.
"""

# os.path: string paths; normalised without resolving symlinks.
# ruff: noqa: PTH100, PTH112, PTH117, PTH120

from __future__ import annotations

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
from typing import Any, TypeVar

from trainwarden import __version__
from trainwarden.errors import ConfigError, Error, InputError
from trainwarden.keys import PrivateKey
from trainwarden.supervise._channel import ChannelServer
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
    set_child_subreaper,
    set_non_dumpable,
)
from trainwarden.supervise._relay import Relaying
from trainwarden.supervise._rundir import (
    SCHEMA_VERSION,
    check_run_id,
    create_run_record,
    new_run_id,
    relative_to,
    utc_now,
    write_run_record,
)
from trainwarden.supervise._state import (
    FORWARDED,
    SIGKILL_AUDIT_RULE,
    Proc,
    host,
    user,
)
from trainwarden.supervise._watch import Watching

__all__ = ["SIGKILL_AUDIT_RULE", "RunOptions", "RunResult", "run_job"]

_T = TypeVar("_T")

logger = logging.getLogger("trainwarden.supervise")

Progress = Callable[[str, str], None]


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

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``schema_version`` 1): what ``trainwarden run --summary`` writes."""
        return {
            "schema_version": 1,
            "run_id": self.run_id,
            "run_dir": str(self.run_dir),
            "ledger": str(self.ledger),
            "decision": self.decision,
            "refusals": list(self.refusals),
            "warnings": list(self.warnings),
            "exit": None
            if self.exit is None
            else {"status": self.exit.status, "signal": self.exit.signal},
            "exit_code": self.exit_code,
            "seconds": self.seconds,
            "provenance": str(self.provenance) if self.provenance else None,
            "checkpoints": [
                {"path": c.path, "digest": c.digest, "step": c.step, "parent": c.parent}
                for c in self.checkpoints
            ],
            "egress": [dict(e) for e in self.egress],
            "findings": dict(self.findings),
            "key": self.key,
            "ephemeral_key": self.ephemeral_key,
            "problems": list(self.problems),
        }


def _noop(stage: str, message: str) -> None:
    del stage, message


def _commitment(secret: bytes | None) -> str | None:
    if secret is None:
        return None
    return "sha256:" + hashlib.sha256(b"trainwarden-sampling-secret-v1\0" + secret).hexdigest()


def run_job(options: RunOptions, *, progress: Progress | None = None) -> RunResult:
    """Pre-flight, launch, watch and attest the job; return when it (and its orphans) ended.

    Raises:
        ConfigError: A misconfiguration (no command, unknown launcher flag, run id in use...).
        InputError: A directory cannot be written, an input cannot be read.
    """
    return _Supervisor(options, progress or _noop).run()


class _Supervisor(Watching, Relaying):
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
        self.procs: dict[int, Proc] = {}
        self.egress: dict[tuple[str, Any], dict[str, Any]] = {}
        self.native: dict[str, dict[str, Any]] = {}
        self.findings: dict[str, int] = {}
        self.guard_findings: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.nodes: list[str] = []
        self.world_size: int | None = None
        self.secret: bytes | None = os.urandom(32)
        self.commitment: str | None = _commitment(self.secret)
        self.leader: int | None = None
        self.leader_exit: ExitStatus | None = None
        self.ledger: Any = None
        self.watcher: CheckpointWatcher | None = None
        self.server: ChannelServer | None = None
        self.private: Path | None = None
        self.preflight: list[CheckResult] = []
        self.refused_peers = 0
        self.stop_requests = 0
        self.primary = True
        self.orphans_seen: set[int] = set()

    # -- the whole run -------------------------------------------------------------------------

    def _check_options(self) -> None:
        """Refuse, before anything is created or launched, options that name the wrong thing.

        Each of these would otherwise pass in silence: a mistyped ``scan`` path is a checkpoint
        never scanned, a ``lock`` that is not a lock leaves the environment unverified (the
        policy's ``env-error``, by default a warning), an unknown protect profile fails in every
        rank, a checkpoint "directory" that is a file is never watched. A lock's *signature* is
        the pre-flight's to judge (tampering is a finding, not a typo).

        Raises:
            ConfigError: An unknown profile, a checkpoint directory that is not a directory.
            InputError: A scan path that does not exist, a lock that cannot be read or parsed.
        """
        from trainwarden.scan import PROFILES

        o = self.o
        for name in o.protect_profiles:
            if name not in PROFILES:
                raise ConfigError(
                    f"unknown protect profile {name!r} (known: {', '.join(sorted(PROFILES))})"
                )
        for path in o.scan:
            if not os.path.lexists(self.cwd / path):
                raise InputError(f"scan path {path} does not exist")
        for path in o.checkpoints:
            target = self.cwd / path
            if os.path.lexists(target) and not target.is_dir():
                raise ConfigError(f"checkpoint directory {path} is not a directory")
        if o.lock is not None:
            from trainwarden.env import read_lock

            read_lock(Path(o.lock))  # as the pre-flight reads it

    def run(self) -> RunResult:
        o = self.o
        # First: the key is in memory already, and the checks below start processes of the
        # job's environment (its interpreter, git). Same-user processes must not be able to
        # ptrace us or read our memory from here on.
        self.dumpable_off = set_non_dumpable()
        job = parse_command(o.command, launcher=o.launcher, environ=self.environ, cwd=self.cwd)
        self.job = job
        resolve_program(job.argv[0], environ=self.environ, cwd=self.cwd)
        self._check_options()
        self.info: InterpreterInfo | None = None
        if job.interpreter is not None:
            self.progress("launch", f"inspecting the job's Python ({job.interpreter})")
            self.info = query_interpreter(job.interpreter, environ=self.environ, cwd=self.cwd)
            check_bootstrap_importable(self.info, environ=self.environ, cwd=self.cwd)
        self.ephemeral = o.key is None
        self.key = o.key if o.key is not None else PrivateKey.generate("trainwarden-run-ephemeral")
        self.multinode = bool(job.nnodes and job.nnodes > 1)
        self.node_label = str(job.node_rank) if job.node_rank is not None else None
        if self.multinode or (job.launcher == "srun" and (job.world_size or 1) > 1):
            # One supervisor per node (or per Slurm task), one run: every rank must sample
            # with the same secret, or the guard sees "different secrets" and halts. With
            # the platform key the supervisors derive it from the key and the run id (Ed25519
            # signatures are deterministic; nobody without the key can compute it). With
            # ephemeral keys they cannot agree: the guard's ranks then agree on rank 0's
            # secret among themselves (`sampling: local`) and run.start commits to none.
            self.secret = (
                None
                if self.ephemeral
                else hashlib.sha256(
                    self.key.sign(b"trainwarden-sampling-secret-v1\0" + self.run_id.encode())
                ).digest()
            )
            self.commitment = _commitment(self.secret)
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
            label = self.node_label or f"{host()}-{os.getpid()}"
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
                "host": host(),
                "user": user(),
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
        # The job is over: from here on nothing may stop the supervisor from recording it
        # and exiting with the job's status. A failing step is reported, not raised.
        signed = self._safely("sign the last checkpoints", self._finish_checkpoints) or []
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
        seal = self._safely("seal the ledger", self._seal)
        provenance = self._safely(
            "sign the provenance",
            lambda: self._attest(exit_status, seconds, signed, seal, warnings, refusals),
        )
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

    def _finish_checkpoints(self) -> list[SignedCheckpoint]:
        if self.watcher is None or not self._watches_checkpoints():
            return []
        return self.watcher.finish()

    def _safely(self, what: str, step: Callable[[], _T]) -> _T | None:
        try:
            return step()
        except Exception as exc:  # a bug must not lose the job's exit status
            logger.exception("could not %s", what)
            message = (
                exc.diagnostics() if isinstance(exc, Error) else f"{type(exc).__name__}: {exc}"
            )
            self.problems.append(f"could not {what}: {message}")
            return None

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
        from trainwarden.supervise._config import referenced_files

        paths = [*self.o.scan, *(Path(p) for p in self.job.facts.resume)]
        # Checkpoints a config file points at (resume_from: ..., init_checkpoint: ...).
        for config in self._configs():
            paths.extend(Path(p) for p in referenced_files(config, base=self.cwd))
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
                    self.leader, Proc(self.leader, "rank", None, host(), time.monotonic())
                )

    # -- watching --------------------------------------------------------------------------------

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
            # Absolute, as checkpoint.signed records its paths: `ledger verify --check-files`
            # checks recorded files from wherever the operator runs it.
            path=str(Path(written.path).resolve()),
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
                "host": host(),
                "user": user(),
                "key": self.key.public.fingerprint,
            },
            "node": self.node_label,
            "primary": self.primary,
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
