"""Sealing: a more trusted key signs an RFC 6962 Merkle root over every writer's chain head."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

from trainwarden.errors import InputError
from trainwarden.keys import PrivateKey, PublicKey, load_private_key
from trainwarden.ledger._format import SEAL_EVENT, SEALS_DIR, canonical_json
from trainwarden.ledger._merkle import leaf_bytes, merkle_root
from trainwarden.ledger._report import LedgerTampered, SealedWriter, SealState
from trainwarden.ledger._verify import inspect_ledger
from trainwarden.ledger._writer import Ledger

__all__ = ["seal_ledger"]


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
        InputError: The ledger or receipt cannot be read or written.
    """
    private = key if isinstance(key, PrivateKey) else load_private_key(Path(key))
    root = Path(path)
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
    if receipt is not None:
        _write_receipt(Path(receipt), line)
    return SealState(
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


def _entry_line(entry: object) -> bytes:
    from trainwarden.ledger._entry import Entry

    assert isinstance(entry, Entry)
    obj = entry.body()
    obj["sig"] = entry.sig
    return (canonical_json(obj) + "\n").encode("utf-8")


def _write_receipt(path: Path, line: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with tmp.open("wb") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise InputError(f"cannot write seal receipt {path}: {exc.strerror or exc}") from exc
