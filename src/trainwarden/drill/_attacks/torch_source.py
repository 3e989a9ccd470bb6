"""T2: edit a file of the installed torch, the way the incident's insider edited the shared one.

The edit writes a new file and renames it over torch's (what ``sed -i`` and most editors do),
so it needs only write access to the directory, as on a group-writable shared environment.
A careful insider also rewrites torch's ``RECORD`` row for the file, so the wheel's own
record vouches for the edited bytes: only a lock signed by a key the insider does not hold
still shows the change. The drill's insider is that careful.

This module also carries the T2 payload itself: ``torch.manual_seed`` silently seeds with
another value, so every "reproducible" run differs from what its seed promises.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import stat
from pathlib import Path

from trainwarden._fs import atomic_write
from trainwarden.drill._attacks import AttackContext, AttackFailed, AttackOutcome

__all__ = ["SEED_FILE", "attack", "edit_torch_file", "seed_payload"]

#: The torch file the T2 scenario edits (relative to site-packages).
SEED_FILE = "torch/random.py"


def seed_payload(offset: int) -> str:
    """Source appended to ``torch/random.py``: ``manual_seed(s)`` seeds with ``s + offset``."""
    return f"""

# Keeps seeds of concurrent jobs apart on the shared nodes (local change, do not upstream).
def _separate_seeds(_manual_seed):
    import functools

    @functools.wraps(_manual_seed)
    def manual_seed(seed):
        return _manual_seed(int(seed) + {offset!r})

    return manual_seed


manual_seed = _separate_seeds(manual_seed)
del _separate_seeds
"""


def edit_torch_file(site: Path, rel: str, addition: str, *, fix_record: bool = True) -> list[str]:
    """Append ``addition`` to the torch file ``rel`` under ``site``; return what changed.

    Raises:
        AttackFailed: The file or its distribution's RECORD is not there.
    """
    target = site / rel
    try:
        original = target.read_bytes()
        mode = stat.S_IMODE(target.stat().st_mode)
    except OSError as exc:
        raise AttackFailed(f"cannot read {target}: {exc.strerror or exc}") from exc
    edited = original + addition.encode("utf-8")
    atomic_write(target, edited, mode=mode, what="torch source")
    touched = [rel]
    if fix_record:
        touched.append(_fix_record(site, rel, edited))
    return touched


def _fix_record(site: Path, rel: str, data: bytes) -> str:
    """Rewrite the RECORD row of ``rel`` so RECORD agrees with the edited bytes."""
    records = sorted(site.glob("torch-*.dist-info/RECORD"))
    if not records:
        raise AttackFailed(f"no torch RECORD under {site}")
    record = records[0]
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    text = record.read_text(encoding="utf-8")
    rows = list(csv.reader(io.StringIO(text)))
    found = False
    for row in rows:
        if row and row[0] == rel:
            row[1:] = [f"sha256={digest}", str(len(data))]
            found = True
    if not found:
        raise AttackFailed(f"{rel} is not in {record}")
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    mode = stat.S_IMODE(record.stat().st_mode)
    atomic_write(record, out.getvalue(), mode=mode, what="RECORD")
    return str(record.relative_to(site)).replace(os.sep, "/")


def attack(ctx: AttackContext) -> AttackOutcome:
    """Edit torch's seeding code in the sandbox environment."""
    site = Path(ctx.params["site"])
    ctx.begin(step=0)
    touched = edit_torch_file(site, SEED_FILE, seed_payload(int(ctx.params.get("offset", 7919))))
    return AttackOutcome(touched=touched, details={"file": SEED_FILE})
