"""Run a script or module with ``trainwarden.protect()`` on: ``python -m trainwarden.protect``.

Usage: ``python -m trainwarden.protect [-m MODULE | SCRIPT] [ARGS...]``; see docs/load.md.
"""

from __future__ import annotations

import importlib.util
import os
import runpy
import sys
from pathlib import Path

import trainwarden
from trainwarden._fs import open_regular
from trainwarden.errors import Error, InputError
from trainwarden.load import protect, protect_from_environment

# Importing this module as `trainwarden.protect` rebinds the package attribute to the module;
# put the function back so `trainwarden.protect(...)` keeps working in the protected program.
trainwarden.protect = protect

_USAGE = "usage: python -m trainwarden.protect [-m MODULE | SCRIPT] [ARGS...]\n"


def main(argv: list[str]) -> int:
    """Enable protection from the environment and run ``argv`` like ``python`` would.

    What the program itself raises propagates as it would under ``python`` (its traceback,
    its exit status); a program that cannot be started is an error of ours: exit 2.
    """
    if not argv or argv[0] in ("-h", "--help"):
        sys.stderr.write(_USAGE)
        return 0 if argv else 2
    if argv[0] == "-m" and len(argv) < 2:
        sys.stderr.write(_USAGE)
        return 2
    try:
        # Checked before protection is switched on or anything runs.
        _check_target(argv)
        # Default on under the runner; exported so child processes that call
        # `protect_from_environment()` (or run through this runner again) are protected too.
        os.environ.setdefault("TRAINWARDEN_PROTECT", "1")
        protect_from_environment()
    except Error as exc:
        sys.stderr.write(f"trainwarden: error: {exc.diagnostics()}\n")
        return 2
    if argv[0] == "-m":
        sys.argv = argv[1:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        return 0
    script = argv[0]
    sys.argv = list(argv)
    sys.path[0] = str(Path(script).resolve().parent)
    runpy.run_path(script, run_name="__main__")
    return 0


def _check_target(argv: list[str]) -> None:
    """Refuse a script or module that cannot be run, with a clear message.

    Raises:
        InputError: a missing, unreadable or special-file script, a directory without
            ``__main__``, or a module that cannot be found.
    """
    if argv[0] == "-m":
        name = argv[1]
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError) as exc:
            raise InputError(f"cannot run module {name}: {exc}") from exc
        if spec is None:
            raise InputError(f"cannot run module {name}: no module named {name!r}")
        return
    path = Path(argv[0])
    if path.is_dir():
        # Like python: a directory runs its __main__ module, if it has one.
        if not any((path / name).is_file() for name in ("__main__.py", "__main__.pyc")):
            raise InputError(f"cannot run {path}: a directory without a __main__.py")
        return
    # Opens without blocking (a FIFO is refused) and without following a symlink loop.
    os.close(open_regular(path, what="script"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
