"""Startup-code vectors: code that runs in every Python process before the training script.

``.pth`` lines starting with ``import`` run at interpreter start; ``sitecustomize`` and
``usercustomize`` are imported by ``site``; ``PYTHONPATH`` puts directories before the
standard library; import hooks see (and can rewrite) every later import.
"""

# ruff: noqa: PTH109, PTH112, PTH113, PTH118, PTH119, PTH120, PTH208

from __future__ import annotations

import os
import site
import sys
import sysconfig
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from trainwarden import patching
from trainwarden.env._dists import SiteLayout, read_regular
from trainwarden.env._site import SiteScan, default_site_dirs, finding
from trainwarden.findings import FileReport, Finding, Severity, Verdict

__all__ = [
    "ENVIRONMENT_REPORT",
    "PROCESS_REPORT",
    "check_environment_variables",
    "check_import_hooks",
    "check_startup",
]

#: Report path for findings about environment variables (not a file).
ENVIRONMENT_REPORT = "<environment>"
#: Report path for findings about the running process (import hooks).
PROCESS_REPORT = "<process>"

_MAX_PTH_BYTES = 1 << 20
# The import system's own finders and hooks; anything else was put there by some package.
_BUILTIN_HOOK_MODULES = frozenset(
    {
        "importlib._bootstrap",
        "importlib._bootstrap_external",
        "_frozen_importlib",
        "_frozen_importlib_external",
        "zipimport",
        "importlib.machinery",
    }
)


def _finding(
    rule: str,
    severity: Severity,
    verdict: Verdict,
    message: str,
    path: str,
    evidence: str | None = None,
) -> Finding:
    return finding(rule, severity, verdict, message, path, evidence=evidence)


def _short(text: str, limit: int = 120) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _owner(layouts: Iterable[SiteLayout], path: str) -> str | None:
    for layout in layouts:
        owners = layout.owners.get(path)
        if owners:
            return owners[0].label
    return None


def _check_pth(scan: SiteScan) -> list[Finding]:
    """Judge every ``.pth`` file of one site directory."""
    out: list[Finding] = []
    site_dir = scan.layout.site
    for path in sorted(scan.files):
        if os.path.dirname(path) != site_dir or not path.endswith(".pth"):
            continue
        try:
            data = read_regular(path, _MAX_PTH_BYTES)
        except OSError as exc:
            out.append(
                _finding(
                    "pth-unreadable",
                    Severity.MEDIUM,
                    Verdict.ERROR,
                    f"{os.path.basename(path)} cannot be read: {exc.strerror or exc}.",
                    path,
                )
            )
            continue
        # site.py decodes with the locale encoding; every byte sequence that could be an
        # import line is ASCII, so a replacing decode cannot hide one.
        lines = data.decode("utf-8", errors="replace").splitlines()
        exec_lines = [ln for ln in lines if ln.startswith(("import ", "import\t"))]
        path_lines = [
            ln.strip()
            for ln in lines
            if ln.strip() and not ln.startswith("#") and ln not in exec_lines
        ]
        owner = _owner([scan.layout], path)
        if exec_lines:
            if owner is None:
                out.append(
                    _finding(
                        "pth-exec",
                        Severity.HIGH,
                        Verdict.UNSAFE,
                        f"{os.path.basename(path)} runs code at every interpreter start "
                        f"({len(exec_lines)} import line(s)) and belongs to no installed "
                        "distribution.",
                        path,
                        _short(exec_lines[0]),
                    )
                )
            else:
                out.append(
                    _finding(
                        "pth-exec-known",
                        Severity.INFO,
                        Verdict.SAFE,
                        f"{os.path.basename(path)} runs code at every interpreter start; it is "
                        f"installed by {owner} (its content is checked against that RECORD).",
                        path,
                        _short(exec_lines[0]),
                    )
                )
        if path_lines and owner is None:
            out.append(
                _finding(
                    "pth-path",
                    Severity.MEDIUM,
                    Verdict.UNKNOWN,
                    f"{os.path.basename(path)} adds {len(path_lines)} director(y/ies) to "
                    "sys.path and belongs to no installed distribution: code there is "
                    "importable and not verified.",
                    path,
                    _short(", ".join(path_lines)),
                )
            )
    return out


def _stdlib_dirs() -> set[str]:
    dirs = set()
    for key in ("stdlib", "platstdlib"):
        value = sysconfig.get_paths().get(key)
        if value:
            dirs.add(os.path.normpath(value))
    return dirs


