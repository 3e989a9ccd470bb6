"""The run directory's record of what was run: ``run.json`` (docs/events.md)."""

# os.path: normalised absolute paths without resolving symlinks.
# ruff: noqa: PTH100

from __future__ import annotations

import datetime
import json
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainwarden._canonical import canonical_json
from trainwarden._fs import atomic_write, read_regular
from trainwarden.errors import ConfigError, InputError

__all__ = [
    "RUN_ID",
    "SCHEMA_VERSION",
    "check_run_id",
    "create_run_record",
    "new_run_id",
    "utc_now",
    "write_run_record",
]

SCHEMA_VERSION = 1
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def utc_now() -> str:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (the ledger's time format)."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_run_id(environ: Mapping[str, str]) -> str:
    """A run id: ``slurm-<job>[-<step>]`` under Slurm (every task agrees), else time + random."""
    job = environ.get("SLURM_JOB_ID")
    if job and RUN_ID.fullmatch(job):
        step = environ.get("SLURM_STEP_ID")
        return f"slurm-{job}" + (f"-{step}" if step and step.isdigit() else "")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{secrets.token_hex(3)}"


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is a valid run id (it names directories and ledger runs).

    Raises:
        ConfigError: It is not ``[A-Za-z0-9][A-Za-z0-9._-]{0,127}``.
    """
    if not RUN_ID.fullmatch(run_id):
        raise ConfigError(
            f"invalid run id {run_id!r}: use letters, digits, '.', '_' and '-' "
            "(at most 128, starting with a letter or digit)"
        )
    return run_id


def create_run_record(path: Path, record: Mapping[str, Any], *, shared: bool) -> bool:
    """Create ``run.json``; ``False`` when another node of the same run created it first.

    Raises:
        ConfigError: The file exists for another run, or for this run on a single node (the
            evidence of a run is never overwritten).
        InputError: It cannot be written.
    """
    text = canonical_json(dict(record), what="run.json") + "\n"
    try:
        atomic_write(path, text, mode=0o644, exclusive=True, what="run record")
    except InputError:
        if not path.exists():
            raise
        try:
            existing = json.loads(read_regular(path, limit=1 << 20, what="run record"))
        except (InputError, ValueError) as exc:
            raise ConfigError(
                f"{path} exists and is not a run record; use another --run-dir"
            ) from exc
        if not isinstance(existing, dict) or existing.get("run_id") != record.get("run_id"):
            other = existing.get("run_id") if isinstance(existing, dict) else None
            raise ConfigError(
                f"{path.parent} already holds run {other!r}; use another --run-dir or --run-id"
            ) from None
        if not shared:
            raise ConfigError(
                f"run {record.get('run_id')!r} already ran in {path.parent}; a run id is used "
                "once (multi-node runs share it: pass --nnodes/--node-rank to torchrun)"
            ) from None
        return False
    return True


def write_run_record(path: Path, record: Mapping[str, Any]) -> None:
    """Rewrite ``run.json`` atomically (at the end of the run).

    Raises:
        InputError: It cannot be written.
    """
    atomic_write(
        path, canonical_json(dict(record), what="run.json") + "\n", mode=0o644, what="run record"
    )


def relative_to(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` when inside it, else absolute."""
    try:
        return str(Path(os.path.abspath(path)).relative_to(os.path.abspath(base)))
    except ValueError:
        return str(Path(os.path.abspath(path)))
