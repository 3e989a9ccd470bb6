"""Queries over verified entries: a run's events and its checkpoint records (for lineage)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainwarden.errors import InputError
from trainwarden.keys import PublicKey
from trainwarden.ledger._entry import Actor, Entry, MalformedEntry
from trainwarden.ledger._files import read_records, resolve_layout
from trainwarden.ledger._verify import verify_ledger

__all__ = [
    "CHECKPOINT_EVENTS",
    "CheckpointRecord",
    "LedgerContents",
    "checkpoint_records",
    "entries_for_run",
    "read_entries",
    "read_ledger",
]

#: Events that record a checkpoint's state, in the data shape ``checkpoint_records`` reads:
#: ``path`` (str), ``digest`` (``sha256:...``), ``step`` (int), ``parent`` (digest or null).
CHECKPOINT_EVENTS = ("checkpoint.saved", "checkpoint.signed", "checkpoint.deleted")


def read_ledger(path: str | os.PathLike[str], *, run: str | None = None) -> list[Entry]:
    """Read every writer entry, **unverified**, in timeline order (time, writer, seq).

    For display and forensics. Use :func:`verify_ledger` (or :func:`entries_for_run`)
    before trusting anything read here.

    Raises:
        InputError: ``path`` is not a ledger, or a line is not an entry.
    """
    layout = resolve_layout(Path(path))
    files, _ = layout.writer_files()
    entries = []
    for file in files:
        records = read_records(file)
        if records.error is not None:
            raise InputError(f"{file}: {records.error}")
        for lineno, _, record in records.records:
            if isinstance(record, MalformedEntry):
                raise InputError(f"{file}:{lineno}: {record} (run `trainwarden ledger verify`)")
            if run is None or record.run == run:
                entries.append(record)
    entries.sort(key=lambda e: (e.time, e.writer, e.seq))
    return entries


@dataclass(frozen=True, slots=True)
class LedgerContents:
    """Everything readable in a ledger's writer files, **unverified**, and what was not.

    Attributes:
        entries: Well-formed entries in timeline order (time, writer, seq).
        problems: One line per file that could not be read or line that is not an entry
            (``file:line: reason``).
    """

    entries: tuple[Entry, ...]
    problems: tuple[str, ...]


def read_entries(path: str | os.PathLike[str], *, run: str | None = None) -> LedgerContents:
    """Read every well-formed writer entry, **unverified**, and list what could not be read.

    Like :func:`read_ledger`, but a malformed line or an unreadable file is listed in
    ``problems`` instead of stopping the read: for showing a damaged ledger (forensics).
    Use :func:`verify_ledger` before trusting anything read here.

    Raises:
        InputError: ``path`` is not a ledger.
    """
    layout = resolve_layout(Path(path))
    files, _ = layout.writer_files()
    entries: list[Entry] = []
    problems: list[str] = []
    for file in files:
        records = read_records(file)
        if records.error is not None:
            problems.append(f"{file}: {records.error}")
        for lineno, _, record in records.records:
            if isinstance(record, MalformedEntry):
                problems.append(f"{file}:{lineno}: {record}")
            elif run is None or record.run == run:
                entries.append(record)
    entries.sort(key=lambda e: (e.time, e.writer, e.seq))
    return LedgerContents(entries=tuple(entries), problems=tuple(problems))


def entries_for_run(
    path: str | os.PathLike[str],
    run: str,
    *,
    keys: Iterable[PublicKey],
    seal_keys: Iterable[PublicKey] = (),
    events: Iterable[str] | None = None,
) -> tuple[Entry, ...]:
    """Verify the ledger, then return the entries about ``run`` in timeline order.

    Raises:
        LedgerTampered: The ledger did not verify (nothing is returned from it).
        ConfigError: ``keys`` is empty.
    """
    report = verify_ledger(path, keys=keys, seal_keys=seal_keys)
    return report.entries_for_run(run, events)


@dataclass(frozen=True, slots=True)
class CheckpointRecord:
    """A checkpoint event as lineage checks need it.

    Attributes:
        event: ``checkpoint.saved``, ``checkpoint.signed`` or ``checkpoint.deleted``.
        run: The run.
        path: Checkpoint file or directory, as recorded.
        digest: Its digest as recorded (``None`` for deletions).
        step: Training step, if recorded.
        parent: Digest of the parent checkpoint, if recorded.
        time: When it was recorded.
        actor: Who recorded it.
        writer: Writer id of the entry.
        seq: Sequence number of the entry.
        data: The whole payload (for fields beyond these).
    """

    event: str
    run: str | None
    path: str
    digest: str | None
    step: int | None
    parent: str | None
    time: str
    actor: Actor
    writer: str
    seq: int
    data: dict[str, Any]


def checkpoint_records(
    entries: Iterable[Entry], *, run: str | None = None
) -> tuple[CheckpointRecord, ...]:
    """The checkpoint events among ``entries`` (optionally of one run), in the given order.

    Entries without a string ``path`` are skipped; ``step`` must be an int and ``digest``
    and ``parent`` strings, else they read as ``None``.
    """
    out = []
    for e in entries:
        if e.event not in CHECKPOINT_EVENTS or (run is not None and e.run != run):
            continue
        path = e.data.get("path")
        if not isinstance(path, str):
            continue
        step = e.data.get("step")
        digest = e.data.get("digest")
        parent = e.data.get("parent")
        out.append(
            CheckpointRecord(
                event=e.event,
                run=e.run,
                path=path,
                digest=digest if isinstance(digest, str) else None,
                step=step if type(step) is int else None,
                parent=parent if isinstance(parent, str) else None,
                time=e.time,
                actor=e.actor,
                writer=e.writer,
                seq=e.seq,
                data=dict(e.data),
            )
        )
    return tuple(out)
