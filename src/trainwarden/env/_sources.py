"""Is a live function's code what its source file on disk compiles to?

Catches patches applied before any reference was taken (a saboteur's startup hook runs before
the training script): code that differs from a fresh compile of the file it claims to come
from, code generated at run time, or code from outside the package it belongs to.
"""

# ruff: noqa: PTH116, PTH120

from __future__ import annotations

import os
import re
import sys
import sysconfig
import threading
import types
from typing import Any

from trainwarden.env._dists import read_regular
from trainwarden.findings import Severity, Verdict

__all__ = ["SOURCES", "allowed_roots", "source_problem"]

_DATACLASS_DUNDERS = frozenset(
    {"__init__", "__new__", "__repr__", "__eq__", "__hash__", "__lt__", "__le__", "__gt__",
     "__ge__", "__setattr__", "__delattr__", "__getstate__", "__setstate__", "__replace__"}
)  # fmt: skip


class _SourceCache:
    """Fresh compiles of source files, and code objects already proven equal to their source."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.compiled: dict[str, tuple[tuple[int, int], dict[tuple[str, int], types.CodeType]]] = {}
        self.proven: dict[types.CodeType, tuple[str, tuple[int, int]]] = {}

    def needs_compile(self, code: types.CodeType) -> bool:
        """Whether judging ``code`` would compile a file (the expensive step), as far as known.

        A file that changed on disk since it was compiled is compiled again; that is only
        seen when it is judged (a stat per file), so this may say ``False`` for it.
        """
        if code in self.proven:
            return False
        path = code.co_filename
        if path.startswith("<"):
            return False
        return os.path.normpath(path) not in self.compiled

    def index(self, path: str) -> tuple[tuple[int, int], dict[tuple[str, int], types.CodeType]]:
        info = os.stat(path)
        key = (info.st_mtime_ns, info.st_size)
        cached = self.compiled.get(path)
        if cached is not None and cached[0] == key:
            return cached
        source = read_regular(path)
        top = compile(source, path, "exec", dont_inherit=True)
        table: dict[tuple[str, int], types.CodeType] = {}
        stack = [top]
        while stack:
            code = stack.pop()
            table[(code.co_qualname, code.co_firstlineno)] = code
            stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
        self.compiled[path] = (key, table)
        return key, table


SOURCES = _SourceCache()


# Single-file helper modules torch's own decorators come from (``typing_extensions.deprecated``).
_HELPER_MODULES = ("typing_extensions",)


def allowed_roots() -> list[str]:
    """Where the code of critical callables may come from: the stdlib, torch, numpy.

    Not site-packages as a whole: a patch defined in a planted ``sitecustomize.py`` compiles
    to exactly the code it holds, so "matches its source" only means something when the
    source is the package the callable belongs to (whose files RECORD and the lock verify).
    Entries starting with ``!`` are excluded (site directories inside the stdlib tree, as a
    venv's ``lib/pythonX.Y/site-packages``).
    """
    import site

    paths = sysconfig.get_paths()
    roots = {os.path.normpath(paths[k]) for k in ("stdlib", "platstdlib") if paths.get(k)}
    for name in ("torch", "numpy", *_HELPER_MODULES):
        module = sys.modules.get(name)
        file = getattr(module, "__file__", None)
        if not isinstance(file, str):
            continue
        file = os.path.normpath(file)
        # A package is its directory; a single-file module is just that file.
        roots.add(os.path.dirname(file) if file.endswith("__init__.py") else file)
    # trainwarden's own wrappers (protect(), the guard) are not allowed here by location: they
    # are recognised by identity through trainwarden.patching, and their originals checked.
    sites = [*site.getsitepackages(), site.getusersitepackages()]
    roots.update("!" + os.path.normpath(p) for p in sites if p)
    return sorted(roots)


def inside(path: str, roots: list[str]) -> bool:
    """Whether ``path`` lies in an allowed root (``roots`` from :func:`allowed_roots`)."""

    def under(root: str) -> bool:
        return path == root or path.startswith(root + os.sep)

    allowed = [r for r in roots if not r.startswith("!") and under(r)]
    if not allowed:
        return False
    # The deepest match decides: torch/ inside site-packages is allowed, site-packages
    # itself (inside the stdlib tree of a venv) is not.
    deepest = max(allowed, key=len)
    return not any(r.startswith("!") and under(r[1:]) and len(r) - 1 > len(deepest) for r in roots)


def source_problem(
    fn: types.FunctionType, owner: Any, roots: list[str]
) -> tuple[str, Severity, Verdict] | None:
    """Why ``fn``'s code does not match its on-disk source, or ``None`` when it does."""
    code = fn.__code__
    if code in SOURCES.proven:
        return None  # proven equal to its source on an earlier check
    path = code.co_filename
    frozen = _FROZEN.match(path)
    if frozen is not None:
        return _frozen_problem(code, frozen.group(1))
    if path.startswith("<"):
        if (
            isinstance(owner, type)
            and fn.__name__ in _DATACLASS_DUNDERS
            and (hasattr(owner, "__dataclass_fields__") or hasattr(owner, "_fields"))
        ):
            return None  # generated by dataclasses / namedtuple from the class: not on disk
        return (f"its code was generated at run time ({path}), not loaded from a file",
                Severity.HIGH, Verdict.UNSAFE)  # fmt: skip
    norm = os.path.normpath(path)
    if not inside(norm, roots):
        return (f"its code comes from {path}, outside the packages it belongs to",
                Severity.HIGH, Verdict.UNSAFE)  # fmt: skip
    try:
        key, table = SOURCES.index(norm)
    except OSError as exc:
        return (f"its source {path} cannot be read ({exc.strerror})", Severity.MEDIUM,
                Verdict.UNKNOWN)  # fmt: skip
    except (SyntaxError, ValueError) as exc:
        return (f"its source {path} no longer compiles ({exc})", Severity.HIGH, Verdict.UNSAFE)
    fresh = table.get((code.co_qualname, code.co_firstlineno))
    if fresh is None or fresh.replace(co_filename=code.co_filename) != code:
        return (
            f"its code differs from a fresh compile of {path}:{code.co_firstlineno} (patched "
            "in memory before the reference, or the source changed since import)",
            Severity.HIGH,
            Verdict.UNSAFE,
        )
    SOURCES.proven[code] = (norm, key)
    return None


_FROZEN = re.compile(r"^<frozen ([A-Za-z0-9_.]+)>$")


def _frozen_problem(code: types.CodeType, module: str) -> tuple[str, Severity, Verdict] | None:
    """Compare with the interpreter's own frozen copy (``co_filename`` alone proves nothing)."""
    import _imp

    try:
        if not _imp.is_frozen(module):
            raise ImportError(module)
        top = _imp.get_frozen_object(module)
    except ImportError:
        return (f"its code claims to be frozen module {module}, which does not exist",
                Severity.HIGH, Verdict.UNSAFE)  # fmt: skip
    stack = [top]
    while stack:
        candidate = stack.pop()
        if (candidate.co_qualname, candidate.co_firstlineno) == (
            code.co_qualname,
            code.co_firstlineno,
        ):
            if candidate == code:
                SOURCES.proven[code] = (module, (0, 0))
                return None
            break
        stack.extend(c for c in candidate.co_consts if isinstance(c, types.CodeType))
    return (f"its code differs from the interpreter's frozen {module}", Severity.HIGH,
            Verdict.UNSAFE)  # fmt: skip
