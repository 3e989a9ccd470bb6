"""Entry point the supervisor puts in front of the job's code (not an API to call).

- ``python -m trainwarden.supervise.bootstrap rank -- (SCRIPT | -m MODULE | -c CODE) ARGS``:
  attach this process to the run's supervisor, then run the target exactly as ``python``
  would (``sys.argv``, ``sys.path[0]``, ``__main__``).
- ``python -m trainwarden.supervise.bootstrap shim -- CMD...``: torchrun's per-rank shim.

Every other Python process of the job attaches through the run's ``sitecustomize``
(:mod:`trainwarden.supervise._site`).

Only light modules are imported here: this runs before every rank's own imports.
"""

# os.path: sys.path holds strings; kept import-light.
# ruff: noqa: PTH120

from __future__ import annotations

import os
import runpy
import sys
import types
from collections.abc import Sequence

__all__ = ["main"]

_USAGE = (
    "usage: python -m trainwarden.supervise.bootstrap rank -- (SCRIPT | -m MODULE | -c CODE) "
    "[ARGS...]\n       python -m trainwarden.supervise.bootstrap shim -- CMD [ARGS...]\n"
    "(started by `trainwarden run`; see docs/run.md)\n"
)


def main(argv: Sequence[str]) -> int:
    """Dispatch to ``rank`` or ``shim``; return the exit code."""
    args = list(argv)
    if len(args) < 2 or args[0] not in ("rank", "shim") or args[1] != "--" or len(args) < 3:
        sys.stderr.write(_USAGE)
        return 2
    mode, target = args[0], args[2:]
    if mode == "shim":
        from trainwarden.supervise._shim import run_shim

        return run_shim(target)
    from trainwarden.errors import Error
    from trainwarden.supervise._rank import attach

    try:
        attach("rank")
    except Error as exc:
        sys.stderr.write(f"trainwarden: error: {exc.diagnostics()}\n")
        return 2
    return _run_target(target)


def _run_target(target: list[str]) -> int:
    """Run ``SCRIPT ARGS``, ``-m MODULE ARGS`` or ``-c CODE ARGS`` like the interpreter."""
    if target[0] == "-m":
        if len(target) < 2:
            sys.stderr.write(_USAGE)
            return 2
        sys.argv = [target[1], *target[2:]]
        runpy.run_module(target[1], run_name="__main__", alter_sys=True)
        return 0
    if target[0] == "-c":
        if len(target) < 2:
            sys.stderr.write(_USAGE)
            return 2
        sys.argv = ["-c", *target[2:]]
        sys.path[0] = ""
        module = types.ModuleType("__main__")
        module.__dict__["__builtins__"] = __builtins__
        sys.modules["__main__"] = module
        exec(compile(target[1], "<string>", "exec"), module.__dict__)  # noqa: S102 - `python -c`
        return 0
    script = target[0]
    sys.argv = list(target)
    # As the interpreter does: the script's directory (through a symlink: the target's).
    sys.path[0] = os.path.dirname(os.path.realpath(script))
    runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
