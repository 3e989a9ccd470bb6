"""``trainwarden run [options] -- CMD...``: pre-flight, launch, watch and attest a training job.

The job's own output goes to this process's stdout and stderr unchanged; trainwarden's
progress and summary go to stderr. The exit status is the job's (128 + N when a signal N
ended it, like a shell), or 2 when trainwarden refused to launch it or could not.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainwarden.cli._common import EXIT_ERROR, write_output
from trainwarden.errors import ConfigError, InputError

if TYPE_CHECKING:
    from trainwarden.keys import PrivateKey
    from trainwarden.supervise import RunResult

_EPILOG = """\
exit status: the job's (128+N if signal N ended it); 2 if the pre-flight policy refused
to launch it or trainwarden could not (a bad flag, an unreadable key, a read-only ledger).

Launchers: python SCRIPT|-m MOD|-c CODE, torchrun / python -m torch.distributed.run (one
node or --nnodes/--node-rank), a script with a python #! line; under Slurm run
`srun trainwarden run --run-id $SLURM_JOB_ID -- python train.py`. Checks for --on:
env-unsafe env-unknown env-error scan-unsafe scan-unknown scan-error access
access-incomplete code-dirty code-unknown; actions ignore, warn, refuse.
See docs/run.md."""


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``run``."""
    p = subparsers.add_parser(
        "run",
        help="pre-flight, launch, watch and attest a training job: run [options] -- CMD",
        description="Check the environment, input checkpoints, code and who can write them; "
        "run the job with protect(), the guard, an egress record and signal recording in "
        "every rank; record every exit, signal and hang; sign checkpoints as they are "
        "written; sign a provenance statement (in-toto + SLSA v1) at the end.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = p.add_argument_group("run directory and keys")
    where.add_argument(
        "--run-id",
        metavar="ID",
        help="run id (default: slurm-$SLURM_JOB_ID, else the time and a random suffix)",
    )
    where.add_argument(
        "--run-dir",
        metavar="DIR",
        type=Path,
        help="run directory (default: ./trainwarden-runs/RUN_ID)",
    )
    where.add_argument(
        "--ledger",
        metavar="DIR",
        type=Path,
        help="ledger directory, e.g. one shared by all nodes (default: RUN_DIR/ledger)",
    )
    where.add_argument(
        "--key",
        metavar="KEY",
        type=Path,
        help="the supervisor's private key (keep it unreadable by the job's "
        "user; default: an ephemeral key, public half in RUN_DIR/supervisor.pub)",
    )
    where.add_argument(
        "--key-fd",
        metavar="N",
        type=int,
        help="read the private key from file descriptor N (then closed)",
    )
    checks = p.add_argument_group("pre-flight")
    checks.add_argument(
        "--lock", metavar="FILE", type=Path, help="verify the environment against this env.lock"
    )
    checks.add_argument(
        "--lock-key", metavar="PUB", type=Path, help="public key the lock must be signed by"
    )
    checks.add_argument(
        "--env-check",
        choices=("fast", "full", "off"),
        default="fast",
        help="environment verification: fast (RECORD/lock digests, startup "
        "hooks), full (also recompile every pyc), off (default: fast)",
    )
    checks.add_argument(
        "--scan",
        metavar="PATH",
        type=Path,
        action="append",
        default=[],
        help="checkpoint or model file the job will read (repeatable; "
        "--resume and similar arguments are found too)",
    )
    checks.add_argument(
        "--input",
        metavar="PATH",
        type=Path,
        action="append",
        default=[],
        help="data manifest or config file to digest (repeatable)",
    )
    checks.add_argument(
        "--no-access-audit",
        action="store_true",
        help="do not audit who can write the environment, code and data",
    )
    checks.add_argument(
        "--trust-user",
        metavar="NAME",
        action="append",
        default=[],
        help="a user whose write access is expected (repeatable)",
    )
    checks.add_argument(
        "--trust-group",
        metavar="NAME",
        action="append",
        default=[],
        help="a group whose write access is expected (repeatable)",
    )
    checks.add_argument(
        "--policy",
        metavar="FILE",
        type=Path,
        help="policy file (TOML): [policy] CHECK = ACTION, [access] trusted-...",
    )
    checks.add_argument(
        "--on",
        metavar="CHECK=ACTION",
        action="append",
        default=[],
        help="override one policy check, e.g. --on access=refuse (repeatable)",
    )
    job = p.add_argument_group("the job")
    job.add_argument(
        "--launcher",
        choices=("auto", "python", "torchrun", "srun", "other"),
        default="auto",
        help="how the command starts ranks (default: auto)",
    )
    job.add_argument(
        "--checkpoints",
        metavar="DIR",
        type=Path,
        action="append",
        default=[],
        help="directory where the job writes checkpoints, signed as they are "
        "completed (repeatable; --ckpt-dir, --output_dir... are found too)",
    )
    job.add_argument(
        "--output",
        metavar="PATH",
        type=Path,
        action="append",
        default=[],
        help="another output of the job, recorded in the provenance (repeatable)",
    )
    job.add_argument(
        "--signatures",
        metavar="DIR",
        type=Path,
        help="write checkpoint signatures here (default: PATH.sig beside each)",
    )
    job.add_argument(
        "--hang-timeout",
        metavar="S",
        type=float,
        default=300.0,
        help="seconds without an optimizer step before a rank is recorded as "
        "hung, with its stacks (default: 300)",
    )
    job.add_argument(
        "--start-timeout",
        metavar="S",
        type=float,
        help="seconds a rank may take to its first step (imports, data, rendezvous) before it "
        "is recorded as hung (default: the larger of --hang-timeout and 600)",
    )
    job.add_argument(
        "--settle",
        metavar="S",
        type=float,
        default=2.0,
        help="seconds a checkpoint must stay unchanged to be complete (default: 2)",
    )
    job.add_argument("--no-guard", action="store_true", help="do not turn the guard on")
    job.add_argument(
        "--on-violation",
        choices=("halt", "warn"),
        default="halt",
        help="the guard's action on tampering (default: halt)",
    )
    job.add_argument(
        "--no-protect",
        action="store_true",
        help="do not enable protect() (safe loading) in the ranks",
    )
    job.add_argument(
        "--profile",
        metavar="NAME",
        action="append",
        default=[],
        help="allowlist profile for protect(), e.g. transformers (repeatable)",
    )
    job.add_argument(
        "--no-egress", action="store_true", help="do not record the endpoints the job contacts"
    )
    job.add_argument(
        "--seal",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="seal the ledger at the end (default: when it is the run's own)",
    )
    job.add_argument(
        "--orphan-grace",
        metavar="S",
        type=float,
        default=10.0,
        help="seconds processes left behind by the job may still run (default: 10)",
    )
    out = p.add_argument_group("output")
    out.add_argument(
        "--summary", metavar="FILE", type=Path, help="write a JSON summary of the run to FILE"
    )
    out.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    p.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="-- CMD ...",
        help="the job's command, after --",
    )
    p.set_defaults(handler=_run)


