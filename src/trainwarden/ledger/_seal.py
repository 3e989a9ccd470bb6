"""Sealing: a more trusted key signs an RFC 6962 Merkle root over every writer's chain head."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path

from trainwarden._fs import atomic_write, check_output_path, describe_mode
from trainwarden.errors import InputError
from trainwarden.keys import PrivateKey, PublicKey, load_private_key
from trainwarden.ledger._entry import Entry
from trainwarden.ledger._files import resolve_layout
from trainwarden.ledger._format import SEAL_EVENT, SEALS_DIR, canonical_json
from trainwarden.ledger._merkle import leaf_bytes, merkle_root
from trainwarden.ledger._report import LedgerTampered, SealedWriter, SealState
from trainwarden.ledger._verify import inspect_ledger
from trainwarden.ledger._writer import Ledger

__all__ = ["SealReceiptNotWritten", "check_receipt_path", "seal_ledger"]


class SealReceiptNotWritten(InputError):
    """The seal was appended to the ledger, but writing its receipt failed afterwards.

    ``seal`` is the seal that was made and ``line`` its entry, exactly the bytes the receipt
    would have held: save them elsewhere by hand, or seal again with ``--receipt``.
    """

    def __init__(self, seal: SealState, line: bytes, message: str) -> None:
        self.seal = seal
        self.line = line
        super().__init__(message)

    def diagnostics(self) -> str:
        """The message, then the seal entry to keep as the receipt."""
        return f"{self}\nthe seal entry (save it as the receipt):\n{self.line.decode().rstrip()}"


def check_receipt_path(receipt: Path, ledger: Path) -> None:
    """Refuse a receipt path that cannot work, before anything is sealed.

    The receipt must not be inside the ledger (it is there to survive a rollback of the
    ledger's storage), an existing path there must be a regular file (never a directory,
    FIFO or symlink, which would be written through), and its directory must accept a
    new file.

    Raises:
        InputError: The receipt path is unusable; nothing was sealed.
    """
    try:
        check_output_path(receipt, [ledger])
    except InputError as exc:
        raise InputError(
            f"the seal receipt {receipt} must be kept outside the ledger {ledger} "
            "(it exists to detect a rollback of the ledger's storage)"
        ) from exc
    try:
        st = os.lstat(receipt)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise InputError(f"cannot write seal receipt {receipt}: {exc.strerror or exc}") from exc
    if st is not None and not stat.S_ISREG(st.st_mode):
        what = "a symlink" if stat.S_ISLNK(st.st_mode) else describe_mode(st.st_mode)
        raise InputError(f"seal receipt {receipt} is {what}; give a regular file path")
    probe = receipt.parent / f".{receipt.name}.{secrets.token_hex(6)}.probe"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(probe, flags, 0o600)
    except OSError as exc:
        raise InputError(f"cannot write seal receipt {receipt}: {exc.strerror or exc}") from exc
    os.close(fd)
    with contextlib.suppress(OSError):
        probe.unlink()


def seal_ledger(
    path: str | os.PathLike[str],
    *,
    key: PrivateKey | str | os.PathLike[str],
    writer_keys: Iterable[PublicKey] = (),
    seal_keys: Iterable[PublicKey] = (),
    receipt: str | os.PathLike[str] | None = None,
) -> SealState:
    """Seal the current state of every writer chain and append the seal to ``seals/``.

    The ledger is verified first (chains, signatures against ``writer_keys`` when given,
    else against the keys the files name, and earlier seals by this key or ``seal_keys``);
    a ledger with any issue is not sealed, and a new seal must extend every earlier trusted
    seal: a seal never endorses tampering or a rollback.

    Args:
        path: The ledger directory.
        key: The sealing key (keep it apart from the writers' keys).
        writer_keys: Trusted writer keys; without them the seal vouches only for the bytes.
        seal_keys: Other trusted seal keys whose seals this one must extend.
        receipt: Also write the seal entry to this file (keep it outside the shared
            storage; ``verify --seal-receipt`` then detects a rollback of the seals).

    Returns:
        The new seal.

    Raises:
        LedgerTampered: The ledger did not verify; nothing was sealed.
        InputError: The ledger cannot be read or written, or the receipt path is unusable
            (checked before sealing: nothing was sealed).
        SealReceiptNotWritten: The seal was appended but its receipt could not be written.
    """
    private = key if isinstance(key, PrivateKey) else load_private_key(Path(key))
    root = Path(path)
    layout = resolve_layout(root)
    if layout.only is not None:
        raise InputError(f"{root} is a writer file; seal the ledger directory {layout.root}")
    receipt_path = Path(receipt) if receipt is not None else None
    if receipt_path is not None:
        check_receipt_path(receipt_path, root)
    sealers = [private.public, *seal_keys]
    writer_keys = tuple(writer_keys)
    report = inspect_ledger(
        root,
        keys=writer_keys,
        seal_keys=sealers,
        insecure_skip_signer_check=not writer_keys,
    )
    # A first seal finds no earlier seal; that is the only issue a sealer may ignore.
    blocking = [i for i in report.issues if i.kind != "seal_missing"]
    if blocking:
        raise LedgerTampered(
            type(report)(
                ledger=report.ledger,
                writers=report.writers,
                seals=report.seals,
                issues=tuple(blocking),
                warnings=report.warnings,
                entries=report.entries,
                signers_checked=report.signers_checked,
                seals_checked=report.seals_checked,
            )
        )
    leaves = tuple(
        SealedWriter(writer=w.writer, count=w.entries, head=w.head)
        for w in report.writers
        if w.role == "writer" and w.entries > 0 and w.head is not None
    )
    root_hash = merkle_root([leaf_bytes(w.writer, w.count, w.head) for w in leaves])
    with Ledger._for_role(root, key=private, subdir=SEALS_DIR, resume=True) as sealer:
        entry = sealer._append(
            SEAL_EVENT,
            None,
            {"root": root_hash, "size": len(leaves), "writers": [w.to_dict() for w in leaves]},
            internal=True,
        )
        line = _entry_line(entry)
    seal = SealState(
        sealer=entry.writer,
        seq=entry.seq,
        time=entry.time,
        root=root_hash,
        writers=leaves,
        key=entry.actor.key,
        identity=entry.actor.identity,
        trusted=True,
        hash=entry.hash,
    )
    if receipt_path is not None:
        try:
            atomic_write(receipt_path, line, what="seal receipt")
        except InputError as exc:
            raise SealReceiptNotWritten(
                seal,
                line,
                f"seal {seal.name} appended to ledger {root}; writing the receipt "
                f"{receipt_path} failed: {exc}",
            ) from exc
    return seal


def _entry_line(entry: Entry) -> bytes:
    obj = entry.body()
    obj["sig"] = entry.sig
    return (canonical_json(obj) + "\n").encode("utf-8")
