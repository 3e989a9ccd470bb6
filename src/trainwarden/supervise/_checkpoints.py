"""Sign checkpoints as the job completes them, chained to the previous one (lineage).

Each watched directory is polled; each of its top-level entries (a file, or a checkpoint
directory such as ``checkpoint-500/``) is a checkpoint. It is complete when it has not
changed for ``settle`` seconds, or when a directory holds a completion marker; when the job
has exited, everything left is complete. Each completed version is signed with the
supervisor's key (``trainwarden sign``'s format) with the run, the step and the digest of the
previous checkpoint as parent, and recorded as ``checkpoint.signed``: a later modification,
swap, rollback or deletion then shows on ``trainwarden verify --ledger``. A signed
checkpoint that disappears while the job runs is recorded as ``checkpoint.deleted``.
"""

# os.path: string paths in a polling loop.
# ruff: noqa: PTH112, PTH114, PTH118

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainwarden.errors import Error
from trainwarden.keys import PrivateKey

__all__ = ["CheckpointWatcher", "SignedCheckpoint", "infer_step"]

logger = logging.getLogger("trainwarden.supervise")

_TEMP_SUFFIXES = (".tmp", ".partial", ".part", ".incomplete", ".lock", ".sig", "~", ".swp")
_IGNORED_DIRS = frozenset(
    {"runs", "logs", "wandb", "lightning_logs", "tensorboard", "tb", "__pycache__", "mlruns"}
)
_MARKERS = frozenset({"COMPLETE", ".complete", "_SUCCESS", ".done", "DONE"})
_STEP_NAMED = re.compile(r"(?:global_step|step|iter|it|ckpt|checkpoint)[-_=]?(\d+)", re.I)
_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")


