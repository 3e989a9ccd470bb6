"""What the run's ``sitecustomize`` calls in every Python process of the job.

Processes started through the bootstrap (the ranks) attach there; any other Python process
(torchrun's agent, ``multiprocessing`` spawn children, a helper script) attaches here. Then
the environment's own ``sitecustomize``, which the run's one shadows on ``PYTHONPATH``, runs.
"""

from __future__ import annotations

# os.path: sys.path holds strings.
# ruff: noqa: PTH100, PTH120
import os
import sys

from trainwarden.supervise._names import BOOTSTRAP_MODULE

__all__ = ["attach", "started_through_bootstrap"]


def attach(site_file: str) -> None:
    """Attach this process (unless the bootstrap will), then chain the real sitecustomize.

    Raises:
        SystemExit: Protection was requested and cannot be enabled (exit 2, as the job's
            ranks would).
    """
    if not started_through_bootstrap(list(getattr(sys, "orig_argv", ()))):
        from trainwarden.errors import Error
        from trainwarden.supervise._rank import attach as attach_process

        try:
            attach_process("process")
        except Error as exc:
            sys.stderr.write(f"trainwarden: error: {exc.diagnostics()}\n")
            raise SystemExit(2) from exc
    _chain_sitecustomize(site_file)


def started_through_bootstrap(argv: list[str]) -> bool:
    """Whether ``argv`` (``sys.orig_argv``) is ``python [OPTIONS] -m <the bootstrap> ...``."""
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "-m":
            return i + 1 < len(argv) and argv[i + 1] == BOOTSTRAP_MODULE
        if not arg.startswith("-") or arg == "-" or arg.startswith("-c"):
            return False  # a script, stdin or -c: not the bootstrap
        if arg.startswith("-m"):
            return arg[2:] == BOOTSTRAP_MODULE
        if arg in ("-W", "-X", "--check-hash-based-pycs"):
            i += 1  # its value
        i += 1
    return False


def _chain_sitecustomize(site_file: str) -> None:
    import importlib.machinery
    import importlib.util

    ours = os.path.dirname(os.path.abspath(site_file))
    path = [p for p in sys.path if os.path.abspath(p or ".") != ours]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None or spec.origin == os.path.abspath(site_file):
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
