"""torch.export programs (``.pt2``): the strings in their JSON that torch turns into code.

``torch.export.load`` parses every ``expr_str`` of the program with ``sympy.sympify``, which
``eval``s the text, and ``ExportedProgram.module()`` ``exec``s ``guards_code`` into the
module's forward. Legitimate exports write sympy ``srepr`` text there (``Symbol('s77',
positive=True, integer=True)``) and guard comparisons (``L['x'].size()[0] <= 64``). Each
string is parsed with :mod:`ast` (never evaluated) and must be built only from those pieces:
anything else is code the scanner cannot clear.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from typing import Any

from trainwarden.findings import Severity, Verdict
from trainwarden.scan._formats._base import Context

__all__ = ["check_export_program", "is_native_library"]

# sympy classes and constants ``srepr`` writes for shape expressions, and the functions
# torch's deserializer hands sympify (torch.utils._sympy.functions).
_SYMPY_NAMES = frozenset(
    {
        "Symbol", "Dummy", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Mod", "Max",
        "Min", "Abs", "floor", "ceiling", "sqrt", "Eq", "Ne", "Lt", "Le", "Gt", "Ge",
        "Equality", "Unequality", "StrictLessThan", "LessThan", "StrictGreaterThan",
        "GreaterThan", "And", "Or", "Not", "Piecewise", "ExprCondPair", "ITE", "true", "false",
        "True", "False", "oo", "zoo", "nan", "pi", "E", "Infinity", "NegativeInfinity",
        "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt",
        "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow",
        "FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat",
        "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity", "TrueDiv",
    }
)  # fmt: skip
# Assumptions sympy takes as keywords of Symbol (and ``evaluate`` of the classes).
_SYMPY_KEYWORDS = frozenset(
    {
        "positive", "negative", "nonpositive", "nonnegative", "integer", "real", "finite",
        "infinite", "zero", "nonzero", "even", "odd", "rational", "commutative", "evaluate",
        "precision",
    }
)  # fmt: skip
# Names torch's guard code uses: the inputs (L), math, the builtins its Python printer
# writes (max, min, float, round...) and the sympy helpers in its namespace.
_GUARD_NAMES = _SYMPY_NAMES | {
    "L", "math", "inf", "cast_symbool_to_symint_guardless", "max", "min", "abs", "int",
    "float", "round", "bool", "None",
}  # fmt: skip
_GUARD_ATTRIBUTES = frozenset(
    {"size", "stride", "storage_offset", "dim", "isnan", "isinf", "floor", "ceil", "trunc"}
)
# Free symbols torch names: s0, u3, s77, ps1, zuf0, zf2...
_SYMBOL_RE = re.compile(r"[a-z]{1,4}[0-9]+\Z")
# Function classes torch makes on demand (OpaqueUnaryFn_exp, BitwiseFn_bitwise_and).
_TORCH_FN_RE = re.compile(r"(?:OpaqueUnaryFn|BitwiseFn)_[a-z0-9_]+\Z")
# Strings sympy classes take: symbol names, and Float's decimal text.
_STRING_ARG_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z|[-+]?[0-9.]+(?:[eE][-+]?[0-9]+)?\Z")
# What an expression that reaches for code names: a proof of code execution, not a doubt.
_CODE_NAMES = frozenset(
    {
        "eval", "exec", "compile", "open", "getattr", "setattr", "delattr", "globals",
        "locals", "vars", "breakpoint", "input", "sympify", "parse_expr", "lambdify",
    }
)  # fmt: skip
_ALLOWED_NODES = (
    ast.Expression, ast.Call, ast.Name, ast.Constant, ast.keyword, ast.BinOp, ast.UnaryOp,
    ast.BoolOp, ast.Compare, ast.Load, ast.operator, ast.unaryop, ast.boolop, ast.cmpop,
)  # fmt: skip
_GUARD_NODES = (*_ALLOWED_NODES, ast.Attribute, ast.Subscript, ast.IfExp)

# Native libraries an AOTInductor package dlopens when it is loaded.
_NATIVE_MAGICS = (b"\x7fELF", b"\xcf\xfa\xed\xfe", b"\xce\xfa\xed\xfe", b"\xca\xfe\xba\xbe")
_NATIVE_SUFFIXES = (".so", ".dylib", ".dll", ".pyd")


def is_native_library(name: str, head: bytes) -> bool:
    """True when a member is a shared library (by its magic, or by its name)."""
    return head.startswith(_NATIVE_MAGICS) or head[:2] == b"MZ" or name.endswith(_NATIVE_SUFFIXES)


def check_export_program(ctx: Context, text: bytes, member: str | None) -> None:
    """Report each ``expr_str`` and ``guards_code`` string that is more than sympy or a guard.

    A program that cannot be parsed is not analysed (torch parses it with ``json.loads``,
    whatever its size): never safe.
    """
    try:
        program = json.loads(text)
    except (ValueError, RecursionError) as exc:
        ctx.unknown(
            "torch-export.unparsed-program",
            "torch.export program JSON could not be parsed; its expressions were not checked",
            member,
            evidence=str(exc)[:200],
        )
        return
    seen: set[tuple[str, str]] = set()
    for key, source in _program_strings(program):
        if (key, source) in seen or len(seen) >= 20:
            continue  # one finding per distinct string; 20 are evidence enough
        guard = key == "guards_code"
        problem = _check_expression(source, guard=guard)
        if problem is None:
            continue
        seen.add((key, source))
        runs, why = problem
        what = (
            "a guard that ExportedProgram.module() compiles into the forward"
            if guard
            else "a symbolic expression torch.export.load evaluates with sympy.sympify"
        )
        ctx.add(
            "torch-export.code-expression" if runs else "torch-export.unproven-expression",
            Severity.CRITICAL if runs else Severity.MEDIUM,
            f"torch.export program holds {what}; it {why}",
            member,
            verdict=Verdict.UNSAFE if runs else Verdict.UNKNOWN,
            evidence=f"{key}: {source[:160]}",
        )


def _program_strings(value: Any) -> Iterator[tuple[str, str]]:
    # Recursive: json.loads already bounds the nesting (deeper input raises RecursionError).
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "expr_str" and isinstance(item, str):
                yield key, item
            elif key == "guards_code" and isinstance(item, list):
                yield from ((key, s) if isinstance(s, str) else (key, repr(s)) for s in item)
            elif key in ("expr_str", "guards_code"):
                yield key, repr(item)[:200]
            else:
                yield from _program_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _program_strings(item)


def _check_expression(source: str, *, guard: bool) -> tuple[bool, str] | None:
    """``None`` when ``source`` is plain sympy (or a plain guard); else (runs code, why)."""
    try:
        tree = ast.parse(source, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False, "is not an expression the scanner can parse, so it was not proven inert"
    names = _GUARD_NAMES if guard else _SYMPY_NAMES
    allowed = _GUARD_NODES if guard else _ALLOWED_NODES
    doubt: str | None = None
    for node in ast.walk(tree):
        reached = _reached_name(node)
        if reached is not None and (reached.startswith("__") or reached in _CODE_NAMES):
            return True, f"reaches {reached!r}: code runs when it is evaluated"
        if doubt is not None:
            continue
        if not isinstance(node, allowed):
            doubt = f"uses {type(node).__name__}, which sympy expressions never need"
        elif isinstance(node, ast.Name) and not _known_name(node.id, names):
            doubt = f"names {node.id!r}, which is neither sympy nor a shape symbol"
        elif isinstance(node, ast.Attribute) and not _known_attribute(node):
            doubt = f"reads attribute {node.attr!r}"
        elif isinstance(node, ast.keyword) and not guard and node.arg not in _SYMPY_KEYWORDS:
            doubt = f"passes keyword {node.arg!r}"
        elif isinstance(node, ast.Call) and not guard and not isinstance(node.func, ast.Name):
            doubt = "calls something other than a sympy class"
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and not (guard or _STRING_ARG_RE.match(node.value))
        ):
            doubt = "holds a string that is neither a symbol name nor a number"
    return None if doubt is None else (False, f"{doubt}: not proven inert")


def _known_name(name: str, names: frozenset[str]) -> bool:
    return name in names or bool(_SYMBOL_RE.match(name) or _TORCH_FN_RE.match(name))


def _known_attribute(node: ast.Attribute) -> bool:
    # Any function of math (no dunder: those are refused before this); on the inputs, only
    # the shape accessors guards read.
    is_math = isinstance(node.value, ast.Name) and node.value.id == "math"
    return is_math or node.attr in _GUARD_ATTRIBUTES


def _reached_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        # A subscript or getattr argument: '__builtins__', '__import__'.
        return node.value if node.value.startswith("__") else None
    return None
