"""What standard-library module attributes really are (generated: do not edit).

Written by scripts/gen_aliases.py from Python 3.11: every module attribute that is
another module, or a function or class defined elsewhere, whose target the dangerous
catalogue knows. ``find_class`` walks dotted names through these attributes.
"""

from __future__ import annotations

ALIASES: dict[str, str] = {
    "_pyio.Lock": "_thread.allocate_lock",
    "_pyio.open_code": "io.open_code",
    "_strptime._thread_allocate_lock": "_thread.allocate_lock",
    "_threading_local.RLock": "threading.RLock",
    "_threading_local.current_thread": "threading.current_thread",
    "argparse._os": "os",
    "argparse._sys": "sys",
    "bz2._builtin_open": "io.open",
    "collections._starmap": "itertools.starmap",
    "collections._sys": "sys",
    "contextlib.wraps": "functools.wraps",
    "crypt._sys": "sys",
    "curses._os": "os",
    "curses._sys": "sys",
    "enum.bltns": "builtins",
    "enum.reduce": "_functools.reduce",
    "functools.RLock": "_thread.RLock",
    "hmac._warnings": "warnings",
    "imghdr.PathLike": "os.PathLike",
    "io._io": "io",
    "pathlib.attrgetter": "operator.attrgetter",
    "pickletools.decode_long": "pickle.decode_long",
    "posixpath._path_normpath": "posix._path_normpath",
    "pprint._sys": "sys",
    "pprint._types": "types",
    "random._os": "os",
    "random._urandom": "posix.urandom",
    "reprlib.get_ident": "_thread.get_ident",
    "statistics.reduce": "_functools.reduce",
    "tokenize._builtin_open": "io.open",
    "tokenize._itertools": "itertools",
    "unittest.result.wraps": "functools.wraps",
    "unittest.signals.wraps": "functools.wraps",
    "warnings._showwarning_orig": "warnings.showwarning",
    "xdrlib.wraps": "functools.wraps",
}
