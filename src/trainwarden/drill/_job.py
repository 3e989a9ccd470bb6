"""The victim's training job: tinygpt over gloo, several ranks under ``torchrun``, in the sandbox.

The job is started the way a user would start it, with the sandbox's interpreter, so it
imports the sandbox's torch and runs whatever startup hooks the sandbox holds. Checkpoint
loading goes through ``trainwarden.protect`` unless the drill runs without defences (the
tests that show the attacks are real). Each job gets its own process group so that a job
that hangs can be stopped as a whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainwarden.drill._attacks.rank_kill import JOB_MODULE
from trainwarden.drill._sandbox import RunPaths, Sandbox
from trainwarden.errors import InputError

__all__ = ["Job", "JobOutcome", "JobSpec", "utc_now"]

# Environment variables that would make the job import or run something from outside the
# sandbox, or let the caller's settings leak into it.
_SCRUBBED = (
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONINSPECT",
    "PYTHONUSERBASE",
    "VIRTUAL_ENV",
    "TRAINWARDEN_PROTECT",
    "TRAINWARDEN_PROTECT_MODE",
    "TRAINWARDEN_PROTECT_PROFILES",
)
_LOG_TAIL = 4000
_BATCH = 8
_EPOCH_STEPS = 10


def utc_now() -> str:
    """Now, in the ledger's time format (UTC, microseconds)."""
    ns = time.time_ns()
    seconds, rest = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest // 1000:06d}Z"


@dataclass(frozen=True, slots=True)
class JobSpec:
    """How to run the job.

    Attributes:
        steps: Optimizer steps to train.
        ckpt_every: Write ``ckpt-<step>.pt`` every this many steps (``None``: never).
        resume: Checkpoint to resume from.
        step_sleep: Seconds each step pauses (keeps a long job from finishing too soon).
        protect: Run with the defences in the ranks: ``protect()`` (checkpoint loading
            refuses what the scanner refuses) and the guard. Off only to show that the
            attacks are real.
        scan: Checkpoints the job will read, scanned by the pre-flight (``--scan``).
    """

    steps: int
    ckpt_every: int | None = None
    resume: Path | None = None
    step_sleep: float = 0.0
    protect: bool = True
    scan: tuple[Path, ...] = ()


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """How the job ended.

    Attributes:
        command: The command that was run.
        status: The launcher's exit status (negative: killed by that signal).
        seconds: Wall-clock seconds from start to end.
        timed_out: The drill stopped the job because it ran past its time limit.
        result: Rank 0's ``--out`` JSON (``None`` when the job did not finish).
        log_tail: The end of the job's output.
        started: When it started (UTC).
        ended: When it ended (UTC).
    """

    command: tuple[str, ...]
    status: int | None
    seconds: float
    timed_out: bool
    result: dict[str, Any] | None
    log_tail: str
    started: str
    ended: str

    @property
    def ok(self) -> bool:
        """The job finished normally and wrote its result."""
        return self.status == 0 and self.result is not None


