"""T8: the insider covers the tracks in the ledger, then denies it and blames a colleague.

With the ledger's permissions as designed (each writer file owned by its writer, a sticky
directory) the insider can rewrite only its own file and add new ones, and that is what it
does: it edits the entry recording its checkpoint modification so it names the colleague
(the line stays canonical JSON; only the signature no longer matches), drops the entry
recording its deletion, and appends, with a fresh key labelled with the colleague's identity,
a ``checkpoint.deleted`` entry claiming the colleague deleted the checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

from trainwarden._fs import atomic_write
from trainwarden.drill._attacks import AttackContext, AttackFailed, AttackOutcome

__all__ = ["attack_deny", "attack_drop", "attack_edit", "rewrite_entry"]


def rewrite_entry(data: bytes, seq: int, *, replace: tuple[str, str] | None) -> bytes:
    """``data`` (a writer file) with entry ``seq`` edited (``replace``) or dropped (``None``).

    Raises:
        AttackFailed: No line holds entry ``seq``, or the edit changes nothing.
    """
    lines = data.split(b"\n")
    for index, line in enumerate(lines):
        try:
            entry = json.loads(line) if line else None
        except ValueError:
            continue
        if not isinstance(entry, dict) or entry.get("seq") != seq:
            continue
        if replace is None:
            del lines[index]
        else:
            old, new = (json.dumps(s)[1:-1].encode("utf-8") for s in replace)
            edited = line.replace(b'"' + old + b'"', b'"' + new + b'"')
            if edited == line:
                raise AttackFailed(f"entry {seq} does not mention {replace[0]!r}")
            lines[index] = edited
        return b"\n".join(lines)
    raise AttackFailed(f"no entry with seq {seq}")


def _rewrite(path: Path, seq: int, replace: tuple[str, str] | None) -> None:
    try:
        data = path.read_bytes()
        mode = path.stat().st_mode & 0o777
    except OSError as exc:
        raise AttackFailed(f"cannot read {path}: {exc.strerror or exc}") from exc
    atomic_write(path, rewrite_entry(data, seq, replace=replace), mode=mode, what="ledger file")


def attack_edit(ctx: AttackContext) -> AttackOutcome:
    """Make an entry of the insider's own file name the colleague instead."""
    params = ctx.params
    path = Path(params["file"])
    seq = int(params["seq"])
    ctx.begin()
    _rewrite(path, seq, (str(params["from_identity"]), str(params["to_identity"])))
    return AttackOutcome(
        touched=[str(path)], details={"file": str(path), "writer": path.stem, "seq": seq}
    )


def attack_drop(ctx: AttackContext) -> AttackOutcome:
    """Remove an entry from the middle of the insider's own chain."""
    params = ctx.params
    path = Path(params["file"])
    seq = int(params["seq"])
    ctx.begin()
    _rewrite(path, seq, None)
    return AttackOutcome(
        touched=[str(path)], details={"file": str(path), "writer": path.stem, "seq": seq}
    )


def attack_deny(ctx: AttackContext) -> AttackOutcome:
    """Append, under a key labelled as the colleague, an entry saying they deleted it."""
    from trainwarden.keys import PrivateKey
    from trainwarden.ledger import Ledger

    params = ctx.params
    ctx.begin()
    fake = PrivateKey.generate(str(params["identity"]))
    with Ledger(Path(params["ledger"]), key=fake) as writer:
        entry = writer.append(
            "checkpoint.deleted",
            run=str(params["run"]),
            path=str(params["path"]),
            step=int(params["step"]),
            reason="retention: kept the two newest checkpoints",
        )
        file = writer.path
    return AttackOutcome(
        touched=[str(file)],
        details={
            "file": str(file),
            "writer": entry.writer,
            "seq": entry.seq,
            "key": fake.public.fingerprint,
            "claimed_identity": fake.identity,
        },
    )