def infer_step(name: str) -> int | None:
    """The training step a checkpoint's name states (``ckpt-000010.pt`` -> 10), if any."""
    stem = name
    for suffix in (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".tar", ".pkl", ".npz"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    match = _STEP_NAMED.search(stem) or _LAST_NUMBER.search(stem)
    return int(match.group(1)) if match else None


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    """A checkpoint signed during the run."""

    path: str
    digest: str
    step: int | None
    parent: str | None
    sig_path: str
    files: int
    size: int


@dataclass
class _Entry:
    state: tuple[Any, ...]
    stable_since: float
    signed_state: tuple[Any, ...] | None = None
    signed: SignedCheckpoint | None = None
    failures: int = 0
    marker: bool = False
    preexisting: bool = False


@dataclass
class _Pending:
    path: Path
    state: tuple[Any, ...]


@dataclass
class CheckpointWatcher:
    """Watch ``dirs`` and sign completed checkpoints (see the module docstring).

    Args:
        dirs: Directories to watch (need not exist yet).
        key: The supervisor's key.
        run_id: The run.
        record: Appends a ledger event (``checkpoint.signed``, ``checkpoint.deleted``...).
        settle: Seconds without change after which an entry is complete.
        signatures: Where to write signatures (default: ``PATH.sig`` beside each).
        current_step: The job's latest step (heartbeats), for names without a step.
        workers: Hashing threads.
    """

    dirs: Sequence[Path]
    key: PrivateKey
    run_id: str
    record: Callable[[str, dict[str, Any]], None]
    settle: float = 2.0
    signatures: Path | None = None
    current_step: Callable[[], int | None] = lambda: None
    workers: int | None = None
    _entries: dict[str, _Entry] = field(default_factory=dict)
    _signed: list[SignedCheckpoint] = field(default_factory=list)
    _queue: queue.Queue[_Pending | None] = field(default_factory=queue.Queue)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None
    _parent: str | None = None
    _busy: int = 0

    def baseline(self) -> list[str]:
        """Note what exists before the job starts (not outputs of this run); return it."""
        found = []
        now = time.monotonic()
        for path in self._candidates():
            state = _state(path)
            if state is not None:
                self._entries[str(path)] = _Entry(state, now, signed_state=state, preexisting=True)
                found.append(str(path))
        self._thread = threading.Thread(target=self._worker, name="trainwarden-sign", daemon=True)
        self._thread.start()
        return found

    @property
    def signed(self) -> list[SignedCheckpoint]:
        """Checkpoints signed so far, in signing order."""
        with self._lock:
            return list(self._signed)

    def poll(self, *, final: bool = False) -> None:
        """Look at every watched directory once; queue completed checkpoints for signing."""
        now = time.monotonic()
        seen: set[str] = set()
        for path in self._candidates():
            key = str(path)
            seen.add(key)
            state = _state(path)
            if state is None:
                continue
            entry = self._entries.get(key)
            if entry is None:
                entry = _Entry(state, now)
                self._entries[key] = entry
            elif entry.state != state:
                entry.state, entry.stable_since = state, now
                entry.marker = False
            if entry.signed_state == state or entry.failures >= 3:
                continue
            complete = final or now - entry.stable_since >= self.settle or _has_marker(path)
            if complete and entry.signed_state != ("pending", state):
                entry.signed_state = ("pending", state)
                self._queue.put(_Pending(path, state))
        for key, entry in list(self._entries.items()):
            if key not in seen and entry.signed is not None and not os.path.lexists(key):
                signed = entry.signed
                del self._entries[key]
                self.record(
                    "checkpoint.deleted",
                    {
                        "path": signed.path,
                        "digest": signed.digest,
                        "step": signed.step,
                        "parent": signed.parent,
                        "during_run": True,
                        "note": "deleted while the job ran (the job's own retention, or "
                        "someone else: the supervisor cannot tell who)",
                    },
                )

    def finish(self, timeout: float | None = None) -> list[SignedCheckpoint]:
        """Sign everything not signed yet (the job has exited) and stop the signer."""
        self.poll(final=True)
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
        return self.signed

    def _candidates(self) -> list[Path]:
        out: list[Path] = []
        for directory in self.dirs:
            try:
                with os.scandir(directory) as it:
                    names = sorted(e.name for e in it)
            except OSError:
                continue
            for name in names:
                if name.startswith(".") or name.endswith(_TEMP_SUFFIXES):
                    continue
                path = Path(directory) / name
                if name in _IGNORED_DIRS and path.is_dir():
                    continue
                if self.signatures is not None and _inside(path, self.signatures):
                    continue
                out.append(path)
        return out

    def _worker(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self._sign(item)
            except Exception:  # never let the signer die; the failure is recorded below
                logger.exception("signing %s failed", item.path)

    def _sign(self, item: _Pending) -> None:
        from trainwarden.sign import default_sig_path, sign_path

        key = str(item.path)
        entry = self._entries.get(key)
        if entry is None:
            return
        if _state(item.path) != item.state:
            entry.signed_state = None  # changed again: wait until it settles
            return
        step = infer_step(item.path.name)
        if step is None:
            step = self.current_step()
        sig = (
            self.signatures / (_flatten(item.path) + ".sig")
            if self.signatures is not None
            else default_sig_path(item.path)
        )
        with self._lock:
            parent = self._parent
        try:
            signature = sign_path(
                item.path,
                self.key,
                run=self.run_id,
                step=step,
                parent=parent,
                sig_path=sig,
                workers=self.workers,
            )
        except Error as exc:
            entry.failures += 1
            entry.signed_state = None
            if entry.failures >= 3:
                self.record(
                    "checkpoint.unsigned",
                    {"path": str(item.path.resolve()), "reason": exc.diagnostics()},
                )
            return
        signed = SignedCheckpoint(
            path=str(item.path.resolve()),
            digest=signature.digest,
            step=step,
            parent=parent,
            sig_path=str(Path(signature.sig_path).resolve()),
            files=signature.files,
            size=signature.size,
        )
        self.record(
            "checkpoint.signed",
            {
                "path": signed.path,
                "digest": signed.digest,
                "step": signed.step,
                "parent": signed.parent,
                "signature": signed.sig_path,
                "files": signed.files,
                "bytes": signed.size,
                # As trainwarden sign records it: `ledger verify --check-files` compares the
                # file with this digest as a signing manifest (a checkpoint digest is not
                # the file's plain SHA-256), which needs the shard size.
                "shard_size": signature.manifest.shard_size,
            },
        )
        with self._lock:
            self._signed.append(signed)
            self._parent = signed.digest
        entry.signed_state = item.state
        entry.signed = signed


def _inside(path: Path, directory: Path) -> bool:
    try:
        path.resolve().relative_to(directory.resolve())
    except ValueError:
        return False
    return True


def _flatten(path: Path) -> str:
    return str(path.resolve()).strip("/").replace("/", "__")


def _state(path: Path) -> tuple[Any, ...] | None:
    """What changes when a checkpoint is written: inode, size, mtime of every file."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not os.path.isdir(path) or os.path.islink(path):
        return (st.st_ino, st.st_size, st.st_mtime_ns)
    items: list[tuple[str, int, int, int]] = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            try:
                fst = os.lstat(full)
            except OSError:
                continue
            items.append((os.path.relpath(full, path), fst.st_ino, fst.st_size, fst.st_mtime_ns))
    return ("dir", tuple(items))


def _has_marker(path: Path) -> bool:
    return path.is_dir() and any((path / m).exists() for m in _MARKERS)
