"""Installed distributions in a site directory and what their wheel RECORD claims.

RECORD sits in the same writable directory as the code it describes, so it is a cross-check
against accidents and careless edits, not a trust anchor; the signed lock is the anchor.
"""

# os.path on str is used on purpose: these paths are walked by the ten thousand and pathlib
# objects would cost more than the hashing of small files.
# ruff: noqa: PTH100, PTH112, PTH118, PTH119, PTH208

from __future__ import annotations

import csv
import io
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from trainwarden.errors import InputError

__all__ = [
    "KIND_FILE",
    "KIND_LINK",
    "KIND_OTHER",
    "Distribution",
    "RecordEntry",
    "SiteLayout",
    "discover",
    "is_code_file",
    "read_regular",
    "walk_files",
]

# Hash algorithms a RECORD may name (PEP 376 / the wheel spec forbid md5 and sha1).
_ACCEPTED_ALGORITHMS = frozenset({"sha256", "sha384", "sha512", "sha3_256", "sha3_512", "blake2b"})
# Suffixes the import system executes (sourceless .pyc included) plus startup files.
_CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".pyw", ".so", ".pyd", ".pth", ".dylib")
# Segments that os.path.normpath would change: "..", ".", empty ("//"), a trailing "/".
_NEEDS_NORM = re.compile(r"(?:^|/)\.{1,2}(?:/|$)|//|/$|\\")
_NAME_RE = re.compile(r"^(?P<name>.+?)-(?P<version>[^-]+)\.(?:dist|egg)-info$")


class RecordEntry(NamedTuple):
    """One row of a RECORD file (a tuple: torch alone has tens of thousands of rows).

    ``path`` is absolute and normalised; ``digest`` is the urlsafe-base64 text of the RECORD
    (``None`` when the row carries no hash, as for RECORD itself and compiled ``.pyc``).
    """

    path: str
    algorithm: str | None
    digest: str | None
    size: int | None
    raw: str


@dataclass(frozen=True, slots=True)
class Distribution:
    """An installed distribution: its metadata directory and its RECORD rows.

    ``record_problem`` says why the RECORD cannot be used (no RECORD, an egg-info install,
    an unreadable or malformed file); such a distribution cannot be verified.
    """

    name: str
    version: str
    metadata_dir: str
    site: str
    entries: tuple[RecordEntry, ...] = ()
    record_problem: str | None = None
    bad_rows: tuple[str, ...] = ()
    editable: bool = False
    top_level: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """``name version`` for messages."""
        return f"{self.name} {self.version}"


@dataclass(frozen=True, slots=True)
class SiteLayout:
    """Everything RECORD says about one site directory."""

    site: str
    distributions: tuple[Distribution, ...]
    # Absolute path of every file any RECORD lists -> the distributions listing it.
    owners: dict[str, list[Distribution]] = field(default_factory=dict)
    # Absolute path of every directory that holds a listed file -> its owning distribution.
    dir_owner: dict[str, Distribution] = field(default_factory=dict)
    # Top-level entries of the site directory that some RECORD accounts for.
    owned_top: frozenset[str] = frozenset()


# RECORD of torch is ~2 MB; anything far larger is not a RECORD we should hold in memory.
_MAX_METADATA_BYTES = 64 << 20


def read_regular(path: str | Path, limit: int = _MAX_METADATA_BYTES) -> bytes:
    """Read a regular file of at most ``limit`` bytes.

    A FIFO or device planted where metadata is expected fails instead of blocking the
    verification, and an oversized file fails instead of exhausting memory.

    Raises:
        OSError: not a regular file, too large, or unreadable.
    """
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"not a regular file: {path}")
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise OSError(f"larger than {limit} bytes: {path}")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def is_code_file(name: str) -> bool:
    """True for files the interpreter may execute: sources, bytecode, extensions, ``.pth``."""
    return name.endswith(_CODE_SUFFIXES) or ".so." in name


def _parse_name(dirname: str) -> tuple[str, str]:
    match = _NAME_RE.match(dirname)
    if match is None:
        return dirname.rsplit(".", 1)[0], "?"
    return match.group("name"), match.group("version")


def _read_metadata_name(meta_dir: Path) -> tuple[str, str] | None:
    """Name and version from METADATA/PKG-INFO (the directory name may be normalised)."""
    for fname in ("METADATA", "PKG-INFO"):
        try:
            text = read_regular(meta_dir / fname).decode("utf-8", errors="replace")
        except OSError:
            continue
        name = version = None
        for line in text.splitlines():
            if not line.strip():
                break
            if line.startswith("Name:"):
                name = line[5:].strip()
            elif line.startswith("Version:"):
                version = line[8:].strip()
        if name and version:
            return name, version
    return None


def _parse_record(site: str, text: str) -> tuple[list[RecordEntry], list[str]]:
    entries: list[RecordEntry] = []
    bad: list[str] = []
    fast = os.sep == "/" and site != "/"
    for row in csv.reader(io.StringIO(text)):
        if not row or not row[0]:
            continue
        raw = row[0]
        hash_field = row[1] if len(row) > 1 else ""
        size_field = row[2] if len(row) > 2 else ""
        algorithm = digest = None
        if hash_field:
            algorithm, sep, digest = hash_field.partition("=")
            if not sep or not digest:
                bad.append(f"{raw}: malformed hash {hash_field!r}")
                algorithm = digest = None
            elif algorithm not in _ACCEPTED_ALGORITHMS:
                bad.append(f"{raw}: hash algorithm {algorithm!r} is not accepted")
                algorithm = digest = None
        size: int | None = None
        if size_field:
            try:
                size = int(size_field)
            except ValueError:
                bad.append(f"{raw}: malformed size {size_field!r}")
        # Paths are relative to the site directory ("../../../bin/x" for scripts) or absolute.
        # Most rows are plain relative paths that need no normalisation (the slow part).
        if fast and not raw.startswith("/") and not _NEEDS_NORM.search(raw):
            path = f"{site}/{raw}"
        else:
            path = os.path.normpath(os.path.join(site, raw))
        entries.append(RecordEntry(path, algorithm, digest, size, raw))
    return entries, bad


