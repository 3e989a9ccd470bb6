"""The checks the drill runs itself: the pre-flight before each job, and verifications after.

Pre-flight: until ``trainwarden run`` launches the drill's jobs, the drill does the two
pre-flight checks that exist today the way the supervisor will, and records them in the run's
ledger with the platform key as ``preflight.env`` and ``preflight.scan`` (the data of
docs/events.md). ``env verify`` runs as its own process against the sandbox's site-packages
and the signed lock, so it judges the environment the job imports, not the drill's own.

After a run: checkpoints are signed as the colleague with lineage in the run's ledger, the
ledger is sealed (the ops cron), and verification is what an operator would run:
``trainwarden verify`` with the ledger, ``trainwarden ledger verify --check-files``, and
``scan`` of the checkpoints the job wrote.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainwarden.drill._job import utc_now
from trainwarden.drill._results import Person
from trainwarden.drill._sandbox import RunPaths, Sandbox
from trainwarden.errors import Error, InputError

__all__ = [
    "Observation",
    "file_owner",
    "preflight_env",
    "preflight_scan",
    "seal",
    "sign_checkpoints",
    "verify_checkpoints",
    "verify_ledger_issues",
]

_MAX_FINDINGS = 50


@dataclass(frozen=True, slots=True)
class Observation:
    """Something a check reported, before it is matched to a scenario.

    Attributes:
        check: The check's name in the table (``preflight.env``, ``trainwarden verify``...).
        rule_id: Its rule, when it has one.
        message: What it said.
        time: When (UTC).
        source: ``ledger`` (read from a ledger event) or ``check`` (run by the drill).
        path: The file concerned, when any.
        facts: Further fields the matching uses (``writer``, ``seq``, ``pid``, ``signal``,
            ``technique``, ``step``, ``rank``, ``verdict``...).
        evidence: Whom it points at, when it does.
    """

    check: str
    rule_id: str | None
    message: str
    time: str
    source: str
    path: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    evidence: Person | None = None


def file_owner(path: str | Path, *, via: str = "file owner") -> Person | None:
    """The owner of ``path`` (``None`` when it is gone)."""
    import os

    from trainwarden._system import user_name

    try:
        uid = os.lstat(path).st_uid
    except OSError:
        return None
    return Person(via=via, uid=uid, user=user_name(uid))


def preflight_env(sandbox: Sandbox, run: RunPaths, ledger: Any) -> dict[str, Any]:
    """``env verify`` of the sandbox against its signed lock; record ``preflight.env``.

    Raises:
        InputError: ``env verify`` could not run (exit 2) or gave no report.
    """
    import hashlib

    cmd = [
        sys.executable,
        "-m",
        "trainwarden",
        "env",
        "verify",
        "--path",
        str(sandbox.site),
        "--lock",
        str(sandbox.lock),
        "--key",
        str(sandbox.keys["platform"].public),
        # The lock records every pyc, so a changed pyc still shows; comparing each pyc
        # with a fresh compile of its source (tens of seconds for torch) adds nothing here.
        "--skip-pyc",
        "--format",
        "json",
    ]
    try:
        proc = subprocess.run(  # noqa: S603  # our own CLI, fixed arguments
            cmd, capture_output=True, text=True, timeout=600, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise InputError(f"env verify could not run: {exc}") from exc
    if proc.returncode not in (0, 1):
        raise InputError(f"env verify failed (exit {proc.returncode}): {proc.stderr.strip()}")
    try:
        report = json.loads(proc.stdout)
    except ValueError as exc:
        raise InputError(f"env verify gave no JSON report: {exc}") from exc
    # As in the JSON report (docs/events.md): rule_id, severity, message, evidence,
    # location, verdict; only what is not safe, the first 50.
    findings = [
        f
        for file in report.get("files", [])
        for f in file.get("findings", [])
        if f.get("verdict") != "safe"
    ]
    verdicts = [file.get("verdict", "error") for file in report.get("files", [])]
    verdict = _worst(verdicts)
    lock_bytes = sandbox.lock.read_bytes()
    data = {
        "verdict": verdict,
        "summary": report.get("summary", {}),
        "lock": {
            "path": str(sandbox.lock),
            "digest": "sha256:" + hashlib.sha256(lock_bytes).hexdigest(),
        },
        "findings": findings[:_MAX_FINDINGS],
    }
    ledger.append("preflight.env", run=run.run_id, **data)
    return data


def preflight_scan(paths: Sequence[Path], run: RunPaths, ledger: Any) -> dict[str, Any]:
    """``scan`` the job's inputs (checkpoints it will load); record ``preflight.scan``."""
    from trainwarden.scan import scan_path

    report = scan_path(*paths)
    files = [{"path": f.path, "verdict": f.verdict.value, "sha256": f.sha256} for f in report.files]
    findings = [
        finding.to_dict()
        for file in report.files
        for finding in file.findings
        if finding.verdict.value != "safe"
    ]
    data = {
        "paths": [str(p) for p in paths],
        "verdict": _worst(str(f["verdict"]) for f in files),
        "files": files,
        "findings": findings[:_MAX_FINDINGS],
    }
    ledger.append("preflight.scan", run=run.run_id, **data)
    return data


