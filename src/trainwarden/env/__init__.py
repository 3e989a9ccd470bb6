"""Environment integrity (T2): installed packages, startup hooks, bytecode and live callables.

On disk: :func:`verify_environment` checks every installed distribution against its wheel
RECORD (modified, missing, unexpected files), each ``__pycache__`` pyc against a fresh compile
of its source, and startup-code vectors (``.pth`` import lines, ``sitecustomize``,
``PYTHONPATH`` shadowing, import hooks). RECORD sits beside the code, so the trust anchor is a
lock: :func:`snapshot_environment` + :func:`write_lock` record every file (signed with a
:class:`trainwarden.sign.PrivateKey`), :func:`read_lock` checks the signature before parsing,
and ``verify_environment(lock=...)`` compares every file; :func:`diff_locks` compares two.

In the process: :func:`snapshot_runtime` takes a reference of the callables a saboteur would
patch (optimizer steps, seeding, data loading, collectives, ``torch.load``/``save``) and
:func:`verify_runtime` checks they are still the originals, match their on-disk source, and
that no Python kernel overrides a core ``aten`` operator. A first reference is taken when this
package is imported into a process that already holds torch or numpy; modules imported later
join it on first sight, and the source comparison covers patches made before any reference.
Periodic checks cost a few milliseconds.

Verdicts: a changed, missing or unexpected code file, a forged pyc, an unowned ``.pth`` import
line or sitecustomize, PYTHONPATH shadowing and unknown import hooks are ``unsafe``; what
cannot be verified (no RECORD, egg-info and editable installs, unhashed RECORD rows, an extra
data file) is ``unknown``, which ``env verify`` fails on by default (fail closed).
"""

from __future__ import annotations

from trainwarden.env._hashing import blake3_available, hash_files
from trainwarden.env._lock import (
    LOCK_FORMAT,
    LOCK_VERSION,
    EnvLock,
    LockedFile,
    diff_locks,
    read_lock,
    signature_path,
    snapshot_environment,
    write_lock,
)
from trainwarden.env._runtime import (
    RuntimeSnapshot,
    snapshot_runtime,
    verify_runtime,
)
from trainwarden.env._startup import check_environment_variables, check_import_hooks
from trainwarden.env._verify import default_site_dirs, verify_environment

__all__ = [
    "LOCK_FORMAT",
    "LOCK_VERSION",
    "EnvLock",
    "LockedFile",
    "RuntimeSnapshot",
    "blake3_available",
    "check_environment_variables",
    "check_import_hooks",
    "default_site_dirs",
    "diff_locks",
    "hash_files",
    "read_lock",
    "signature_path",
    "snapshot_environment",
    "snapshot_runtime",
    "verify_environment",
    "verify_runtime",
    "write_lock",
]
