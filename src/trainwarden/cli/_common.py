"""Helpers shared by the command modules: exit codes, output formats, writing reports."""

from __future__ import annotations

import argparse
import errno
import os
import stat
import sys
from pathlib import Path

from trainwarden._fs import atomic_write
from trainwarden.errors import InputError
from trainwarden.findings import Report

#: Exit codes of every command (the interface contract): 0 clean or verified; 1 findings at or
#: above ``--fail-on``, tampering, or verification failed; 2 usage or operational error.
EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_ERROR = 2

REPORT_FORMATS = ("text", "json", "sarif")


def add_format_arguments(parser: argparse.ArgumentParser, *, sarif: bool = True) -> None:
    """Add ``--format`` and ``--output`` to ``parser``."""
    choices = REPORT_FORMATS if sarif else ("text", "json")
    parser.add_argument(
        "--format",
        choices=choices,
        default="text",
        help="report format (default: text)",
    )
    parser.add_argument(
        "--output",
        "-o",
        metavar="FILE",
        type=Path,
        help="write the report to FILE instead of stdout",
    )


def emit_report(report: Report, fmt: str, output: Path | None) -> None:
    """Render ``report`` in ``fmt`` and write it to ``output`` or stdout."""
    from trainwarden.report import render

    color = output is None and fmt == "text" and _stdout_is_color_terminal()
    write_output(render(report, fmt, color=color), output)


def write_output(text: str, output: str | os.PathLike[str] | None) -> None:
    """Write ``text`` to ``output`` or to stdout, and make sure all of it got there.

    A regular file (or a new path) is replaced atomically and synced. Anything else that
    already exists (``/dev/stdout``, ``/dev/null``, ``/dev/full``, a FIFO, a terminal) is
    written to as a stream, never replaced: renaming a file over ``/dev/null`` as root would
    break the machine. A FIFO nobody reads is an error, not a hang. A report that could not be
    written completely (a full disk, ``-o /dev/full``) is an error, never a silent exit 0 with
    truncated output.

    Raises:
        InputError: The report could not be written.
        BrokenPipeError: The reader of stdout went away (``| head``); ``main`` treats it as
            success.
    """
    if output is None or str(output) == "-":
        write_stdout(text)
        return
    path = Path(output)
    if _is_stream(path):
        _write_stream(path, text.encode("utf-8"))
        return
    atomic_write(path, text, what="report")


def _is_stream(path: Path) -> bool:
    """Whether ``path`` names something to write into rather than a file to replace.

    Devices, FIFOs and sockets, reached directly or through a symlink (``/dev/stdout`` ->
    ``/proc/self/fd/1`` -> a pipe), are written into, as a shell redirection would. Regular
    files, and symlinks to them, are replaced atomically (never written through).
    """
    try:
        info = path.stat()  # follows links
    except (OSError, ValueError):
        return False  # a new file, a dangling link: the atomic write says what fails
    return not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode))


def _write_stream(path: Path, data: bytes) -> None:
    flags = os.O_WRONLY | os.O_CLOEXEC | os.O_NOCTTY | getattr(os, "O_NONBLOCK", 0)
    try:
        # Non-blocking open: a FIFO nobody reads fails (ENXIO) instead of hanging.
        fd = os.open(path, flags)
    except OSError as exc:
        reason = "nothing reads that FIFO" if exc.errno == errno.ENXIO else exc.strerror or exc
        raise InputError(f"cannot write the output to {path}: {reason}") from exc
    try:
        os.set_blocking(fd, True)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError as exc:
        raise InputError(f"cannot write the output to {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)


def write_stdout(text: str) -> None:
    """Write ``text`` to stdout and flush, turning a failed write into :class:`InputError`."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise InputError(
            f"cannot write the report to standard output: {exc.strerror or exc}"
        ) from exc


def is_write_failure(exc: OSError) -> bool:
    """True for errors that mean output was lost (full disk, quota, I/O error)."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG)


def _stdout_is_color_terminal() -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    return sys.stdout.isatty()