def _command(raw: list[str]) -> tuple[str, ...]:
    args = list(raw)
    if args and args[0] == "--":
        args = args[1:]
    if not args:
        raise ConfigError(
            "missing command: give the job after --, e.g. trainwarden run -- python train.py"
        )
    return tuple(args)


def _positive(value: float, flag: str) -> float:
    if not value > 0 or value != value:
        raise ConfigError(f"{flag} must be a positive number of seconds, not {value}")
    return value


def _load_key(path: Path | None, fd: int | None) -> PrivateKey | None:
    from trainwarden._fs import read_regular
    from trainwarden.keys import load_private_key

    if path is not None and fd is not None:
        raise ConfigError("give either --key or --key-fd, not both")
    if fd is not None:
        if fd < 3:
            raise ConfigError(f"--key-fd {fd}: descriptors 0-2 are the standard streams")
        try:
            os.fstat(fd)
        except OSError as exc:
            raise InputError(f"--key-fd {fd}: {exc.strerror or exc}") from exc
        try:
            return load_private_key(Path(f"/proc/self/fd/{fd}"))
        finally:
            # The job must not inherit it (posix_spawn would not pass it, but be explicit).
            os.close(fd)
    if path is None:
        return None
    head = read_regular(path, limit=64 * 1024, what="key").decode("utf-8", "replace")
    if "BEGIN PUBLIC KEY" in head or head.lstrip().startswith(
        ("ssh-ed25519 ", "ecdsa-", "ssh-rsa")
    ):
        raise InputError(
            f"{path} is a public key; --key needs the supervisor's private key "
            "(the public key is what verifiers are given)"
        )
    return load_private_key(path)


