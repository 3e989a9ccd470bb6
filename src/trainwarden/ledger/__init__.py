"""A tamper-evident, signed, attributable ledger of who did what to which run (T8).

A ledger is a directory on shared storage with one append-only, hash-chained, signed file
per writer and sealed by a more trusted key; the format is specified in ``docs/ledger.md``.

- Create: :func:`init_ledger` (or ``Ledger(..., create=True)``, the default of the Python
  API); ``Ledger(..., create=False)`` refuses a path that is not a ledger yet.
- Write: ``with Ledger(dir, key=key) as ledger: ledger.append("checkpoint.saved", run=...)``
  (``ledger.batch()`` for throughput; ``fsync=`` policy documented on :class:`Ledger`).
  :class:`Ledger` is a :class:`trainwarden.events.EventSink`.
- Seal: :func:`seal_ledger` signs an RFC 6962 Merkle root over every writer's chain head
  (:class:`SealReceiptNotWritten` when only writing the receipt failed).
- Verify: :func:`verify_ledger` returns a :class:`LedgerReport` or raises
  :class:`LedgerTampered` naming the first altered, dropped, reordered, duplicated, forged
  or truncated entry; :func:`inspect_ledger` returns the report either way.
- Read: :func:`read_ledger` and :func:`read_entries` (unverified; the latter lists damaged
  lines instead of stopping), :func:`entries_for_run` (verified) and
  :func:`checkpoint_records` for lineage checks.
"""

from __future__ import annotations

from trainwarden.ledger._entry import Actor, Entry
from trainwarden.ledger._files import init_ledger, is_ledger
from trainwarden.ledger._merkle import merkle_root
from trainwarden.ledger._query import (
    CHECKPOINT_EVENTS,
    CheckpointRecord,
    LedgerContents,
    checkpoint_records,
    entries_for_run,
    read_entries,
    read_ledger,
)
from trainwarden.ledger._report import (
    SCHEMA_VERSION,
    TAMPER_KINDS,
    FileCheck,
    LedgerIssue,
    LedgerReport,
    LedgerTampered,
    SealedWriter,
    SealState,
    WriterState,
)
from trainwarden.ledger._seal import SealReceiptNotWritten, seal_ledger
from trainwarden.ledger._verify import VerifyProgress, inspect_ledger, verify_ledger
from trainwarden.ledger._writer import FSYNC_POLICIES, FsyncPolicy, Ledger

__all__ = [
    "CHECKPOINT_EVENTS",
    "FSYNC_POLICIES",
    "SCHEMA_VERSION",
    "TAMPER_KINDS",
    "Actor",
    "CheckpointRecord",
    "Entry",
    "FileCheck",
    "FsyncPolicy",
    "Ledger",
    "LedgerContents",
    "LedgerIssue",
    "LedgerReport",
    "LedgerTampered",
    "SealReceiptNotWritten",
    "SealState",
    "SealedWriter",
    "VerifyProgress",
    "WriterState",
    "checkpoint_records",
    "entries_for_run",
    "init_ledger",
    "inspect_ledger",
    "is_ledger",
    "merkle_root",
    "read_entries",
    "read_ledger",
    "seal_ledger",
    "verify_ledger",
]
