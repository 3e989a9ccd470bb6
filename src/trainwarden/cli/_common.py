"""What every command shares: exit codes, the common flags, keys, output and progress.

One definition of each, so a flag means the same in every command: ``--key`` the private key
you sign or write with, ``--pubkey`` (and ``--seal-pubkey``, ``--ledger-pubkey``...) public
keys you trust, ``--format``/``--output``/``-o`` the report, ``--jobs``/``-j`` the parallelism
and ``--no-progress`` silences progress on stderr.

Importing this module is cheap (argparse, os, sys, pathlib): ``build_parser`` runs on every
invocation, so everything heavier (rich, cryptography, the capabilities) is imported inside the
function that needs it.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from trainwarden.errors import ConfigError, InputError

if TYPE_CHECKING:
    from trainwarden.findings import Report
    from trainwarden.keys import PrivateKey, PublicKey

#: Exit codes of every command (the interface contract): 0 clean or verified; 1 findings at or
#: above ``--fail-on``, tampering, or verification failed; 2 usage or operational error.
EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_ERROR = 2

#: ``schema_version`` of the JSON documents the commands print themselves (reports rendered by
#: :mod:`trainwarden.report` carry their own, also 1).
SCHEMA_VERSION = 1

REPORT_FORMATS = ("text", "json", "sarif")
#: The most workers ``--jobs`` accepts: above any real machine, below what would exhaust
#: processes or threads by a typo (``-j 100000``).
MAX_JOBS = 1024

# -- argument types ---------------------------------------------------------------------------


def path_arg(text: str) -> Path:
    """An argparse type: a path, never the empty string (``Path("")`` would mean ``.``)."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path is not a file name")
    return Path(text)