def _find_module(directory: str, name: str) -> str | None:
    """The file ``import name`` would load from ``directory`` alone, else ``None``."""
    import importlib.machinery

    try:
        spec = importlib.machinery.PathFinder.find_spec(name, [directory])
    except (ImportError, OSError, ValueError):
        return None
    if spec is None or spec.loader is None:  # absent, or a namespace portion (runs nothing)
        return None
    return spec.origin or directory


def _check_customize(scans: Sequence[SiteScan], search: Sequence[str]) -> list[Finding]:
    """``sitecustomize`` / ``usercustomize`` anywhere they would be imported from."""
    out: list[Finding] = []
    stdlib = _stdlib_dirs()
    layouts = [s.layout for s in scans]
    seen: set[str] = set()
    for directory in search:
        if not directory or not os.path.isdir(directory):
            continue
        for name in ("sitecustomize", "usercustomize"):
            origin = _find_module(directory, name)
            if origin is None or origin in seen:
                continue
            seen.add(origin)
            owner = _owner(layouts, origin)
            when = (
                "imported by site at every interpreter start"
                if name == "sitecustomize"
                else "imported at every start while the user site is enabled"
            )
            if owner is not None:
                out.append(
                    _finding(
                        name,
                        Severity.LOW,
                        Verdict.SAFE,
                        f"{origin}: {name} ({when}) is installed by {owner}; its content is "
                        "checked against that RECORD.",
                        origin,
                        owner,
                    )
                )
            elif os.path.normpath(directory) in stdlib:
                out.append(
                    _finding(
                        name,
                        Severity.MEDIUM,
                        Verdict.UNKNOWN,
                        f"{origin}: {name} in the standard library directory is {when}; it "
                        "comes from the Python installation, which no RECORD covers.",
                        origin,
                    )
                )
            else:
                out.append(
                    _finding(
                        name,
                        Severity.HIGH,
                        Verdict.UNSAFE,
                        f"{origin}: {name} is {when} and belongs to no installed distribution: "
                        "any code in it runs before the training script.",
                        origin,
                    )
                )
    return out


def _top_level_names(directory: str) -> dict[str, str]:
    """Importable top-level names in ``directory`` -> the path that provides each."""
    import importlib.machinery

    names: dict[str, str] = {}
    suffixes = sorted(importlib.machinery.all_suffixes(), key=len, reverse=True)
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return names
    for entry in entries:
        if entry.is_dir():
            if os.path.isfile(os.path.join(entry.path, "__init__.py")) or any(
                os.path.isfile(os.path.join(entry.path, "__init__" + s)) for s in suffixes
            ):
                names[entry.name] = entry.path
            continue
        for suffix in suffixes:
            if entry.name.endswith(suffix):
                stem = entry.name[: -len(suffix)]
                if stem and "." not in stem:
                    names.setdefault(stem, entry.path)
                break
    return names


def _installed_names(layouts: Iterable[SiteLayout]) -> set[str]:
    names: set[str] = set()
    for layout in layouts:
        for top in layout.owned_top:
            if top.endswith((".dist-info", ".egg-info", ".pth")) or top == "__pycache__":
                continue
            names.add(top.split(".", 1)[0])
    return names


