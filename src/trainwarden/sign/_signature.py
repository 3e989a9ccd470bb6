"""Sign a file or checkpoint directory, and verify one against its signature and trusted keys."""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import secrets
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

from trainwarden._fs import atomic_write, check_output_path, describe_mode
from trainwarden.errors import ConfigError, InputError, VerificationError
from trainwarden.events import EventSink
from trainwarden.findings import FileReport, Finding, Location, Report, Severity, Verdict
from trainwarden.keys import PrivateKey, PublicKey
from trainwarden.manifest import (
    DEFAULT_SHARD_SIZE,
    FileEntry,
    ProgressCallback,
    check_shard_size,
    digest_path,
    hash_tree,
    walk_tree,
)
from trainwarden.manifest import (
    checkpoint_digest as _manifest_checkpoint_digest,
)
from trainwarden.sign._bundle import (
    PAYLOAD_TYPE,
    Statement,
    build_bundle,
    key_hint,
    pae,
    parse_bundle,
    parse_statement,
    read_bundle_file,
    statement_payload,
)
from trainwarden.sign._lineage import (
    LedgerTarget,
    check_against_ledger,
    open_ledger_target,
    record_signature,
)
from trainwarden.sign._results import (
    Signature,
    SignatureMismatch,
    SignatureNotRecorded,
    Verification,
)

__all__ = ["bundle_status", "checkpoint_digest", "default_sig_path", "sign_path", "verify_path"]

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_COMMAND = "verify"


def default_sig_path(path: str | os.PathLike[str]) -> Path:
    """``PATH.sig`` beside ``PATH`` (for a directory: next to it, never inside it)."""
    path = Path(path)
    if not path.name:  # "." or "/": name it after the absolute path
        path = path.absolute()
    if not path.name:
        raise ConfigError(f"cannot name a signature beside {path}: give --sig FILE")
    return path.with_name(f"{path.name}.sig")


def normalize_digest(value: str) -> str:
    """Accept ``sha256:<hex>`` or bare hex; return ``sha256:<hex>``.

    Raises:
        ConfigError: Not a SHA-256 digest.
    """
    text = value.strip().lower()
    if not text.startswith("sha256:"):
        text = f"sha256:{text}"
    if not _DIGEST.fullmatch(text):
        raise ConfigError(f"not a checkpoint digest: {value!r} (expected sha256:<64 hex>)")
    return text


def check_signature_output(sig: Path, signed: Path) -> None:
    """Refuse a signature path that would destroy or hide what it signs, before any work.

    The signature must not be the signed file (``sign FILE --sig FILE`` would replace the
    checkpoint by its own signature), nor lie inside the signed directory (it would sign
    itself), and an existing path there must be a regular file we may replace: a directory,
    FIFO, device or symlink (a loop included) is an error, never written through. The
    directory must accept a new file, so that a failure cannot come after the hashing.

    Raises:
        ConfigError: The path is the signed file or inside the signed directory.
        InputError: The path exists and is not a regular file, or its directory is not
            writable.
    """
    try:
        check_output_path(sig, [signed])
    except InputError as exc:
        if signed.is_dir() and not _same_path(sig, signed):
            where = f"inside the signed directory {signed}"
        else:
            where = f"the signed {'directory' if signed.is_dir() else 'file'} {signed} itself"
        raise ConfigError(
            f"the signature {sig} must not be {where}: that would destroy or hide what it "
            "signs; choose another --sig FILE"
        ) from exc
    try:
        st = os.lstat(sig)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise InputError(f"cannot write signature {sig}: {exc.strerror or exc}") from exc
    if st is not None and not stat.S_ISREG(st.st_mode):
        what = "a symlink" if stat.S_ISLNK(st.st_mode) else describe_mode(st.st_mode)
        raise InputError(
            f"signature path {sig} is {what}; remove it or choose another --sig FILE "
            "(trainwarden never writes through a link or into a special file)"
        )
    _probe_directory(sig)


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return a.absolute() == b.absolute()


