"""Command-line interface: ``main(argv) -> int``; one module a command group.

Exit codes: 0 clean or verified; 1 findings at or above ``--fail-on``, or verification
failed; 2 usage or operational error. Reports go to stdout (or ``--output``); progress and
diagnostics go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from trainwarden import __version__
from trainwarden.cli._common import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK
from trainwarden.errors import Error, UnsafeModelError, VerificationError

__all__ = ["EXIT_ERROR", "EXIT_FINDINGS", "EXIT_OK", "build_parser", "entry_point", "main"]

# Command-group modules under trainwarden.cli, in the order `--help` lists them. Each exposes
# `register(subparsers)`, which adds its sub-commands and sets `handler` on each to a function
# `(args) -> int`. Registration is cheap: the capability is imported inside the handler.
_COMMAND_MODULES: tuple[str, ...] = (
    "drill",
    "scan",
    "load",
    "env",
    "sign",
    "ledger",
    "run",
    "provenance",
    "report",
)
# Which module registers each command. `trainwarden scan ...` then builds the parser of the
# scan module alone: start-up pays for one command group, not for all of them (a test checks
# this table against what the modules register).
_COMMANDS: dict[str, str] = {
    "drill": "drill",
    "scan": "scan",
    "demo": "scan",
    "convert": "load",
    "env": "env",
    "keygen": "sign",
    "sign": "sign",
    "verify": "sign",
    "ledger": "ledger",
    "run": "run",
    "provenance": "provenance",
    "report": "report",
}


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors read like every other error of the CLI.

    ``trainwarden: error: MESSAGE`` first (the line a user or a log search looks for, the same
    for a bad flag as for a missing file), then the usage of the command. Sub-command parsers
    are of this class too (argparse makes them of the parent's class).
    """

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"trainwarden: error: {message}\n{self.format_usage()}")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Build the argument parser (used by ``main`` and by the docs tests).

    Args:
        command: Build only what parsing this command needs (the module that registers it),
            or, by default, every command.
    """
    parser = _Parser(
        prog="trainwarden",
        description="Protects shared GPU training clusters against sabotage from the inside.",
    )
    parser.add_argument("--version", action="version", version=f"trainwarden {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    modules = (_COMMANDS[command],) if command in _COMMANDS else _COMMAND_MODULES
    for name in modules:
        module = importlib.import_module(f"trainwarden.cli.{name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # The command is the first argument (the top-level options, --help and --version, come
    # alone); anything else gets the full parser, whose message lists every command.
    parser = build_parser(argv[0] if argv else None)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 0 for --help/--version and 2 for usage errors
        return int(exc.code) if isinstance(exc.code, int) else EXIT_ERROR
    # The one mapping from outcomes to exit codes: handlers return EXIT_OK or EXIT_FINDINGS
    # for results, and raise for everything else.
    try:
        code = int(args.handler(args))
        _flush_stdout()
    except (UnsafeModelError, VerificationError) as exc:
        print(f"trainwarden: {_diagnostics(exc)}", file=sys.stderr)
        return EXIT_FINDINGS
    except Error as exc:
        print(f"trainwarden: error: {_diagnostics(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("trainwarden: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (`trainwarden scan ... | head`): not an error of
        # ours. Point stdout at /dev/null so the interpreter's final flush stays quiet.
        _silence_stdout()
        return EXIT_OK
    except OSError as exc:
        # Writing output failed in a way a handler did not anticipate (a full stdout).
        print(f"trainwarden: error: cannot write output: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    return code


def _diagnostics(exc: Error) -> str:
    """The error's explanation, its lines kept, control characters escaped in each.

    Messages quote paths and names an adversary may have chosen: an escape sequence there
    must not rewrite the terminal.
    """
    from trainwarden.cli._common import shown

    return "\n".join(shown(line) for line in exc.diagnostics().split("\n"))


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        from trainwarden.errors import InputError

        raise InputError(f"cannot write to standard output: {exc.strerror or exc}") from exc


def _silence_stdout() -> None:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def entry_point() -> None:
    """Console-script entry point."""
    sys.exit(main())
