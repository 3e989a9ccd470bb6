"""Understand the job's command: which launcher, which script, and what its arguments name.

``trainwarden run -- CMD`` must put its bootstrap into every rank without changing the
training script, so it parses the command the way the interpreter or torchrun would: a flag it
does not know is refused (guessing could hide an argument from the rewrite or swallow one).
From the script's own arguments it reads, by convention, the checkpoint directories, resume
checkpoints, config files, data and outputs, and the declared hyperparameters.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainwarden.errors import ConfigError

__all__ = [
    "LAUNCHERS",
    "CommandFacts",
    "JobCommand",
    "PythonInvocation",
    "TorchrunInvocation",
    "parse_command",
]

#: Launcher names as ``run.json`` records them.
LAUNCHERS = ("python", "torchrun", "srun", "other")

# CPython options (python --help): flags without a value, and those that take one.
_PY_FLAGS = frozenset("bBdEhiIOPqsSuvVx?")
_PY_VALUE = frozenset("WX")
_PY_LONG_VALUE = frozenset({"--check-hash-based-pycs"})
_PY_LONG_FLAGS = frozenset({"--help-env", "--help-xoptions", "--help-all"})

# torchrun's options (torch.distributed.run, torch 2.1-2.13): flags without a value; every
# other known option takes exactly one. Both spellings (dash and underscore) are accepted.
_TORCHRUN_FLAGS = frozenset({"standalone", "module", "no-python", "run-path", "virtual-local-rank"})
_TORCHRUN_VALUE = frozenset(
    {
        "nnodes",
        "nproc-per-node",
        "rdzv-backend",
        "rdzv-endpoint",
        "rdzv-id",
        "rdzv-conf",
        "max-restarts",
        "monitor-interval",
        "start-method",
        "event-log-handler",
        "role",
        "log-dir",
        "redirects",
        "tee",
        "local-ranks-filter",
        "duplicate-stdout-filters",
        "duplicate-stderr-filters",
        "node-rank",
        "master-addr",
        "master-port",
        "local-addr",
        "logs-specs",
        "numa-binding",
        "signals-to-handle",
        "shutdown-timeout",
        # torch.distributed.launch (deprecated) spells two options differently.
        "use-env",
    }
)
_TORCHRUN_SHORT = {"-m": "module", "-r": "redirects", "-t": "tee"}
_LAUNCH_FLAGS = frozenset({"use-env"})  # torch.distributed.launch: a flag there
_TORCHRUN_MODULES = ("torch.distributed.run", "torch.distributed.launch")
_PYTHON_NAME = re.compile(r"python(\d+(\.\d+)?)?[dmu]*(\.exe)?")

# Conventions of training scripts' own arguments (normalised: no dashes, "_" -> "-").
_CHECKPOINT_DIR_FLAGS = frozenset(
    {
        "ckpt-dir",
        "checkpoint-dir",
        "checkpoints-dir",
        "checkpoint-path",
        "save-dir",
        "output-dir",
        "out-dir",
        "default-root-dir",
        "dirpath",
    }
)
_RESUME_FLAGS = frozenset(
    {
        "resume",
        "resume-from",
        "resume-from-checkpoint",
        "init-checkpoint",
        "init-from",
        "load",
        "load-checkpoint",
        "checkpoint",
        "ckpt",
        "ckpt-path",
        "pretrained",
        "pretrained-model",
        "model-name-or-path",
        "model-path",
        "weights",
        "init-weights",
        "restore",
    }
)
_CONFIG_FLAGS = frozenset(
    {"config", "config-file", "config-path", "cfg", "deepspeed", "hparams", "args-file"}
)
_DATA_FLAGS = frozenset(
    {
        "data",
        "data-dir",
        "data-path",
        "data-root",
        "dataset",
        "dataset-dir",
        "dataset-path",
        "train-file",
        "train-data",
        "validation-file",
        "eval-file",
        "test-file",
        "data-manifest",
        "manifest",
    }
)
_OUTPUT_FLAGS = frozenset({"out", "output-file", "out-file", "results-file", "result-file"})
_CONFIG_SUFFIXES = frozenset({".json", ".yaml", ".yml", ".toml", ".ini", ".cfg"})


@dataclass(frozen=True, slots=True)
class PythonInvocation:
    """``python [OPTIONS] (SCRIPT | -m MODULE | -c CODE) [ARGS]``."""

    interpreter: str
    options: tuple[str, ...]
    kind: str  # "script", "module" or "code"
    target: str
    args: tuple[str, ...]

    def target_argv(self) -> list[str]:
        """The target as the interpreter takes it: ``SCRIPT``, ``-m MODULE`` or ``-c CODE``."""
        if self.kind == "module":
            return ["-m", self.target, *self.args]
        if self.kind == "code":
            return ["-c", self.target, *self.args]
        return [self.target, *self.args]


@dataclass(frozen=True, slots=True)
class TorchrunInvocation:
    """``torchrun [OPTIONS] (SCRIPT | -m MODULE | --no-python EXE) [ARGS]``.

    Attributes:
        launcher: How torchrun itself is started (``("torchrun",)`` or
            ``("python", "-m", "torch.distributed.run")``).
        options: Its options, as given, minus ``-m/--module`` and ``--no-python``.
        values: Option values by canonical name (``nproc-per-node`` -> ``"2"``).
        kind: ``script``, ``module`` or ``exec`` (``--no-python``).
        target: The script, module or executable.
        args: The target's arguments.
    """

    launcher: tuple[str, ...]
    options: tuple[str, ...]
    values: Mapping[str, str]
    kind: str
    target: str
    args: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CommandFacts:
    """What the job's own arguments name, by convention (see ``docs/run.md``)."""

    checkpoint_dirs: tuple[str, ...] = ()
    resume: tuple[str, ...] = ()
    configs: tuple[str, ...] = ()
    data: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class JobCommand:
    """The parsed job command.

    Attributes:
        argv: The command as given after ``--``.
        launcher: ``python``, ``torchrun``, ``srun`` (a Python rank of an ``srun`` step) or
            ``other``.
        python: The Python invocation (``python`` and ``srun`` launchers).
        torchrun: The torchrun invocation.
        interpreter: The Python interpreter that will run the ranks, when known.
        facts: What the script's arguments name.
        world_size: Ranks, when the command says (``nnodes * nproc-per-node``).
        nnodes: Nodes, when the command says.
        node_rank: This node's rank, when the command says.
    """

    argv: tuple[str, ...]
    launcher: str
    python: PythonInvocation | None
    torchrun: TorchrunInvocation | None
    interpreter: str | None
    facts: CommandFacts
    world_size: int | None
    nnodes: int | None
    node_rank: int | None


