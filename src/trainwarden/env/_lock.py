"""``env.lock``: a snapshot of every file in the site directories, optionally signed.

RECORD lives beside the code it describes, so whoever can edit ``torch/`` can edit its RECORD
too. The lock is the trust anchor: written once from a verified environment, signed with a key
the saboteur does not hold, and checked byte for byte before it is believed. Format: see
``docs/env-lock.md``.
"""

# os.path on str is used on purpose: these paths are walked by the ten thousand and pathlib
# objects would cost more than the hashing of small files.
# ruff: noqa: PTH115, PTH117, PTH118

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from trainwarden._canonical import canonical_bytes
from trainwarden._fs import atomic_write
from trainwarden.env._dists import (
    KIND_FILE,
    KIND_LINK,
    SCOPE_IMPORTABLE,
    SCOPE_TREE,
    read_regular,
)
from trainwarden.env._hashing import FileDigest, HashFailure
from trainwarden.env._site import SiteScan
from trainwarden.errors import InputError, VerificationError
from trainwarden.findings import FileReport, Finding, Location, Report, Severity, Verdict

if TYPE_CHECKING:
    from trainwarden.keys import PrivateKey, PublicKey

__all__ = [
    "LOCK_FORMAT",
    "LOCK_VERSION",
    "SCOPE_IMPORTABLE",
    "SCOPE_TREE",
    "SIGNATURE_FORMAT",
    "EditableRoot",
    "EnvLock",
    "LockedFile",
    "compare_lock",
    "diff_locks",
    "join_rel",
    "lock_entries",
    "read_lock",
    "signature_path",
    "write_lock",
]

LOCK_FORMAT = "trainwarden.env-lock"
LOCK_VERSION = 1
SIGNATURE_FORMAT = "trainwarden.env-lock-signature"
_PYC_PROBLEMS = frozenset({"env.pyc-forged", "env.pyc-unchecked-hash", "env.pyc-unreadable"})
# A lock of a large environment is a few MB; refuse anything absurd before parsing it.
_MAX_LOCK_BYTES = 512 << 20