def jobs_arg(text: str) -> int:
    """An argparse type: a worker count between 1 and :data:`MAX_JOBS`."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= MAX_JOBS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_JOBS}, not {value}")
    return value


# -- the common flags -------------------------------------------------------------------------


def add_format_argument(
    parser: argparse._ActionsContainer, formats: Sequence[str] = REPORT_FORMATS
) -> None:
    """``--format`` with ``formats`` (the first is the default)."""
    parser.add_argument(
        "--format",
        choices=tuple(formats),
        default=formats[0],
        help=f"output format (default: {formats[0]})",
    )


def add_output_argument(parser: argparse._ActionsContainer, *, text: str | None = None) -> None:
    """``--output/-o FILE``: where the report goes (stdout by default, or ``-``)."""
    parser.add_argument(
        "--output",
        "-o",
        metavar="FILE",
        type=path_arg,
        help=text or "write the output to FILE instead of stdout ('-' for stdout)",
    )


def add_output_arguments(
    parser: argparse._ActionsContainer, formats: Sequence[str] = REPORT_FORMATS
) -> None:
    """``--format`` and ``--output/-o``."""
    add_format_argument(parser, formats)
    add_output_argument(parser)


def add_jobs_argument(parser: argparse._ActionsContainer, text: str) -> None:
    """``--jobs/-j N`` (``None`` when not given: the capability's default)."""
    parser.add_argument("--jobs", "-j", type=jobs_arg, metavar="N", help=text)


def add_progress_argument(parser: argparse._ActionsContainer) -> None:
    """``--no-progress``."""
    parser.add_argument("--no-progress", action="store_true", help="never show progress on stderr")


def add_key_argument(
    parser: argparse._ActionsContainer, text: str, *, required: bool = False
) -> None:
    """``--key KEY``: the private key this command signs or writes with."""
    parser.add_argument("--key", metavar="KEY", type=path_arg, required=required, help=text)


def add_pubkey_argument(
    parser: argparse._ActionsContainer,
    flag: str,
    text: str,
    *,
    aliases: Sequence[str] = (),
) -> None:
    """A repeatable trusted-public-key option (a key file, or a directory of ``*.pub``).

    Older spellings (``--key`` on verification commands, as the interface contract names it)
    are hidden aliases of the same option. ``dest`` is the flag's name (``--seal-pubkey`` ->
    ``seal_pubkey``), a list, empty when not given.
    """
    dest = flag.lstrip("-").replace("-", "_")
    parser.add_argument(
        flag, action="append", default=[], metavar="PUB", type=path_arg, dest=dest, help=text
    )
    for alias in aliases:
        parser.add_argument(
            alias, action="append", metavar="PUB", type=path_arg, dest=dest, help=argparse.SUPPRESS
        )


# -- keys ---------------------------------------------------------------------------------


def load_private_key(path: Path, *, flag: str = "--key") -> PrivateKey:
    """The private key at ``path`` (the value of ``flag``).

    The key library opens it without blocking (a FIFO planted there fails at once), refuses a
    key others can read, and names a public key given here for what it is rather than asking
    for ``chmod 600`` on it. The flag is put in front of its message, so the user knows which
    option to fix.

    Raises:
        InputError: Not a usable private key.
    """
    from trainwarden.keys import load_private_key as load

    try:
        return load(path)
    except InputError as exc:
        raise InputError(f"{flag}: {exc}") from exc


def load_private_key_fd(fd: int, *, flag: str = "--key-fd") -> PrivateKey:
    """The private key read from the open descriptor ``fd``, which is closed afterwards.

    For keys a platform opens for the process (``3</etc/trainwarden/platform.key``), so the
    key's path never has to be readable by the user.

    Raises:
        ConfigError: ``fd`` is a standard stream.
        InputError: ``fd`` is not open, or holds no usable private key.
    """
    if fd < 3:
        raise ConfigError(f"{flag} {fd}: descriptors 0-2 are the standard streams")
    try:
        os.fstat(fd)
    except OSError as exc:
        raise InputError(f"{flag} {fd}: {exc.strerror or exc}") from exc
    try:
        return load_private_key(Path(f"/proc/self/fd/{fd}"), flag=f"{flag} {fd}")
    finally:
        # Whatever the job launched next must not inherit the key.
        os.close(fd)


def load_public_keys(paths: Iterable[Path], *, flag: str = "--pubkey") -> list[PublicKey]:
    """The trusted public keys named by a ``--pubkey``-style option (files or ``*.pub`` dirs).

    Raises:
        InputError: A key cannot be read or parsed, or a directory holds no ``*.pub`` file.
    """
    from trainwarden.keys import load_public_keys as load

    try:
        return load(paths)
    except InputError as exc:
        raise InputError(f"{flag}: {exc}") from exc


# -- output -------------------------------------------------------------------------------


def check_output(
    output: str | os.PathLike[str] | None,
    inputs: Iterable[str | os.PathLike[str] | None],
    *,
    what: str = "--output",
    streams: bool = True,
) -> None:
    """Refuse an output over an input or inside an input directory, before any work is done.

    A report written over the file it is about destroys the evidence; a report written into a
    verified directory becomes an unexpected file of the next verification.

    A missing parent directory is refused here too, so a long command (a drill, a report of a
    large run) does not do all its work and then fail to write. So is, with ``streams=False``
    (outputs always written as a whole file, never as a stream), an existing device, FIFO or
    socket, which that write refuses anyway.

    Raises:
        InputError: ``output`` is an input, lies inside one, is a directory, its parent
            directory does not exist, or (``streams=False``) it is a special file.
    """
    if output is None or str(output) == "-":
        return
    if not str(output):
        raise InputError(f"{what} needs a file name ('-' for stdout)")
    from trainwarden._fs import check_output_path

    check_output_path(output, [p for p in inputs if p is not None])
    path = Path(output)
    if path.is_dir():
        raise InputError(f"{what} {output} is a directory")
    if not path.parent.is_dir():
        raise InputError(f"{what} {output}: no directory {path.parent} to write it in")
    if not streams:
        from trainwarden._fs import refuse_special

        refuse_special(path, what)


def dumps(value: Any) -> str:
    """Deterministic, readable JSON (sorted keys, indented, UTF-8 as is, a final newline)."""
    import json

    return json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def emit_report(report: Report, fmt: str, output: str | os.PathLike[str] | None) -> None:
    """Render ``report`` in ``fmt`` and write it to ``output`` or stdout."""
    from trainwarden.report import render

    color = output is None and fmt == "text" and stdout_is_color_terminal()
    write_output(render(report, fmt, color=color), output)


def write_output(text: str, output: str | os.PathLike[str] | None) -> None:
    r"""Write ``text`` to ``output`` or to stdout, and make sure all of it got there.

    A regular file (or a new path) is replaced atomically and synced. Anything else that
    already exists (``/dev/stdout``, ``/dev/null``, ``/dev/full``, a FIFO, a terminal) is
    written to as a stream, never replaced: renaming a file over ``/dev/null`` as root would
    break the machine. A FIFO nobody reads is an error, not a hang. A report that could not be
    written completely (a full disk, ``-o /dev/full``) is an error, never a silent exit 0 with
    truncated output.

    The text is written as UTF-8 whatever the locale. File names that are not UTF-8 reach us
    as lone surrogates (``\udcff``); they are written as that escape, which keeps JSON valid
    and shows in text what the name really holds, instead of failing the whole report.

    Raises:
        InputError: The report could not be written.
        BrokenPipeError: The reader of stdout went away (``| head``); ``main`` treats it as
            success.
    """
    data = text.encode("utf-8", "backslashreplace")
    if output is None or str(output) == "-":
        _write_stdout(data)
        return
    path = Path(output)
    if _is_stream(path):
        _write_stream(path, data)
        return
    from trainwarden._fs import atomic_write

    atomic_write(path, data, what="report")


def _write_stdout(data: bytes) -> None:
    try:
        buffer = getattr(sys.stdout, "buffer", None)
        if buffer is None:  # a StringIO put in place of stdout
            sys.stdout.write(data.decode("utf-8"))
        else:
            sys.stdout.flush()
            buffer.write(data)
            buffer.flush()
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise InputError(
            f"cannot write the report to standard output: {exc.strerror or exc}"
        ) from exc


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
    import errno

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


def stdout_is_color_terminal() -> bool:
    """Whether text on stdout may be coloured (a terminal, and ``NO_COLOR`` unset)."""
    if os.environ.get("NO_COLOR"):
        return False
    return sys.stdout.isatty()


def shown(value: object) -> str:
    """``str(value)`` with control characters escaped: untrusted names cannot forge a line."""
    from trainwarden.report import escape_text

    return escape_text(str(value))


# -- progress -----------------------------------------------------------------------------

#: On a terminal, the live display appears once the work has taken this long (quick
#: commands do not flicker).
LIVE_AFTER = 1.0
#: Elsewhere (a CI log, ``2> file``): the first plain line once the work has taken this
#: long, then at most one this often, so quick commands print nothing and long ones are never
#: silent.
PLAIN_AFTER = 5.0
PLAIN_EVERY = 5.0


class Progress:
    """Progress of long work on stderr: live on a terminal, a plain line now and then otherwise.

    One display for every command. Library callbacks differ in shape (``(done, total)`` bytes,
    ``(path)`` per file, ``(message)``, ``(stage, done, total)``); each command adapts its
    callback to :meth:`update` in a line. :meth:`note` prints a line that must always show
    (a warning, a result), above the live display. Everything shown is escaped: messages carry
    file names an adversary chose. Failing to write progress never fails the command.

    Use it as a context manager (or call :meth:`close`), so the live display is cleared.
    """

    def __init__(
        self,
        label: str,
        *,
        enabled: bool,
        unit: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Show progress of ``label`` (``""``: none) counted in ``unit`` (``bytes``, ``files``).

        Args:
            label: What the work is, e.g. ``signing ckpt/``.
            enabled: ``False`` for ``--no-progress``: nothing is shown but ``always`` notes.
            unit: ``bytes`` (shown as sizes with a rate), a plural noun, or ``""``.
            clock: Monotonic seconds (tests pass a fake).
        """
        self.label = label
        self.enabled = enabled
        self.unit = unit
        self._clock = clock
        self._start = clock()
        self._last_line: float | None = None
        self._lock = threading.RLock()
        self._done: int | None = None
        self._total: int | None = None
        self._message = ""
        self._live: Any = None  # rich.progress.Progress while shown
        self._task: Any = None
        self._console: Any = None
        self._broken = False  # stderr failed once: never try again
        term = os.environ.get("TERM", "")
        self.terminal = enabled and term != "dumb" and _isatty(sys.stderr)

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def update(
        self,
        *,
        done: int | None = None,
        total: int | None = None,
        advance: int = 0,
        message: str | None = None,
    ) -> None:
        """Record progress and show it if it is time to.

        Args:
            done: Units done so far.
            total: Units in all (``None`` or 0: unknown).
            advance: Add to ``done`` (for callbacks called once per item).
            message: What is being done now (a stage, the current file).
        """
        if not self.enabled:
            return
        with self._lock:
            if done is not None:
                self._done = done
            if advance:
                self._done = (self._done or 0) + advance
            if total is not None:
                self._total = total or None
            if message is not None:
                self._message = message
            try:
                self._show()
            except (OSError, ValueError):
                self.enabled = False  # progress is never worth failing the command for

    def note(self, text: str, *, style: str = "", always: bool = False) -> None:
        """Print ``trainwarden: TEXT`` on stderr now (above the live display on a terminal).

        Args:
            text: The line (escaped here).
            style: A rich style for a terminal, e.g. ``yellow`` for a warning.
            always: Print it under ``--no-progress`` too (a warning is not progress: the
                flag is used in scripts and batch jobs, where hiding it hides it for good).
        """
        if not (self.enabled or always) or self._broken:
            return
        with self._lock:
            line = f"trainwarden: {shown(text)}"
            try:
                if self.terminal:
                    from rich.text import Text

                    console = self._live.console if self._live is not None else self._get_console()
                    console.print(Text(line, style=style))
                else:
                    sys.stderr.write(line + "\n")
                    sys.stderr.flush()
            except (OSError, ValueError):
                self.enabled = False
                self._broken = True

    def stop(self) -> None:
        """Clear the live display (e.g. before another program writes to the terminal).

        The next :meth:`update` shows it again.
        """
        with self._lock:
            if self._live is not None:
                live, self._live = self._live, None
                try:
                    live.stop()
                except (OSError, ValueError):
                    self.enabled = False

    def close(self) -> None:
        """Clear the live display; nothing more is shown."""
        self.stop()
        self.enabled = False

    # -- showing ---------------------------------------------------------------------------

    def _show(self) -> None:
        now = self._clock()
        elapsed = now - self._start
        if self.terminal:
            if self._live is None:
                if elapsed < LIVE_AFTER:
                    return
                self._start_live()
            amount = self._amount(elapsed)
            # What is left of the line for the message, whose end (a file name) is what
            # matters: cut from the left.
            room = self._live.console.width - len(self.label) - len(amount) - 34
            message = shown(self._message)
            if len(message) > max(room, 10):
                message = "…" + message[-max(room, 10) + 1 :]
            self._live.update(
                self._task,
                completed=self._done or 0,
                total=self._total,
                amount=amount,
                message=message,
            )
            return
        if elapsed < PLAIN_AFTER:
            return
        if self._last_line is not None and now - self._last_line < PLAIN_EVERY:
            return
        self._last_line = now
        parts = [p for p in (self._amount(elapsed), shown(self._message)) if p]
        head = f"{self.label}: " if self.label else ""
        sys.stderr.write(f"trainwarden: {head}{', '.join(parts)}, {elapsed:.0f} s\n")
        sys.stderr.flush()

    def _get_console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False)
        return self._console

    def _start_live(self) -> None:
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
        from rich.table import Column

        def fixed() -> Column:
            return Column(no_wrap=True)

        # Labels and messages carry names from the input: never parsed as rich markup. The
        # message takes what width is left and is cut, so the line never wraps.
        live = Progress(
            SpinnerColumn(),
            TextColumn(shown(self.label), markup=False, table_column=fixed()),
            BarColumn(bar_width=20),
            TextColumn("{task.fields[amount]}", markup=False, table_column=fixed()),
            TimeElapsedColumn(),
            TextColumn(
                "{task.fields[message]}",
                markup=False,
                style="dim",
                table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1),
            ),
            console=self._get_console(),
            transient=True,
            expand=True,
        )
        self._task = live.add_task("", total=None, amount="", message="")
        live.start()
        self._live = live

    def _amount(self, elapsed: float) -> str:
        done, total = self._done, self._total
        if done is None:
            return ""
        if self.unit == "bytes":
            text = f"{format_size(done)} of {format_size(total)}" if total else format_size(done)
            if elapsed > 0 and done:
                text += f" at {format_size(int(done / elapsed))}/s"
        else:
            text = f"{done} of {total}" if total else f"{done}"
            if self.unit:
                text += f" {self.unit}"
        if total:
            text += f" ({100 * done / total:.0f}%)"
        return text


def format_size(n: int | None) -> str:
    """A byte count for people: ``512 B``, ``4.0 GiB``."""
    if n is None:
        return "?"
    value = float(n)
    for suffix in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or suffix == "TiB":
            return f"{n} B" if suffix == "B" else f"{value:.1f} {suffix}"
        value /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False
