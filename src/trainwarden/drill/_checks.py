"""The checks the drill runs after a job, as an operator would.

Everything before and during a job is ``trainwarden run``'s (pre-flight, the guard in every
rank, signals and exits, signing checkpoints as they are written). After a run: the ledger is
sealed (the ops cron), and verification is what an operator would run: ``trainwarden verify``
with the ledger, ``trainwarden ledger verify --check-files``, and ``scan`` of the checkpoints
the job wrote.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainwarden.drill._job import utc_now
from trainwarden.drill._results import Person
from trainwarden.drill._sandbox import RunPaths, Sandbox
from trainwarden.errors import Error

__all__ = [
    "Observation",
    "Signed",
    "file_owner",
    "seal",
    "signed_checkpoints",
    "verify_checkpoints",
    "verify_ledger_issues",
]


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


@dataclass(frozen=True, slots=True)
class Signed:
    """A checkpoint the supervisor signed as the job wrote it (``checkpoint.signed``)."""

    path: str
    sig_path: str
    step: int | None
    digest: str


def signed_checkpoints(entries: Iterable[Any]) -> list[Signed]:
    """The checkpoints ``trainwarden run`` signed, by step (its ``checkpoint.signed`` entries).

    The supervisor signs each checkpoint with the platform key as it is completed, naming the
    previous one as parent; the last signature of a path is the one on disk.
    """
    found: dict[str, Signed] = {}
    for entry in entries:
        if entry.event != "checkpoint.signed":
            continue
        data = entry.data
        path, sig, digest = data.get("path"), data.get("signature"), data.get("digest")
        if not isinstance(path, str) or not isinstance(sig, str) or not isinstance(digest, str):
            continue
        step = data.get("step")
        found[path] = Signed(path, sig, step if isinstance(step, int) else None, digest)
    return sorted(found.values(), key=lambda s: (s.step is None, s.step or 0, s.path))


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
