"""Ledger directory layout: writer ids, listing writer and seal files, reading them safely."""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import os
import re
import secrets
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from trainwarden._fs import describe_mode
from trainwarden.errors import InputError
from trainwarden.ledger._entry import Entry, MalformedEntry, parse_line
from trainwarden.ledger._format import MAX_LINE, SEALS_DIR, SUFFIX, WRITER_ID_RE, WRITERS_DIR

__all__ = [
    "FileRecords",
    "LedgerLayout",
    "ensure_subdir",
    "fingerprint_tag",
    "init_ledger",
    "is_ledger",
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


def is_ledger(path: Path) -> bool:
    """Whether ``path`` is a ledger directory (it holds ``writers/`` or ``seals/``)."""
    path = Path(path)
    return (
        path.is_dir()
        and not path.is_symlink()
        and ((path / WRITERS_DIR).is_dir() or (path / SEALS_DIR).is_dir())
    )


def resolve_layout(path: Path) -> LedgerLayout:
    """Accept a ledger directory or one writer file inside ``<ledger>/writers/``.

    Raises:
        InputError: ``path`` does not exist or is neither.
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(f"{path} is a symlink loop, not a ledger") from exc
        if exc.errno == errno.ENOENT and not path.is_symlink():
            raise InputError(f"{path} does not exist") from exc
        raise InputError(f"cannot read ledger {path}: {exc.strerror or exc}") from exc
    if stat.S_ISDIR(st.st_mode):
        if not (path / WRITERS_DIR).is_dir() and not (path / SEALS_DIR).is_dir():
            raise InputError(
                f"{path} is not a ledger (no {WRITERS_DIR}/ or {SEALS_DIR}/ directory in it)"
            )
        return LedgerLayout(path)
    if stat.S_ISREG(st.st_mode) or path.is_symlink():
        if path.parent.name == SEALS_DIR:
            raise InputError(f"{path} is a seal file; give the ledger directory instead")
        if path.name.endswith(SUFFIX):
            root = path.parent.parent if path.parent.name == WRITERS_DIR else path.parent
            return LedgerLayout(root, only=path)
        raise InputError(f"{path} is not a ledger writer file (expected *{SUFFIX})")
    raise InputError(f"{path} is {describe_mode(st.st_mode)}, not a ledger")


def ensure_subdir(root: Path, subdir: str) -> Path:
    """Create ``root/subdir`` if missing (sticky bit, like ``/tmp``); ``root`` must exist.

    Raises:
        InputError: ``root`` or the sub-directory is a symlink, not a directory, or cannot
            be created.
    """
    directory = root / subdir
    for path in (root, directory):
        if path.is_symlink():
            # A planted symlink would send our entries somewhere the verifier never looks.
            raise InputError(f"{path} is a symbolic link; a ledger directory must be real")
    try:
        directory.mkdir(mode=0o777)
    except FileExistsError:
        pass
    except OSError as exc:
        raise InputError(
            f"cannot create ledger directory {directory}: {exc.strerror or exc}"
        ) from exc
    else:
        # Sticky bit: on a shared ledger everyone may create files here, but only a file's
        # owner may delete or rename it (like /tmp).
        with contextlib.suppress(OSError):
            mode = stat.S_IMODE(directory.stat().st_mode)
            directory.chmod(mode | stat.S_ISVTX)
    if not directory.is_dir():
        raise InputError(f"{directory} is not a directory")
    return directory


def init_ledger(path: str | os.PathLike[str]) -> Path:
    """Create an empty ledger at ``path`` (``writers/`` and ``seals/``); idempotent.

    The one explicit way, with ``Ledger(..., create=True)``, to start a ledger: a mistyped
    path must never quietly become a second ledger beside the real one.

    Returns:
        The ledger directory.

    Raises:
        InputError: ``path`` exists and is not a directory, is a directory that holds other
            things but no ledger, or cannot be created.
    """
    root = Path(path)
    if str(path) == "":
        raise InputError("no ledger path given")
    if root.is_symlink():
        raise InputError(f"{root} is a symbolic link; a ledger directory must be real")
    if root.exists():
        if not root.is_dir():
            raise InputError(f"{root} exists and is not a directory")
        if not is_ledger(root) and any(root.iterdir()):
            raise InputError(
                f"{root} is a directory that holds other files but no ledger; "
                "choose an empty or new directory"
            )
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create ledger directory {root}: {exc.strerror or exc}") from exc
    ensure_subdir(root, WRITERS_DIR)
    ensure_subdir(root, SEALS_DIR)
    return root


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
        writer_gone: With a torn fragment: ``True`` when no process holds the file's lock
            (the fragment is a crash or a failed write, not an append in progress),
            ``False`` when a writer holds it, ``None`` when that cannot be told.
    """

    path: Path
    records: tuple[tuple[int, int, Entry | MalformedEntry], ...]
    torn_bytes: int = 0
    error: str | None = None
    writer_gone: bool | None = None

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
    # O_NOFOLLOW: a symlink could point a writer's name at another writer's file, or at a
    # file the attacker controls elsewhere; a ledger holds regular files only. O_NONBLOCK:
    # a FIFO planted under a writer's name must not hang the verifier; it is refused below.
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return FileRecords(path, (), error="not a regular file (a symlink)")
        return FileRecords(path, (), error=f"cannot open: {exc.strerror or exc}")
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return FileRecords(path, (), error=f"not a regular file ({describe_mode(st.st_mode)})")
    os.set_blocking(fd, True)
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
        gone = _writer_gone(fh.fileno()) if torn else None
    return FileRecords(path, tuple(records), torn_bytes=torn, writer_gone=gone)


def _writer_gone(fd: int) -> bool | None:
    """Whether no writer holds the file (a live writer keeps an exclusive ``flock``)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
            return False
        return None  # no flock on this filesystem
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    return True