def _worst(verdicts: Iterable[str]) -> str:
    order = {"safe": 0, "unknown": 1, "unsafe": 2, "error": 3}
    return max(verdicts, key=lambda v: order.get(v, 3), default="safe")


def sign_checkpoints(sandbox: Sandbox, run: RunPaths) -> list[Any]:
    """Sign the run's checkpoints as the colleague, oldest first, each naming its parent."""
    from trainwarden.keys import load_private_key
    from trainwarden.sign import sign_path

    key = load_private_key(sandbox.keys["victim"].private)
    signatures = []
    parent = None
    for path in sorted(run.ckpt.glob("ckpt-*.pt")):
        step = int(path.stem.split("-", 1)[1])
        signature = sign_path(
            path, key, run=run.run_id, step=step, parent=parent, ledger=run.ledger, workers=1
        )
        # The colleague's files are shared with the team the way the directory is.
        sandbox.share(path, mode=0o644)
        sandbox.share(signature.sig_path, mode=0o644)
        signatures.append(signature)
        parent = signature.digest
    return signatures


def seal(sandbox: Sandbox, run: RunPaths) -> None:
    """Seal the run's ledger with the ops key (what a cron job does on a real cluster).

    Raises:
        VerificationError: The ledger did not verify, so it was not sealed.
    """
    from trainwarden.keys import load_private_key
    from trainwarden.ledger import seal_ledger

    seal_ledger(
        run.ledger,
        key=load_private_key(sandbox.keys["seal"].private),
        writer_keys=sandbox.public_keys(),  # type: ignore[arg-type]
    )


def verify_checkpoints(sandbox: Sandbox, run: RunPaths, paths: Sequence[Path]) -> list[Observation]:
    """``trainwarden verify --ledger`` of each checkpoint the ledger recorded for the run."""
    from trainwarden.sign import SignatureMismatch, verify_path

    signers = sandbox.public_keys("victim", "platform")
    writers = sandbox.public_keys()
    out: list[Observation] = []
    for path in paths:
        if not path.exists():
            out.append(
                Observation(
                    "trainwarden verify",
                    "verify.missing",
                    f"{path} is gone: nothing to verify",
                    utc_now(),
                    "check",
                    path=str(path),
                )
            )
            continue
        try:
            verify_path(
                path,
                signers,  # type: ignore[arg-type]
                ledger=run.ledger,
                ledger_keys=writers,  # type: ignore[arg-type]
                run=run.run_id,
                workers=1,
            )
        except SignatureMismatch as exc:
            now = utc_now()
            for finding in exc.report.findings:
                if finding.verdict.value == "safe":
                    continue
                target = str(path)
                if finding.rule_id == "lineage.deleted" and finding.evidence:
                    target = finding.evidence  # the deleted checkpoint, not the one verified
                out.append(
                    Observation(
                        "trainwarden verify",
                        finding.rule_id,
                        finding.message,
                        now,
                        "check",
                        path=target,
                        facts={"verified": str(path)},
                        evidence=file_owner(target),
                    )
                )
        except Error as exc:
            out.append(
                Observation(
                    "trainwarden verify",
                    "verify.error",
                    exc.diagnostics(),
                    utc_now(),
                    "check",
                    path=str(path),
                )
            )
    return out


def verify_ledger_issues(
    sandbox: Sandbox, run: RunPaths, *, check_files: bool
) -> tuple[list[Observation], Any]:
    """``trainwarden ledger verify`` of the run's ledger (writer keys, seal key, files)."""
    from trainwarden.ledger import inspect_ledger

    report = inspect_ledger(
        run.ledger,
        keys=sandbox.public_keys(),  # type: ignore[arg-type]
        seal_keys=sandbox.public_keys("seal"),  # type: ignore[arg-type]
        check_files=check_files,
    )
    now = utc_now()
    check = "ledger verify --check-files" if check_files else "ledger verify"
    out = [
        Observation(
            "ledger verify",
            f"ledger.{issue.kind}",
            issue.describe(),
            now,
            "check",
            path=issue.file,
            facts={"kind": issue.kind, "writer": issue.writer, "seq": issue.seq},
            evidence=file_owner(issue.file, via="ledger file owner") if issue.file else None,
        )
        for issue in report.issues
        if not issue.kind.startswith("file_")
    ]
    out.extend(
        Observation(
            check,
            f"ledger.file_{f.status}",
            f"{f.path}: {f.status} (recorded {f.digest} by {f.event}"
            + (f", now {f.actual})" if f.actual else ")"),
            now,
            "check",
            path=f.path,
            facts={"writer": f.writer, "seq": f.seq},
            evidence=file_owner(f.path),
        )
        for f in report.files
        if f.status != "ok"
    )
    return out, report