def _run(args: argparse.Namespace) -> int:
    from trainwarden.supervise import Policy, RunOptions, load_policy, run_job, set_non_dumpable

    command = _command(args.command)
    _positive(args.hang_timeout, "--hang-timeout")
    _positive(args.settle, "--settle")
    if args.start_timeout is not None:
        _positive(args.start_timeout, "--start-timeout")
    if args.orphan_grace < 0:
        raise ConfigError("--orphan-grace must not be negative")
    if args.lock_key is not None and args.lock is None:
        raise ConfigError("--lock-key needs --lock")
    policy = load_policy(args.policy) if args.policy is not None else Policy()
    policy = policy.with_overrides(args.on)
    if args.trust_user or args.trust_group:
        policy = Policy(
            policy.actions,
            (*policy.trusted_users, *args.trust_user),
            (*policy.trusted_groups, *args.trust_group),
            policy.source,
        )
    # Before the key is read: no process of the same user may read it from our memory.
    set_non_dumpable()
    key = _load_key(args.key, args.key_fd)
    progress = _Progress(enabled=not args.no_progress)
    options = RunOptions(
        command=command,
        key=key,
        run_id=args.run_id,
        run_dir=args.run_dir,
        ledger=args.ledger,
        lock=args.lock,
        lock_key=args.lock_key,
        scan=tuple(args.scan),
        checkpoints=tuple(args.checkpoints),
        inputs=tuple(args.input),
        outputs=tuple(args.output),
        hang_timeout=args.hang_timeout,
        start_timeout=args.start_timeout,
        settle=args.settle,
        env_check=args.env_check,
        access_check=not args.no_access_audit,
        policy=policy,
        launcher=args.launcher,
        guard=not args.no_guard,
        on_violation=args.on_violation,
        protect=not args.no_protect,
        protect_profiles=tuple(args.profile),
        egress=not args.no_egress,
        seal=args.seal,
        signatures=args.signatures,
        orphan_grace=args.orphan_grace,
    )
    try:
        result = run_job(options, progress=progress)
    finally:
        progress.close()
    if args.summary is not None:
        write_output(json.dumps(_summary(result), indent=2, sort_keys=True) + "\n", args.summary)
    _report(result, ephemeral_pub=result.run_dir / "supervisor.pub")
    if result.decision == "refuse":
        return EXIT_ERROR
    return result.exit_code


def _summary(result: RunResult) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "run_id": result.run_id,
        "run_dir": str(result.run_dir),
        "ledger": str(result.ledger),
        "decision": result.decision,
        "refusals": list(result.refusals),
        "warnings": list(result.warnings),
        "exit": None
        if result.exit is None
        else {
            "status": result.exit.status,
            "signal": result.exit.signal,
        },
        "exit_code": result.exit_code,
        "seconds": result.seconds,
        "provenance": str(result.provenance) if result.provenance else None,
        "checkpoints": [
            {"path": c.path, "digest": c.digest, "step": c.step, "parent": c.parent}
            for c in result.checkpoints
        ],
        "egress": [dict(e) for e in result.egress],
        "findings": dict(result.findings),
        "key": result.key,
        "ephemeral_key": result.ephemeral_key,
        "problems": list(result.problems),
    }


def _report(result: RunResult, *, ephemeral_pub: Path) -> None:
    err = sys.stderr
    if result.decision == "refuse":
        print("trainwarden: error: the pre-flight policy refused to launch the job:", file=err)
        for reason in result.refusals:
            print(f"  {reason}", file=err)
        print(f"trainwarden: recorded in {result.ledger} (run {result.run_id})", file=err)
        return
    ended = "?"
    if result.exit is not None:
        ended = (
            f"status {result.exit.status}"
            if result.exit.signal is None
            else f"signal {result.exit.signal}"
        )
    parts = [f"job ended with {ended} after {result.seconds:.1f} s"]
    parts.append(f"{len(result.checkpoints)} checkpoint(s) signed")
    if result.egress:
        parts.append(f"{len(result.egress)} egress endpoint(s)")
    if result.findings:
        parts.append("findings " + ", ".join(f"{k}: {v}" for k, v in result.findings.items()))
    print(f"trainwarden: run {result.run_id}: " + "; ".join(parts), file=err)
    if result.provenance is not None:
        print(f"trainwarden: provenance {result.provenance} (key {result.key})", file=err)
    if result.ephemeral_key:
        print(
            f"trainwarden: signed with an ephemeral key; keep {ephemeral_pub} somewhere the "
            "job cannot write, or pass --key",
            file=err,
        )
    for problem in result.problems:
        print(f"trainwarden: warning: {problem}", file=err)


class _Progress:
    """Pre-flight and run progress on stderr: rich on a terminal, plain lines otherwise."""

    _TRANSIENT = frozenset({"env", "scan", "inputs", "access"})

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty() and not os.environ.get("NO_COLOR")
        self._status: Any = None
        self._console: Any = None
        self._last_stage: str | None = None
        if self.tty:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False)

    def __call__(self, stage: str, message: str) -> None:
        if not self.enabled:
            return
        transient = stage in self._TRANSIENT
        if self.tty:
            if transient:
                if self._status is None:
                    self._status = self._console.status(message)
                    self._status.start()
                else:
                    self._status.update(message)
                return
            self._stop_status()
            from rich.markup import escape

            warn = message.startswith("! ")
            text = escape(message[2:] if warn else message)
            style = "yellow" if warn else "dim" if stage == "preflight" else "bold"
            self._console.print(f"[{style}]trainwarden[/] {stage}: {text}")
            return
        if transient and stage == self._last_stage:
            return  # one line per long step on a log, not one per file
        self._last_stage = stage
        print(f"trainwarden: {stage}: {message}", file=sys.stderr, flush=True)

    def _stop_status(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def close(self) -> None:
        """Stop any spinner."""
        self._stop_status()