def _probe_directory(target: Path) -> None:
    """Create and remove a file beside ``target``: the directory exists and is writable."""
    directory = target.parent
    probe = directory / f".{target.name}.{secrets.token_hex(6)}.probe"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(probe, flags, 0o600)
    except OSError as exc:
        raise InputError(f"cannot write signature {target}: {exc.strerror or exc}") from exc
    os.close(fd)
    with contextlib.suppress(OSError):
        probe.unlink()


def sign_path(
    path: str | os.PathLike[str],
    key: PrivateKey,
    *,
    run: str | None = None,
    step: int | None = None,
    parent: str | None = None,
    sig_path: str | os.PathLike[str] | None = None,
    ledger: str | os.PathLike[str] | EventSink | None = None,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
) -> Signature:
    """Sign a file or a checkpoint directory.

    Everything that can be checked is checked before hashing: the arguments, the signature
    path (not the input, not inside it, its directory writable) and the ledger (it exists
    and a writer can be opened in it). A step that still fails afterwards says exactly what
    was done (:class:`SignatureNotRecorded`).

    Args:
        path: The file or directory to sign.
        key: The signer's private key.
        run: Name of the training run this checkpoint belongs to.
        step: Training step of the checkpoint.
        parent: Digest (``sha256:...``) of the previous checkpoint of the run.
        sig_path: Where to write the signature; default ``PATH.sig`` beside ``PATH``.
        ledger: Record a ``checkpoint.signed`` event: an existing ledger directory (a
            writer is opened in it with ``key``), or any open event sink, e.g. the
            caller's own :class:`~trainwarden.ledger.Ledger`.
        workers: Hashing threads (default: the CPUs this process may use).
        progress: Called with ``(bytes_done, bytes_total)`` while hashing.
        shard_size: Bytes per shard (1 MiB to 1 TiB); the default is model-signing's.

    Returns:
        What was signed.

    Raises:
        ConfigError: Bad run/step/parent/shard size, or a signature path that is the signed
            file or inside the signed directory.
        InputError: The tree holds symlinks or special files, cannot be read, changed while
            it was hashed (:class:`~trainwarden.manifest.TreeChanged`), the signature cannot
            be written, or the ledger does not exist or cannot be written.
        SignatureNotRecorded: The signature was written but the ledger append failed.
    """
    if os.fspath(path) == "":
        raise ConfigError("no path to sign given")
    path = Path(path)
    if (step is not None or parent is not None) and not run:
        raise ConfigError("--step and --parent need --run: lineage is per run")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise ConfigError(f"step must be a non-negative integer, not {step!r}")
    if run is not None and (not run or any(c in run for c in "\r\n\0")):
        raise ConfigError(f"invalid run name {run!r}")
    parent = normalize_digest(parent) if parent is not None else None
    check_shard_size(shard_size)
    if not isinstance(key, PrivateKey):
        raise ConfigError(f"key must be a PrivateKey, not {type(key).__name__}")
    sig = Path(sig_path) if sig_path is not None else default_sig_path(path)
    check_signature_output(sig, path)
    with open_ledger_target(ledger, key) as target:
        manifest = digest_path(
            path, shard_size=shard_size, workers=workers, progress=progress, verb="sign"
        )
        # A single file is listed under "." (no directory can hold an entry of that name).
        single = len(manifest.files) == 1 and manifest.files[0].path == "."
        kind = "file" if single else "directory"
        signed_at = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        payload = statement_payload(
            manifest,
            kind=kind,
            key=key.public,
            signed_at=signed_at,
            run=run,
            step=step,
            parent=parent,
        )
        atomic_write(sig, build_bundle(payload, key), what="signature")
        signature = Signature(
            path=path,
            sig_path=sig,
            digest=manifest.digest,
            identity=key.identity,
            fingerprint=key.public.fingerprint,
            signed_at=signed_at,
            run=run,
            step=step,
            parent=parent,
            manifest=manifest,
        )
        if target is not None:
            _record(target, signature)
    return signature


