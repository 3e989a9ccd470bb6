"""Verification of a ledger: every writer's chain and signatures, seals, and recorded files.

Checks are independent per file; seals then tie the files together, so a tail truncated
or a writer file dropped after the last trusted seal shows up too.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainwarden._fs import read_regular
from trainwarden._system import cpu_count
from trainwarden.errors import ConfigError, InputError, VerificationError
from trainwarden.keys import PublicKey
from trainwarden.ledger._entry import Entry, MalformedEntry, parse_line
from trainwarden.ledger._files import (
    FileRecords,
    LedgerLayout,
    fingerprint_tag,
    read_records,
    resolve_layout,
    writer_key_tag,
)
from trainwarden.ledger._format import (
    HASH_PREFIX,
    MAX_LINE,
    OPEN_EVENT,
    SEAL_EVENT,
    b64decode,
    is_hash,
    signing_message,
)
from trainwarden.ledger._merkle import leaf_bytes, merkle_root
from trainwarden.ledger._report import (
    FileCheck,
    LedgerIssue,
    LedgerReport,
    LedgerTampered,
    SealedWriter,
    SealState,
    WriterState,
)
from trainwarden.ledger._sigcheck import MAX_WORKERS, check_signatures
from trainwarden.manifest import (
    DEFAULT_SHARD_SIZE,
    Manifest,
    check_shard_size,
    file_digest,
    hash_tree,
    walk_tree,
)

__all__ = ["VerifyProgress", "inspect_ledger", "verify_ledger"]

#: ``progress(files_done, files_total, entries_done)``, called after each ledger file.
VerifyProgress = Callable[[int, int, int], None]


def verify_ledger(
    path: str | os.PathLike[str],
    *,
    keys: Iterable[PublicKey],
    seal_keys: Iterable[PublicKey] = (),
    seal_receipts: Iterable[str | os.PathLike[str]] = (),
    check_files: bool = False,
    insecure_skip_signer_check: bool = False,
    workers: int | None = 1,
    progress: VerifyProgress | None = None,
) -> LedgerReport:
    """Verify a ledger directory (or one writer file) and return the report if intact.

    Args:
        path: Ledger directory, or a writer file ``<ledger>/writers/<id>.jsonl``.
        keys: Public keys trusted to write entries. Every entry must be signed by one of
            them and every writer file by one key only.
        seal_keys: Public keys trusted to seal. When given, at least one seal signed by one
            of them must be present, and every seal file must be signed by them.
        seal_receipts: Seal entries kept outside the ledger (``ledger seal --receipt``):
            each must still be in the ledger, and the ledger must extend it.
        check_files: Also check that files recorded by events with ``path`` and
            ``digest`` still exist with that digest.
        insecure_skip_signer_check: Accept an empty ``keys``: check chains and signatures
            against the keys the files name themselves, which proves integrity only
            against someone without any key (``signers_checked`` is then false).
        workers: Processes that check signatures (most of the cost) for files with many
            entries; 1 checks in this process, ``None`` uses the CPUs this process may run
            on (at most 8). Workers are started with ``spawn``, so a script calling this
            with ``workers > 1`` needs an ``if __name__ == "__main__"`` guard.
        progress: Called with ``(files_done, files_total, entries_done)`` after each
            ledger file is checked.

    Returns:
        The report of an intact ledger.

    Raises:
        LedgerTampered: Any issue was found; ``exc.report`` has them all.
        ConfigError: No trusted key was given (without ``insecure_skip_signer_check``), or
            receipts without seal keys.
        InputError: ``path`` is not a ledger, or a receipt cannot be read.
    """
    report = inspect_ledger(
        path,
        keys=keys,
        seal_keys=seal_keys,
        seal_receipts=seal_receipts,
        check_files=check_files,
        insecure_skip_signer_check=insecure_skip_signer_check,
        workers=workers,
        progress=progress,
    )
    if report.issues:
        raise LedgerTampered(report)
    return report


def inspect_ledger(
    path: str | os.PathLike[str],
    *,
    keys: Iterable[PublicKey],
    seal_keys: Iterable[PublicKey] = (),
    seal_receipts: Iterable[str | os.PathLike[str]] = (),
    check_files: bool = False,
    insecure_skip_signer_check: bool = False,
    workers: int | None = 1,
    progress: VerifyProgress | None = None,
) -> LedgerReport:
    """Like :func:`verify_ledger`, but return the report whatever it found (forensics)."""
    if workers is None:
        workers = cpu_count(cap=MAX_WORKERS)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be at least 1 (or None for all CPUs), not {workers!r}")
    trusted = {k.fingerprint: k for k in keys}
    if not trusted and not insecure_skip_signer_check:
        raise ConfigError(
            "no trusted writer key given: pass the writers' public keys "
            "(or skip signer trust explicitly with insecure_skip_signer_check=True)"
        )
    sealers = {k.fingerprint: k for k in seal_keys}
    receipts = [Path(p) for p in seal_receipts]
    if receipts and not sealers:
        raise ConfigError("seal receipts need the seal keys that signed them")
    layout = resolve_layout(Path(path))
    verifier = _Verifier(layout, trusted or None, sealers or None, workers, progress)
    return verifier.run(receipts, check_files)


@dataclass
class _Chain:
    """Working state of one verified file."""

    records: FileRecords
    role: str
    key: str | None = None
    identity: str | None = None
    trusted: bool = False
    by_seq: dict[int, Entry] = field(default_factory=dict)
    good: list[Entry] = field(default_factory=list)  # signature verified under a trusted key
    entries: int = 0
    head: str | None = None


class _Verifier:
    def __init__(
        self,
        layout: LedgerLayout,
        trusted: Mapping[str, PublicKey] | None,
        sealers: Mapping[str, PublicKey] | None,
        workers: int = 1,
        progress: VerifyProgress | None = None,
    ) -> None:
        self.workers = workers
        self.progress = progress
        self.files_done = 0
        self.files_total = 0
        self.entries_done = 0
        self.layout = layout
        self.trusted = trusted
        self.sealers = sealers
        self.issues: list[LedgerIssue] = []
        self.warnings: list[LedgerIssue] = []

    def run(self, receipts: list[Path], check_files: bool) -> LedgerReport:
        if self.trusted is not None and self.sealers is not None:
            for fingerprint in sorted(set(self.trusted) & set(self.sealers)):
                self.warnings.append(
                    LedgerIssue(
                        "seal_key_is_writer_key",
                        f"key {fingerprint} is trusted both to write and to seal: its holder "
                        "could truncate their own chain and seal the result",
                    )
                )
        # Seals first: a seal read now covers a state that existed before we read the writer
        # files, and those only grow. Read the other way round, a seal made while we read
        # would cover entries we never saw, and an honest ledger would look truncated.
        seal_paths, unexpected_seals = self.layout.seal_files()
        seal_records = [read_records(p) for p in seal_paths]
        writer_paths, unexpected = self.layout.writer_files()
        self.files_total = len(seal_paths) + len(writer_paths)
        for path in unexpected + unexpected_seals:
            self.warnings.append(
                LedgerIssue("unexpected_file", "not a ledger file; ignored", file=str(path))
            )
        chains = {}
        for path in writer_paths:
            chain = self._check_file(read_records(path), "writer", self.trusted, self.issues)
            chains[chain.records.writer_id] = chain
            self._advance(chain)
        # Seal files by untrusted (or unchecked) keys are no evidence either way: their
        # problems are notes, never tampering, so nobody can plant a seal to accuse others.
        seal_sink = self.issues if self.sealers is not None else self.warnings
        seal_chains = []
        for records in seal_records:
            seal_chains.append(self._check_file(records, "sealer", self.sealers, seal_sink))
            self._advance(seal_chains[-1])
        seals = self._collect_seals(seal_chains)
        if self.sealers is not None:
            seals.extend(self._load_receipts(receipts, seal_chains, seals))
        trusted_seals = sorted(
            (s for s in seals if s.trusted), key=lambda s: (s.time, s.sealer, s.seq)
        )
        if self.sealers is not None and not trusted_seals:
            self.issues.append(
                LedgerIssue(
                    "seal_missing",
                    "no seal signed by a trusted seal key is in the ledger "
                    "(seals deleted, or the ledger was never sealed)",
                )
            )
        sealed = self._check_seals(trusted_seals, chains)
        entries = sorted(
            (e for c in chains.values() for e in c.by_seq.values()),
            key=lambda e: (e.time, e.writer, e.seq),
        )
        files = self._check_files(entries) if check_files else []
        writers = [_state(c, sealed.get(w, 0)) for w, c in sorted(chains.items())] + [
            _state(c, 0) for c in seal_chains
        ]
        for state in writers:
            if state.role == "writer" and state.unsealed and trusted_seals:
                self.warnings.append(
                    LedgerIssue(
                        "unsealed",
                        f"{state.unsealed} entr{'y' if state.unsealed == 1 else 'ies'} after "
                        "the last seal: truncating them would not be detected",
                        file=state.file,
                        writer=state.writer,
                    )
                )
        if not trusted_seals and any(w.entries for w in writers if w.role == "writer"):
            self.warnings.append(
                LedgerIssue(
                    "unsealed",
                    "no trusted seal checked: a dropped writer file or a truncated tail "
                    "would not be detected",
                )
            )
        return LedgerReport(
            ledger=str(self.layout.only or self.layout.root),
            writers=tuple(writers),
            seals=tuple(sorted(seals, key=lambda s: (s.time, s.sealer, s.seq))),
            issues=tuple(self.issues),
            warnings=tuple(self.warnings),
            entries=tuple(entries),
            files=tuple(files),
            signers_checked=self.trusted is not None,
            seals_checked=self.sealers is not None,
        )

    def _advance(self, chain: _Chain) -> None:
        self.files_done += 1
        self.entries_done += len(chain.records.records)
        if self.progress is not None:
            self.progress(self.files_done, self.files_total, self.entries_done)

    # -- one file ---------------------------------------------------------------------------

    def _check_file(
        self,
        records: FileRecords,
        role: str,
        trusted: Mapping[str, PublicKey] | None,
        sink: list[LedgerIssue],
    ) -> _Chain:
        chain = _Chain(records, role)
        name = str(records.path)
        writer_id = records.writer_id
        prefix = "seal_" if role == "sealer" else ""
        offsets = {ln: off for ln, off, _ in records.records}

        def issue(
            kind: str, message: str, *, seq: int | None = None, line: int | None = None
        ) -> None:
            if prefix and kind in ("forged", "altered"):
                kind = prefix + kind
            elif prefix:
                message = f"seal file: {message}"
            sink.append(
                LedgerIssue(
                    kind,
                    message,
                    file=name,
                    writer=writer_id,
                    seq=seq,
                    line=line,
                    offset=offsets.get(line) if line is not None else None,
                )
            )

        if records.error is not None:
            issue("unreadable", records.error)
            return chain
        if records.torn_bytes:
            if records.writer_gone:
                why = "a write torn by a crash or a failed write: no writer holds the file"
            else:
                why = "an append in progress or a torn write"
            self.warnings.append(
                LedgerIssue(
                    "in_progress",
                    f"final {records.torn_bytes} bytes are an incomplete entry ({why}); "
                    "ignored, and never counted as recorded",
                    file=name,
                    writer=writer_id,
                )
            )
        parsed = [(ln, r) for ln, _, r in records.records if isinstance(r, Entry)]
        if not records.records:
            self.warnings.append(
                LedgerIssue("empty", "writer file holds no entry yet", file=name, writer=writer_id)
            )
            return chain
        embedded = self._writer_key(chain, parsed, issue)
        if trusted is not None and chain.key is not None:
            chain.trusted = chain.key in trusted
            if chain.trusted:
                chain.identity = trusted[chain.key].identity
        later_seqs: dict[int, int] = {}
        for _, e in parsed:
            later_seqs[e.seq] = later_seqs.get(e.seq, 0) + 1
        expected, prev_hash, resync = 0, None, False
        # An edited entry no longer hashes to what its successor links to; that broken link
        # is the same edit, already reported as "altered", so it is not reported again.
        prev_altered = altered = False
        forged_reported = False
        last_time = ""
        sig_ok = self._check_signatures(records, chain, trusted, embedded)
        for index, (lineno, _, record) in enumerate(records.records):
            if isinstance(record, MalformedEntry):
                kind = "altered" if record.noncanonical else "malformed"
                issue(kind, str(record), line=lineno)
                resync = True
                continue
            entry = record
            prev_altered, altered = altered, False
            later_seqs[entry.seq] -= 1
            # Role and event placement: a seal file holds only seals, a writer file never.
            if entry.event == OPEN_EVENT and entry.seq != 0:
                issue(
                    "malformed",
                    "ledger.open may only be the first entry",
                    seq=entry.seq,
                    line=lineno,
                )
            elif role == "writer" and entry.event == SEAL_EVENT:
                issue("misplaced", "a seal entry in a writer file", seq=entry.seq, line=lineno)
            elif role == "sealer" and entry.event not in (OPEN_EVENT, SEAL_EVENT):
                issue(
                    "misplaced", f"a {entry.event} entry in a seal file", seq=entry.seq, line=lineno
                )
            if entry.writer != writer_id:
                issue(
                    "misplaced",
                    f"entry belongs to writer {entry.writer} (file renamed or entry copied)",
                    seq=entry.seq,
                    line=lineno,
                )
            # Signature: by a trusted key, and by this file's key (one key per file).
            signer = trusted.get(entry.actor.key) if trusted is not None else embedded
            if trusted is not None and signer is None:
                if not forged_reported:
                    issue(
                        "forged",
                        f"signed by key {entry.actor.key} ({entry.actor.identity}), "
                        "which is not a trusted key",
                        seq=entry.seq,
                        line=lineno,
                    )
                    forged_reported = True
            elif entry.actor.key != chain.key:
                issue(
                    "forged",
                    f"attributed to key {entry.actor.key}, not to this writer's key {chain.key}",
                    seq=entry.seq,
                    line=lineno,
                )
            elif signer is not None and not sig_ok.get(index, False):
                altered = True
                issue(
                    "altered",
                    "signature does not match the content (entry changed after signing)",
                    seq=entry.seq,
                    line=lineno,
                )
            elif trusted is not None:
                chain.good.append(entry)
            # Chain position.
            seq = entry.seq
            seen = chain.by_seq.get(seq)
            if seen is not None:
                if seen.hash == entry.hash:
                    issue(
                        "duplicated",
                        f"duplicates the entry at line {seen.line}",
                        seq=seq,
                        line=lineno,
                    )
                else:
                    issue(
                        "forked",
                        f"a second, different entry for seq {seq} "
                        f"(the first is at line {seen.line})",
                        seq=seq,
                        line=lineno,
                    )
                continue
            if resync:
                resync = False
            elif seq == expected:
                if entry.prev != prev_hash and not prev_altered:
                    issue(
                        "chain_broken",
                        "prev does not match the hash of the entry before it "
                        "(an earlier entry was replaced or removed)",
                        seq=seq,
                        line=lineno,
                    )
            elif seq > expected:
                missing = range(expected, seq)
                if any(later_seqs.get(s, 0) > 0 for s in missing):
                    issue(
                        "reordered",
                        f"seq {seq} appears before seq {expected}",
                        seq=seq,
                        line=lineno,
                    )
                else:
                    gap = _seqs(expected, seq - 1)
                    issue("dropped", f"{gap} missing before this entry", seq=seq, line=lineno)
            else:
                issue(
                    "reordered", f"seq {seq} appears after seq {expected - 1}", seq=seq, line=lineno
                )
            chain.by_seq[seq] = entry
            if seq >= expected:
                expected, prev_hash = seq + 1, entry.hash
            if entry.time < last_time:
                self.warnings.append(
                    LedgerIssue(
                        "time_backwards",
                        f"time {entry.time} is earlier than the entry before it "
                        "(clock step, or a clock lie by the key holder)",
                        file=name,
                        writer=writer_id,
                        seq=seq,
                        line=lineno,
                    )
                )
            last_time = max(last_time, entry.time)
        tag = writer_key_tag(writer_id)
        if parsed and chain.key is not None and tag not in (None, fingerprint_tag(chain.key)):
            issue(
                "misplaced",
                f"file name names key tag {tag}, its entries are signed by {chain.key}",
                seq=parsed[0][1].seq,
                line=parsed[0][0],
            )
        chain.entries = expected
        last = chain.by_seq.get(expected - 1)
        chain.head = last.hash if last is not None else None
        return chain

    def _check_signatures(
        self,
        records: FileRecords,
        chain: _Chain,
        trusted: Mapping[str, PublicKey] | None,
        embedded: PublicKey | None,
    ) -> dict[int, bool]:
        """Check every signature that has a key to check it with, in one batch."""
        groups: dict[str, tuple[PublicKey, list[int], list[tuple[bytes, bytes]]]] = {}
        for index, (_, _, record) in enumerate(records.records):
            if not isinstance(record, Entry) or record.actor.key != chain.key:
                continue
            signer = trusted.get(record.actor.key) if trusted is not None else embedded
            if signer is None:
                continue
            group = groups.get(record.actor.key)
            if group is None:
                group = groups[record.actor.key] = (signer, [], [])
            group[1].append(index)
            group[2].append((b64decode(record.sig), signing_message(record.hash)))
        jobs = []
        for fingerprint, (key, _, items) in groups.items():
            # A key only checks entries attributed to its own fingerprint (the embedded key
            # of a file whose ledger.open lies about it checks nothing).
            jobs.append((key, items if key.fingerprint == fingerprint else []))
        results = check_signatures(jobs, workers=self.workers)
        out: dict[int, bool] = {}
        for (_, indices, _), oks in zip(groups.values(), results, strict=True):
            out.update(zip(indices, oks or [False] * len(indices), strict=True))
        return out

    def _writer_key(
        self, chain: _Chain, parsed: list[tuple[int, Entry]], issue: Any
    ) -> PublicKey | None:
        """Read the file's key from its ``ledger.open`` entry; check file name and role."""
        embedded = None
        first = parsed[0][1] if parsed else None
        if first is not None and first.seq == 0 and first.event == OPEN_EVENT:
            data = first.data
            try:
                raw = b64decode(str(data.get("key")))
                embedded = PublicKey(raw=raw, identity=str(data.get("identity")))
            except (ValueError, InputError):
                issue(
                    "malformed",
                    "ledger.open does not hold a valid public key",
                    seq=0,
                    line=parsed[0][0],
                )
            if embedded is not None and embedded.fingerprint != first.actor.key:
                issue(
                    "forged",
                    f"ledger.open holds key {embedded.fingerprint} but is attributed to "
                    f"{first.actor.key}",
                    seq=0,
                    line=parsed[0][0],
                )
                embedded = None
            if data.get("role") != chain.role:
                issue(
                    "misplaced",
                    f"file opened as a {data.get('role')!r} file, found among {chain.role} files",
                    seq=0,
                    line=parsed[0][0],
                )
        if first is not None:
            chain.key = first.actor.key
            chain.identity = first.actor.identity
        return embedded

    # -- seals ----------------------------------------------------------------------------

    def _collect_seals(self, seal_chains: list[_Chain]) -> list[SealState]:
        seals = []
        for chain in seal_chains:
            good = {e.hash for e in chain.good}
            for entry in chain.by_seq.values():
                if entry.event != SEAL_EVENT:
                    continue
                seal = self._seal_from_entry(entry, trusted=entry.hash in good)
                if seal is not None:
                    seals.append(seal)
        return seals

    def _seal_from_entry(self, entry: Entry, *, trusted: bool) -> SealState | None:
        data = entry.data
        writers_data = data.get("writers")
        sink = self.issues if trusted else self.warnings
        try:
            if not isinstance(writers_data, list):
                raise TypeError("writers")
            writers = tuple(
                SealedWriter(writer=str(w["writer"]), count=int(w["count"]), head=str(w["head"]))
                for w in writers_data
            )
            root = data["root"]
            if not is_hash(root) or data.get("size") != len(writers):
                raise TypeError("root/size")
            if [w.writer for w in writers] != sorted({w.writer for w in writers}):
                raise TypeError("order")
            if any(w.count < 1 or not is_hash(w.head) for w in writers):
                raise TypeError("leaf")
        except (KeyError, TypeError, ValueError):
            sink.append(
                LedgerIssue(
                    "seal_invalid",
                    "seal content is malformed",
                    file=entry.file,
                    writer=entry.writer,
                    seq=entry.seq,
                    line=entry.line,
                )
            )
            return None
        if merkle_root([leaf_bytes(w.writer, w.count, w.head) for w in writers]) != root:
            sink.append(
                LedgerIssue(
                    "seal_invalid",
                    "seal's Merkle root does not match the chain heads it lists",
                    file=entry.file,
                    writer=entry.writer,
                    seq=entry.seq,
                    line=entry.line,
                )
            )
            return None
        identity = entry.actor.identity
        if trusted and self.sealers is not None and entry.actor.key in self.sealers:
            identity = self.sealers[entry.actor.key].identity
        return SealState(
            sealer=entry.writer,
            seq=entry.seq,
            time=entry.time,
            root=root,
            writers=writers,
            key=entry.actor.key,
            identity=identity,
            trusted=trusted,
            hash=entry.hash,
        )

    def _load_receipts(
        self, receipts: list[Path], seal_chains: list[_Chain], seals: list[SealState]
    ) -> list[SealState]:
        assert self.sealers is not None
        present = {
            (c.records.writer_id, e.seq): e.hash for c in seal_chains for e in c.by_seq.values()
        }
        known = {s.hash for s in seals if s.trusted}
        extra = []
        for path in receipts:
            text = read_regular(path, limit=MAX_LINE, what="seal receipt")
            try:
                entry = parse_line(text.rstrip(b"\n"), file=str(path), lineno=1)
            except MalformedEntry as exc:
                raise InputError(f"{path} is not a seal receipt: {exc}") from exc
            key = self.sealers.get(entry.actor.key)
            if entry.event != SEAL_EVENT or key is None or not _signature_ok(key, entry):
                raise InputError(f"seal receipt {path} is not a seal signed by a trusted seal key")
            if present.get((entry.writer, entry.seq)) != entry.hash:
                self.issues.append(
                    LedgerIssue(
                        "seal_rollback",
                        f"seal {entry.writer}#{entry.seq} from receipt {path} is no longer in "
                        "the ledger (seals rolled back or deleted)",
                        writer=entry.writer,
                        seq=entry.seq,
                    )
                )
            if entry.hash not in known:
                seal = self._seal_from_entry(entry, trusted=True)
                if seal is not None:
                    extra.append(seal)
                    known.add(entry.hash)
        return extra

    def _check_seals(self, seals: list[SealState], chains: dict[str, _Chain]) -> dict[str, int]:
        """Check the chains against every trusted seal; return sealed counts per writer."""
        sealed: dict[str, int] = {}
        last: dict[str, tuple[SealedWriter, SealState]] = {}
        reported: set[tuple[str, str]] = set()
        only = self.layout.only.name[:-6] if self.layout.only is not None else None

        def report(kind: str, writer: str, message: str, seq: int | None = None) -> None:
            if (kind, writer) in reported:
                return
            reported.add((kind, writer))
            chain = chains.get(writer)
            self.issues.append(
                LedgerIssue(
                    kind,
                    message,
                    file=str(chain.records.path) if chain else None,
                    writer=writer,
                    seq=seq,
                )
            )

        # Newest seal first: the most complete statement names each problem.
        for seal in reversed(seals):
            for leaf in seal.writers:
                if only is not None and leaf.writer != only:
                    continue
                sealed[leaf.writer] = max(sealed.get(leaf.writer, 0), leaf.count)
                chain = chains.get(leaf.writer)
                if chain is None:
                    report(
                        "writer_missing",
                        leaf.writer,
                        f"writer file is gone; seal {seal.name} ({seal.time}) covered "
                        f"{leaf.count} entries of it",
                    )
                    continue
                entry = chain.by_seq.get(leaf.count - 1)
                if entry is None:
                    if chain.entries < leaf.count:
                        report(
                            "truncated",
                            leaf.writer,
                            f"chain ends after {chain.entries} entries but seal {seal.name} "
                            f"({seal.time}) covered {leaf.count}: "
                            f"{_seqs(chain.entries, leaf.count - 1)} removed",
                            seq=chain.entries,
                        )
                elif entry.hash != leaf.head:
                    report(
                        "rewritten",
                        leaf.writer,
                        f"entry seq {leaf.count - 1} is not the one seal {seal.name} covered "
                        "(chain rewritten after sealing)",
                        seq=leaf.count - 1,
                    )
        # Consistency between seals, oldest first: later seals must extend earlier ones.
        for seal in seals:
            current = {leaf.writer: leaf for leaf in seal.writers}
            for writer, (old, old_seal) in last.items():
                new = current.get(writer)
                if new is None:
                    report(
                        "seal_rollback",
                        writer,
                        f"seal {seal.name} omits this writer, which {old_seal.name} covered",
                    )
                elif new.count < old.count or (new.count == old.count and new.head != old.head):
                    report(
                        "seal_rollback",
                        writer,
                        f"seal {seal.name} covers {new.count} entries, but the earlier seal "
                        f"{old_seal.name} covered {old.count}",
                    )
            for leaf in seal.writers:
                last[leaf.writer] = (leaf, seal)
        return sealed

    # -- recorded files ---------------------------------------------------------------------

    def _check_files(self, entries: list[Entry]) -> list[FileCheck]:
        latest: dict[str, Entry] = {}
        for entry in entries:
            path = entry.data.get("path")
            if not isinstance(path, str):
                continue
            if entry.event.endswith(".deleted"):
                latest.pop(path, None)
            elif isinstance(entry.data.get("digest"), str):
                latest[path] = entry
        results = []
        for path, entry in sorted(latest.items()):
            digest = str(entry.data["digest"])
            shard_size = entry.data.get("shard_size")
            status, actual, reason = _file_status(
                Path(path), digest, shard_size if type(shard_size) is int else None
            )
            check = FileCheck(
                path=path,
                digest=digest,
                status=status,
                actual=actual,
                event=entry.event,
                run=entry.run,
                writer=entry.writer,
                seq=entry.seq,
                reason=reason,
            )
            results.append(check)
            where = f"recorded by {entry.event} ({entry.writer} seq {entry.seq}, {entry.time})"
            # Every status but "ok" is an issue. "unchecked" fails closed: a checkpoint made
            # unreadable (chmod 000) after being changed must not pass as verified.
            problem = {
                "missing": ("file_missing", f"{path} is gone; {where}"),
                "changed": (
                    "file_changed",
                    f"{path} now has digest {actual}, not {digest}; {where}",
                ),
                "unchecked": ("file_unchecked", f"{path} not checked: {reason}"),
            }.get(status)
            if problem is not None:
                kind, message = problem
                self.issues.append(
                    LedgerIssue(kind, message, file=path, writer=entry.writer, seq=entry.seq)
                )
        return results


