"""T6: a rank of the running job killed by another process.

The insider waits until the job is well under way (its first checkpoint appears in the team
directory), finds the job's worker processes in ``/proc`` by their command line (readable by
every user), and signals the last one: SIGTERM, which a process can catch and whose sender the
kernel reports, or SIGKILL, which nobody can catch. The launcher then tears the job down, as
it does for a crashed rank: from inside the job it looks like a hardware fault.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from trainwarden.drill._attacks import AttackContext, AttackFailed, AttackOutcome

__all__ = ["JOB_MODULE", "attack", "find_workers"]

#: The module the job's workers run (their command line names it).
JOB_MODULE = "trainwarden.examples.tinygpt"


def find_workers(marker: str, *, proc: Path = Path("/proc")) -> list[int]:
    """Pids of the job's workers: their command line runs the job and mentions ``marker``.

    The launcher's own process (``torch.distributed.run``) and, under ``trainwarden run``,
    each rank's shim (which only relays to the rank it started) are left out: the insider
    signals a process that trains.
    """
    pids = []
    for entry in proc.iterdir():
        name = entry.name
        if not name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        args = [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]
        if (
            JOB_MODULE in args
            and "torch.distributed.run" not in args
            and not _is_shim(args)
            and any(marker in a for a in args)
        ):
            pids.append(int(name))
    return sorted(pids)


def _is_shim(args: list[str]) -> bool:
    """``trainwarden run``'s per-rank shim under torchrun: it relays to the rank, its child."""
    for i, arg in enumerate(args[:-1]):
        if arg == "trainwarden.supervise.bootstrap" and args[i + 1] == "shim":
            return True
    return False


def attack(ctx: AttackContext) -> AttackOutcome:
    """Wait for the trigger file, then signal the last worker of the job."""
    params = ctx.params
    trigger = Path(params["trigger"])
    marker = str(params["marker"])
    ranks = int(params["ranks"])
    signum = signal.Signals[str(params["signal"])]
    ended = Path(params["ended"]) if params.get("ended") else None
    deadline = time.monotonic() + float(params.get("timeout", 300))
    workers: list[int] = []
    while time.monotonic() < deadline:
        if ended is not None and ended.exists():
            raise AttackFailed("the job ended before the insider could signal it")
        if trigger.exists():
            workers = find_workers(marker)
            if len(workers) >= ranks:
                break
        time.sleep(0.02)
    else:
        raise AttackFailed(
            f"the job never reached its trigger ({trigger.name}) with {ranks} workers "
            f"(saw {len(workers)})"
        )
    target = workers[-1]
    ctx.begin(step=int(params["trigger_step"]))
    try:
        os.kill(target, signum)
    except OSError as exc:
        raise AttackFailed(
            f"cannot send {signum.name} to pid {target}: {exc.strerror or exc}"
        ) from exc
    return AttackOutcome(
        details={"pid": target, "signal": signum.name, "signo": int(signum), "workers": workers}
    )
