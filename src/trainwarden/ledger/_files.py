"""Ledger directory layout: writer ids, listing writer and seal files, reading them safely."""

from __future__ import annotations

import base64
import os
import re
import secrets
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from trainwarden.errors import InputError
from trainwarden.ledger._entry import Entry, MalformedEntry, parse_line
from trainwarden.ledger._format import MAX_LINE, SEALS_DIR, SUFFIX, WRITER_ID_RE, WRITERS_DIR

__all__ = [
    "FileRecords",
    "LedgerLayout",
    "fingerprint_tag",
    "list_ledger_files",
    "new_writer_id",
    "read_records",
    "resolve_layout",
    "safe_host",
    "writer_key_tag",
]

_HOST_UNSAFE = re.compile(r"[^A-Za-z0-9.-]+")


def fingerprint_tag(fingerprint: str) -> str:
    """First 16 hex digits of a ``SHA256:`` key fingerprint, used in writer ids."""
    b64 = fingerprint.removeprefix("SHA256:")
    try:
        raw = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
    except ValueError:
        raw = b""
    return raw.hex()[:16] or "0" * 16


def safe_host(host: str | None = None) -> str:
    """The host name as used in writer ids (``[A-Za-z0-9.-]``, at most 64 characters)."""
    return _HOST_UNSAFE.sub("-", host or socket.gethostname()).strip(".-")[:64] or "host"


def new_writer_id(fingerprint: str, *, host: str | None = None, pid: int | None = None) -> str:
    """A fresh writer id: ``<host>_<pid>_<key tag>_<random>``.

    The 64 random bits make ids unique even for equal pids on hosts that share a name (the
    file is also created with ``O_EXCL``, so a collision can never make two writers share a
    file); host, pid and key tag only make the directory listing readable.
    """
    tag = fingerprint_tag(fingerprint)
    return f"{safe_host(host)}_{pid or os.getpid()}_{tag}_{secrets.token_hex(8)}"


def writer_key_tag(writer_id: str) -> str | None:
    """The key tag inside a writer id, or ``None`` when the id is not in our format."""
    parts = writer_id.split("_")
    return parts[2] if len(parts) == 4 else None


@dataclass(frozen=True, slots=True)
class LedgerLayout:
    """Where a ledger's files are; ``only`` restricts verification to one writer file."""

    root: Path
    only: Path | None = None

    @property
    def writers_dir(self) -> Path:
        """Directory of the writers' files."""
        return self.root / WRITERS_DIR

    @property
    def seals_dir(self) -> Path:
        """Directory of the sealers' files."""
        return self.root / SEALS_DIR

    def writer_files(self) -> tuple[list[Path], list[Path]]:
        """Writer files (sorted by name) and unexpected entries of the writers directory."""
        if self.only is not None:
            return [self.only], []
        return list_ledger_files(self.writers_dir)

    def seal_files(self) -> tuple[list[Path], list[Path]]:
        """Seal files (sorted by name) and unexpected entries of the seals directory."""
        return list_ledger_files(self.seals_dir)


def resolve_layout(path: Path) -> LedgerLayout:
    """Accept a ledger directory or one writer file inside ``<ledger>/writers/``.

    Raises:
        InputError: ``path`` does not exist or is neither.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / WRITERS_DIR).is_dir() and not (path / SEALS_DIR).is_dir():
            raise InputError(
                f"{path} is not a ledger (no {WRITERS_DIR}/ or {SEALS_DIR}/ directory in it)"
            )
        return LedgerLayout(path)
    if path.is_file() or path.is_symlink():
        if path.parent.name == SEALS_DIR:
            raise InputError(f"{path} is a seal file; give the ledger directory instead")
        if path.name.endswith(SUFFIX):
            root = path.parent.parent if path.parent.name == WRITERS_DIR else path.parent
            return LedgerLayout(root, only=path)
        raise InputError(f"{path} is not a ledger writer file (expected *{SUFFIX})")
    raise InputError(f"{path} does not exist")


def list_ledger_files(directory: Path) -> tuple[list[Path], list[Path]]:
    try:
        names = sorted(p.name for p in Path(directory).iterdir())
    except FileNotFoundError:
        return [], []
    except OSError as exc:
        raise InputError(f"cannot list {directory}: {exc.strerror or exc}") from exc
    files, unexpected = [], []
    for name in names:
        stem = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else ""
        if stem and WRITER_ID_RE.fullmatch(stem):
            files.append(directory / name)
        else:
            unexpected.append(directory / name)
    return files, unexpected


@dataclass(frozen=True, slots=True)
class FileRecords:
    """Everything read from one writer or seal file.

    Attributes:
        path: The file.
        records: One item per complete line, in file order: the parsed entry, or the reason
            it is malformed.
        torn_bytes: Size of a final fragment without newline (an append in progress).
        error: Why the file could not be read at all, else ``None``.
    """

    path: Path
    records: tuple[tuple[int, int, Entry | MalformedEntry], ...]
    torn_bytes: int = 0
    error: str | None = None

    @property
    def writer_id(self) -> str:
        """Writer id named by the file name."""
        return self.path.name[: -len(SUFFIX)]

    @property
    def entries(self) -> Iterator[Entry]:
        """The well-formed entries, in file order."""
        return (r for _, _, r in self.records if isinstance(r, Entry))


def read_records(path: Path) -> FileRecords:
    """Read and parse every line of one writer or seal file (never follows symlinks).

    Records carry ``(line number, byte offset, entry or malformed reason)``. A final
    fragment without newline is not parsed: it is an append in progress (or a torn
    write), reported by size so the verifier can apply the torn-tail rule.
    """
    try:
        st = path.lstat()
    except OSError as exc:
        return FileRecords(path, (), error=f"cannot stat: {exc.strerror or exc}")
    if not stat.S_ISREG(st.st_mode):
        # A symlink could point a writer's name at another writer's file, or at a file the
        # attacker controls elsewhere: a ledger holds regular files only.
        return FileRecords(path, (), error="not a regular file (symlink or special file)")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC)
    except OSError as exc:
        return FileRecords(path, (), error=f"cannot open: {exc.strerror or exc}")
    records: list[tuple[int, int, Entry | MalformedEntry]] = []
    torn = 0
    name = str(path)
    with os.fdopen(fd, "rb") as fh:
        offset = 0
        lineno = 0
        while True:
            line = fh.readline(MAX_LINE + 1)
            if not line:
                break
            lineno += 1
            if not line.endswith(b"\n"):
                if len(line) > MAX_LINE:
                    records.append((lineno, offset, MalformedEntry("line longer than 1 MiB")))
                    # Skip the rest of the line in bounded reads: a hostile multi-GB line
                    # must not be read into memory.
                    skipped = len(line)
                    while True:
                        rest = fh.readline(MAX_LINE)
                        skipped += len(rest)
                        if not rest or rest.endswith(b"\n"):
                            break
                    offset += skipped
                    continue
                torn = len(line)
                break
            try:
                record: Entry | MalformedEntry = parse_line(line[:-1], file=name, lineno=lineno)
            except MalformedEntry as exc:
                record = exc
            records.append((lineno, offset, record))
            offset += len(line)
    return FileRecords(path, tuple(records), torn_bytes=torn)