def check_environment_variables(
    environ: Mapping[str, str] | None = None,
    *,
    layouts: Sequence[SiteLayout] = (),
    verified_user_site: bool = False,
) -> list[Finding]:
    """Findings about ``PYTHON*`` variables and the user site of this process's environment.

    Args:
        environ: The environment to judge (default: ``os.environ``).
        layouts: Site layouts whose top-level names a ``PYTHONPATH`` module could shadow.
        verified_user_site: The user site directory was verified as a site directory too.
    """
    env = os.environ if environ is None else environ
    out: list[Finding] = []
    startup = env.get("PYTHONSTARTUP")
    if startup:
        out.append(
            _finding(
                "pythonstartup",
                Severity.LOW,
                Verdict.SAFE,
                "PYTHONSTARTUP runs this file at the start of every interactive session "
                "(not for scripts); make sure you trust it.",
                ENVIRONMENT_REPORT,
                _short(startup),
            )
        )
    if env.get("PYTHONINSPECT"):
        out.append(
            _finding(
                "pythoninspect",
                Severity.INFO,
                Verdict.SAFE,
                "PYTHONINSPECT is set: scripts drop into an interactive prompt when they end.",
                ENVIRONMENT_REPORT,
                _short(env["PYTHONINSPECT"]),
            )
        )
    home = env.get("PYTHONHOME")
    if home:
        out.append(
            _finding(
                "pythonhome",
                Severity.MEDIUM,
                Verdict.UNKNOWN,
                "PYTHONHOME is set: the standard library comes from this directory, which "
                "nothing here verifies.",
                ENVIRONMENT_REPORT,
                _short(home),
            )
        )
    userbase = env.get("PYTHONUSERBASE")
    if userbase and site.ENABLE_USER_SITE:
        out.append(
            _finding(
                "pythonuserbase",
                Severity.MEDIUM,
                Verdict.UNKNOWN if not verified_user_site else Verdict.SAFE,
                "PYTHONUSERBASE moves the user site-packages, which is on sys.path while the "
                "user site is enabled.",
                ENVIRONMENT_REPORT,
                _short(userbase),
            )
        )
    pythonpath = env.get("PYTHONPATH")
    if pythonpath:
        out.extend(_check_pythonpath(pythonpath, layouts))
    if site.ENABLE_USER_SITE:
        user = site.getusersitepackages()
        try:
            count = len(os.listdir(user))
        except OSError:
            count = 0
        if count:
            out.append(
                _finding(
                    "user-site",
                    Severity.LOW if verified_user_site else Severity.MEDIUM,
                    Verdict.SAFE if verified_user_site else Verdict.UNKNOWN,
                    f"The user site-packages is enabled and holds {count} entries: they are "
                    "importable by every job of this user"
                    + (" (verified here as a site directory)." if verified_user_site else "."),
                    ENVIRONMENT_REPORT,
                    user,
                )
            )
    return out


def _check_pythonpath(value: str, layouts: Sequence[SiteLayout]) -> list[Finding]:
    out: list[Finding] = []
    stdlib_names = set(getattr(sys, "stdlib_module_names", ())) | set(sys.builtin_module_names)
    installed = _installed_names(layouts)
    entries = [e for e in value.split(os.pathsep) if e]
    # An empty entry means the current directory, which then shadows like any other.
    if any(not e for e in value.split(os.pathsep)):
        entries.append(os.getcwd())
    out.append(
        _finding(
            "pythonpath",
            Severity.LOW,
            Verdict.SAFE,
            f"PYTHONPATH puts {len(entries)} director(y/ies) before the standard library and "
            "site-packages on sys.path.",
            ENVIRONMENT_REPORT,
            _short(value),
        )
    )
    for entry in entries:
        for name, where in sorted(_top_level_names(entry).items()):
            if name in stdlib_names or name in installed:
                what = "standard-library module" if name in stdlib_names else "installed package"
                out.append(
                    _finding(
                        "pythonpath-shadow",
                        Severity.HIGH,
                        Verdict.UNSAFE,
                        f"{where} on PYTHONPATH shadows the {what} {name!r}: "
                        f"`import {name}` loads it instead.",
                        where,
                        name,
                    )
                )
    return out


def _hook_origin(obj: Any) -> tuple[str, str, bool]:
    """Module name, qualified name, and whether it truly is the import system's own hook.

    ``__module__`` is writable, so a claim to be ``importlib._bootstrap`` is checked: the class
    must be the very object that module defines, and a function's code must be frozen
    importlib code.
    """
    code = getattr(obj, "__code__", None)
    if code is not None:
        module = str(getattr(obj, "__module__", "?"))
        qualname = str(getattr(obj, "__qualname__", "?"))
        builtin = module in _BUILTIN_HOOK_MODULES and code.co_filename.startswith(
            "<frozen importlib._bootstrap"
        )
        return module, qualname, builtin
    cls = obj if isinstance(obj, type) else type(obj)
    module, qualname = str(cls.__module__), cls.__qualname__
    defining = sys.modules.get(module)
    builtin = (
        module in _BUILTIN_HOOK_MODULES
        and defining is not None
        and getattr(defining, qualname, None) is cls
    )
    if not builtin and cls.__name__ == "zipimporter":
        import zipimport

        builtin = cls is zipimport.zipimporter
    return module, qualname, builtin


