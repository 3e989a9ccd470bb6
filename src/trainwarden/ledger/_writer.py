"""The writer side: one process appends signed, hash-chained entries to a file it owns."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from trainwarden._fs import fsync_directory
from trainwarden.errors import ConfigError, InputError, VerificationError
from trainwarden.keys import PrivateKey, load_private_key
from trainwarden.ledger._entry import Actor, Entry, MalformedEntry, parse_line
from trainwarden.ledger._files import (
    ensure_subdir,
    fingerprint_tag,
    is_ledger,
    list_ledger_files,
    new_writer_id,
    safe_host,
)
from trainwarden.ledger._format import (
    EVENT_RE,
    FORMAT_VERSION,
    MAX_LINE,
    MAX_RUN,
    OPEN_EVENT,
    RESERVED_PREFIX,
    SEALS_DIR,
    SUFFIX,
    WRITERS_DIR,
    b64decode,
    b64encode,
    canonical_json,
    check_json_value,
    hash_body,
    signing_message,
)

__all__ = ["FSYNC_POLICIES", "FsyncPolicy", "Ledger"]

FsyncPolicy = Literal["always", "batch", "never"]
#: Accepted values of ``Ledger(fsync=...)``.
FSYNC_POLICIES: tuple[FsyncPolicy, ...] = ("always", "batch", "never")
# A batch is written out when it holds this many bytes, whatever its entry count.
_BATCH_MAX_BYTES = 4 << 20


class Ledger:
    """Append signed events to a ledger directory through a writer file this object owns.

    Each ``Ledger`` creates (or, with ``resume``, re-opens) one file under
    ``<dir>/writers/`` that no other process writes: appends from many processes and hosts
    never interleave inside a file, which matters on NFS and Lustre where ``O_APPEND`` is not
    atomic between clients. The file is created with ``O_EXCL`` and held with an exclusive
    ``flock`` while open.

    Durability (``fsync``):

    - ``"always"`` (default): every write reaches stable storage before ``append`` returns;
      inside :meth:`batch` a write is the whole batch, synced once when the block exits.
    - ``"batch"``: data is written on every ``append`` (outside a batch) or at the end of
      each batch, but ``fsync`` runs only when a batch ends, on :meth:`flush` and on
      :meth:`close`. A process crash loses nothing written; an OS crash or power loss may
      lose the entries written since the last sync.
    - ``"never"``: never ``fsync``; the OS writes back when it likes.

    A ``Ledger`` may be shared by threads (appends are serialised; a :meth:`batch` block
    buffers the appends of every thread until it ends), never by processes.

    Inside ``with ledger.batch():`` entries are signed one by one (each keeps its own
    signature) but kept in memory and written with a single ``write`` when the block
    exits or ``batch_size`` entries (or 4 MiB) have accumulated. Entries still buffered when
    the process dies are lost as a whole; the file never holds half a batch except as a torn
    final line, which readers treat as an append in progress.

    Args:
        path: The ledger directory (created if missing).
        key: The writer's Ed25519 private key, or the path of its key file.
        fsync: Durability policy, see above.
        resume: Continue the newest unlocked writer file of this key on this host instead of
            creating a new one (what the CLI does, so one-shot appends do not create a file
            each). Only a file whose last entry verifies under ``key`` and that ends cleanly
            is resumed.
        batch_size: Entries per write inside :meth:`batch`.
        create: Create the ledger directory if it does not exist (see above); with
            ``False`` it must be an existing ledger (see :func:`init_ledger`).

    Raises:
        InputError: The directory or file cannot be created or written, the key cannot
            be loaded, or (``create=False``) there is no ledger at ``path``.
        ConfigError: An option is invalid.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        key: PrivateKey | str | os.PathLike[str],
        fsync: FsyncPolicy = "always",
        resume: bool = False,
        batch_size: int = 1000,
        create: bool = True,
    ) -> None:
        if os.fspath(path) == "":
            # Path("") is ".": an empty setting must not turn the current directory into a ledger.
            raise InputError("no ledger path given")
        self._setup(Path(path), key, fsync, resume, batch_size, WRITERS_DIR, create)

    @classmethod
    def _for_role(
        cls,
        path: Path,
        *,
        key: PrivateKey | str | os.PathLike[str],
        subdir: str,
        resume: bool,
    ) -> Ledger:
        """Open a file in ``subdir`` (``writers`` or ``seals``); used by the sealer."""
        self = cls.__new__(cls)
        self._setup(path, key, "always", resume, 1, subdir, False)
        return self

    def _setup(
        self,
        root: Path,
        key: PrivateKey | str | os.PathLike[str],
        fsync: str,
        resume: bool,
        batch_size: int,
        subdir: str,
        create: bool,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ConfigError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, not {fsync!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, not {batch_size!r}")
        self._fd = -1
        self._closed = True
        self._key = key if isinstance(key, PrivateKey) else load_private_key(Path(key))
        public = self._key.public
        self._public = public
        self._fingerprint = public.fingerprint
        self._fsync: str = fsync
        self._batch_size = batch_size
        self._root = root
        self._subdir = subdir
        self._pid = os.getpid()
        self._actor = _current_actor(self._fingerprint, self._key.identity)
        self._actor_json = canonical_json(self._actor.to_dict())
        # Appends may come from several threads (autograd hooks run on their own threads):
        # sequence numbers and chain links must be taken and written in one order.
        self._mutex = threading.RLock()
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._batch_depth = 0
        self._failed: str | None = None
        self._locked = False
        self._seq = 0
        self._prev: str | None = None
        # Bytes of complete, acknowledged writes, and the chain state before the first
        # buffered entry: what a failed write is rolled back to.
        self._size = 0
        self._rollback: tuple[int, str | None] = (0, None)
        directory = _ensure_dir(root, subdir, create=create)
        if not (resume and self._try_resume(directory)):
            self._create(directory)

    # -- public API ---------------------------------------------------------------------

    @property
    def writer_id(self) -> str:
        """Id of this writer (the file name without ``.jsonl``)."""
        return self._writer_id

    @property
    def path(self) -> Path:
        """The file this writer appends to."""
        return self._path

    @property
    def root(self) -> Path:
        """The ledger directory."""
        return self._root

    @property
    def next_seq(self) -> int:
        """Sequence number the next entry will get."""
        return self._seq

    @property
    def head(self) -> str | None:
        """Hash of the last entry appended (buffered ones included)."""
        return self._prev

    @property
    def locked(self) -> bool:
        """Whether the file is held with ``flock`` (false where the filesystem refuses it)."""
        return self._locked

    def append(self, event: str, /, run: str | None = None, **data: Any) -> Entry:
        """Sign and append one event.

        Args:
            event: Event type, e.g. ``checkpoint.signed`` (``[A-Za-z0-9_.:/-]``, at most 128
                characters; the ``ledger.`` namespace is reserved).
            run: The training run the event is about.
            **data: JSON payload (strings, numbers, booleans, ``None``, lists, dicts with
                string keys; paths are stored as strings).

        Returns:
            The entry as written (or buffered, inside :meth:`batch`).

        Raises:
            InputError: Invalid event, run or data, the entry is too large, or the file
                cannot be written (the writer is then unusable: open a new one).
        """
        return self._append(event, run, data)

    def append_data(self, event: str, data: Mapping[str, Any], *, run: str | None = None) -> Entry:
        """Like :meth:`append`, with the payload as a mapping (any key, ``run`` included)."""
        return self._append(event, run, data)

    def append_many(
        self, events: Iterable[tuple[str, str | None, Mapping[str, Any]]]
    ) -> list[Entry]:
        """Append ``(event, run, data)`` triples as one batch (see :meth:`batch`)."""
        with self.batch():
            return [self._append(event, run, data) for event, run, data in events]

    @contextlib.contextmanager
    def batch(self) -> Iterator[Ledger]:
        """Buffer appends and write them with one ``write`` (and one ``fsync``) at the end.

        Nested blocks join the outermost one. The batch is written even when the block
        raises: the entries were signed and handed out, so they happened.
        """
        with self._mutex:
            self._check_usable()
            self._batch_depth += 1
        try:
            yield self
        finally:
            with self._mutex:
                self._batch_depth -= 1
                if self._batch_depth == 0 and self._failed is None:
                    self._write_buffer(sync=self._fsync != "never")

    def flush(self) -> None:
        """Write buffered entries and ``fsync`` (unless the policy is ``never``)."""
        with self._mutex:
            self._check_usable()
            self._write_buffer(sync=self._fsync != "never")

    def close(self) -> None:
        """Flush, release the lock and close the file. Idempotent."""
        with self._mutex:
            if self._closed:
                return
            try:
                if self._failed is None and os.getpid() == self._pid:
                    self._write_buffer(sync=self._fsync != "never")
            finally:
                self._closed = True
                if os.getpid() == self._pid:
                    with contextlib.suppress(OSError):
                        os.close(self._fd)

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ledger(writer={self._writer_id!r}, key={self._fingerprint!r})"

    # -- internals ------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise InputError(f"ledger writer {self._writer_id} is closed")
        if os.getpid() != self._pid:
            # A forked child shares the parent's file, lock and chain state: two processes
            # would then extend the same chain and fork it. Each process opens its own.
            raise InputError(
                "this Ledger was opened by another process (fork); open a new Ledger in the child"
            )
        if self._failed is not None:
            raise InputError(f"ledger writer {self._writer_id} failed earlier: {self._failed}")

    def _append(
        self, event: str, run: str | None, data: Mapping[str, Any], *, internal: bool = False
    ) -> Entry:
        with self._mutex:
            return self._append_locked(event, run, data, internal=internal)

    def _append_locked(
        self, event: str, run: str | None, data: Mapping[str, Any], *, internal: bool
    ) -> Entry:
        self._check_usable()
        _check_event(event, internal=internal)
        if run is not None and (not isinstance(run, str) or not 0 < len(run) <= MAX_RUN):
            raise InputError(f"run must be a non-empty string of at most {MAX_RUN} characters")
        if not isinstance(data, Mapping):
            raise InputError("ledger data must be a mapping")
        payload = dict(data)
        check_json_value(payload)
        # Keys are sorted, so "sig" sits between "seq" and "time": the line is the signed
        # body with the signature spliced in, and canonical_json(line) == line on reading.
        seq = self._seq
        data_json = canonical_json(payload)
        head = (
            f'{{"actor":{self._actor_json},"data":{data_json},'
            f'"event":{canonical_json(event)},"prev":{canonical_json(self._prev)},'
            f'"run":{canonical_json(run)},"seq":{seq}'
        )
        now = _now()
        tail = f',"time":"{now}","v":{FORMAT_VERSION},"writer":{self._writer_json}}}'
        try:
            body = (head + tail).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InputError(f"ledger data is not valid Unicode: {exc}") from exc
        entry_hash = hash_body(body)
        sig = b64encode(self._key.sign(signing_message(entry_hash)))
        line = f'{head},"sig":"{sig}"{tail}\n'.encode()
        if len(line) > MAX_LINE:
            raise InputError(f"ledger entry is {len(line)} bytes; the limit is {MAX_LINE}")
        entry = Entry(
            writer=self._writer_id,
            seq=seq,
            time=now,
            actor=self._actor,
            run=run,
            event=event,
            # What a reader will parse from disk (paths as strings, tuples as lists).
            data=json.loads(data_json),
            prev=self._prev,
            hash=entry_hash,
            sig=sig,
            file=str(self._path),
        )
        if not self._buffer:
            # The chain as the file ends now: what a failed write of the buffer returns to.
            self._rollback = (seq, self._prev)
        self._seq = seq + 1
        self._prev = entry_hash
        self._buffer.append(line)
        self._buffered += len(line)
        if self._batch_depth == 0:
            self._write_buffer(sync=self._fsync == "always")
        elif len(self._buffer) >= self._batch_size or self._buffered >= _BATCH_MAX_BYTES:
            self._write_buffer(sync=self._fsync != "never")
        return entry

    def _write_buffer(self, *, sync: bool) -> None:
        if not self._buffer:
            if sync:
                self._sync()
            return
        data = b"".join(self._buffer)
        count = len(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        try:
            # One write per batch: with O_APPEND on a file nobody else writes, a reader sees
            # whole lines plus at most one torn final line, never interleaved bytes.
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            self._undo_write(exc, count)
        self._size += len(data)
        if sync:
            self._sync()

    def _undo_write(self, exc: OSError, count: int) -> None:
        """Roll the file and the chain back to the last complete write, then raise.

        A failed write (ENOSPC, EDQUOT, EIO) may have left some of the batch's lines on
        disk: complete, validly signed lines that nobody was told were recorded. They are
        cut off again, so the file holds exactly the acknowledged entries and the chain
        continues from there. If the file cannot be cut back, the writer is failed for
        good (its state would no longer match the file) and the error says what may
        remain.
        """
        seq, prev = self._rollback
        reason = exc.strerror or str(exc)
        first, last = seq, seq + count - 1
        entries = f"seq {first}" if count == 1 else f"seq {first}..{last}"
        try:
            os.ftruncate(self._fd, self._size)
            os.fsync(self._fd)
        except OSError as undo_exc:
            self._failed = (
                f"write failed ({reason}) and the partial write could not be removed "
                f"({undo_exc.strerror or undo_exc}): entries {entries} after byte "
                f"{self._size} may be partly on disk but were never recorded"
            )
            raise InputError(f"cannot write ledger file {self._path}: {self._failed}") from exc
        self._seq, self._prev = seq, prev
        raise InputError(
            f"cannot write ledger file {self._path}: {reason}; entries {entries} were not "
            "recorded (the file was cut back to its last complete write)"
        ) from exc

    def _sync(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as exc:
            self._failed = f"fsync failed: {exc.strerror or exc}"
            raise InputError(f"cannot sync ledger file {self._path}: {self._failed}") from exc

    def _adopt(self, fd: int, path: Path, writer_id: str) -> None:
        self._fd = fd
        self._path = path
        self._writer_id = writer_id
        self._writer_json = canonical_json(writer_id)
        self._closed = False

    def _lock(self, fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            return False  # filesystem without flock (some Lustre mounts): O_EXCL still holds
        return True

    def _create(self, directory: Path) -> None:
        flags = (
            os.O_WRONLY
            | os.O_CREAT
            | os.O_EXCL
            | os.O_APPEND
            | os.O_CLOEXEC
            | getattr(os, "O_NOFOLLOW", 0)
        )
        for _ in range(16):
            writer_id = new_writer_id(self._fingerprint, pid=self._pid)
            path = directory / f"{writer_id}{SUFFIX}"
            try:
                fd = os.open(path, flags, 0o644)
            except FileExistsError:
                continue
            except OSError as exc:
                raise InputError(
                    f"cannot create ledger file {path}: {exc.strerror or exc}"
                ) from exc
            break
        else:  # pragma: no cover - 64 random bits colliding 16 times
            raise InputError(f"cannot find a free writer file name in {directory}")
        self._adopt(fd, path, writer_id)
        try:
            self._locked = self._lock(fd)
        except OSError:  # pragma: no cover - a fresh O_EXCL file nobody else has open
            self._locked = False
        role = "sealer" if self._subdir == SEALS_DIR else "writer"
        open_data = {
            "identity": self._key.identity,
            "key": b64encode(self._public.raw),
            "role": role,
        }
        try:
            self._append(OPEN_EVENT, None, open_data, internal=True)
            if self._fsync != "never":
                self._sync()
        except InputError:
            # A writer file without its ledger.open entry is no use to anyone: remove it.
            self._closed = True
            with contextlib.suppress(OSError):
                os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        if self._fsync != "never":
            # Persist the new file's directory entry too (best effort).
            fsync_directory(directory)

    def _try_resume(self, directory: Path) -> bool:
        host = safe_host()
        tag = fingerprint_tag(self._fingerprint)
        files, _ = list_ledger_files(directory)
        candidates = []
        for path in files:
            parts = path.name[: -len(SUFFIX)].split("_")
            if len(parts) == 4 and parts[0] == host and parts[2] == tag:
                with contextlib.suppress(OSError):
                    candidates.append((path.stat().st_mtime, path))
        return any(self._resume_file(path) for _, path in sorted(candidates, reverse=True))

    def _resume_file(self, path: Path) -> bool:
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(path, flags)
        except OSError:
            return False
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or not self._lock(fd):
                raise OSError("not lockable")
            last = _last_line(fd, st.st_size)
            if last is None:
                raise OSError("no clean last line")
            entry = parse_line(last)
            writer_id = path.name[: -len(SUFFIX)]
            # Resume only our own chain, exactly where our key left it: the last entry
            # must be ours, for this file, and verify under our key.
            if entry.writer != writer_id or entry.actor.key != self._fingerprint:
                raise OSError("not our chain")
            self._public.verify(b64decode(entry.sig), signing_message(entry.hash))
        except (OSError, MalformedEntry, VerificationError, ValueError):
            with contextlib.suppress(OSError):
                os.close(fd)
            return False
        self._adopt(fd, path, writer_id)
        self._locked = True
        self._seq = entry.seq + 1
        self._prev = entry.hash
        self._size = st.st_size
        return True


def _last_line(fd: int, size: int) -> bytes | None:
    """The last complete line of a file ending in a newline, else ``None``."""
    if size == 0:
        return None
    chunk = os.pread(fd, min(size, MAX_LINE + 1), max(0, size - MAX_LINE - 1))
    if not chunk.endswith(b"\n"):
        return None  # torn tail: never append after a partial line
    start = chunk.rfind(b"\n", 0, len(chunk) - 1)
    if start < 0 and size > len(chunk):
        return None
    return chunk[start + 1 : -1]


def _check_event(event: object, *, internal: bool) -> None:
    if not isinstance(event, str) or not EVENT_RE.fullmatch(event):
        raise InputError(f"invalid event type {event!r}: use 1-128 characters of [A-Za-z0-9_.:/-]")
    if event.startswith(RESERVED_PREFIX) and not internal:
        raise InputError(f"event types starting with {RESERVED_PREFIX!r} are reserved")


def _now() -> str:
    ns = time.time_ns()
    seconds, rest = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest // 1000:06d}Z"


def _current_actor(fingerprint: str, identity: str) -> Actor:
    uid = os.getuid()
    try:
        import pwd

        user = pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):  # no passwd entry for this uid (containers)
        user = f"uid{uid}"
    import socket

    return Actor(
        uid=uid,
        user=user,
        host=socket.gethostname(),
        pid=os.getpid(),
        key=fingerprint,
        identity=identity,
    )


def _ensure_dir(root: Path, subdir: str, *, create: bool) -> Path:
    if root.is_symlink():
        # A planted symlink would send our entries somewhere the verifier never looks.
        raise InputError(f"{root} is a symbolic link; a ledger directory must be real")
    if create:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(
                f"cannot create ledger directory {root}: {exc.strerror or exc}"
            ) from exc
    elif not is_ledger(root):
        what = "does not exist" if not root.exists() else "is not a ledger"
        raise InputError(
            f"{root} {what}; create a ledger explicitly (`trainwarden ledger init {root}`, "
            "`--create`, or Ledger(..., create=True))"
        )
    return ensure_subdir(root, subdir)
