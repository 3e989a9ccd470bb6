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
        protect: Run under ``python -m trainwarden.protect`` (checkpoint loading refuses
            what the scanner refuses).
    """

    steps: int
    ckpt_every: int | None = None
    resume: Path | None = None
    step_sleep: float = 0.0
    protect: bool = True


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
        """The launcher command (``python -m torch.distributed.run ...``)."""
        spec, run = self.spec, self.run
        cmd = [
            str(self.sandbox.python),
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={self.ranks}",
            "--max-restarts=0",
            "-m",
        ]
        cmd += ["trainwarden.protect", "-m", JOB_MODULE] if spec.protect else [JOB_MODULE]
        cmd += ["--steps", str(spec.steps), "--out", str(run.out), "--ckpt-dir", str(run.ckpt)]
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
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
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


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - _LOG_TAIL))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
