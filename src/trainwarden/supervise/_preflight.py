"""Pre-flight checks: environment, input checkpoints, code identity, inputs, access audit.

Each check returns a :class:`CheckResult`: the ledger event it records (``preflight.*``), the
policy check it falls under, and a one-line summary. The supervisor records every result,
then the decision; nothing is launched when the policy says refuse.
"""

# os.path: string paths from git and the command line.
# ruff: noqa: PTH100, PTH110, PTH112, PTH113, PTH114, PTH118

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainwarden.errors import Error, InputError
from trainwarden.supervise._access import AccessResult, Accounts, audit_access
from trainwarden.supervise._policy import Policy

__all__ = [
    "CheckResult",
    "CodeIdentity",
    "check_access",
    "check_code",
    "check_environment",
    "check_inputs",
    "check_scan",
    "decide",
    "file_digest",
]

Progress = Callable[[str, str], None]
_MAX_FINDINGS = 50
_UNTRACKED_LIMIT = 2000
_SECRET_IN_URL = re.compile(r"^([a-z][a-z0-9+.-]*://)[^/@]*@", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One pre-flight result.

    Attributes:
        event: The ledger event (``preflight.env``...).
        data: Its data.
        check: The policy check it falls under (``env-unsafe``...), or ``None`` when it
            passed.
        summary: One line for people.
    """

    event: str
    data: Mapping[str, Any]
    check: str | None
    summary: str


def _noop(stage: str, message: str) -> None:
    del stage, message


def file_digest(path: str | os.PathLike[str]) -> tuple[str, int]:
    """``(sha256:<hex>, size)`` of a regular file, read in 1 MiB blocks.

    Raises:
        InputError: It cannot be read.
    """
    from trainwarden._fs import open_regular

    fd = open_regular(path, what="input")
    digest = hashlib.sha256()
    size = 0
    try:
        while True:
            block = os.read(fd, 1 << 20)
            if not block:
                break
            digest.update(block)
            size += len(block)
    except OSError as exc:
        raise InputError(f"cannot read input {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    return "sha256:" + digest.hexdigest(), size


# -- environment --------------------------------------------------------------------------


def check_environment(
    site_dirs: Sequence[str] | None,
    *,
    lock: str | None,
    lock_key: str | None,
    mode: str,
    progress: Progress = _noop,
) -> CheckResult:
    """``env verify`` of the job's site directories (against the signed lock when given).

    ``mode``: ``full`` (with the pyc comparison), ``fast`` (RECORD and lock digests, startup
    hooks; no pyc compile) or ``off`` (recorded as skipped).
    """
    if mode == "off":
        return CheckResult(
            "preflight.env",
            {"verdict": "skipped", "summary": {}, "lock": None, "findings": [], "mode": mode},
            None,
            "environment not verified (--env-check off)",
        )
    from trainwarden.env import read_lock, verify_environment
    from trainwarden.keys import load_public_key

    lock_info = None
    try:
        env_lock = None
        if lock is not None:
            key = load_public_key(Path(lock_key)) if lock_key is not None else None
            env_lock = read_lock(Path(lock), key=key)
            lock_info = {
                "path": str(lock),
                "digest": file_digest(lock)[0],
                "signed": key is not None,
            }
        progress("env", "verifying the environment" + (" against the lock" if lock else ""))
        report = verify_environment(
            None if env_lock is not None else site_dirs,
            lock=env_lock,
            check_pyc=mode == "full",
            progress=lambda message: progress("env", message),
        )
    except Error as exc:
        return CheckResult(
            "preflight.env",
            {
                "verdict": "error",
                "summary": {},
                "lock": lock_info,
                "findings": [],
                "error": exc.diagnostics(),
                "mode": mode,
            },
            "env-error",
            f"environment could not be verified: {exc.diagnostics()}",
        )
    verdict = report.verdict.value
    findings = [f.to_dict() for f in report.findings if f.verdict.value != "safe"]
    data = {
        "verdict": verdict,
        "summary": report.summary(),
        "lock": lock_info,
        "findings": findings[:_MAX_FINDINGS],
        "mode": mode,
        "site_dirs": list(site_dirs or ()),
    }
    check = {"unsafe": "env-unsafe", "unknown": "env-unknown", "error": "env-error"}.get(verdict)
    first = findings[0]["message"] if findings else ""
    summary = f"environment {verdict}" + (f": {first}" if first else "")
    if len(findings) > 1:
        summary += f" (and {len(findings) - 1} more)"
    return CheckResult("preflight.env", data, check, summary)


# -- scan ---------------------------------------------------------------------------------


def check_scan(paths: Sequence[str], *, progress: Progress = _noop) -> CheckResult | None:
    """Scan the checkpoints and model files the job will read (``None`` when there are none)."""
    existing = [p for p in paths if os.path.lexists(p)]
    if not existing:
        return None
    from trainwarden.scan import scan_path

    progress("scan", f"scanning {len(existing)} input checkpoint path(s)")
    try:
        report = scan_path(*existing, progress=lambda path: progress("scan", f"scanned {path}"))
    except Error as exc:
        return CheckResult(
            "preflight.scan",
            {
                "paths": existing,
                "verdict": "error",
                "files": [],
                "findings": [],
                "error": exc.diagnostics(),
            },
            "scan-error",
            f"input checkpoints could not be scanned: {exc.diagnostics()}",
        )
    verdict = report.verdict.value
    files = [{"path": f.path, "verdict": f.verdict.value, "sha256": f.sha256} for f in report.files]
    findings = [f.to_dict() for f in report.findings if f.verdict.value != "safe"]
    data = {
        "paths": existing,
        "verdict": verdict,
        "files": files[:1000],
        "findings": findings[:_MAX_FINDINGS],
        "inputs": [_input_digest(p, progress) for p in existing],
    }
    check = {"unsafe": "scan-unsafe", "unknown": "scan-unknown", "error": "scan-error"}.get(verdict)
    bad = [f for f in report.files if f.verdict.value != "safe"]
    summary = f"{len(report.files)} input file(s) scanned: {verdict}"
    if bad:
        summary += f" ({bad[0].path}: {bad[0].verdict.value}"
        reason = next((x.message for x in bad[0].findings if x.verdict.value != "safe"), None)
        summary += f": {reason})" if reason else ")"
    return CheckResult("preflight.scan", data, check, summary)


def _input_digest(path: str, progress: Progress) -> dict[str, Any]:
    """The ``sign`` digest of an input checkpoint.

    The same value the run that wrote it recorded as its output, so the provenance links a
    resumed run to the run before.
    """
    from trainwarden.sign import checkpoint_digest

    progress("scan", f"digesting {path}")
    try:
        return {"path": path, "digest": checkpoint_digest(Path(path))}
    except Error as exc:
        return {"path": path, "digest": None, "error": exc.diagnostics()}


# -- code ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CodeIdentity:
    """The code the job runs: the git commit and what differs from it."""

    root: str
    commit: str | None
    dirty: bool
    dirty_digest: str | None
    untracked: int
    remote: str | None
    script: Mapping[str, Any] | None = None
    error: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The ``preflight.code`` data."""
        return {
            "root": self.root,
            "commit": self.commit,
            "dirty": self.dirty,
            "dirty_digest": self.dirty_digest,
            "untracked": self.untracked,
            "remote": self.remote,
            "script": dict(self.script) if self.script else None,
            "error": self.error,
        }


def _git_env() -> dict[str, str]:
    # The user's GIT_* variables could point git at another repository or config.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_TERMINAL_PROMPT="0", GIT_OPTIONAL_LOCKS="0", GIT_PAGER="cat", LC_ALL="C")
    return env


def _git(args: Sequence[str], cwd: str, *, hardening: Sequence[str] = ()) -> bytes | None:
    # A repository's own config can name programs git runs while reading it (fsmonitor,
    # external diff, textconv, clean filters): switch every one we know of off.
    base = ["git", "-c", "core.fsmonitor=false", "-c", "core.hooksPath=/dev/null", *hardening]
    try:
        proc = subprocess.run(  # noqa: S603 - fixed git argv
            [*base, *args], cwd=cwd, env=_git_env(), capture_output=True, timeout=120, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def _filter_overrides(root: str) -> list[str]:
    out = _git(["config", "--get-regexp", r"^filter\..*\.(clean|process)$"], root) or b""
    names = set()
    for line in out.decode("utf-8", "replace").splitlines():
        key = line.split(" ", 1)[0]
        parts = key.split(".")
        if len(parts) >= 3:
            names.add(".".join(parts[1:-1]))
    flags: list[str] = []
    for name in sorted(names):
        flags += ["-c", f"filter.{name}.clean=cat", "-c", f"filter.{name}.process="]
    return flags


def check_code(root: str, *, script: str | None = None) -> CheckResult:
    """Code identity: git commit, a digest of uncommitted changes, untracked files."""
    script_info = None
    if script is not None and os.path.isfile(script):
        try:
            script_sha, size = file_digest(script)
            script_info = {"path": os.path.abspath(script), "sha256": script_sha, "size": size}
        except InputError:
            script_info = None
    top = _git(["rev-parse", "--show-toplevel"], root)
    if top is None:
        identity = CodeIdentity(
            os.path.abspath(root),
            None,
            False,
            None,
            0,
            None,
            script_info,
            "not a git repository (or git is not installed)",
        )
        return CheckResult(
            "preflight.code",
            identity.to_dict(),
            "code-unknown",
            f"code in {identity.root} is not under git: only the script's digest is recorded",
        )
    toplevel = top.decode("utf-8", "replace").strip()
    hardening = _filter_overrides(toplevel)
    head = _git(["rev-parse", "--verify", "HEAD"], toplevel)
    commit = head.decode().strip() if head else None
    status = (
        _git(
            ["status", "--porcelain=v1", "-z", "--untracked-files=normal"],
            toplevel,
            hardening=hardening,
        )
        or b""
    )
    entries = [e for e in status.split(b"\0") if e]
    untracked = [e[3:].decode("utf-8", "surrogateescape") for e in entries if e.startswith(b"??")]
    modified = [e for e in entries if not e.startswith(b"??") and len(e) > 3 and e[2:3] == b" "]
    dirty = bool(modified)
    digest = None
    if dirty or untracked:
        h = hashlib.sha256()
        if commit is not None:
            diff = _git(
                ["diff", "HEAD", "--binary", "--no-ext-diff", "--no-textconv", "--no-color"],
                toplevel,
                hardening=hardening,
            )
            h.update(diff or b"")
        for name in sorted(untracked)[:_UNTRACKED_LIMIT]:
            h.update(b"\0untracked\0" + name.encode("utf-8", "surrogateescape") + b"\0")
            path = os.path.join(toplevel, name)
            if os.path.isfile(path) and not os.path.islink(path):
                try:
                    h.update(file_digest(path)[0].encode())
                except InputError:
                    h.update(b"unreadable")
        digest = "sha256:" + h.hexdigest()
    remote_raw = _git(["config", "--get", "remote.origin.url"], toplevel)
    remote = None
    if remote_raw:
        # https://user:token@host/repo: never record a credential.
        remote = _SECRET_IN_URL.sub(r"\1", remote_raw.decode("utf-8", "replace").strip())
    identity = CodeIdentity(toplevel, commit, dirty, digest, len(untracked), remote, script_info)
    state = "clean" if not dirty else "with uncommitted changes"
    summary = f"code {toplevel} at {commit[:12] if commit else 'no commit'} ({state}"
    summary += f", {len(untracked)} untracked)" if untracked else ")"
    return CheckResult(
        "preflight.code", identity.to_dict(), "code-dirty" if dirty else None, summary
    )


# -- inputs -------------------------------------------------------------------------------


def check_inputs(paths: Iterable[str], *, kind: str, progress: Progress = _noop) -> CheckResult:
    """Digests of data manifests or config files (directories: the ``sign`` tree digest).

    Raises:
        InputError: An input is missing or unreadable (it was named explicitly).
    """
    files: list[dict[str, Any]] = []
    for path in paths:
        progress("inputs", f"digesting {path}")
        if os.path.isdir(path):
            from trainwarden.sign import checkpoint_digest

            files.append(
                {
                    "path": os.path.abspath(path),
                    "sha256": checkpoint_digest(Path(path)),
                    "size": None,
                    "directory": True,
                }
            )
            continue
        if not os.path.exists(path):
            raise InputError(f"input {path} does not exist")
        digest, size = file_digest(path)
        files.append({"path": os.path.abspath(path), "sha256": digest, "size": size})
    summary = f"{len(files)} {kind} file(s) digested"
    return CheckResult("preflight.inputs", {"files": files, "kind": kind}, None, summary)


# -- access -------------------------------------------------------------------------------


def check_access(
    roots: Sequence[tuple[str, str, bool]],
    *,
    policy: Policy,
    accounts: Accounts | None = None,
    owner: int | None = None,
    progress: Progress = _noop,
) -> list[CheckResult]:
    """Audit each ``(path, role, recursive)``; below each root, the other roots are skipped."""
    results: list[CheckResult] = []
    all_roots = [os.path.abspath(r[0]) for r in roots]
    for path, role, recursive in roots:
        here = os.path.abspath(path)
        skip = [r for r in all_roots if r != here and r.startswith(here + os.sep)]
        progress("access", f"auditing who can write the {role} {here}")
        result = audit_access(
            here,
            role=role,
            owner=owner,
            accounts=accounts,
            trusted_users=policy.trusted_users,
            trusted_groups=policy.trusted_groups,
            recursive=recursive,
            skip=skip,
            sticky_create_ok=role == "ledger",
        )
        results.append(_access_result(result, policy))
    return results


def _access_result(result: AccessResult, policy: Policy) -> CheckResult:
    data = result.to_dict()
    if result.writers:
        check: str | None = "access"
    elif not result.complete:
        check = "access-incomplete"
    else:
        check = None
    action = policy.action(check) if check else "ignore"
    data["verdict"] = {"ignore": "ok", "warn": "warn", "refuse": "refuse"}[action]
    if result.writers:
        names = "; ".join(w.describe() for w in result.writers[:3])
        more = f" (and {len(result.writers) - 3} more)" if len(result.writers) > 3 else ""
        summary = f"{result.role} {result.path} can be written by {names}{more}"
    elif not result.complete:
        summary = f"{result.role} {result.path} not fully audited: {result.errors[0]}"
    else:
        summary = f"{result.role} {result.path}: only its owner can write it"
    return CheckResult("preflight.access", data, check, summary)


# -- decision -----------------------------------------------------------------------------


def decide(results: Iterable[CheckResult], policy: Policy) -> tuple[str, list[str], list[str]]:
    """``(decision, refusals, warnings)`` for the results under ``policy``."""
    refusals: list[str] = []
    warnings: list[str] = []
    for result in results:
        if result.check is None:
            continue
        action = policy.action(result.check)
        if action == "refuse":
            refusals.append(f"{result.check}: {result.summary}")
        elif action == "warn":
            warnings.append(f"{result.check}: {result.summary}")
    return ("refuse" if refusals else "proceed"), refusals, warnings