class LockedFile(NamedTuple):
    """What the lock records for one file: digest, size and permission bits (or a link).

    A tuple: a lock holds tens of thousands, compared field by field on every verification.
    """

    sha256: str | None
    size: int
    mode: int
    link: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The canonical JSON object of this entry."""
        if self.link is not None:
            return {"link": self.link, "mode": self.mode}
        return {"mode": self.mode, "sha256": self.sha256, "size": self.size}

    def describe(self) -> str:
        """Short human form for messages."""
        if self.link is not None:
            return f"symlink to {self.link}"
        return f"sha256={self.sha256}, {self.size} bytes, mode {self.mode:o}"


@dataclass(frozen=True, slots=True)
class EditableRoot:
    """A lock root that is the source tree of editable installs, not a site directory.

    Attributes:
        distributions: The editable distributions whose code is imported from this tree.
        scope: ``"importable"`` (only entries ``import`` can reach from a ``sys.path`` entry
            were recorded) or ``"tree"`` (the whole directory, a package's own).
    """

    distributions: tuple[str, ...]
    scope: str = SCOPE_IMPORTABLE

    def to_json(self) -> dict[str, Any]:
        """The canonical JSON object of this entry."""
        return {"distributions": list(self.distributions), "scope": self.scope}


@dataclass(frozen=True)
class EnvLock:
    """A parsed lock: per root (an absolute directory) every file by relative path.

    Roots are site directories, and (``editable``) the source trees of editable installs,
    whose code lives outside every site directory and which RECORD cannot cover.
    ``signer`` is the fingerprint and identity of the key whose signature was verified when
    the lock was read, ``None`` for a lock read without a key.
    """

    roots: tuple[str, ...]
    files: Mapping[str, Mapping[str, LockedFile]]
    distributions: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    created: str = ""
    python: Mapping[str, str] = field(default_factory=dict)
    pyc_verified: bool = False
    signer: str | None = None
    editable: Mapping[str, EditableRoot] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The canonical JSON document of this lock."""
        roots = []
        for root in self.roots:
            item: dict[str, Any] = {
                "path": root,
                "distributions": dict(self.distributions.get(root, {})),
                "files": {rel: e.to_json() for rel, e in self.files[root].items()},
            }
            editable = self.editable.get(root)
            if editable is not None:
                item["editable"] = editable.to_json()
            roots.append(item)
        return {
            "format": LOCK_FORMAT,
            "version": LOCK_VERSION,
            "algorithm": "sha256",
            "created": self.created,
            "python": dict(self.python),
            "pyc_verified": self.pyc_verified,
            "roots": roots,
        }

    def canonical_bytes(self) -> bytes:
        """The exact bytes written to disk and signed: sorted keys, no spaces, UTF-8.

        Raises:
            InputError: the document holds text that is not valid Unicode.
        """
        # The lock holds strings and integers only, so the shared canonical form (which also
        # refuses NaN) gives exactly the bytes docs/env-lock.md specifies.
        return canonical_bytes(self.to_json(), what="env lock")

    @property
    def site_roots(self) -> tuple[str, ...]:
        """The roots that are site directories (not editable source trees)."""
        return tuple(r for r in self.roots if r not in self.editable)

    @property
    def file_count(self) -> int:
        """Number of files over all roots."""
        return sum(len(v) for v in self.files.values())


def join_rel(root: str, rel: str) -> str:
    """The absolute path of a lock entry (``rel`` uses ``/`` and was checked to be clean)."""
    return f"{root}/{rel}" if os.sep == "/" else os.path.join(root, *rel.split("/"))


def signature_path(lock_path: Path) -> Path:
    """Where the detached signature of ``lock_path`` lives: ``<lock>.sig``."""
    return lock_path.with_name(lock_path.name + ".sig")


def _locked_entry(
    path: str, kind: int, digest: FileDigest | HashFailure | None
) -> LockedFile | str:
    if kind == KIND_LINK:
        try:
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            target = os.readlink(path)
            if not _utf8(target):
                return "link target is not valid UTF-8"
            return LockedFile(None, 0, mode, link=target)
        except OSError as exc:
            return f"cannot read link: {exc.strerror}"
    if kind != KIND_FILE:
        return "not a regular file"
    if digest is None:
        return "not hashed"
    if isinstance(digest, HashFailure):
        return digest.reason
    return LockedFile(digest.hexdigest, digest.size, stat.S_IMODE(digest.mode))


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(text: str) -> str:
    """``text`` with undecodable bytes (surrogate escapes) shown as U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def lock_entries(
    scan: SiteScan, *, ordered: bool = True
) -> tuple[dict[str, LockedFile], dict[str, str]]:
    """Lock entries for every file of ``scan`` (its digests must cover all regular files).

    Returns:
        The entries by path relative to the site directory, and the files that could not be
        recorded with the reason.
    """
    prefix = scan.layout.site + os.sep
    cut = len(prefix)
    posix = os.sep == "/"
    digests = scan.digests
    entries: dict[str, LockedFile] = {}
    failed: dict[str, str] = {}
    for path, kind in scan.files.items():
        rel = path[cut:] if posix else path[cut:].replace(os.sep, "/")
        if not rel.isascii() and not _utf8(rel):
            # The lock is UTF-8 JSON; a name that is not UTF-8 cannot be anchored in it.
            failed[_printable(rel)] = "file name is not valid UTF-8"
            continue
        digest = digests.get(path)
        if kind == KIND_FILE and type(digest) is FileDigest:
            # The common case, inlined: this loop runs once per file of the environment.
            entries[rel] = LockedFile(digest.digest.hex(), digest.size, digest.mode & 0o7777)
            continue
        entry = _locked_entry(path, kind, digest)
        if isinstance(entry, str):
            failed[rel] = entry
        else:
            entries[rel] = entry
    return (dict(sorted(entries.items())) if ordered else entries), failed


def _loc(path: str, **extra: str | int) -> Location:
    return Location(path=_printable(path), extra=extra)


def write_lock(lock: EnvLock, path: Path, *, key: PrivateKey | None = None) -> Path | None:
    """Write ``lock`` to ``path`` (atomically) and, with ``key``, its signature beside it.

    Returns:
        The signature path when a key was given.

    Raises:
        InputError: the files cannot be written.
    """
    data = lock.canonical_bytes()
    # The lock is a trust anchor: written through the one atomic write (fsync of the file
    # and of the directory), so a crash never leaves a half lock that later reads as valid.
    atomic_write(path, data, what="env lock")
    sig_path = signature_path(path)
    if key is None:
        # A stale signature next to a new unsigned lock would fail verification confusingly.
        try:
            sig_path.unlink(missing_ok=True)
        except OSError as exc:
            raise InputError(
                f"wrote {path}, but cannot remove the stale signature {sig_path}: "
                f"{exc.strerror or exc}"
            ) from exc
        return None
    public = key.public
    document = {
        "format": SIGNATURE_FORMAT,
        "version": 1,
        "algorithm": "ed25519",
        "identity": public.identity,
        "key_fingerprint": public.fingerprint,
        "lock_sha256": hashlib.sha256(data).hexdigest(),
        "signature": base64.b64encode(key.sign(data)).decode("ascii"),
    }
    try:
        atomic_write(sig_path, canonical_bytes(document) + b"\n", what="env lock signature")
    except InputError as exc:
        # Say exactly what happened: the lock is on disk, its signature is not.
        raise InputError(
            f"wrote {path}, but not its signature: {exc}; the lock is unsigned "
            f"(and a signature left at {sig_path} does not match it)"
        ) from exc
    return sig_path


def _verify_signature(data: bytes, sig_file: Path, key: PublicKey) -> str:
    try:
        # A FIFO or device planted as the signature must fail, not block the verification.
        raw = read_regular(sig_file, 1 << 20)
    except FileNotFoundError:
        raise VerificationError(
            f"lock signature {sig_file} is missing: a key was given, so an unsigned lock is "
            "not trusted"
        ) from None
    except OSError as exc:
        raise InputError(f"cannot read lock signature {sig_file}: {_os_reason(exc)}") from exc
    try:
        doc = json.loads(raw.decode("utf-8"))
        if not isinstance(doc, dict) or doc.get("format") != SIGNATURE_FORMAT:
            raise ValueError("not a trainwarden env-lock signature")
        if doc.get("algorithm") != "ed25519":
            raise ValueError(f"unsupported algorithm {doc.get('algorithm')!r}")
        if doc.get("version") != 1 or isinstance(doc.get("version"), bool):
            raise ValueError(f"unsupported version {doc.get('version')!r}")
        signature = base64.b64decode(str(doc["signature"]), validate=True)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise VerificationError(f"lock signature {sig_file} is malformed: {exc}") from exc
    # The signature covers the exact bytes of the lock file, checked before they are parsed.
    try:
        key.verify(signature, data)
    except VerificationError as exc:
        # Name the file: "bad signature" alone leaves a user guessing which input failed.
        raise VerificationError(f"lock signature {sig_file} does not verify: {exc}") from exc
    # Not covered by the signature, but never to be believed when they disagree with it: a
    # signature file that names another lock or another key was edited or belongs elsewhere.
    named = doc.get("lock_sha256")
    if named != hashlib.sha256(data).hexdigest():
        raise VerificationError(
            f"lock signature {sig_file} is for another lock (lock_sha256 {str(named)[:80]!r} is "
            "not this lock's digest)"
        )
    if doc.get("key_fingerprint") != key.fingerprint:
        raise VerificationError(
            f"lock signature {sig_file} names key {str(doc.get('key_fingerprint'))[:80]!r}, "
            f"not the trusted {key.fingerprint}"
        )
    return f"{key.fingerprint} ({key.identity})"


def read_lock(path: Path, *, key: PublicKey | None = None) -> EnvLock:
    """Read a lock; with ``key``, first verify its detached signature over the exact bytes.

    Raises:
        InputError: the lock cannot be read or is not a lock.
        VerificationError: ``key`` was given and the signature is missing, malformed or bad.
    """
    try:
        data = read_regular(path, _MAX_LOCK_BYTES)
    except OSError as exc:
        raise InputError(f"cannot read lock {path}: {_os_reason(exc)}") from exc
    signer = _verify_signature(data, signature_path(path), key) if key is not None else None
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InputError(f"{path} is not a trainwarden env lock: invalid JSON ({exc})") from exc
    return _parse(doc, path, signer)


def _os_reason(exc: OSError) -> str:
    import errno

    if exc.errno == errno.ELOOP:
        return "too many levels of symbolic links (a symlink loop)"
    if exc.errno == errno.EISDIR:
        return "it is a directory"
    return exc.strerror or str(exc)


def _parse(doc: Any, path: Path, signer: str | None) -> EnvLock:
    def bad(why: str) -> InputError:
        return InputError(f"{path} is not a valid trainwarden env lock: {why}")

    if not isinstance(doc, dict) or doc.get("format") != LOCK_FORMAT:
        raise bad(f"format is not {LOCK_FORMAT!r}")
    if doc.get("version") != LOCK_VERSION:
        raise bad(f"unsupported version {doc.get('version')!r} (this reads {LOCK_VERSION})")
    if doc.get("algorithm") != "sha256":
        raise bad(f"unsupported algorithm {doc.get('algorithm')!r}")
    roots = doc.get("roots")
    if not isinstance(roots, list):
        raise bad("roots is not a list")
    files: dict[str, Mapping[str, LockedFile]] = {}
    dists: dict[str, Mapping[str, str]] = {}
    editable: dict[str, EditableRoot] = {}
    for root in roots:
        if not isinstance(root, dict) or not isinstance(root.get("path"), str):
            raise bad("a root has no path")
        root_path = root["path"]
        if not os.path.isabs(root_path) or root_path in files:
            raise bad(f"root {root_path!r} is not absolute or appears twice")
        raw_files = root.get("files")
        if not isinstance(raw_files, dict):
            raise bad(f"files of {root_path} is not an object")
        entries: dict[str, LockedFile] = {}
        for rel, value in raw_files.items():
            entries[rel] = _parse_entry(rel, value, bad)
        files[root_path] = entries
        raw_dists = root.get("distributions", {})
        if not isinstance(raw_dists, dict):
            raise bad("distributions is not an object")
        dists[root_path] = {str(k): str(v) for k, v in raw_dists.items()}
        if "editable" in root:
            editable[root_path] = _parse_editable(root["editable"], root_path, bad)
    python = doc.get("python", {})
    return EnvLock(
        roots=tuple(files),
        files=files,
        distributions=dists,
        created=str(doc.get("created", "")),
        python={str(k): str(v) for k, v in python.items()} if isinstance(python, dict) else {},
        pyc_verified=doc.get("pyc_verified") is True,
        signer=signer,
        editable=editable,
    )


def _parse_editable(value: Any, root: str, bad: Callable[[str], InputError]) -> EditableRoot:
    if not isinstance(value, dict):
        raise bad(f"editable of {root} is not an object")
    names = value.get("distributions")
    scope = value.get("scope")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not names:
        raise bad(f"editable distributions of {root} is not a list of names")
    if scope not in (SCOPE_IMPORTABLE, SCOPE_TREE):
        raise bad(f"editable scope of {root} is {scope!r}")
    return EditableRoot(tuple(names), scope)


def _parse_entry(rel: str, value: Any, bad: Callable[[str], InputError]) -> LockedFile:
    parts = rel.split("/")
    if not rel or rel.startswith("/") or ".." in parts or "" in parts:
        raise bad(f"file path {rel!r} is not a clean relative path")
    if not isinstance(value, dict) or not isinstance(value.get("mode"), int):
        raise bad(f"entry {rel!r} has no mode")
    if "link" in value:
        if not isinstance(value["link"], str):
            raise bad(f"entry {rel!r} has a bad link")
        return LockedFile(None, 0, value["mode"], link=value["link"])
    digest, size = value.get("sha256"), value.get("size")
    if not isinstance(digest, str) or len(digest) != 64 or not isinstance(size, int):
        raise bad(f"entry {rel!r} has no valid sha256 and size")
    try:
        bytes.fromhex(digest)
    except ValueError:
        raise bad(f"entry {rel!r} has a non-hex sha256") from None
    return LockedFile(digest.lower(), size, value["mode"])


def _lock_finding(
    rule: str, severity: Severity, message: str, path: str, **extra: str | int
) -> Finding:
    return Finding(
        rule_id=f"env.{rule}",
        severity=severity,
        message=_printable(message),
        location=_loc(path, **extra),
        verdict=Verdict.UNSAFE,
    )


def compare_lock(
    lock: EnvLock,
    scans: Iterable[SiteScan],
    *,
    current: Mapping[str, tuple[dict[str, LockedFile], dict[str, str]]] | None = None,
) -> list[FileReport]:
    """Compare what is on disk with the lock: added, removed, changed files and modes.

    Findings go to the report of the owning distribution (or the site directory).

    Args:
        lock: The (signature-checked) lock.
        scans: The site directories as scanned and hashed now.
        current: :func:`lock_entries` of each scan by site directory, when the caller has
            them already (they are computed from the scan otherwise).
    """
    out: dict[str, list[Finding]] = {}
    scanned: set[str] = set()
    for scan in scans:
        root = scan.layout.site
        scanned.add(root)
        locked = lock.files.get(root)
        if locked is None:
            out.setdefault(root, []).append(
                Finding(
                    rule_id="env.lock-root-missing",
                    severity=Severity.HIGH,
                    message="This site directory is not in the lock, so nothing in it is anchored.",
                    location=_loc(root),
                    verdict=Verdict.UNKNOWN,
                )
            )
            continue
        known = current.get(root) if current is not None else None
        now_entries, failed = known if known is not None else lock_entries(scan, ordered=False)
        for rel, why in failed.items():
            path = join_rel(root, rel)
            if rel in locked:
                out.setdefault(scan.owner_key(path), []).append(
                    Finding(
                        rule_id="env.lock-unreadable",
                        severity=Severity.MEDIUM,
                        message=_printable(f"{rel} cannot be compared with the lock: {why}."),
                        location=_loc(path),
                        verdict=Verdict.ERROR,
                    )
                )
            else:
                # Not in the lock and not even recordable (a FIFO, a name that is not UTF-8):
                # new either way, and never silently ignored.
                out.setdefault(scan.owner_key(path), []).append(
                    _lock_finding(
                        "lock-added",
                        Severity.HIGH,
                        f"{rel} is not in the lock ({why}).",
                        path,
                    )
                )
        for rel, before in locked.items():
            now = now_entries.get(rel)
            if now == before:
                continue
            path = join_rel(root, rel)
            if now is None:
                if rel in failed:
                    continue
                out.setdefault(scan.owner_key(path), []).append(
                    _lock_finding(
                        "lock-removed",
                        Severity.HIGH,
                        f"{rel} is in the lock but no longer on disk.",
                        path,
                        expected=before.describe(),
                    )
                )
            elif (now.sha256, now.size, now.link) != (before.sha256, before.size, before.link):
                out.setdefault(scan.owner_key(path), []).append(
                    _lock_finding(
                        "lock-modified",
                        Severity.HIGH,
                        f"{rel} differs from the lock (locked {before.describe()}; "
                        f"now {now.describe()}).",
                        path,
                        expected=before.describe(),
                        actual=now.describe(),
                    )
                )
            elif now.mode != before.mode:
                out.setdefault(scan.owner_key(path), []).append(
                    _lock_finding(
                        "lock-mode-changed",
                        Severity.MEDIUM,
                        f"{rel} changed permissions from {before.mode:o} to {now.mode:o}.",
                        path,
                        expected=f"{before.mode:o}",
                        actual=f"{now.mode:o}",
                    )
                )
        for rel, now in now_entries.items():
            if rel not in locked:
                path = join_rel(root, rel)
                out.setdefault(scan.owner_key(path), []).append(
                    _lock_finding(
                        "lock-added",
                        Severity.HIGH,
                        f"{rel} is not in the lock ({now.describe()}).",
                        path,
                        actual=now.describe(),
                    )
                )
    for root in lock.roots:
        if root not in scanned:
            out.setdefault(root, []).append(
                Finding(
                    rule_id="env.lock-root-not-checked",
                    severity=Severity.LOW,
                    message="This locked site directory was not part of this verification.",
                    location=_loc(root),
                    verdict=Verdict.SAFE,
                )
            )
    return [FileReport(key, "lock", tuple(found)) for key, found in sorted(out.items())]


def diff_locks(old: EnvLock, new: EnvLock) -> Report:
    """Compare two locks: one report per root, a finding per added, removed or changed file."""
    reports: list[FileReport] = []
    for root in sorted(set(old.roots) | set(new.roots)):
        a = old.files.get(root)
        b = new.files.get(root)
        found: list[Finding] = []
        if a is None or b is None:
            which = "first" if a is None else "second"
            found.append(
                Finding(
                    rule_id="env.diff-root",
                    severity=Severity.HIGH,
                    message=f"This root is missing from the {which} lock.",
                    location=_loc(root),
                    verdict=Verdict.UNSAFE,
                )
            )
            reports.append(FileReport(root, "lock-diff", tuple(found)))
            continue
        for rel in sorted(set(a) | set(b)):
            path = join_rel(root, rel)
            before, after = a.get(rel), b.get(rel)
            if before is None and after is not None:
                found.append(
                    _lock_finding(
                        "diff-added", Severity.HIGH, f"{rel} added.", path, actual=after.describe()
                    )
                )
            elif after is None and before is not None:
                found.append(
                    _lock_finding(
                        "diff-removed",
                        Severity.HIGH,
                        f"{rel} removed.",
                        path,
                        expected=before.describe(),
                    )
                )
            elif before is not None and after is not None and before != after:
                found.append(
                    _lock_finding(
                        "diff-changed",
                        Severity.HIGH,
                        f"{rel} changed ({before.describe()} -> {after.describe()}).",
                        path,
                        expected=before.describe(),
                        actual=after.describe(),
                    )
                )
        dist_a, dist_b = old.distributions.get(root, {}), new.distributions.get(root, {})
        details = {
            "files": [len(a), len(b)],
            "distributions_changed": sorted(
                f"{n}: {dist_a.get(n, '-')} -> {dist_b.get(n, '-')}"
                for n in set(dist_a) | set(dist_b)
                if dist_a.get(n) != dist_b.get(n)
            ),
        }
        reports.append(FileReport(root, "lock-diff", tuple(found), details=details))
    return Report(files=tuple(reports), command="env diff")