def _file_status(
    path: Path, digest: str, shard_size: int | None
) -> tuple[str, str | None, str | None]:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "missing", None, None
    except OSError as exc:
        return "unchecked", None, f"cannot stat: {exc.strerror or exc}"
    if not digest.startswith(HASH_PREFIX):
        return "unchecked", None, f"unsupported digest format {digest.split(':')[0]!r}"
    if shard_size is not None or stat.S_ISDIR(st.st_mode):
        return _manifest_status(path, digest, shard_size)
    if not stat.S_ISREG(st.st_mode):
        return "changed", None, "no longer a regular file"
    try:
        # Opened without blocking and checked to be regular: a FIFO swapped in after the
        # lstat cannot hang the verifier; a file rewritten while read is not verified.
        actual = file_digest(path)
    except InputError as exc:
        return "unchecked", None, exc.diagnostics()
    return ("ok" if actual == digest else "changed"), actual, None


def _manifest_status(
    path: Path, digest: str, shard_size: int | None
) -> tuple[str, str | None, str | None]:
    """Compare with the checkpoint digest ``trainwarden sign`` records (manifest root)."""
    try:
        tree = walk_tree(path)
    except InputError as exc:
        return "unchecked", None, exc.diagnostics()
    if tree.symlinks or tree.special:
        odd = ", ".join((*tree.symlinks, *tree.special)[:3])
        return "changed", None, f"holds symlinks or special files now ({odd})"
    if tree.unreadable:
        return "unchecked", None, f"cannot read {tree.unreadable[0][0]}: {tree.unreadable[0][1]}"
    size = shard_size if shard_size is not None else DEFAULT_SHARD_SIZE
    try:
        check_shard_size(size)
    except ConfigError as exc:
        return "unchecked", None, f"recorded shard_size is unusable: {exc}"
    result = hash_tree(tree, shard_size=size)
    if result.failed:
        return "unchecked", None, f"cannot hash {result.failed[0][0]}: {result.failed[0][1]}"
    actual = Manifest(name=path.name, files=result.entries, shard_size=size).digest
    return ("ok" if actual == digest else "changed"), actual, None


def _seqs(first: int, last: int) -> str:
    return f"seq {first}" if first == last else f"seq {first}..{last}"


def _signature_ok(key: PublicKey, entry: Entry) -> bool:
    if key.fingerprint != entry.actor.key:
        return False
    try:
        key.verify(b64decode(entry.sig), signing_message(entry.hash))
    except (VerificationError, ValueError):
        return False
    return True


def _state(chain: _Chain, sealed: int) -> WriterState:
    return WriterState(
        writer=chain.records.writer_id,
        file=str(chain.records.path),
        role=chain.role,
        key=chain.key,
        identity=chain.identity,
        trusted=chain.trusted,
        entries=chain.entries,
        head=chain.head,
        sealed=sealed,
        in_progress_bytes=chain.records.torn_bytes,
    )