class Job:
    """One run of the victim's job (start, then wait)."""

    def __init__(self, sandbox: Sandbox, run: RunPaths, spec: JobSpec, *, ranks: int) -> None:
        self.sandbox = sandbox
        self.run = run
        self.spec = spec
        self.ranks = ranks
        self._proc: subprocess.Popen[bytes] | None = None
        self._started = ""
        self._t0 = 0.0

    def command(self) -> list[str]:
        """The command: ``trainwarden run [options] -- python -m torch.distributed.run ...``.

        The supervisor runs with the drill's interpreter (it never imports torch); the job
        runs with the sandbox's, so ``run`` verifies the sandbox's site directory against the
        platform's lock, and the ranks import the sandbox's torch.
        """
        spec, run, sb = self.spec, self.run, self.sandbox
        cmd = [
            sys.executable,
            "-m",
            "trainwarden",
            "run",
            "--run-dir",
            str(run.run_dir),
            "--run-id",
            run.run_id,
            "--ledger",
            str(run.ledger),
            "--key",
            str(sb.keys["platform"].private),
            "--lock",
            str(sb.lock),
            "--lock-pubkey",
            str(sb.keys["platform"].public),
            "--checkpoints",
            str(run.ckpt),
            # The lock is taken without pyc verification; recompiling torch's sources on
            # every run would add ~30 s and show nothing the lock's pyc digests do not.
            "--env-check",
            "fast",
            # T3-T5 arrive through edited torch files: the pre-flight records them, and the
            # job still runs so that the guard's runtime checks show what they catch. Same
            # for T1, so that protect() in the ranks refuses the checkpoint too.
            "--on",
            "env-unsafe=warn",
            "--on",
            "scan-unsafe=warn",
            # The team's environment and checkpoints are group-writable on purpose.
            "--on",
            "access=warn",
            # In warn mode the guard records every finding and lets the job go on, so several
            # attacks can share a run and each be timed.
            "--on-violation",
            "warn",
            "--settle",
            "0.5",
            "--orphan-grace",
            "2",
            "--no-progress",
        ]
        for path in spec.scan:
            cmd += ["--scan", str(path)]
        if not spec.protect:
            cmd += ["--no-protect", "--no-guard"]
        cmd += [
            "--",
            str(sb.python),
            "-m",
            "torch.distributed.run",
            # Static rendezvous on a free local port, not --standalone: the c10d rendezvous
            # of --standalone pickles its state through the store, and protect() in
            # torchrun's agent refuses that pickle (it names a networking class).
            "--master-addr=127.0.0.1",
            f"--master-port={_free_port()}",
            f"--nproc-per-node={self.ranks}",
            "--max-restarts=0",
            "-m",
            JOB_MODULE,
        ]
        cmd += ["--steps", str(spec.steps), "--out", str(run.out), "--ckpt-dir", str(run.ckpt)]
        # Epochs of _EPOCH_STEPS steps: the sampler reshuffles (and the guard checks its order)
        # several times in a short job.
        cmd += ["--samples", str(_EPOCH_STEPS * _BATCH * self.ranks), "--batch", str(_BATCH)]
        if spec.ckpt_every is not None:
            cmd += ["--ckpt-every", str(spec.ckpt_every)]
        else:
            cmd += ["--ckpt-every", str(spec.steps + 1)]
        if spec.resume is not None:
            cmd += ["--resume", str(spec.resume)]
        if spec.step_sleep:
            cmd += ["--step-sleep", str(spec.step_sleep)]
        return cmd

    def environment(self) -> dict[str, str]:
        """The job's environment: the caller's, without variables that reach outside."""
        # TRAINWARDEN_*: a drill started inside another supervised run must not report to it.
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in _SCRUBBED and not k.startswith("TRAINWARDEN_")
        }
        # No bytecode written anywhere: the mirror's __pycache__ entries stay links.
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["PYTHONNOUSERSITE"] = "1"
        env["OMP_NUM_THREADS"] = "1"
        env["PATH"] = f"{self.sandbox.python.parent}{os.pathsep}{env.get('PATH', '')}"
        return env

    def start(self) -> None:
        """Start the job in its own process group.

        Raises:
            InputError: The launcher cannot be started.
        """
        self.run.out.unlink(missing_ok=True)
        self._started = utc_now()
        self._t0 = time.monotonic()
        log = self.run.log.open("ab")
        try:
            self._proc = subprocess.Popen(  # noqa: S603  # the sandbox's python, our arguments
                self.command(),
                cwd=self.run.run_dir,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise InputError(f"cannot start the training job: {exc.strerror or exc}") from exc
        finally:
            log.close()

    def wait(self, *, timeout: float) -> JobOutcome:
        """Wait for the job (stopping it after ``timeout`` seconds) and collect its outcome."""
        proc = self._proc
        if proc is None:
            raise InputError("the job was not started")
        timed_out = False
        try:
            status: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            self.stop()
            status = proc.returncode
        seconds = time.monotonic() - self._t0
        result = None
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(self.run.out.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                result = loaded
        return JobOutcome(
            command=tuple(self.command()),
            status=status,
            seconds=seconds,
            timed_out=timed_out,
            result=result,
            log_tail=_tail(self.run.log),
            started=self._started,
            ended=utc_now(),
        )

    def stop(self) -> None:
        """Stop the job's whole process group (SIGTERM, then SIGKILL)."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue
            return


def _free_port() -> int:
    """A TCP port free on the loopback interface now (the job's rendezvous port)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - _LOG_TAIL))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