def _record(target: LedgerTarget, signature: Signature) -> None:
    try:
        record_signature(target.sink, signature)
    except Exception as exc:
        # The signature is on disk and valid; only its record is missing. Say exactly that,
        # so nobody signs twice or believes the ledger holds it.
        reason = (
            exc.diagnostics() if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
        )
        raise SignatureNotRecorded(
            signature,
            f"signature written to {signature.sig_path} ({signature.digest}); recording it "
            f"in ledger {target.name} failed: {reason}",
        ) from exc


def checkpoint_digest(
    path: str | os.PathLike[str],
    *,
    shard_size: int = DEFAULT_SHARD_SIZE,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> str:
    """The digest ``sign_path`` would record for ``path`` now (``sha256:<root digest>``).

    Computed exactly as for signing (same walk, same shards), without a key or a
    signature: for comparing what is on disk with a digest recorded elsewhere (the ledger).
    The same function as :func:`trainwarden.manifest.checkpoint_digest`.

    Raises:
        InputError: The tree holds symlinks or special files, cannot be read, or changed
            while it was hashed.
    """
    return _manifest_checkpoint_digest(
        path, shard_size=shard_size, workers=workers, progress=progress
    )


def _display(root: Path, rel: str) -> str:
    return str(root) if rel == "." else f"{root}/{rel}"


def _finding(
    rule: str,
    message: str,
    path: str,
    *,
    severity: Severity = Severity.HIGH,
    verdict: Verdict = Verdict.UNSAFE,
    offset: int | None = None,
    evidence: str | None = None,
) -> Finding:
    return Finding(
        rule_id=rule,
        severity=severity,
        message=message,
        location=Location(path=path, offset=offset),
        evidence=evidence,
        verdict=verdict,
    )


def verify_path(
    path: str | os.PathLike[str],
    keys: PublicKey | Iterable[PublicKey],
    *,
    sig_path: str | os.PathLike[str] | None = None,
    ledger: str | os.PathLike[str] | None = None,
    ledger_keys: Iterable[PublicKey] | None = None,
    run: str | None = None,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> Verification:
    """Verify a file or checkpoint directory against its signature and trusted keys.

    Args:
        path: The signed file or directory.
        keys: The trusted public keys; the signature must verify with one of them.
        sig_path: The signature; default ``PATH.sig`` beside ``PATH``.
        ledger: A ledger directory; also detect rollback, swap and deletion through it.
        ledger_keys: Keys trusted to write the ledger (default: ``keys``). The ledger must
            verify under them, or lineage is reported as not verified.
        run: The run this checkpoint must belong to.
        workers: Hashing threads.
        progress: Called with ``(bytes_done, bytes_total)`` while hashing.

    Returns:
        The verified checkpoint (only when everything matches).

    Raises:
        SignatureMismatch: Anything differs (carries the report naming each file).
        InputError: The signature or the path cannot be read, or is malformed.
        ConfigError: No trusted key was given.
    """
    if os.fspath(path) == "":
        raise ConfigError("no path to verify given")
    path = Path(path)
    trusted = [keys] if isinstance(keys, PublicKey) else list(keys)
    if not trusted:
        raise ConfigError("no trusted key given: verification needs at least one public key")
    for key in trusted:
        if not isinstance(key, PublicKey):
            raise ConfigError(
                f"trusted keys must be public keys, not {type(key).__name__} "
                "(verification never needs a private key)"
            )
    sig = Path(sig_path) if sig_path is not None else default_sig_path(path)
    envelope = parse_bundle(read_bundle_file(sig))
    sig_display = str(sig)
    if envelope.payload_type != PAYLOAD_TYPE:
        raise InputError(f"unsupported DSSE payload type {envelope.payload_type!r} in {sig}")
    signer = _find_signer(envelope.payload, envelope.signatures, trusted)
    if signer is None:
        finding = _signer_failure(envelope.hint, envelope.signatures, trusted, sig_display)
        raise SignatureMismatch(
            Report(
                files=(FileReport(path=sig_display, format="signature", findings=(finding,)),),
                command=_COMMAND,
            )
        )
    statement = parse_statement(envelope.payload)
    sig_findings = list(_signer_findings(statement, signer, sig_display))
    if run is not None and statement.run != run:
        sig_findings.append(
            _finding(
                "lineage.wrong-run",
                f"checkpoint belongs to run {statement.run!r}, expected run {run!r} "
                "(swapped in from another run?)",
                sig_display,
                evidence=statement.run,
            )
        )
    file_reports = _compare_tree(path, statement, workers=workers, progress=progress)
    signature = Signature(
        path=path,
        sig_path=sig,
        digest=statement.manifest.digest,
        identity=statement.identity,
        fingerprint=statement.fingerprint,
        signed_at=statement.signed_at,
        run=statement.run,
        step=statement.step,
        parent=statement.parent,
        manifest=statement.manifest,
    )
    if ledger is not None:
        writers = trusted if ledger_keys is None else list(ledger_keys)
        sig_findings.extend(check_against_ledger(Path(ledger), writers, signature, sig_display))
    details = {
        "digest": signature.digest,
        "signer": signer.identity,
        "fingerprint": signer.fingerprint,
        "claimed_identity": statement.identity,
        "signed_at": statement.signed_at,
        "run": statement.run,
        "step": statement.step,
        "parent": statement.parent,
        "files": len(statement.manifest.files),
        "bytes": statement.manifest.total_size if statement.extended else None,
    }
    sig_report = FileReport(
        path=sig_display, format="signature", findings=tuple(sig_findings), details=details
    )
    report = Report(files=(sig_report, *file_reports), command=_COMMAND)
    if any(f.verdict is not Verdict.SAFE for f in report.findings):
        raise SignatureMismatch(report)
    return Verification(
        signature=signature, identity=signer.identity, fingerprint=signer.fingerprint, report=report
    )


def bundle_status(
    sig_path: str | os.PathLike[str], digest: str, keys: Sequence[PublicKey]
) -> tuple[str, str | None]:
    """Whether a signature bundle still signs ``digest``, without rehashing what it signs.

    For a checkpoint whose bytes were already compared with ``digest`` (a report checks
    them against the ledger), this says whether ``trainwarden verify`` can still accept it:
    the bundle is there, parses, is signed by one of ``keys`` (not checked when ``keys`` is
    empty) and names ``digest``.

    Returns:
        ``(status, reason)``: ``ok``, ``missing``, ``altered`` (unreadable as a bundle, not
        signed by a trusted key, or signing another digest) or ``unchecked`` (cannot be read).
    """
    path = Path(sig_path)
    try:
        data = read_bundle_file(path)
    except InputError as exc:
        if not os.path.lexists(path):
            return "missing", None
        return "unchecked", str(exc)
    try:
        envelope = parse_bundle(data)
        if envelope.payload_type != PAYLOAD_TYPE:
            return "altered", f"payload type {envelope.payload_type!r}"
        if keys and _find_signer(envelope.payload, envelope.signatures, keys) is None:
            return "altered", "its signature does not verify with a trusted key"
        signed = parse_statement(envelope.payload).manifest.digest
    except InputError as exc:
        return "altered", str(exc)
    try:
        expected = normalize_digest(digest)
    except ConfigError:
        return "unchecked", f"the digest to compare with is not a checkpoint digest: {digest!r}"
    if signed != expected:
        return "altered", f"it signs {signed[:19]}…, not the checkpoint's {expected[:19]}…"
    return "ok", None


def _find_signer(
    payload: bytes, signatures: Sequence[tuple[str, bytes]], trusted: Sequence[PublicKey]
) -> PublicKey | None:
    message = pae(payload)
    for _, sig in signatures:
        for key in trusted:
            try:
                key.verify(sig, message)
            except VerificationError:
                continue
            return key
    return None


def _signer_failure(
    hint: str | None,
    signatures: Sequence[tuple[str, bytes]],
    trusted: Sequence[PublicKey],
    sig_display: str,
) -> Finding:
    keyids = {keyid for keyid, _ in signatures if keyid}
    for key in trusted:
        if key.fingerprint in keyids or (hint is not None and hint == key_hint(key)):
            return _finding(
                "sign.bad-signature",
                f"the signature does not verify with {key.identity}'s key {key.fingerprint} "
                "that it names: the statement or the signature bytes were altered",
                sig_display,
                severity=Severity.CRITICAL,
                evidence=key.fingerprint,
            )
    named = ", ".join(sorted(keyids)) or (f"key hint {hint}" if hint else "an unnamed key")
    return _finding(
        "sign.untrusted-key",
        f"signed by {named}, which is none of the {len(trusted)} trusted key(s)",
        sig_display,
        severity=Severity.CRITICAL,
        evidence=named,
    )


def _signer_findings(
    statement: Statement, signer: PublicKey, sig_display: str
) -> Iterable[Finding]:
    if statement.fingerprint is not None and statement.fingerprint != signer.fingerprint:
        # A trusted key signed a statement claiming another key: attribution forgery.
        yield _finding(
            "sign.signer-mismatch",
            f"the statement claims key {statement.fingerprint} but was signed by "
            f"{signer.identity}'s key {signer.fingerprint}",
            sig_display,
            severity=Severity.CRITICAL,
            evidence=signer.fingerprint,
        )
    elif statement.identity is not None and statement.identity != signer.identity:
        yield _finding(
            "sign.identity-label",
            f"the signer called itself {statement.identity!r}; the trusted key file names "
            f"it {signer.identity!r} (attribution uses the key file)",
            sig_display,
            severity=Severity.INFO,
            verdict=Verdict.SAFE,
        )
    if not statement.extended:
        yield _finding(
            "sign.foreign-bundle",
            "signature written by another tool: no lineage fields"
            + (
                ", and empty files and sizes are not covered"
                if statement.manifest.method == "shards"
                else ""
            ),
            sig_display,
            severity=Severity.INFO,
            verdict=Verdict.SAFE,
        )


def _ignored(rel: str, ignore_paths: Sequence[str]) -> bool:
    return any(rel == p.rstrip("/") or rel.startswith(p.rstrip("/") + "/") for p in ignore_paths)


def _compare_tree(
    path: Path,
    statement: Statement,
    *,
    workers: int | None,
    progress: ProgressCallback | None,
) -> list[FileReport]:
    """Compare the tree on disk with the signed manifest; one FileReport per file."""
    manifest = statement.manifest
    tree = walk_tree(path)
    root = str(path)
    findings: dict[str, list[Finding]] = {}

    def add(rel: str, finding: Finding) -> None:
        findings.setdefault(rel, []).append(finding)

    signed_dir = statement.kind == "directory" or (
        statement.kind == "unknown"
        and not (len(manifest.files) == 1 and manifest.files[0].path == ".")
    )
    if signed_dir != tree.is_dir and tree.symlinks != (".",):
        add(
            ".",
            _finding(
                "sign.kind-changed",
                f"signed as a {'directory' if signed_dir else 'file'}, now a "
                f"{'directory' if tree.is_dir else 'file'}",
                root,
            ),
        )
    for rel in tree.symlinks:
        add(
            rel,
            _finding(
                "sign.symlink",
                "is a symbolic link (never followed; signed checkpoints hold regular files only)",
                _display(path, rel),
                severity=Severity.CRITICAL,
            ),
        )
    for rel in tree.special:
        add(
            rel,
            _finding(
                "sign.special-file",
                "is not a regular file (device, FIFO or socket)",
                _display(path, rel),
            ),
        )
    for rel, reason in tree.unreadable:
        add(
            rel,
            _finding(
                "sign.unreadable",
                f"directory could not be read: {reason}",
                _display(path, rel),
                verdict=Verdict.ERROR,
            ),
        )
    ignore = statement.ignore_paths
    signed = manifest.by_path()
    present = {rel: size for rel, size in tree.files if not _ignored(rel, ignore)}
    # A signed file now a symlink or a FIFO is reported as such, not also as missing.
    replaced = set(tree.symlinks) | set(tree.special)
    missing = {rel: e for rel, e in signed.items() if rel not in present and rel not in replaced}
    extra = {rel: size for rel, size in present.items() if rel not in signed}
    to_hash: list[tuple[str, int]] = []
    for rel, entry in signed.items():
        if rel not in present:
            continue  # missing, or replaced by a symlink or special file: reported apart
        size = present[rel]
        if entry.size >= 0 and size != entry.size:
            what = "truncated" if size < entry.size else "grew"
            add(
                rel,
                _finding(
                    "sign.size-changed",
                    f"{what}: {size} bytes on disk, {entry.size} bytes signed",
                    _display(path, rel),
                    offset=min(size, entry.size),
                    evidence=f"{entry.size}->{size}",
                ),
            )
        elif size > 0 or manifest.method == "files":
            to_hash.append((rel, size))
    # Extra files of the same size as a missing one might be that file renamed: hash them.
    missing_sizes = {e.size for e in missing.values()}
    rename_candidates = [
        (rel, size) for rel, size in extra.items() if size in missing_sizes or -1 in missing_sizes
    ]
    hashed = hash_tree(
        tree,
        paths=to_hash + rename_candidates,
        method=manifest.method,
        shard_size=manifest.shard_size,
        workers=workers,
        progress=progress,
    )
    by_rel = {e.path: e for e in hashed.entries}
    for rel, reason in hashed.failed:
        changing = rel in hashed.changed
        add(
            rel,
            _finding(
                "sign.changing" if changing else "sign.unreadable",
                f"changed while it was being verified ({reason}): not verified, try again "
                "once nothing writes it"
                if changing
                else f"could not be read: {reason}",
                _display(path, rel),
                verdict=Verdict.ERROR,
            ),
        )
    for rel, _ in to_hash:
        got = by_rel.get(rel)
        if got is None:
            continue
        want = signed[rel]
        bad = [
            (w, g) for w, g in zip(want.shards, got.shards, strict=False) if w.digest != g.digest
        ]
        if bad:
            first = bad[0][0]
            span = (
                f"bytes {first.start}-{first.end} ({len(bad)} of {len(want.shards)} shards)"
                if len(want.shards) > 1
                else "content"
            )
            add(
                rel,
                _finding(
                    "sign.modified",
                    f"modified: {span} differs from the signed digest",
                    _display(path, rel),
                    offset=first.start,
                    evidence=f"sha256:{got.shards[want.shards.index(first)].digest}",
                ),
            )
    renamed_from: dict[str, str] = {}
    for rel, _ in rename_candidates:
        got = by_rel.get(rel)
        if got is None:
            continue
        for old, entry in missing.items():
            if old in renamed_from.values():
                continue
            if [s.digest for s in entry.shards] == [s.digest for s in got.shards] and (
                entry.size in (-1, got.size)
            ):
                renamed_from[rel] = old
                break
    for rel, size in extra.items():
        if rel in renamed_from:
            add(
                rel,
                _finding(
                    "sign.renamed",
                    f"renamed: this is the signed file {renamed_from[rel]!r} under a new name",
                    _display(path, rel),
                    evidence=renamed_from[rel],
                ),
            )
        else:
            add(
                rel,
                _finding(
                    "sign.extra",
                    f"not in the signature (added after signing, {size} bytes)",
                    _display(path, rel),
                ),
            )
    renamed_to = {old: new for new, old in renamed_from.items()}
    for rel in missing:
        message = (
            f"missing: renamed to {renamed_to[rel]!r}"
            if rel in renamed_to
            else "missing: signed but not on disk"
        )
        add(
            rel,
            _finding(
                "sign.renamed" if rel in renamed_to else "sign.missing",
                message,
                _display(path, rel),
                severity=Severity.HIGH,
            ),
        )
    reports = []
    for rel in sorted(set(signed) | set(present) | set(findings)):
        signed_entry = signed.get(rel)
        reports.append(
            FileReport(
                path=_display(path, rel),
                format="file",
                findings=tuple(findings.get(rel, ())),
                size=present.get(rel, _known_size(signed_entry)),
                sha256=_whole_digest(by_rel.get(rel) or signed_entry),
            )
        )
    return reports


def _known_size(entry: FileEntry | None) -> int | None:
    return entry.size if entry is not None and entry.size >= 0 else None


def _whole_digest(entry: FileEntry | None) -> str | None:
    # A file hashed in one shard (or by the "files" method) has a plain SHA-256 to show.
    if entry is None or len(entry.shards) != 1:
        return None
    return entry.shards[0].digest