def parse_command(
    argv: Sequence[str],
    *,
    launcher: str = "auto",
    environ: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> JobCommand:
    """Parse the job command.

    Args:
        argv: The command (after ``--``).
        launcher: ``auto`` (recognise ``python``, ``torchrun``, ``python -m
            torch.distributed.run``, a script with a Python shebang), or force one of
            :data:`LAUNCHERS`.
        environ: The job's environment (Slurm variables mark an ``srun`` task).
        cwd: The job's working directory (relative paths in arguments).

    Raises:
        ConfigError: An empty command, an option the launcher does not know, or a form
            trainwarden cannot supervise (``python -``, ``torchrun --run-path``).
    """
    env = os.environ if environ is None else environ
    base = Path(cwd) if cwd is not None else Path.cwd()
    args = tuple(argv)
    if not args:
        raise ConfigError(
            "no command to run: give it after --, e.g. trainwarden run -- python train.py"
        )
    if launcher not in ("auto", *LAUNCHERS):
        raise ConfigError(f"unknown launcher {launcher!r}; choose auto, {', '.join(LAUNCHERS)}")
    first = args[0]
    kind = launcher
    if launcher == "auto":
        kind = _detect(args, env, base)
    if kind == "other":
        return JobCommand(args, "other", None, None, None, CommandFacts(), None, None, None)
    if kind == "torchrun":
        run = _parse_torchrun(args, base, env)
        interpreter = _torchrun_interpreter(run, base, env)
        nproc = _int_or_none(run.values.get("nproc-per-node"))
        nnodes = _nnodes(run.values.get("nnodes"))
        world = nproc * nnodes if nproc is not None and nnodes is not None else None
        if nproc is not None and "nnodes" not in run.values:
            world = nproc
        facts = _facts(run.args, base)
        return JobCommand(
            args,
            "torchrun",
            None,
            run,
            interpreter,
            facts,
            world,
            nnodes if "nnodes" in run.values else 1,
            _int_or_none(run.values.get("node-rank")),
        )
    invocation = _parse_python(args, base, env)
    if invocation is None:
        raise ConfigError(f"{first} is not a Python interpreter; use --launcher other for it")
    facts = _facts(invocation.args, base)
    if kind == "srun" or (kind == "python" and _in_srun_step(env)):
        world = _int_or_none(env.get("SLURM_NTASKS"))
        nnodes = _int_or_none(env.get("SLURM_NNODES"))
        node = _int_or_none(env.get("SLURM_NODEID"))
        return JobCommand(
            args, "srun", invocation, None, invocation.interpreter, facts, world, nnodes, node
        )
    return JobCommand(args, "python", invocation, None, invocation.interpreter, facts, 1, 1, None)


def _in_srun_step(env: Mapping[str, str]) -> bool:
    return "SLURM_PROCID" in env and "SLURM_STEP_ID" in env


def _detect(args: tuple[str, ...], env: Mapping[str, str], base: Path) -> str:
    name = Path(args[0]).name
    if name == "torchrun":
        return "torchrun"
    if name == "srun":
        raise ConfigError(
            "put trainwarden run inside srun, not srun inside trainwarden run: "
            "srun trainwarden run --run-id $SLURM_JOB_ID -- python train.py ..."
        )
    if _PYTHON_NAME.fullmatch(name) or _python_shebang(args[0], base, env):
        if _python_module(args, base, env) in _TORCHRUN_MODULES:
            return "torchrun"
        return "srun" if _in_srun_step(env) else "python"
    return "other"


def _python_shebang(program: str, base: Path, env: Mapping[str, str]) -> bool:
    """Whether ``program`` is a script file whose ``#!`` line runs Python."""
    path = Path(program) if os.sep in program else None
    if path is None:
        found = shutil.which(program, path=env.get("PATH"))
        if found is None:
            return False
        path = Path(found)
    elif not path.is_absolute():
        path = base / path
    line = _first_line(path)
    return line is not None and _shebang_python(line) is not None


def _first_line(path: Path) -> str | None:
    try:
        with path.open("rb") as fh:
            head = fh.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    return head[2:].split(b"\n", 1)[0].decode("utf-8", "replace").strip()


def _shebang_python(line: str) -> str | None:
    """The interpreter a ``#!`` line names when it is Python (``/usr/bin/env python3`` too)."""
    parts = line.split()
    if not parts:
        return None
    if Path(parts[0]).name == "env":
        rest = [p for p in parts[1:] if not p.startswith("-")]
        parts = rest
        if not parts:
            return None
    return parts[0] if _PYTHON_NAME.fullmatch(Path(parts[0]).name) else None


def _python_module(args: tuple[str, ...], base: Path, env: Mapping[str, str]) -> str | None:
    invocation = _parse_python(args, base, env)
    return invocation.target if invocation is not None and invocation.kind == "module" else None


def _parse_python(
    args: tuple[str, ...], base: Path, env: Mapping[str, str]
) -> PythonInvocation | None:
    interpreter = args[0]
    name = Path(interpreter).name
    if not _PYTHON_NAME.fullmatch(name):
        # An executable script with a Python shebang: run it with that interpreter.
        path = (
            Path(interpreter)
            if os.sep in interpreter
            else shutil.which(interpreter, path=env.get("PATH"))
        )
        if path is None:
            return None
        line = _first_line(Path(path) if Path(path).is_absolute() else base / path)
        python = _shebang_python(line) if line is not None else None
        if python is None:
            return None
        return PythonInvocation(python, (), "script", str(path), tuple(args[1:]))
    options: list[str] = []
    i = 1
    while i < len(args):
        arg = args[i]
        if arg == "-":
            raise ConfigError("python - (a script on standard input) cannot be supervised")
        if arg == "--":
            i += 1
            break
        if arg.startswith("--"):
            key = arg.split("=", 1)[0]
            if key in _PY_LONG_VALUE:
                if "=" in arg:
                    options.append(arg)
                else:
                    options.extend(args[i : i + 2])
                    i += 1
                i += 1
                continue
            if key in _PY_LONG_FLAGS or key in ("--help", "--version"):
                raise ConfigError(f"python {arg} does not run a program")
            raise ConfigError(f"unknown python option {arg}")
        if not arg.startswith("-") or arg == "-":
            break
        # A cluster of one-letter options: -uB, -Wignore, -X dev, -c CODE, -m MODULE.
        j = 1
        while j < len(arg):
            letter = arg[j]
            if letter in ("c", "m"):
                value = arg[j + 1 :] or (args[i + 1] if i + 1 < len(args) else None)
                if value is None:
                    raise ConfigError(f"python -{letter} needs an argument")
                consumed = 1 if arg[j + 1 :] else 2
                rest = tuple(args[i + consumed :])
                kind = "code" if letter == "c" else "module"
                if j > 1:  # flags clustered before it: "-um module"
                    options.append("-" + arg[1:j])
                _check_options(options)
                return PythonInvocation(interpreter, tuple(options), kind, value, rest)
            if letter in _PY_VALUE:
                if arg[j + 1 :]:
                    options.append(arg)
                else:
                    if i + 1 >= len(args):
                        raise ConfigError(f"python -{letter} needs an argument")
                    options.extend((arg, args[i + 1]))
                    i += 1
                break
            if letter not in _PY_FLAGS:
                raise ConfigError(f"unknown python option -{letter} in {arg}")
            if letter in "hV?":
                raise ConfigError(f"python {arg} does not run a program")
            j += 1
        else:
            options.append(arg)
        i += 1
    if i >= len(args):
        raise ConfigError("the python command names no script, -m module or -c code to run")
    _check_options(options)
    return PythonInvocation(interpreter, tuple(options), "script", args[i], tuple(args[i + 1 :]))


def _check_options(options: list[str]) -> None:
    for opt in options:
        flags = opt[1:] if opt.startswith("-") and not opt.startswith("--") else ""
        # Only the flag letters before a value option (-W/-X take the rest of the word).
        flags = re.split("[WX]", flags, maxsplit=1)[0]
        if "S" in flags:
            raise ConfigError(
                "python -S disables site-packages, so trainwarden's rank bootstrap cannot "
                "be imported; drop -S"
            )


def _torchrun_name(option: str) -> str | None:
    """Canonical torchrun option name for ``option`` (accepting argparse's unique prefixes)."""
    if option in _TORCHRUN_SHORT:
        return _TORCHRUN_SHORT[option]
    if not option.startswith("--"):
        return None
    name = option[2:].replace("_", "-")
    known = _TORCHRUN_FLAGS | _TORCHRUN_VALUE
    if name in known:
        return name
    matches = [k for k in known if k.startswith(name)]
    return matches[0] if len(matches) == 1 else None


def _parse_torchrun(
    args: tuple[str, ...], base: Path, env: Mapping[str, str]
) -> TorchrunInvocation:
    if Path(args[0]).name == "torchrun":
        launcher: tuple[str, ...] = (args[0],)
        rest = list(args[1:])
        deprecated_launch = False
    else:
        invocation = _parse_python(args, base, env)
        assert invocation is not None
        assert invocation.kind == "module"
        launcher = (invocation.interpreter, *invocation.options, "-m", invocation.target)
        rest = list(invocation.args)
        deprecated_launch = invocation.target == "torch.distributed.launch"
    options: list[str] = []
    values: dict[str, str] = {}
    module = no_python = False
    i = 0
    while i < len(rest):
        arg = rest[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-"):
            break
        key, eq, inline = arg.partition("=")
        name = _torchrun_name(key)
        if name is None:
            raise ConfigError(
                f"unknown torchrun option {arg}; trainwarden refuses to guess how to read it "
                "(check the spelling, or use --launcher other)"
            )
        if name in ("help",):
            raise ConfigError("torchrun --help does not run a job")
        if name in _TORCHRUN_FLAGS or (deprecated_launch and name in _LAUNCH_FLAGS):
            if name == "module":
                module = True
            elif name == "no-python":
                no_python = True
            elif name == "run-path":
                raise ConfigError(
                    "torchrun --run-path runs the script inside torchrun's own process, "
                    "where ranks cannot be told apart; drop --run-path"
                )
            else:
                options.append(arg)
            i += 1
            continue
        if eq:
            values[name] = inline
            options.append(arg)
            i += 1
            continue
        if i + 1 >= len(rest):
            raise ConfigError(f"torchrun {arg} needs a value")
        values[name] = rest[i + 1]
        options.extend((arg, rest[i + 1]))
        i += 2
    if i >= len(rest):
        raise ConfigError("the torchrun command names no training script or module")
    if module and no_python:
        raise ConfigError("torchrun cannot combine --module and --no-python")
    kind = "module" if module else "exec" if no_python else "script"
    return TorchrunInvocation(launcher, tuple(options), values, kind, rest[i], tuple(rest[i + 1 :]))


def _torchrun_interpreter(
    run: TorchrunInvocation, base: Path, env: Mapping[str, str]
) -> str | None:
    """The Python that torchrun starts ranks with: its own interpreter."""
    if len(run.launcher) > 1:
        return run.launcher[0]
    program = run.launcher[0]
    found = program if os.sep in program else shutil.which(program, path=env.get("PATH"))
    if found is None:
        raise ConfigError(f"{program} is not installed (not found on PATH)")
    path = Path(found) if Path(found).is_absolute() else base / found
    line = _first_line(path)
    python = _shebang_python(line) if line is not None else None
    if python is None:
        raise ConfigError(
            f"cannot tell which Python runs {path} (no Python #! line); "
            "use python -m torch.distributed.run instead"
        )
    return python


def _int_or_none(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _nnodes(value: str | None) -> int | None:
    if value is None:
        return 1
    low, _, high = value.partition(":")
    return _int_or_none(high or low)


def _norm(flag: str) -> str:
    return flag.lstrip("-").replace("_", "-").lower()


def _facts(args: tuple[str, ...], base: Path) -> CommandFacts:
    """Read checkpoint dirs, resume checkpoints, configs, data, outputs and hyperparameters."""
    checkpoint_dirs: list[str] = []
    resume: list[str] = []
    configs: list[str] = []
    data: list[str] = []
    outputs: list[str] = []
    hyper: dict[str, Any] = {}

    def exists(value: str) -> bool:
        return (base / value).exists() if not Path(value).is_absolute() else Path(value).exists()

    def add(bucket: list[str], value: str) -> None:
        if value and value not in bucket:
            bucket.append(value)

    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--") and len(arg) > 2:
            key, eq, inline = arg.partition("=")
            nxt = args[i + 1] if i + 1 < len(args) else None
            value: str | None
            if eq:
                value = inline
                step = 1
            elif nxt is not None and not (nxt.startswith("-") and not _is_number(nxt)):
                value = nxt
                step = 2
            else:
                value = None
                step = 1
            name = _norm(key)
            if value is None:
                hyper[name.replace("-", "_")] = True
            elif name in _CHECKPOINT_DIR_FLAGS:
                add(checkpoint_dirs, value)
            elif name in _RESUME_FLAGS:
                if exists(value):
                    add(resume, value)
                else:
                    hyper[name.replace("-", "_")] = _scalar(value)
            elif name in _CONFIG_FLAGS and exists(value):
                add(configs, value)
            elif name in _DATA_FLAGS and exists(value):
                add(data, value)
            elif name in _OUTPUT_FLAGS:
                add(outputs, value)
            elif Path(value).suffix.lower() in _CONFIG_SUFFIXES and exists(value):
                add(configs, value)
            else:
                hyper[name.replace("-", "_")] = _scalar(value)
            i += step
            continue
        if not arg.startswith("-") and Path(arg).suffix.lower() in _CONFIG_SUFFIXES and exists(arg):
            add(configs, arg)
        i += 1
    return CommandFacts(
        tuple(checkpoint_dirs), tuple(resume), tuple(configs), tuple(data), tuple(outputs), hyper
    )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _scalar(text: str) -> Any:
    """``"3e-4"`` -> 0.0003, ``"40"`` -> 40, ``"true"`` -> True; anything else stays text."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return text
    return value if value == value and value not in (float("inf"), float("-inf")) else text
