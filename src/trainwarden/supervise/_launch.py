"""Turn the job command into the command that runs it under supervision, and learn its Python.

Every rank starts through ``python -m trainwarden.supervise.bootstrap rank ...`` (the
interpreter's own options kept); under torchrun each rank gets a shim parent
(``--no-python``) so that its exact exit status and signal are known, not only torchrun's
summary. Any other Python process of the job attaches through a ``sitecustomize`` that the
supervisor puts first on ``PYTHONPATH`` (recognisable by its first line, see ``docs/run.md``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from trainwarden._fs import atomic_write
from trainwarden.errors import ConfigError, InputError
from trainwarden.supervise._command import JobCommand
from trainwarden.supervise._names import (
    BOOTSTRAP_MODULE,
    ENV_CHANNEL,
    ENV_LEDGER,
    ENV_RUN_DIR,
    ENV_RUN_ID,
    SITECUSTOMIZE_MARKER,
)

__all__ = [
    "InterpreterInfo",
    "LaunchPlan",
    "plan_launch",
    "query_interpreter",
    "write_sitecustomize",
]


_SITECUSTOMIZE = f"""{SITECUSTOMIZE_MARKER}
# Written by `trainwarden run` for one run: attaches every Python process of the job to its
# supervisor (protection, egress record, signals, heartbeats). See docs/run.md. It then runs
# the environment's own sitecustomize, if there is one.
import sys


def _trainwarden_attach():
    try:
        from trainwarden.supervise import _site
    except Exception as exc:  # trainwarden is not importable by this interpreter
        sys.stderr.write(f"trainwarden: not attached to the run supervisor: {{exc}}\\n")
        return
    _site.attach(__file__)


