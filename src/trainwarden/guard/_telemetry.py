"""Per-step telemetry: ``<telemetry_dir>/rank-<R>.jsonl``, buffered, digested into the ledger.

One JSON line per optimizer step (fields in docs/events.md), kept in memory and appended to the
file at least every few seconds (by the watchdog thread) and on close. The file is opened
``O_APPEND | O_NOFOLLOW`` (a planted symlink cannot redirect it) and a running SHA-256 of the
bytes written is kept, so ``guard.telemetry`` at close records the digest of exactly what this
process wrote; later edits of the file then show.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from trainwarden.errors import InputError

__all__ = ["TelemetryWriter", "writer_for"]

logger = logging.getLogger("trainwarden.guard")


class TelemetryWriter:
    """Appends telemetry lines for one rank; shared by every guard of the process."""

    def __init__(self, directory: str | os.PathLike[str], rank: int) -> None:
        self.directory = Path(directory)
        self.rank = rank
        self.path = self.directory / f"rank-{rank}.jsonl"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(
                self.path,
                os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o640,
            )
        except OSError as exc:
            raise InputError(f"cannot open telemetry file {self.path}: {exc.strerror}") from exc
        self._fd = fd
        # Where this process's lines start (a file may already hold another guard's).
        self.offset = os.fstat(fd).st_size
        self._lock = threading.Lock()
        self._buffer: list[bytes] = []
        self._hash = hashlib.sha256()
        self.lines = 0
        self.bytes = 0
        self.users = 0
        self.failed: str | None = None

    def write(self, record: dict[str, Any]) -> None:
        """Buffer one line (never blocks on the disk)."""
        line = (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode()
        with self._lock:
            self._buffer.append(line)

    def flush(self) -> None:
        """Append what is buffered (errors are logged once and kept in ``failed``)."""
        with self._lock:
            if not self._buffer or self._fd < 0:
                return
            data = b"".join(self._buffer)
            count = len(self._buffer)
            self._buffer.clear()
            try:
                view = memoryview(data)
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
            except OSError as exc:
                if self.failed is None:
                    logger.error("guard: telemetry %s not written: %s", self.path, exc)
                self.failed = exc.strerror or str(exc)
                return
            self._hash.update(data)
            self.lines += count
            self.bytes += len(data)

    def close(self) -> dict[str, Any]:
        """Flush, close, and return the ``guard.telemetry`` data."""
        self.flush()
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        return {
            "rank": self.rank,
            "path": str(self.path),
            "lines": self.lines,
            "sha256": self._hash.hexdigest(),
            "bytes": self.bytes,
            "offset": self.offset,
            "error": self.failed,
        }


_writers: dict[tuple[str, int], TelemetryWriter] = {}
_lock = threading.Lock()


def writer_for(directory: str | os.PathLike[str], rank: int) -> TelemetryWriter:
    """The process's writer for ``directory`` and ``rank`` (one file per rank)."""
    key = (str(Path(directory).resolve()), rank)
    with _lock:
        writer = _writers.get(key)
        if writer is None or writer._fd < 0:
            writer = _writers[key] = TelemetryWriter(directory, rank)
        writer.users += 1
        return writer


def release(writer: TelemetryWriter) -> dict[str, Any] | None:
    """Drop one user of ``writer``; the last one closes it and gets the close data."""
    with _lock:
        writer.users -= 1
        if writer.users > 0:
            writer.flush()
            return None
        for key, value in list(_writers.items()):
            if value is writer:
                del _writers[key]
    return writer.close()
