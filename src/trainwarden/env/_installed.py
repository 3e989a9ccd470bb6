"""Whose installed code is this? Live functions and classes attributed to a verified distribution.

Popular libraries change torch's process state as a matter of course: transformers adds a
``smart_apply`` method to ``torch.nn.Module`` and an import finder to ``sys.meta_path``;
Lightning imports torch's functional collectives, which register autograd formulas lazily.
None of that is tampering when the code doing it is a file an installed distribution's RECORD
lists *with the hash the file has now* (``env verify`` and the signed lock vouch for the same
files on disk). Anything less (a file no RECORD lists, an editable install, a hash that no
longer matches, code generated at run time) is not attributed, and stays a finding.
"""

# ruff: noqa: PTH100, PTH112, PTH116

from __future__ import annotations

import os
import site
import sys
import threading
import types
from typing import Any

from trainwarden.env._dists import SiteLayout, discover
from trainwarden.env._hashing import hash_file, record_digest
from trainwarden.env._sources import SOURCES

__all__ = ["class_defines", "owner_classes", "verified_function", "verified_owner"]

_lock = threading.Lock()
_layouts: dict[str, SiteLayout] = {}
# path -> (stat key, verdict): a file is hashed again only when it changed on disk.
_verdicts: dict[str, tuple[tuple[int, int, int, int], tuple[str | None, str | None]]] = {}


def _site_dirs() -> list[str]:
    """Directories that may hold installed distributions: site dirs and ``sys.path`` entries.

    ``sys.path`` matters for a venv whose packages come from another environment through a
    ``.pth`` path line (the drill's sandbox): their dist-info lies beside them there.
    """
    candidates = [*site.getsitepackages(), site.getusersitepackages(), *sys.path]
    out: list[str] = []
    for entry in candidates:
        if not isinstance(entry, str) or not entry:
            continue
        path = os.path.normpath(os.path.abspath(entry))
        if path not in out and os.path.isdir(path):
            out.append(path)
    return out


def _layout(site_dir: str) -> SiteLayout:
    with _lock:
        cached = _layouts.get(site_dir)
    if cached is not None:
        return cached
    layout = discover(site_dir)  # parsing every RECORD of the directory: once per process
    with _lock:
        _layouts[site_dir] = layout
    return layout


def verified_owner(path: str) -> tuple[str | None, str | None]:
    """``(distribution, None)`` when ``path`` is verified installed code, else ``(None, why)``.

    Verified: a non-editable distribution's RECORD lists the file with a hash, and the file's
    content has that hash now. The verdict is cached per file and recomputed when the file's
    size, modification or change time, or inode differ.
    """
    if not path or path.startswith("<"):
        return None, "its code was not loaded from a file"
    norm = os.path.normpath(os.path.abspath(path))
    try:
        info = os.stat(norm)
    except OSError as exc:
        return None, f"{norm} cannot be read ({exc.strerror})"
    key = (info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino)
    with _lock:
        cached = _verdicts.get(norm)
    if cached is not None and cached[0] == key:
        return cached[1]
    verdict = _judge(norm)
    with _lock:
        _verdicts[norm] = (key, verdict)
    return verdict


def _judge(path: str) -> tuple[str | None, str | None]:
    sites = [s for s in _site_dirs() if path.startswith(s + os.sep)]
    if not sites:
        return None, f"{path} is not inside a site directory"
    for site_dir in sorted(sites, key=len, reverse=True):
        for dist in _layout(site_dir).owners.get(path, ()):
            if dist.editable:
                return None, f"{dist.label} is an editable install (no RECORD covers its code)"
            entry = next((e for e in dist.entries if e.path == path), None)
            if entry is None or entry.algorithm is None or entry.digest is None:
                return None, f"the RECORD of {dist.label} lists {path} without a hash"
            try:
                digest = hash_file(path, entry.algorithm)
            except OSError as exc:
                return None, f"{path} cannot be read ({exc.strerror})"
            if record_digest(digest.digest) != entry.digest:
                return None, f"{path} differs from the RECORD of {dist.label}"
            return dist.label, None
    return None, f"no installed distribution's RECORD lists {path}"


def verified_function(fn: types.FunctionType) -> tuple[str | None, str | None]:
    """The distribution whose verified file ``fn``'s code is a fresh compile of, or why not.

    The code object is compared with a fresh compile of its file (a function patched in memory
    keeps its file name), and the file must be verified installed code (:func:`verified_owner`).
    """
    code = fn.__code__
    label, why = verified_owner(code.co_filename)
    if label is None:
        return None, why
    path = os.path.normpath(os.path.abspath(code.co_filename))
    try:
        _, table = SOURCES.index(path)
    except (OSError, SyntaxError, ValueError) as exc:
        return None, f"{path} cannot be compiled ({exc})"
    fresh = table.get((code.co_qualname, code.co_firstlineno))
    if fresh is None or fresh.replace(co_filename=code.co_filename) != code:
        return None, f"its code differs from a fresh compile of {path}:{code.co_firstlineno}"
    return label, None


def class_defines(cls: type, attr: str) -> bool | None:
    """Whether the source of ``cls``'s own class body mentions ``attr``; ``None``: unknown.

    A class body's code names every attribute it assigns (``def step``, ``step = ...``): an
    attribute found on the class today that its body never names was added from outside.
    Unknown (a C type, a class whose module has no readable source) counts as "defines".
    """
    module = sys.modules.get(getattr(cls, "__module__", "") or "")
    file = getattr(module, "__file__", None)
    if not isinstance(file, str) or not file.endswith(".py"):
        return None
    try:
        _, table = SOURCES.index(os.path.normpath(os.path.abspath(file)))
    except (OSError, SyntaxError, ValueError):
        return None
    bodies = [code for (qualname, _), code in table.items() if qualname == cls.__qualname__]
    if len(bodies) != 1:
        return None  # the class is defined twice in the file, or not in it: cannot tell
    return attr in bodies[0].co_names or attr in bodies[0].co_varnames


def owner_classes(owner: Any, attr: str) -> list[type]:
    """The classes of ``owner``'s MRO (``object`` excluded) that hold ``attr`` themselves."""
    if not isinstance(owner, type):
        return []
    return [k for k in owner.__mro__ if k is not object and attr in k.__dict__]