_trainwarden_attach()
del _trainwarden_attach
"""

# Run by the job's interpreter with -S: no site-packages, no .pth file, no sitecustomize is
# executed while we look at the environment the job will trust.
_QUERY = r"""
import json, os, site, sys, sysconfig
# With -S, site.py did not apply pyvenv.cfg: find the virtual environment as it would.
prefix = sys.prefix
system_site = True
exe_dir = os.path.dirname(os.path.abspath(sys.executable))
for cand in (exe_dir, os.path.dirname(exe_dir)):
    cfg = os.path.join(cand, "pyvenv.cfg")
    if os.path.isfile(cfg):
        prefix = cand
        with open(cfg, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition("=")
                if key.strip().lower() == "include-system-site-packages":
                    system_site = value.strip().lower() == "true"
        break
paths = sysconfig.get_paths(vars={"base": prefix, "platbase": prefix})
sites = []
if prefix == sys.prefix or system_site:
    try:
        sites = site.getsitepackages()
    except Exception:
        sites = []
try:
    user = site.getusersitepackages() if site.check_enableusersite() else None
except Exception:
    user = None
print(json.dumps({
    "executable": sys.executable,
    "prefix": prefix,
    "base_prefix": sys.base_prefix,
    "version": "%d.%d.%d" % sys.version_info[:3],
    "stdlib": paths.get("stdlib"),
    "platstdlib": paths.get("platstdlib"),
    "purelib": paths.get("purelib"),
    "platlib": paths.get("platlib"),
    "site_packages": sites,
    "user_site": user,
    "sys_path": sys.path,
}))
"""


@dataclass(frozen=True, slots=True)
class InterpreterInfo:
    """The job's Python as it describes itself (queried with ``-S``: nothing of it runs).

    Attributes:
        executable: ``sys.executable``.
        prefix: ``sys.prefix`` (the virtual environment).
        version: ``X.Y.Z``.
        stdlib: The standard library directory.
        site_dirs: Site-packages directories (``purelib``, ``platlib``, ``site``'s list,
            user site when enabled), existing ones only.
        python_path: ``PYTHONPATH`` entries the job will have (its own, not ours).
        torch: The ``torch`` package directory it would import, if found.
        same_as_supervisor: It is the interpreter and environment running trainwarden.
    """

    executable: str
    prefix: str
    version: str
    stdlib: str | None
    site_dirs: tuple[str, ...]
    python_path: tuple[str, ...]
    torch: str | None
    same_as_supervisor: bool


def query_interpreter(
    python: str, *, environ: Mapping[str, str], cwd: str | os.PathLike[str]
) -> InterpreterInfo:
    """Ask ``python`` (run with ``-S``) where its library and site directories are.

    Raises:
        ConfigError: ``python`` is not found or does not run.
    """
    found = python if os.sep in python else shutil.which(python, path=environ.get("PATH"))
    if found is None:
        raise ConfigError(f"{python} is not installed (not found on PATH)")
    env = {k: v for k, v in environ.items() if not k.startswith("PYTHONSTARTUP")}
    try:
        proc = subprocess.run(  # noqa: S603 - the user's own interpreter, list argv
            [found, "-S", "-c", _QUERY],
            env=env,
            cwd=cwd,
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigError(f"cannot run the job's interpreter {found}: {exc}") from exc
    if proc.returncode != 0:
        detail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        raise ConfigError(f"{found} is not a working Python interpreter: {detail[0]}")
    try:
        doc = json.loads(proc.stdout.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{found} did not describe itself (is it Python 3?)") from exc
    python_path = tuple(p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p)
    sites: list[str] = []
    for candidate in [doc.get("purelib"), doc.get("platlib"), *doc.get("site_packages", [])]:
        if isinstance(candidate, str) and candidate not in sites and Path(candidate).is_dir():
            sites.append(candidate)
    user = doc.get("user_site")
    if isinstance(user, str) and Path(user).is_dir() and user not in sites:
        sites.append(user)
    torch_dir = None
    for entry in [*python_path, *sites]:
        candidate = Path(cwd, entry) / "torch" / "__init__.py"
        if candidate.is_file():
            torch_dir = str(candidate.parent)
            break
    prefix = str(doc.get("prefix", ""))
    same = os.path.realpath(prefix) == os.path.realpath(sys.prefix) and os.path.realpath(
        str(doc.get("executable", ""))
    ) == os.path.realpath(sys.executable)
    return InterpreterInfo(
        executable=str(doc.get("executable") or found),
        prefix=prefix,
        version=str(doc.get("version", "")),
        stdlib=doc.get("stdlib") if isinstance(doc.get("stdlib"), str) else None,
        site_dirs=tuple(sites),
        python_path=python_path,
        torch=torch_dir,
        same_as_supervisor=same,
    )


def check_bootstrap_importable(
    info: InterpreterInfo, *, environ: Mapping[str, str], cwd: str | os.PathLike[str]
) -> None:
    """Make sure the job's interpreter can import the bootstrap (a foreign venv may not).

    Raises:
        ConfigError: It cannot: the ranks would start unprotected and unrecorded.
    """
    if info.same_as_supervisor:
        return
    try:
        proc = subprocess.run(  # noqa: S603 - the user's own interpreter, list argv
            [info.executable, "-c", f"import {BOOTSTRAP_MODULE}"],
            env=dict(environ),
            cwd=cwd,
            capture_output=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigError(f"cannot run the job's interpreter {info.executable}: {exc}") from exc
    if proc.returncode != 0:
        raise ConfigError(
            f"trainwarden is not installed for the job's interpreter {info.executable} "
            f"(environment {info.prefix}); install it there (pip install trainwarden) so "
            "every rank can be bootstrapped"
        )


@dataclass(frozen=True, slots=True)
class LaunchPlan:
    """What the supervisor actually executes.

    Attributes:
        argv: The rewritten command.
        env: The job's environment (the caller's, plus the run's variables and PYTHONPATH).
        shim: Ranks run under a per-rank shim (torchrun).
    """

    argv: tuple[str, ...]
    env: Mapping[str, str]
    shim: bool


def plan_launch(
    job: JobCommand,
    *,
    environ: Mapping[str, str],
    channel: str,
    run_id: str,
    run_dir: str,
    ledger: str,
    site_dir: str,
    protect: bool,
    protect_profiles: Sequence[str] = (),
) -> LaunchPlan:
    """The command and environment that run ``job`` with a bootstrap in every rank.

    The environment carries the control channel's socket path, the run id and directory,
    never a key or the sampling secret: those travel over the channel, to processes the
    supervisor has checked are its own descendants.
    """
    env = dict(environ)
    env[ENV_CHANNEL] = channel
    env[ENV_RUN_ID] = run_id
    env[ENV_RUN_DIR] = run_dir
    env[ENV_LEDGER] = ledger
    if protect:
        env["TRAINWARDEN_PROTECT"] = "1"
        if protect_profiles:
            env["TRAINWARDEN_PROTECT_PROFILES"] = ",".join(protect_profiles)
    existing = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = site_dir + (os.pathsep + existing if existing else "")
    rank_tail = ["-m", BOOTSTRAP_MODULE, "rank", "--"]
    if job.launcher in ("python", "srun"):
        py = job.python
        assert py is not None
        argv = [py.interpreter, *py.options, *rank_tail, *py.target_argv()]
        return LaunchPlan(tuple(argv), env, shim=False)
    if job.launcher == "torchrun":
        run = job.torchrun
        assert run is not None
        assert job.interpreter is not None
        python = job.interpreter
        shim = [python, "-m", BOOTSTRAP_MODULE, "shim", "--"]
        if run.kind == "exec":
            rank = [run.target, *run.args]
        elif run.kind == "module":
            rank = [python, "-u", *rank_tail, "-m", run.target, *run.args]
        else:
            rank = [python, "-u", *rank_tail, run.target, *run.args]
        # --no-python: torchrun executes our shim as the rank's process; the shim starts
        # the real rank as its child and reports its exact exit status and signal.
        argv = [*run.launcher, *run.options, "--no-python", *shim, *rank]
        return LaunchPlan(tuple(argv), env, shim=True)
    return LaunchPlan(job.argv, env, shim=False)


def write_sitecustomize(directory: Path) -> Path:
    """Write the run's ``sitecustomize.py`` into ``directory`` (private to the supervisor).

    Raises:
        InputError: It cannot be written.
    """
    path = directory / "sitecustomize.py"
    atomic_write(path, _SITECUSTOMIZE, mode=0o644, what="sitecustomize")
    return path


def sitecustomize_digest() -> str:
    """SHA-256 of the sitecustomize text (recorded in ``run.start``)."""
    return "sha256:" + hashlib.sha256(_SITECUSTOMIZE.encode("utf-8")).hexdigest()


def resolve_program(program: str, *, environ: Mapping[str, str], cwd: Path) -> str:
    """Find the program the job command starts, like the shell would.

    Raises:
        ConfigError: It does not exist or is not executable.
    """
    if os.sep in program:
        path = Path(program) if Path(program).is_absolute() else cwd / program
        if not path.is_file() or not os.access(path, os.X_OK):
            raise ConfigError(f"{program}: no such executable file")
        return str(path)
    found = shutil.which(program, path=environ.get("PATH"))
    if found is None:
        raise ConfigError(f"{program}: command not found")
    return found


def check_writable_dir(path: Path, *, what: str) -> None:
    """Create ``path`` if needed and check a file can be created in it.

    Raises:
        InputError: It cannot (read-only filesystem, permissions), with the reason.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the {what} {path}: {exc.strerror or exc}") from exc
    probe = path / f".trainwarden-write-test-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise InputError(f"the {what} {path} is not writable: {exc.strerror or exc}") from exc
    os.close(fd)
    probe.unlink(missing_ok=True)
