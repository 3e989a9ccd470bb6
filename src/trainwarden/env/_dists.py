"""Installed distributions in a site directory and what their wheel RECORD claims.

RECORD sits in the same writable directory as the code it describes, so it is a cross-check
against accidents and careless edits, not a trust anchor; the signed lock is the anchor.
"""

# os.path on str is used on purpose: these paths are walked by the ten thousand and pathlib
# objects would cost more than the hashing of small files.
# ruff: noqa: PTH100, PTH112, PTH118, PTH119, PTH120, PTH208

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
    "SCOPE_IMPORTABLE",
    "SCOPE_TREE",
    "Distribution",
    "RecordEntry",
    "SiteLayout",
    "discover",
    "editable_sources",
    "is_code_file",
    "read_regular",
    "walk_files",
    "walk_importable",
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


#: An editable source directory on ``sys.path``: only what ``import`` reaches from it counts.
SCOPE_IMPORTABLE = "importable"
#: An editable package directory: all of it is the package.
SCOPE_TREE = "tree"


def editable_sources(dist: Distribution) -> tuple[tuple[tuple[str, str], ...], str | None]:
    """The directories an editable install runs its code from, and why none were found.

    Read from the install's own files, never imported: the path lines of the ``.pth`` files its
    RECORD lists (what ``site`` appends to ``sys.path``; scope ``importable``) and the
    ``MAPPING`` literal of a setuptools ``__editable___*_finder.py`` (package name -> package
    directory; scope ``tree``).

    Returns:
        The existing directories (absolute, normalised, sorted) with their scope, and a reason
        when there are none.
    """
    site_dir = dist.site
    found: dict[str, str] = {}
    unreadable: list[str] = []
    for entry in dist.entries:
        if os.path.dirname(entry.path) != site_dir:
            continue
        name = os.path.basename(entry.path)
        try:
            if name.endswith(".pth"):
                for directory in _pth_directories(entry.path, site_dir):
                    found.setdefault(directory, SCOPE_IMPORTABLE)
            elif name.startswith("__editable__") and name.endswith("_finder.py"):
                for directory in _finder_directories(entry.path):
                    found.setdefault(directory, SCOPE_TREE)
        except (OSError, UnicodeDecodeError, ValueError, SyntaxError, RecursionError) as exc:
            unreadable.append(f"{name}: {exc}")
    roots = tuple(sorted((p, scope) for p, scope in found.items() if os.path.isdir(p)))
    if roots:
        return roots, None
    if unreadable:
        return (), "its path files cannot be read (" + "; ".join(unreadable) + ")"
    return (), "no source directory is named by its .pth or editable finder files"


def _pth_directories(path: str, site_dir: str) -> list[str]:
    # site.addpackage: blank lines and comments are skipped, "import" lines run, every other
    # line is a directory (relative ones to the site directory) added when it exists.
    text = read_regular(path, 1 << 20).decode("utf-8")
    out = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#") or line.startswith(("import ", "import\t")):
            continue
        out.append(os.path.normpath(os.path.join(site_dir, line.rstrip())))
    return out


def _finder_directories(path: str) -> list[str]:
    import ast

    tree = ast.parse(read_regular(path, 1 << 20).decode("utf-8"))
    for node in tree.body:
        target = value = None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign):
            target, value = node.target, node.value
        if isinstance(target, ast.Name) and target.id == "MAPPING" and value is not None:
            mapping = ast.literal_eval(value)
            if not isinstance(mapping, dict):
                raise ValueError("MAPPING is not a dict")
            return [os.path.normpath(str(v)) for v in mapping.values() if isinstance(v, str)]
    return []


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


def walk_importable(root: str, *, exclude: tuple[str, ...] = ()) -> Iterator[tuple[str, int]]:
    """Like :func:`walk_files`, for a directory on ``sys.path`` that is not a site directory.

    Only what ``import`` can reach from ``root`` is listed: top-level directories whose name
    is a Python identifier (packages, namespace packages) with everything below them, and
    top-level code files (modules, extensions) whose stem is one. A project checkout
    added by an editable install also holds ``.git``, build output, perhaps a virtual
    environment: none of it is importable from there, so none of it is walked. Directories
    that hold, or lie inside, one of ``exclude`` (site directories checked on their own) are
    skipped too.

    Raises:
        InputError: a directory in the tree cannot be listed (never skipped silently).
    """
    try:
        with os.scandir(root) as it:
            entries = list(it)
    except OSError as exc:
        raise InputError(f"cannot list {root}: {exc.strerror or exc}") from exc
    for entry in entries:
        stem = entry.name.split(".", 1)[0]
        if not stem.isidentifier():
            continue
        try:
            if entry.is_symlink():
                yield entry.path, KIND_LINK
            elif entry.is_dir(follow_symlinks=False):
                if "." in entry.name or _overlaps(entry.path, exclude):
                    continue
                yield from walk_files(entry.path)
            elif is_code_file(entry.name):
                yield entry.path, KIND_FILE if entry.is_file(follow_symlinks=False) else KIND_OTHER
        except OSError:  # an entry that vanished mid-walk is skipped
            continue


def _overlaps(path: str, others: tuple[str, ...]) -> bool:
    prefix = path + os.sep
    return any(o == path or o.startswith(prefix) or path.startswith(o + os.sep) for o in others)
