"""Command-line interface: ``main(argv) -> int``; one module a command group.

Exit codes: 0 clean or verified; 1 findings at or above ``--fail-on``, or verification
failed; 2 usage or operational error. Reports go to stdout (or ``--output``); progress and
diagnostics go to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from trainwarden import __version__
from trainwarden.errors import Error, UnsafeModelError, VerificationError

__all__ = ["EXIT_ERROR", "EXIT_FINDINGS", "EXIT_OK", "build_parser", "entry_point", "main"]

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_ERROR = 2

# Command-group modules under trainwarden.cli, in the order `--help` lists them. Each exposes
# `register(subparsers)`, which adds its sub-commands and sets `handler` on each to a function
# `(args) -> int`. Registration is cheap: the capability is imported inside the handler.
_COMMAND_MODULES: tuple[str, ...] = ("scan", "load", "env", "sign", "ledger")


def build_parser() -> argparse.ArgumentParser:
    """Build the full argument parser (used by ``main`` and by the docs tests)."""
    parser = argparse.ArgumentParser(
        prog="trainwarden",
        description="Protects shared GPU training clusters against sabotage from the inside.",
    )
    parser.add_argument("--version", action="version", version=f"trainwarden {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in _COMMAND_MODULES:
        module = importlib.import_module(f"trainwarden.cli.{name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 0 for --help/--version and 2 for usage errors
        return int(exc.code) if isinstance(exc.code, int) else EXIT_ERROR
    try:
        return int(args.handler(args))
    except (UnsafeModelError, VerificationError) as exc:
        print(f"trainwarden: {exc.diagnostics()}", file=sys.stderr)
        return EXIT_FINDINGS
    except Error as exc:
        print(f"trainwarden: error: {exc.diagnostics()}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("trainwarden: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (`trainwarden scan ... | head`): not an error of ours.
        return EXIT_OK


def entry_point() -> None:
    """Console-script entry point."""
    sys.exit(main())
