"""Regenerate src/trainwarden/scan/_aliases.py: what stdlib module attributes really are.

For maintainers: run with the Python the scanner supports (``python scripts/gen_aliases.py``),
review the diff, commit the generated file.

``find_class(module, "a.b.c")`` (protocol 4+) walks attributes: ``pathlib`` + ``os.system`` is
``os.system``, ``tempfile`` + ``_os.system`` is too. The scanner never imports what it scans,
so it needs a table of what each module's attributes are. This script imports the standard
library (never the scanned files) and records every module attribute that is another module
or a function/class defined elsewhere, when that target is something the dangerous catalogue
knows (directly or below it). Only the attribute's *name* goes into the table, mapped to the
target's canonical dotted name.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import sys
import types
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "trainwarden" / "scan" / "_aliases.py"
sys.path.insert(0, str(ROOT / "src"))

from trainwarden.scan._catalogue import catalogue_match, covers_below  # noqa: E402

# Importing these has side effects (a browser, a window, printing, test runners) or fails
# headless; their attributes are reached through the catalogue's own entries anyway.
SKIP = {
    "antigravity", "this", "__hello__", "__phello__", "idlelib", "turtledemo", "tkinter",
    "turtle", "test", "lib2to3", "ensurepip", "venv", "pydoc_data", "msilib", "winreg",
    "winsound", "_winapi", "nt", "msvcrt", "_msi", "_overlapped", "_wmi", "xxlimited",
    "xxlimited_35", "xxsubtype", "_testcapi", "_testinternalcapi", "_testbuffer",
    "_testimportmultiple", "_testmultiphase", "_xxtestfuzz", "_ctypes_test", "_tkinter",
    "sitecustomize", "usercustomize", "readline", "_pyrepl", "_testclinic", "_testsinglephase",
}  # fmt: skip


def _import_stdlib() -> None:
    names = sorted(getattr(sys, "stdlib_module_names", ()))
    for name in names:
        if name in SKIP or name.startswith("_test"):
            continue
        with (
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            try:
                importlib.import_module(name)
            except BaseException:
                continue


def _canonical(value: object) -> str | None:
    if isinstance(value, types.ModuleType):
        return value.__name__
    module = getattr(value, "__module__", None)
    qual = getattr(value, "__qualname__", None)
    if isinstance(module, str) and isinstance(qual, str) and "<" not in qual:
        return f"{module}.{qual}"
    return None


def _stdlib(name: str) -> bool:
    top = name.split(".", 1)[0]
    return top in getattr(sys, "stdlib_module_names", ()) and top not in SKIP


def main() -> None:
    _import_stdlib()
    table: dict[str, str] = {}
    for mod_name, module in sorted(sys.modules.items()):
        if not isinstance(module, types.ModuleType) or not _stdlib(mod_name):
            continue
        try:
            attrs = dict(vars(module))
        except TypeError:
            continue
        for attr, value in attrs.items():
            if attr.startswith("__") and attr.endswith("__"):
                continue
            target = _canonical(value)
            here = f"{mod_name}.{attr}"
            if target is None or target == here or catalogue_match(here) is not None:
                continue  # the name is caught as spelled: the table only adds what is not
            is_module = isinstance(value, types.ModuleType)
            if target.rsplit(".", 1)[-1] == attr and is_module and "." not in target:
                continue  # `import os` in pathlib: the scanner resolves same-name modules itself
            if catalogue_match(target) is not None or (is_module and covers_below(target)):
                table[here] = target
    lines = [
        '"""What standard-library module attributes really are (generated: do not edit).',
        "",
        "Written by scripts/gen_aliases.py from Python "
        f"{sys.version_info.major}.{sys.version_info.minor}: every module attribute that is",
        "another module, or a function or class defined elsewhere, whose target the dangerous",
        "catalogue knows. ``find_class`` walks dotted names through these attributes.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "ALIASES: dict[str, str] = {",
    ]
    lines.extend(f"    {k!r}: {v!r}," for k, v in sorted(table.items()))
    lines.append("}")
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(table)} aliases to {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
