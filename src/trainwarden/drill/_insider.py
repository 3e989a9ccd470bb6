"""The insider's own process: ``python -m trainwarden.drill._insider REQUEST.json``.

Started by the drill (as root when the drill runs as root), it imports everything its attacks
need, switches to the insider's uid (keeping ``CAP_KILL`` only when asked, for T6), loads the
insider's key, and carries out the requested attacks one after the other. Each attack records
``drill.scenario`` in the run's ledger, signed with the insider's key, when it begins. The
outcome goes to the result file named in the request (JSON); the exit status is 0 when the
process ran, whatever each attack's outcome.
"""

# Modules imported here, before the uid switch, are all an attack may use afterwards: the
# insider's uid may be unable to read the Python installation (e.g. under /root).
from __future__ import annotations

import _strptime  # type: ignore[import-not-found]
import base64
import codecs
import contextlib
import csv
import ctypes
import datetime
import errno
import fcntl
import functools
import hashlib
import io
import json
import os
import pwd
import random
import secrets
import signal
import socket
import stat
import sys
import time
import traceback
import zipfile
import zlib
from pathlib import Path
from typing import Any

from trainwarden._fs import atomic_write
from trainwarden.drill._attacks import AttackContext, AttackFailed, all_attacks
from trainwarden.drill._identity import InsiderAccount, drop_privileges
from trainwarden.errors import Error
from trainwarden.keys import PrivateKey, load_private_key
from trainwarden.ledger import Ledger

__all__ = ["main"]

# Referenced so that linters keep the imports above: they are loaded for later, not used here.
_PRELOADED = (
    _strptime,
    base64,
    codecs,
    contextlib,
    csv,
    ctypes,
    datetime,
    errno,
    fcntl,
    functools,
    hashlib,
    io,
    pwd,
    random,
    secrets,
    signal,
    socket,
    stat,
    zipfile,
    zlib,
)


def _now() -> str:
    ns = time.time_ns()
    seconds, rest = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest // 1000:06d}Z"


def _warm_up(key_path: Path) -> PrivateKey:
    # Exercise, while the installation is still readable, every lazily imported path the
    # ledger and the keys take: key loading, signing, the actor's passwd lookup, time parsing.
    key = load_private_key(key_path)
    PrivateKey.generate("warm-up@drill").sign(b"warm-up")
    with contextlib.suppress(KeyError):
        pwd.getpwuid(os.getuid())
    socket.gethostname()
    datetime.datetime.strptime("2026-01-02T03:04:05.000006Z", "%Y-%m-%dT%H:%M:%S.%fZ")
    # Codecs are imported on first lookup: the pickle payload is raw-unicode-escape.
    for codec in ("raw_unicode_escape", "unicode_escape", "latin-1", "ascii", "utf-8"):
        codecs.lookup(codec)
    all_attacks()
    return key


def _run(request: dict[str, Any]) -> dict[str, Any]:
    key_path = Path(request["key"])
    key = _warm_up(key_path)
    os.chdir(request["cwd"])
    account = request.get("account")
    if account is not None:
        drop_privileges(
            InsiderAccount(
                uid=account["uid"],
                gid=account["gid"],
                groups=tuple(account["groups"]),
                team_gid=None,
                mode="separate-uid",
                note="",
            ),
            keep_kill=bool(request.get("keep_kill")),
        )
    ledger_dir = Path(request["ledger"])
    run = str(request["run"])
    outcomes = []
    for item in request["scenarios"]:
        scenario, technique = str(item["id"]), str(item["technique"])
        record: dict[str, Any] = {"id": scenario, "ok": False, "error": None, "entry": None}

        def begin(
            step: int | None = None,
            *,
            _item: dict[str, Any] = item,
            _record: dict[str, Any] = record,
        ) -> dict[str, Any]:
            started = _now()
            with Ledger(ledger_dir, key=key, resume=True) as writer:
                entry = writer.append(
                    "drill.scenario",
                    run=run,
                    scenario=_item["id"],
                    technique=_item["technique"],
                    started=started,
                    attack=_item["attack"],
                    insider=key.identity,
                    step=step,
                )
                info = {
                    "writer": entry.writer,
                    "seq": entry.seq,
                    "time": entry.time,
                    "file": str(writer.path),
                }
            _record["entry"] = info
            return info

        ctx = AttackContext(scenario, technique, item.get("params", {}), begin)
        try:
            outcome = all_attacks()[scenario](ctx)
        except (AttackFailed, Error, OSError) as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # an attack bug must be reported, not kill the others
            record["error"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"
        else:
            record.update(ok=True, touched=outcome.touched, details=outcome.details)
        outcomes.append(record)
    return {
        "pid": os.getpid(),
        "uid": os.getuid(),
        "gid": os.getgid(),
        "host": socket.gethostname(),
        "identity": key.identity,
        "key": key.public.fingerprint,
        "scenarios": outcomes,
    }


def main(argv: list[str]) -> int:
    """Carry out the request in ``argv[0]``; write the outcome to its ``result`` file."""
    if len(argv) != 1:
        sys.stderr.write("usage: python -m trainwarden.drill._insider REQUEST.json\n")
        return 2
    request = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    result_path = Path(request["result"])
    try:
        result = _run(request)
        result["ok"] = True
    except Exception as exc:  # reported to the drill through the result file
        result = {
            "ok": False,
            "pid": os.getpid(),
            "uid": os.getuid(),
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(limit=8),
            "scenarios": [],
        }
    atomic_write(result_path, json.dumps(result, sort_keys=True), mode=0o644, what="result")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