def check_import_hooks(
    scans: Sequence[SiteScan] = (),
    *,
    meta_path: Sequence[Any] | None = None,
    path_hooks: Sequence[Any] | None = None,
) -> list[Finding]:
    """Finders in ``sys.meta_path`` and hooks in ``sys.path_hooks`` nobody verified installs.

    A hook is known when it comes from the import system itself, when it *is* (by identity) a
    finder trainwarden's patch registry installed (:func:`trainwarden.patching.import_hooks`;
    a class that only claims trainwarden's module name is not), or when the module that
    defines it is a file listed in the RECORD of a distribution in ``scans`` (that RECORD
    check vouches for its content). Anything else can rewrite every later import.
    """
    out: list[Finding] = []
    ours = patching.import_hooks()
    layouts = [s.layout for s in scans]
    metas = sys.meta_path if meta_path is None else meta_path
    paths = sys.path_hooks if path_hooks is None else path_hooks
    hooks: list[tuple[str, Any]] = [("sys.meta_path", h) for h in metas]
    hooks += [("sys.path_hooks", h) for h in paths]
    for where, hook in hooks:
        module_name, qualname, builtin = _hook_origin(hook)
        if builtin:
            continue
        label = f"{module_name}.{qualname}"
        if any(hook is own for own in ours):
            out.append(
                _finding(
                    "import-hook-trainwarden",
                    Severity.INFO,
                    Verdict.SAFE,
                    f"{where} holds {label}, trainwarden's own finder (it patches modules "
                    "imported after protect() or the guard was enabled).",
                    PROCESS_REPORT,
                    label,
                )
            )
            continue
        module = sys.modules.get(module_name)
        origin = getattr(module, "__file__", None) if module is not None else None
        origin = os.path.normpath(origin) if isinstance(origin, str) else None
        owner = _owner(layouts, origin) if origin else None
        if owner is not None and origin is not None:
            out.append(
                _finding(
                    "import-hook-known",
                    Severity.INFO,
                    Verdict.SAFE,
                    f"{where} holds {label}, installed by {owner}.",
                    PROCESS_REPORT,
                    label,
                )
            )
            continue
        out.append(
            _finding(
                "import-hook",
                Severity.HIGH,
                Verdict.UNSAFE,
                f"{where} holds {label} (from {origin or 'no file'}), which no verified "
                "distribution installs: it sees and can replace every later import.",
                PROCESS_REPORT,
                label,
            )
        )
    return out


def check_startup(
    scans: Sequence[SiteScan], environ: Mapping[str, str] | None = None
) -> list[FileReport]:
    """All startup-vector findings for the scanned site directories and this process."""
    reports: list[FileReport] = []
    # Only site directories process .pth files and run sitecustomize; an editable source
    # tree is an ordinary sys.path entry (its code is compared with the lock instead).
    scans = [s for s in scans if s.is_site]
    for scan in scans:
        found = _check_pth(scan)
        if found:
            reports.append(FileReport(scan.layout.site, "site-dir", tuple(found)))
    scanned = [s.layout.site for s in scans]
    # The running interpreter's sys.path and import hooks only speak for the environment
    # being verified when that environment is this interpreter's own.
    own = set(default_site_dirs()) <= set(scanned)
    search = list(scanned)
    if own:
        search = list(dict.fromkeys([*scanned, *(os.path.normpath(p) for p in sys.path if p)]))
    customize = _check_customize(scans, search)
    by_site: dict[str, list[Finding]] = {}
    for item in customize:
        directory = os.path.dirname(item.location.path)
        if os.path.basename(directory) == "sitecustomize" or os.path.basename(directory) == (
            "usercustomize"
        ):
            directory = os.path.dirname(directory)
        by_site.setdefault(directory if directory in scanned else ENVIRONMENT_REPORT, []).append(
            item
        )
    reports.extend(
        FileReport(k, "site-dir" if k != ENVIRONMENT_REPORT else "environment", tuple(v))
        for k, v in by_site.items()
    )
    user_site = os.path.normpath(site.getusersitepackages())
    env_findings = check_environment_variables(
        environ, layouts=[s.layout for s in scans], verified_user_site=user_site in scanned
    )
    reports.append(FileReport(ENVIRONMENT_REPORT, "environment", tuple(env_findings)))
    if own:
        hooks = tuple(check_import_hooks(scans))
    else:
        hooks = (
            _finding(
                "import-hooks-not-checked",
                Severity.INFO,
                Verdict.SAFE,
                "Import hooks were not checked: the site directories verified are not this "
                "interpreter's (run `trainwarden env verify` with that environment's Python).",
                PROCESS_REPORT,
            ),
        )
    reports.append(FileReport(PROCESS_REPORT, "process", hooks))
    return reports
