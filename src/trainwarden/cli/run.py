"""``trainwarden run [options] -- CMD...``: pre-flight, launch, watch and attest a training job.

The job's own output goes to this process's stdout and stderr unchanged; trainwarden's
progress and summary go to stderr. The exit status is the job's (128 + N when a signal N
ended it, like a shell), or 2 when trainwarden refused to launch it or could not.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainwarden.cli._common import (
    Progress,
    add_key_argument,
    add_progress_argument,
    check_output,
    dumps,
    load_private_key,
    load_private_key_fd,
    load_public_keys,
    path_arg,
    shown,
    write_output,
)
from trainwarden.errors import ConfigError

if TYPE_CHECKING:
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
        type=path_arg,
        help="run directory (default: ./trainwarden-runs/RUN_ID)",
    )
    where.add_argument(
        "--ledger",
        metavar="DIR",
        type=path_arg,
        help="ledger directory, e.g. one shared by all nodes (default: RUN_DIR/ledger)",
    )
    add_key_argument(
        where,
        "the supervisor's private key (keep it unreadable by the job's "
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
        "--lock", metavar="FILE", type=path_arg, help="verify the environment against this env.lock"
    )
    checks.add_argument(
        "--lock-pubkey",
        metavar="PUB",
        type=path_arg,
        help="public key the lock must be signed by",
    )
    # The older spelling (`--key...` names private keys everywhere else).
    checks.add_argument(
        "--lock-key", dest="lock_pubkey_alias", type=path_arg, help=argparse.SUPPRESS
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
        type=path_arg,
        action="append",
        default=[],
        help="checkpoint or model file the job will read (repeatable; "
        "--resume and similar arguments are found too)",
    )
    checks.add_argument(
        "--input",
        metavar="PATH",
        type=path_arg,
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
        type=path_arg,
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
        type=path_arg,
        action="append",
        default=[],
        help="directory where the job writes checkpoints, signed as they are "
        "completed (repeatable; --ckpt-dir, --output_dir... are found too)",
    )
    job.add_argument(
        "--job-output",
        metavar="PATH",
        type=path_arg,
        action="append",
        default=[],
        help="another file the job writes, recorded in the provenance (repeatable)",
    )
    # The older spelling: `--output` is where a command writes its report everywhere else.
    job.add_argument(
        "--output", dest="job_output", type=path_arg, action="append", help=argparse.SUPPRESS
    )
    job.add_argument(
        "--signatures",
        metavar="DIR",
        type=path_arg,
        help="write checkpoint signatures here (default: PATH.sig beside each)",
    )
    job.add_argument(
        "--hang-timeout",
        metavar="S",
        type=_seconds,
        default=300.0,
        help="seconds without an optimizer step before a rank is recorded as "
        "hung, with its stacks (default: 300)",
    )
    job.add_argument(
        "--start-timeout",
        metavar="S",
        type=_seconds,
        help="seconds a rank may take to its first step (imports, data, rendezvous) before it "
        "is recorded as hung (default: the larger of --hang-timeout and 600)",
    )
    job.add_argument(
        "--settle",
        metavar="S",
        type=_seconds,
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
        type=_grace,
        default=10.0,
        help="seconds processes left behind by the job may still run (default: 10)",
    )
    out = p.add_argument_group("output")
    out.add_argument(
        "--summary", metavar="FILE", type=path_arg, help="write a JSON summary of the run to FILE"
    )
    add_progress_argument(out)
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


def _seconds(text: str) -> float:
    """An argparse type: a positive, finite number of seconds."""
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def _grace(text: str) -> float:
    """An argparse type: a number of seconds, 0 or more."""
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {text}")
    return value


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text}")
    return value


def _run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from trainwarden.supervise import Policy, RunOptions, load_policy, run_job, set_non_dumpable

    command = _command(args.command)
    if args.key is not None and args.key_fd is not None:
        raise ConfigError("give either --key or --key-fd, not both")
    lock_pubkey = args.lock_pubkey or args.lock_pubkey_alias
    if args.lock_pubkey and args.lock_pubkey_alias and args.lock_pubkey != args.lock_pubkey_alias:
        raise ConfigError("give the lock's public key once, with --lock-pubkey")
    if lock_pubkey is not None and args.lock is None:
        raise ConfigError("--lock-pubkey needs --lock")
    check_output(args.summary, [args.key, lock_pubkey, args.lock], what="--summary")
    if lock_pubkey is not None:
        # Read now, whatever --env-check says: a key that cannot be read is a mistake to
        # report before launching, not a check silently skipped.
        load_public_keys([lock_pubkey], flag="--lock-pubkey")
    policy = load_policy(args.policy) if args.policy is not None else Policy()
    policy = policy.with_overrides(args.on)
    if args.trust_user or args.trust_group:
        policy = replace(
            policy,
            trusted_users=(*policy.trusted_users, *args.trust_user),
            trusted_groups=(*policy.trusted_groups, *args.trust_group),
        )
    # Before the key is read: no process of the same user may read it from our memory.
    set_non_dumpable()
    key = None
    if args.key_fd is not None:
        key = load_private_key_fd(args.key_fd)
    elif args.key is not None:
        key = load_private_key(args.key)
    options = RunOptions(
        command=command,
        key=key,
        run_id=args.run_id,
        run_dir=args.run_dir,
        ledger=args.ledger,
        lock=args.lock,
        lock_key=lock_pubkey,
        scan=tuple(args.scan),
        checkpoints=tuple(args.checkpoints),
        inputs=tuple(args.input),
        outputs=tuple(args.job_output),
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
    with Progress("", enabled=not args.no_progress) as progress:
        result = run_job(options, progress=_RunProgress(progress))
    # The run's own lines first: a summary that cannot be written (a full disk) fails the
    # command, and must not take the job's status and the provenance's place with it.
    _report(result, ephemeral_pub=result.run_dir / "supervisor.pub")
    if args.summary is not None:
        write_output(dumps(result.to_dict()), args.summary)
    if result.decision == "refuse":
        raise ConfigError(
            f"the pre-flight policy refused to launch the job (recorded in {result.ledger}, "
            f"run {result.run_id})"
        )
    code: int = result.exit_code
    return code


def _report(result: RunResult, *, ephemeral_pub: Path) -> None:
    err = sys.stderr
    if result.decision == "refuse":
        print("trainwarden: the pre-flight policy refuses to launch the job:", file=err)
        for reason in result.refusals:
            print(f"  {shown(reason)}", file=err)
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
        print(f"trainwarden: provenance {shown(result.provenance)} (key {result.key})", file=err)
    if result.ephemeral_key:
        print(
            f"trainwarden: signed with an ephemeral key; keep {ephemeral_pub} somewhere the "
            "job cannot write, or pass --key",
            file=err,
        )
    for problem in result.problems:
        print(f"trainwarden: warning: {shown(problem)}", file=err)


class _RunProgress:
    """The supervisor's ``progress(stage, message)`` on the common display.

    Long pre-flight steps (the environment, scanning, digesting, the access audit) are
    progress: a live line on a terminal, a line every few seconds on a log. Everything else
    (the pre-flight verdicts, the launch, signals, checkpoints signed) is an event of the run,
    printed as it happens; a message starting with ``! `` is a warning, printed under
    ``--no-progress`` too. The live line is cleared before the job runs, so it never mixes
    with the job's own output.
    """

    _TRANSIENT = frozenset({"env", "scan", "inputs", "access"})

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def __call__(self, stage: str, message: str) -> None:
        if stage in self._TRANSIENT:
            self.progress.update(message=f"{stage}: {message}")
            return
        self.progress.stop()
        warn = message.startswith("! ")
        text = message[2:] if warn else message
        style = "yellow" if warn else "dim" if stage == "preflight" else "bold"
        self.progress.note(
            f"{stage}: {'warning: ' if warn else ''}{text}", style=style, always=warn
        )
