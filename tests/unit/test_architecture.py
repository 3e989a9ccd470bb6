"""The layer rules of docs/architecture.md, checked by walking every module's imports with ast.

- No module imports another package's ``_private`` module (top-level ``trainwarden._x``
  modules are the shared internals every package may use).
- The graph of imports between packages (every import, also inside functions, except those
  under ``if TYPE_CHECKING:``) has no cycle: dependencies point one way.
"""

from __future__ import annotations

import ast
import itertools
from collections import defaultdict
from pathlib import Path

import trainwarden

ROOT = Path(trainwarden.__file__).parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _package_of(module: str) -> str:
    """``trainwarden.scan._pickle`` -> ``scan``; ``trainwarden._fs`` -> ``_fs``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "trainwarden"


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every ``trainwarden`` module imported by ``path`` (outside TYPE_CHECKING), with lines."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                found.extend(
                    (a.name, child.lineno) for a in child.names if a.name.startswith("trainwarden")
                )
            elif (
                isinstance(child, ast.ImportFrom)
                and child.module
                and child.level == 0
                and child.module.startswith("trainwarden")
            ):
                found.append((child.module, child.lineno))
                # `from trainwarden.scan import _pickle` imports a private module too.
                found.extend(
                    (f"{child.module}.{a.name}", child.lineno)
                    for a in child.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                )
            visit(child)

    visit(tree)
    return found


def _sources() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def test_no_package_imports_another_packages_private_module() -> None:
    offences = []
    for path in _sources():
        importer = _module_name(path)
        own = _package_of(importer)
        for target, line in _imports(path):
            parts = target.split(".")
            for depth in range(2, len(parts)):
                if parts[depth].startswith("_") and not parts[depth].startswith("__"):
                    owner = parts[1]
                    if owner != own:
                        offences.append(f"{importer}:{line} imports {target}")
                    break
    assert offences == []


def test_packages_form_layers_without_cycles() -> None:
    edges: dict[str, set[str]] = defaultdict(set)
    where: dict[tuple[str, str], str] = {}
    for path in _sources():
        importer = _module_name(path)
        source = _package_of(importer)
        if source == "trainwarden":  # the root façade re-exports lazily from everything
            continue
        for target, line in _imports(path):
            dest = _package_of(target)
            if dest in (source, "trainwarden"):
                continue
            edges[source].add(dest)
            where.setdefault((source, dest), f"{importer}:{line}")

    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                cycles.append(
                    " -> ".join(cycle)
                    + " ("
                    + ", ".join(where[(a, b)] for a, b in itertools.pairwise(cycle))
                    + ")"
                )
            elif nxt not in state:
                dfs(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            dfs(node)
    assert cycles == []


def test_core_packages_stay_free_of_torch_at_import() -> None:
    # scan, env, sign, ledger, keys, manifest and the shared internals import torch only
    # lazily, inside functions (ruff's banned-module-level-imports checks the same for all).
    for path in _sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "torch" for a in node.names), path
            elif isinstance(node, ast.ImportFrom) and node.module:
                assert node.module.split(".")[0] != "torch", path


def test_modules_inside_a_package_do_not_import_each_other_in_a_cycle() -> None:
    # File-level: a module may import a sibling lazily to break a cycle only by accident of
    # timing; the split of each package keeps its private modules in layers too. Package
    # façades (``__init__``) are left out: they import their children by design.
    edges: dict[str, set[str]] = defaultdict(set)
    names = {_module_name(p) for p in _sources()}
    for path in _sources():
        if path.name == "__init__.py":
            continue
        importer = _module_name(path)
        for target, _line in _imports(path):
            dest = target
            while dest not in names and "." in dest:
                dest = dest.rsplit(".", 1)[0]
            if (
                dest != importer
                and dest in names
                and not (ROOT.parent / dest.replace(".", "/")).is_dir()
            ):
                edges[importer].add(dest)
    cycles: list[str] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                dfs(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            dfs(node)
    assert cycles == []
