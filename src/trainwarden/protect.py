"""Run a script or module with ``trainwarden.protect()`` on: ``python -m trainwarden.protect``.

Usage: ``python -m trainwarden.protect [-m MODULE | SCRIPT] [ARGS...]``; see docs/load.md.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

import trainwarden
from trainwarden.errors import Error
from trainwarden.load import protect, protect_from_environment

# Importing this module as `trainwarden.protect` rebinds the package attribute to the module;
# put the function back so `trainwarden.protect(...)` keeps working in the protected program.
trainwarden.protect = protect

_USAGE = "usage: python -m trainwarden.protect [-m MODULE | SCRIPT] [ARGS...]\n"


def main(argv: list[str]) -> int:
    """Enable protection from the environment and run ``argv`` like ``python`` would."""
    if not argv or argv[0] in ("-h", "--help"):
        sys.stderr.write(_USAGE)
        return 0 if argv else 2
    # Default on under the runner; exported so child processes that call
    # `protect_from_environment()` (or run through this runner again) are protected too.
    os.environ.setdefault("TRAINWARDEN_PROTECT", "1")
    try:
        protect_from_environment()
    except Error as exc:
        sys.stderr.write(f"trainwarden: error: {exc.diagnostics()}\n")
        return 2
    if argv[0] == "-m":
        if len(argv) < 2:
            sys.stderr.write(_USAGE)
            return 2
        sys.argv = argv[1:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        return 0
    script = argv[0]
    sys.argv = list(argv)
    sys.path[0] = str(Path(script).resolve().parent)
    runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
