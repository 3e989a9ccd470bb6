"""Read a run directory (``docs/events.md``) into a :class:`RunReport` for the forensic report.

Every part of a run directory can be missing, truncated, edited or hostile: each part is read
on its own, what cannot be read becomes a note in the report (and makes the verdict
``not-verified`` at best), and only a run directory that does not exist at all is an error.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainwarden._fs import open_regular, read_regular
from trainwarden.errors import ConfigError, InputError
from trainwarden.report._run_diff import collect_facts, compare_facts
from trainwarden.report._run_findings import (
    build_drill,
    build_findings,
    check_telemetry,
    headline_of,
    skipped_preflight,
    telemetry_segments,
    telemetry_sessions,
    unverified_updates,
    verdict_of,
)
from trainwarden.report._run_ledger import (
    LedgerView,
    as_int,
    as_text,
    build_checkpoints,
    build_egress,
    build_kills,
    build_preflight,
    build_timeline,
    ledger_status,
    select_run,
)
from trainwarden.report._run_model import RunInfo, RunReport
from trainwarden.report._run_provenance import read_provenance
from trainwarden.report._run_telemetry import read_telemetry

if TYPE_CHECKING:
    from trainwarden.keys import PublicKey
    from trainwarden.ledger import Entry, LedgerReport

__all__ = ["KeySource", "Progress", "load_keys", "read_run"]

#: A trusted public key: a loaded key, a ``.pub`` file, or a directory of ``*.pub`` files.
KeySource = Any
#: Progress callback: ``(stage, done, total)``.
Progress = Callable[[str, int, int], None]

MAX_RUN_JSON = 16 << 20
MAX_STACK = 64 << 10
MAX_STACK_FILES = 64
_PROVENANCE = "provenance.intoto.json"


def load_keys(sources: Iterable[KeySource]) -> tuple[list[PublicKey], list[str]]:
    """Load trusted public keys from keys, ``.pub`` files or directories of them.

    Returns:
        The keys and the paths they came from (for the commands the report shows).

    Raises:
        InputError: A key file cannot be read or parsed, or a directory holds no ``*.pub``.
    """
    from trainwarden.keys import PublicKey, load_public_key

    keys: list[PublicKey] = []
    paths: list[str] = []
    for source in sources:
        if isinstance(source, PublicKey):
            keys.append(source)
            continue
        path = Path(source)
        if path.is_dir():
            found = sorted(path.glob("*.pub"))
            if not found:
                raise InputError(f"key directory {path} holds no *.pub file")
            keys.extend(load_public_key(p) for p in found)
        else:
            keys.append(load_public_key(path))
        paths.append(str(path))
    return keys, paths


def read_run(
    run_dir: str | os.PathLike[str],
    *,
    keys: Iterable[KeySource] = (),
    seal_keys: Iterable[KeySource] = (),
    against: str | os.PathLike[str] | None = None,
    check_checkpoints: bool = True,
    bins: int = 200,
    workers: int = 1,
    progress: Progress | None = None,
    _width: int | None = None,
) -> RunReport:
    """Read everything the forensic report shows about the run in ``run_dir``.

    Args:
        run_dir: The run directory (``trainwarden run --run-dir``).
        keys: Public keys trusted to have written the ledger (and signed the provenance):
            keys, ``.pub`` files or directories of them. Without any, the ledger's chains
            are checked but not who signed them, and the verdict is at best
            ``not-verified``.
        seal_keys: Public keys trusted to seal the ledger.
        against: A clean run of the same job to compare with (differences only).
        check_checkpoints: Rehash the run's checkpoints and compare them with the digests
            signed into the ledger (turn off for speed; they are then "not checked").
        bins: Resolution of the plots (step bins).
        workers: Processes reading telemetry files in parallel.
        progress: Called with ``(stage, done, total)``.

    Returns:
        The report.

    Raises:
        InputError: ``run_dir`` (or ``against``) is not a directory, or a key cannot be read.
    """
    root = Path(run_dir)
    _check_dir(root, "run directory")
    if against is not None:
        _check_dir(Path(against), "clean run directory")
    _check_run_parts(root, "run directory")
    if against is not None:
        _check_run_parts(Path(against), "clean run directory")
    trusted, key_paths = load_keys(keys)
    sealers, seal_paths = load_keys(seal_keys)
    notes: list[str] = []
    unverified: list[str] = []

    def step(stage: str, done: int = 0, total: int = 0) -> None:
        if progress is not None:
            progress(stage, done, total)

    step("run.json")
    info = _read_run_info(root, notes)
    ledger_path = _ledger_path(root, info)
    step("ledger")
    report, ledger_error = _inspect(ledger_path, trusted, sealers)
    entries: Sequence[Entry] = report.entries if report is not None else ()
    run_id = info.run_id if info is not None else None
    if run_id is None and entries:
        run_id, note = select_run(entries, root)
        if note:
            notes.append(note)
    run_entries = tuple(e for e in entries if run_id is not None and e.run == run_id)
    if report is not None and not run_entries:
        unverified.append(f"the ledger has no entry about run {run_id!r}")
    integrity: dict[tuple[str, int], str] = {}
    if report is not None:
        for issue in report.issues:
            if (
                issue.writer is not None
                and issue.seq is not None
                and not issue.kind.startswith("file_")
            ):
                integrity.setdefault((issue.writer, issue.seq), issue.kind)
    view = LedgerView(
        entries=run_entries,
        integrity=integrity,
        signers_checked=report.signers_checked if report is not None else False,
        trusted=frozenset(k.fingerprint for k in trusted),
    )
    status = ledger_status(str(ledger_path), report, len(run_entries), ledger_error)
    if ledger_error is not None:
        unverified.append(f"the ledger could not be read ({ledger_error})")
    elif not status.signers_checked:
        unverified.append("the ledger's signers were not checked (no trusted --key given)")
    torn = [n for n in status.notes if n.kind == "in_progress"]
    if torn:
        # Said at the top, not only in the ledger section: a record was cut off (a crash, a
        # failed write, or an edit) and what it held was not read.
        unverified.append(
            f"{len(torn)} ledger file(s) end in an incomplete entry, which was not read: "
            + "; ".join(f"{n.file}: {n.message}" for n in torn[:3])
        )
    timeline, omitted = build_timeline(view)
    kills = build_kills(view)
    step("checkpoints")
    checkpoints = build_checkpoints(view, run_id, check=check_checkpoints, keys=trusted)
    unverified.extend(unverified_updates(view))
    unverified.extend(skipped_preflight(view))
    unchecked = [c for c in checkpoints if c.status in ("unchecked", "not-checked")]
    if unchecked:
        unverified.append(f"{len(unchecked)} checkpoint(s) not verified")
    egress = build_egress(view)
    preflight = build_preflight(view)

    def telemetry_progress(done: int, total: int) -> None:
        step("telemetry", done, total)

    step("telemetry")
    sessions = telemetry_sessions(view)
    telemetry = read_telemetry(
        root / "telemetry",
        bins=bins,
        width=_width,
        segments=telemetry_segments(sessions),
        workers=workers,
        progress=telemetry_progress,
    )
    notes.extend(telemetry.notes)
    telemetry_checks = check_telemetry(sessions, telemetry)
    not_attested = [rank for rank, s, _ in telemetry_checks if s in ("unattested", "unchecked")]
    if not_attested:
        unverified.append(
            f"the telemetry of {len(not_attested)} rank(s) is not attested by the guard"
        )
    step("provenance")
    ledger_digest = None
    for e in run_entries:
        if e.event == "provenance.signed" and isinstance(e.data.get("digest"), str):
            ledger_digest = e.data["digest"]
    provenance = read_provenance(
        root / _PROVENANCE,
        keys=trusted,
        key_paths=key_paths,
        ledger_digest=ledger_digest,
        check_outputs=check_checkpoints,
    )
    if provenance.error:
        notes.append(f"provenance statement: {provenance.error}")
    if provenance.verified is None:
        unverified.append(f"provenance {provenance.verification}")
    unreadable = [o for o in provenance.outputs if o[1] == "unreadable"]
    if unreadable:
        unverified.append(f"{len(unreadable)} output(s) of the provenance statement not checked")
    stacks = _read_stacks(root / "stacks", notes)
    supervisor_pid = None
    if info is not None:
        supervisor_pid = as_int(info.supervisor.get("pid"))
    if supervisor_pid is None:
        for e in run_entries:
            if e.event == "run.start":
                supervisor_pid = e.actor.pid
                break
    key_args = " ".join(f"--pubkey {shlex.quote(p)}" for p in key_paths) or "--pubkey WRITER.pub"
    findings = build_findings(
        view=view,
        ledger=status,
        ledger_path=str(ledger_path),
        run_id=run_id,
        kills=kills,
        checkpoints=checkpoints,
        telemetry=telemetry,
        telemetry_checks=telemetry_checks,
        provenance=provenance,
        supervisor_pid=supervisor_pid,
        key_args=key_args,
    )
    drill = build_drill(view, findings)
    verdict = verdict_of(findings, unverified)
    facts = collect_facts(run_entries, info, provenance)
    comparison = None
    if against is not None:
        step("clean run")
        clean = read_run(
            against,
            keys=trusted,
            seal_keys=sealers,
            check_checkpoints=False,
            bins=bins,
            workers=workers,
            _width=telemetry.width,
        )
        cmp_notes = []
        # Its checkpoints were not rehashed (not needed for a comparison): only what else
        # could not be verified about it is worth a note.
        doubts = [u for u in clean.unverified if "checkpoint" not in u]
        if clean.verdict in ("compromised", "suspicious"):
            cmp_notes.append(f"the clean run itself is {clean.verdict}: {clean.headline}")
        elif doubts:
            cmp_notes.append("the clean run could not be fully verified: " + "; ".join(doubts))
        comparison = compare_facts(
            mine=facts,
            clean=clean.facts,
            telemetry=telemetry,
            clean_telemetry=clean.telemetry,
            clean_dir=str(against),
            clean_run_id=clean.run_id,
            notes=cmp_notes,
        )
    reproduce = _reproduce(
        root, ledger_path, run_id, key_paths, seal_paths, checkpoints, provenance.path
    )
    return RunReport(
        run_dir=str(root),
        run_id=run_id,
        info=info,
        verdict=verdict,
        headline=headline_of(verdict, findings, unverified),
        findings=findings,
        timeline=timeline,
        timeline_omitted=omitted,
        kills=kills,
        checkpoints=checkpoints,
        egress=egress,
        preflight=preflight,
        drill=drill,
        ledger=status,
        telemetry=telemetry,
        telemetry_checks=telemetry_checks,
        provenance=provenance,
        comparison=comparison,
        stacks=stacks,
        notes=tuple(notes),
        reproduce=reproduce,
        generated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        unverified=tuple(unverified),
        facts=facts,
    )


def _check_dir(path: Path, what: str) -> None:
    try:
        if not path.exists():
            raise InputError(f"{what} {path} does not exist")
        if not path.is_dir():
            raise InputError(f"{what} {path} is not a directory")
        next(path.iterdir(), None)
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


#: What ``trainwarden run`` writes into every run directory (docs/events.md).
RUN_PARTS = ("run.json", "ledger", "telemetry", _PROVENANCE)


def _check_run_parts(path: Path, what: str) -> None:
    """Refuse a directory with none of a run's parts: nothing in it to report on.

    A run directory with some parts missing is reported (what is missing is said); one with
    none of them is a wrong path (an empty directory, a parent of the run directory), where
    a page saying "not verified" would only hide the mistake.
    """
    if not _has_run_parts(path):
        raise InputError(
            f"{what} {path} is not a run directory: it has none of "
            f"{', '.join(RUN_PARTS)} (what trainwarden run --run-dir writes)" + _runs_inside(path)
        )


def _has_run_parts(path: Path) -> bool:
    return any(os.path.lexists(path / part) for part in RUN_PARTS)


def _runs_inside(path: Path, shown: int = 3) -> str:
    """Name the run directories inside ``path`` (newest name first), for the error above.

    ``trainwarden-runs/`` is where every run goes by default, and the first thing a user
    passes to ``report``; naming what it holds makes the fix one copy away.
    """
    try:
        runs = sorted(
            (p for p in path.iterdir() if p.is_dir() and not p.is_symlink()),
            key=lambda p: p.name,
            reverse=True,
        )
        runs = [p for p in runs if _has_run_parts(p)]
    except OSError:
        return ""
    if not runs:
        return ""
    names = ", ".join(str(p) for p in runs[:shown]) + (", …" if len(runs) > shown else "")
    return f"; it holds {len(runs)} run director{'y' if len(runs) == 1 else 'ies'}: {names}"


def _read_run_info(root: Path, notes: list[str]) -> RunInfo | None:
    path = root / "run.json"
    if not path.exists() and not path.is_symlink():
        notes.append("run.json is missing: the run's command and timing are unknown")
        return None
    try:
        raw = read_regular(path, limit=MAX_RUN_JSON, what="run.json")
        data = json.loads(raw)
    except InputError as exc:
        notes.append(f"run.json could not be read: {exc.diagnostics()}")
        return None
    except (ValueError, RecursionError) as exc:
        notes.append(f"run.json is not JSON: {exc}")
        return None
    if not isinstance(data, dict):
        notes.append("run.json is not a JSON object")
        return None
    if data.get("schema_version") != 1:
        notes.append(
            f"run.json has schema_version {as_text(data.get('schema_version'), 20)!s}; "
            "this report reads version 1"
        )
    command = data.get("command")
    nodes = data.get("nodes")
    exit_raw = data.get("exit")
    exit_: dict[str, Any] = exit_raw if isinstance(exit_raw, dict) else {}
    supervisor_raw = data.get("supervisor")
    supervisor: dict[str, Any] = supervisor_raw if isinstance(supervisor_raw, dict) else {}
    run_id = data.get("run_id")
    return RunInfo(
        run_id=run_id if isinstance(run_id, str) and 0 < len(run_id) <= 256 else None,
        command=tuple(as_text(c, 2000) or "" for c in command[:512])
        if isinstance(command, list)
        else (),
        launcher=as_text(data.get("launcher"), 40),
        cwd=as_text(data.get("cwd")),
        ledger=as_text(data.get("ledger"), 4096),
        world_size=as_int(data.get("world_size")),
        nodes=tuple(as_text(n, 255) or "" for n in nodes[:4096]) if isinstance(nodes, list) else (),
        started=as_text(data.get("started"), 40),
        ended=as_text(data.get("ended"), 40),
        exit_status=as_int(exit_.get("status")),
        exit_signal=as_text(exit_.get("signal"), 32),
        supervisor={k: v for k, v in supervisor.items() if isinstance(v, (str, int))},
    )


def _ledger_path(root: Path, info: RunInfo | None) -> Path:
    if info is not None and info.ledger:
        path = Path(info.ledger)
        return path if path.is_absolute() else root / path
    return root / "ledger"


def _inspect(
    path: Path, trusted: Sequence[PublicKey], sealers: Sequence[PublicKey]
) -> tuple[LedgerReport | None, str | None]:
    from trainwarden.ledger import inspect_ledger

    if "\x00" in str(path):
        return None, "the ledger path in run.json is not a valid file name"
    if not path.exists():
        return None, f"{path} does not exist"
    try:
        report = inspect_ledger(
            path,
            keys=trusted,
            seal_keys=sealers,
            insecure_skip_signer_check=not trusted,
        )
    except (InputError, ConfigError) as exc:
        return None, exc.diagnostics()
    except ValueError as exc:  # a path with a NUL byte, from a hostile run.json
        return None, f"invalid ledger path: {exc}"
    return report, None


def _read_stacks(directory: Path, notes: list[str]) -> tuple[tuple[str, str], ...]:
    if not directory.is_dir() or directory.is_symlink():
        return ()
    try:
        names = sorted(p.name for p in directory.iterdir() if p.name.endswith(".txt"))
    except OSError as exc:
        notes.append(f"stacks directory cannot be listed: {exc.strerror or exc}")
        return ()
    if len(names) > MAX_STACK_FILES:
        notes.append(
            f"{len(names) - MAX_STACK_FILES} stack dump(s) beyond {MAX_STACK_FILES} not shown"
        )
    out = []
    for name in names[:MAX_STACK_FILES]:
        try:
            fd = open_regular(directory / name, what="stack dump")
        except InputError as exc:
            notes.append(exc.diagnostics())
            continue
        try:
            data = os.read(fd, MAX_STACK + 1)
        except OSError as exc:
            notes.append(f"stack dump {name} cannot be read: {exc.strerror or exc}")
            continue
        finally:
            os.close(fd)
        text = data[:MAX_STACK].decode("utf-8", "replace")
        if len(data) > MAX_STACK:
            text += f"\n… [cut at {MAX_STACK} bytes]"
        out.append((name, text))
    return tuple(out)


def _reproduce(
    root: Path,
    ledger: Path,
    run_id: str | None,
    key_paths: Sequence[str],
    seal_paths: Sequence[str],
    checkpoints: Sequence[Any],
    provenance: str,
) -> tuple[tuple[str, str], ...]:
    q = shlex.quote
    keys = " ".join(f"--pubkey {q(p)}" for p in key_paths) or "--pubkey WRITER.pub"
    seals = "".join(f" --seal-pubkey {q(p)}" for p in seal_paths)
    run = f" --run {q(run_id)}" if run_id else ""
    out = [
        (
            "Verify the ledger (chains, signatures, seals)",
            f"trainwarden ledger verify {q(str(ledger))} {keys}{seals}",
        ),
        (
            "Show the run's events with attribution",
            f"trainwarden ledger show {q(str(ledger))}{run}",
        ),
    ]
    out.extend(
        (
            f"Verify checkpoint {c.path}",
            f"trainwarden verify {q(c.path)} {keys} --ledger {q(str(ledger))}",
        )
        for c in list(checkpoints)[:3]
    )
    if len(checkpoints) > 3:
        out.append(
            (
                f"… and each of the other {len(checkpoints) - 3} checkpoints the same way",
                f"trainwarden ledger verify {q(str(ledger))} {keys} --check-files",
            )
        )
    out.append(
        ("Verify the provenance statement", f"trainwarden provenance verify {q(provenance)} {keys}")
    )
    out.append(
        (
            "Compare a telemetry file with what the guard attested",
            f"sha256sum {q(str(root / 'telemetry'))}/rank-*.jsonl; "
            f"trainwarden ledger show {q(str(ledger))}{run} --event guard.telemetry",
        )
    )
    out.append(
        (
            "Make this report again",
            f"trainwarden report {q(str(root))} -o report.html {keys}{seals}",
        )
    )
    return tuple(out)
