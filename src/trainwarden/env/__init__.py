"""Environment integrity (T2): installed packages, startup hooks, bytecode and live callables.

On disk: :func:`verify_environment` checks every installed distribution against its wheel
RECORD (modified, missing, unexpected files), each ``__pycache__`` pyc against a fresh compile
of its source, and startup-code vectors (``.pth`` import lines, ``sitecustomize``,
``PYTHONPATH`` shadowing, import hooks). RECORD sits beside the code, so the trust anchor is a
lock: :func:`snapshot_environment` + :func:`write_lock` record every file, including the source
trees of editable installs (signed with a :class:`trainwarden.keys.PrivateKey`),
:func:`read_lock` checks the signature before parsing, and ``verify_environment(lock=...)``
compares every file; :func:`diff_locks` compares two. :func:`package_digest` digests one
installed package (``"torch"``) so a running job can compare it with itself later.

In the process: :func:`snapshot_runtime` takes a reference of the callables a saboteur would
patch (:func:`critical_targets`: optimizer steps, seeding, data loading, collectives,
``torch.load``/``save``), of the torch dispatcher's core kernels and of the import and global
torch hooks; :func:`verify_runtime` reports whether they are still the originals, match their
on-disk source, and that no Python kernel overrides a core ``aten`` operator;
:func:`check_runtime` is its lean periodic form. Nothing is snapshotted when this package is
imported: take the reference yourself, as early as you can (``verify_runtime()`` without one
takes it then and says so). trainwarden's own patches and hooks (``protect()``, the guard) are
recognised by identity through :mod:`trainwarden.patching`. See ``docs/env-runtime.md``.

Verdicts: a changed, missing or unexpected code file, a forged pyc, an unowned ``.pth`` import
line or sitecustomize, PYTHONPATH shadowing and unknown import hooks are ``unsafe``; what
cannot be verified (no RECORD, egg-info and editable installs without a lock, unhashed RECORD
rows, an extra data file) is ``unknown``, which ``env verify`` fails on by default (fail
closed).
"""

from __future__ import annotations

from trainwarden.env._hashing import blake3_available, hash_files
from trainwarden.env._lock import (
    LOCK_FORMAT,
    LOCK_VERSION,
    EditableRoot,
    EnvLock,
    LockedFile,
    diff_locks,
    read_lock,
    signature_path,
    write_lock,
)
from trainwarden.env._package import PackageDigest, package_digest
from trainwarden.env._runtime import (
    RuntimeSnapshot,
    check_runtime,
    snapshot_runtime,
    verify_runtime,
)
from trainwarden.env._site import default_site_dirs
from trainwarden.env._snapshot import snapshot_environment
from trainwarden.env._startup import check_environment_variables, check_import_hooks
from trainwarden.env._targets import critical_targets
from trainwarden.env._verify import verify_environment

__all__ = [
    "LOCK_FORMAT",
    "LOCK_VERSION",
    "EditableRoot",
    "EnvLock",
    "LockedFile",
    "PackageDigest",
    "RuntimeSnapshot",
    "blake3_available",
    "check_environment_variables",
    "check_import_hooks",
    "check_runtime",
    "critical_targets",
    "default_site_dirs",
    "diff_locks",
    "hash_files",
    "package_digest",
    "read_lock",
    "signature_path",
    "snapshot_environment",
    "snapshot_runtime",
    "verify_environment",
    "verify_runtime",
    "write_lock",
]
