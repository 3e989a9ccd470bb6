"""Writing a report to ``--output`` when that path is a device or a FIFO (``-o /dev/full``).

``_common.write_output`` writes through the one atomic write, which renames a new file over
the path: over a device node (``/dev/full``, ``/dev/stdout``) that would replace the node with
a regular file (as root, for the whole machine) and report success. A shell redirection writes
*through* a special file instead, and so does this.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path

from trainwarden.cli._common import write_output
from trainwarden.errors import InputError
from trainwarden.findings import Report

__all__ = ["emit", "write_text"]

_FLAGS = os.O_WRONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | os.O_NOCTTY


def write_text(text: str, output: Path | None) -> None:
    """Write ``text`` to ``output`` (atomically) or stdout; write through a special file.

    Raises:
        InputError: the text could not be written completely.
        BrokenPipeError: the reader of stdout went away.
    """
    if output is not None and str(output) != "-":
        try:
            info = output.stat()  # follows links: /dev/stdout -> /proc/self/fd/1
        except FileNotFoundError:
            info = None
        except OSError as exc:
            raise InputError(f"cannot write the report to {output}: {exc.strerror}") from exc
        if info is not None and not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
            _write_through(text, output)
            return
    write_output(text, output)


def _write_through(text: str, output: Path) -> None:
    try:
        # Non-blocking open: a FIFO nobody reads fails (ENXIO) instead of hanging.
        fd = os.open(output, _FLAGS)
    except OSError as exc:
        reason = "nothing reads that FIFO" if exc.errno == errno.ENXIO else exc.strerror
        raise InputError(f"cannot write the report to {output}: {reason}") from exc
    try:
        os.set_blocking(fd, True)
        view = memoryview(text.encode("utf-8"))
        while view:
            view = view[os.write(fd, view) :]
    except OSError as exc:
        raise InputError(f"cannot write the report to {output}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)


def emit(report: Report, fmt: str, output: Path | None) -> None:
    """Render ``report`` in ``fmt`` and write it (``_common.emit_report``, with the above)."""
    from trainwarden.report import render

    color = (
        output is None and fmt == "text" and not os.environ.get("NO_COLOR") and sys.stdout.isatty()
    )
    write_text(render(report, fmt, color=color), output)