def _load_distribution(site: str, entry_name: str) -> Distribution:
    meta_dir = Path(site, entry_name)
    name, version = _parse_name(entry_name)
    from_meta = _read_metadata_name(meta_dir)
    if from_meta is not None:
        name, version = from_meta
    if entry_name.endswith(".egg-info"):
        return Distribution(
            name,
            version,
            str(meta_dir),
            site,
            record_problem="egg-info install: no RECORD with hashes to verify against",
            top_level=_top_level(meta_dir),
        )
    record = meta_dir / "RECORD"
    try:
        text = read_regular(record).decode("utf-8")
    except FileNotFoundError:
        return Distribution(
            name,
            version,
            str(meta_dir),
            site,
            record_problem="no RECORD file in dist-info",
            top_level=_top_level(meta_dir),
        )
    except (OSError, UnicodeDecodeError) as exc:
        return Distribution(
            name, version, str(meta_dir), site, record_problem=f"RECORD unreadable: {exc}"
        )
    try:
        entries, bad = _parse_record(site, text)
    except csv.Error as exc:
        return Distribution(
            name, version, str(meta_dir), site, record_problem=f"RECORD malformed: {exc}"
        )
    editable = (meta_dir / "direct_url.json").is_file() and _is_editable(meta_dir)
    return Distribution(
        name,
        version,
        str(meta_dir),
        site,
        entries=tuple(entries),
        bad_rows=tuple(bad),
        editable=editable,
    )


def _top_level(meta_dir: Path) -> tuple[str, ...]:
    """Top-level names an unverifiable distribution declares (``top_level.txt``)."""
    try:
        text = read_regular(meta_dir / "top_level.txt").decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return ()
    names = (line.strip().replace("/", os.sep) for line in text.splitlines())
    return tuple(n for n in names if n and n not in (".", "..") and os.sep not in n)


def _is_editable(meta_dir: Path) -> bool:
    import json

    try:
        data = json.loads(read_regular(meta_dir / "direct_url.json").decode("utf-8"))
    except (OSError, ValueError):
        return False
    dir_info = data.get("dir_info") if isinstance(data, dict) else None
    return bool(isinstance(dir_info, dict) and dir_info.get("editable"))


def discover(site: str) -> SiteLayout:
    """Read every ``*.dist-info`` / ``*.egg-info`` of ``site`` and index their RECORDs."""
    site = os.path.normpath(os.path.abspath(site))
    try:
        names = sorted(os.listdir(site))
    except OSError:
        names = []
    dists = tuple(
        _load_distribution(site, n)
        for n in names
        if n.endswith((".dist-info", ".egg-info")) and os.path.isdir(os.path.join(site, n))
    )
    owners: dict[str, list[Distribution]] = {}
    dir_owner: dict[str, Distribution] = {}
    owned_top: set[str] = set()
    prefix = site + os.sep
    for dist in dists:
        owned_top.add(os.path.basename(dist.metadata_dir))
        if dist.record_problem is not None:
            # Without a RECORD the files cannot be checked one by one; the whole distribution
            # is reported as "cannot verify", so its declared packages are not "unowned" too.
            for top in dist.top_level:
                owned_top.add(top)
                owned_top.add(top + ".py")
        for entry in dist.entries:
            owners.setdefault(entry.path, []).append(dist)
            if not entry.path.startswith(prefix):
                continue
            rel = entry.path[len(prefix) :]
            owned_top.add(rel.split(os.sep, 1)[0])
            # Record every ancestor up to the site dir: an unlisted file is attributed to the
            # distribution that owns its nearest listed directory.
            path = entry.path
            cut = path.rfind(os.sep)
            while cut > len(site):
                parent = path[:cut]
                if parent in dir_owner:
                    break
                dir_owner[parent] = dist
                cut = path.rfind(os.sep, 0, cut)
    return SiteLayout(site, dists, owners, dir_owner, frozenset(owned_top))


KIND_FILE = 0
KIND_LINK = 1
KIND_OTHER = 2


def walk_files(root: str) -> Iterator[tuple[str, int]]:
    """Yield every non-directory entry under ``root`` with its kind (file, link, other).

    Symlinked directories are not followed (they are yielded as links themselves), so a link
    cannot pull a tree from elsewhere into the walk or make it loop. The kind comes from the
    directory entry itself, so no ``stat`` call is made per file.

    Raises:
        InputError: a directory in the tree cannot be listed (never skipped silently).
    """
    stack = [root]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as it:
                entries = list(it)
        except OSError as exc:
            # Fail closed: a directory we cannot list could hide added code, so the walk (and
            # with it the verification) stops with an error instead of skipping it.
            raise InputError(f"cannot list {current}: {exc.strerror or exc}") from exc
        for entry in entries:
            try:
                if entry.is_symlink():
                    yield entry.path, KIND_LINK
                elif entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    yield entry.path, KIND_FILE
                else:
                    yield entry.path, KIND_OTHER
            except OSError:  # noqa: PERF203  # an entry that vanished mid-walk is skipped
                continue
