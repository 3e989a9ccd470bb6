"""torch.export archives (``.pt2``): the program strings torch evaluates, and native code.

The catalogue (``tests/attacks.py``, ``torch-export-*``) proves the attacks real on archives
torch wrote. Here the rules are pinned on small archives laid out the way
``torch.export.save`` lays them out, so each expression form is checked on its own.
"""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from trainwarden.findings import Verdict
from trainwarden.scan import scan_bytes

_SYMBOL = "Symbol('s77', positive=True, integer=True)"


def _program(expr: str = _SYMBOL, guards: list[str] | None = None) -> dict[str, object]:
    size = {"as_expr": {"expr_str": expr, "hint": {"as_int": 4}}}
    return {
        "graph_module": {"graph": {"tensor_values": {"x": {"sizes": [size, {"as_int": 3}]}}}},
        "range_constraints": {"s77": {"min_val": 2, "max_val": 64}},
        "guards_code": guards or [],
    }


def _archive(members: dict[str, bytes], *, layout: str = "pt2") -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        if layout == "pt2":
            zf.writestr("model/archive_format", b"pt2")
            zf.writestr("model/archive_version", b"0")
        for name, data in members.items():
            zf.writestr(name, data)
    return out.getvalue()


def _scan(program: dict[str, object] | bytes, name: str = "model/models/model.json") -> Verdict:
    text = program if isinstance(program, bytes) else json.dumps(program).encode()
    layout = "pt2" if name.startswith("model/") else "old"
    return scan_bytes(_archive({name: text}, layout=layout)).verdict


@pytest.mark.parametrize(
    "expr",
    [
        _SYMBOL,
        f"Mul(Integer(4), {_SYMBOL})",
        f"FloorDiv(Add({_SYMBOL}, Integer(-1)), Integer(2))",
        "Max(Integer(1), Symbol('u0', integer=True))",
        "Eq(Mod(Symbol('s0', integer=True), Integer(8)), Integer(0))",
        "Mul(Float('1.5', precision=53), Symbol('s0', integer=True))",
        "OpaqueUnaryFn_exp(Symbol('s0', integer=True))",
    ],
)
def test_sympy_shape_expressions_are_safe(expr: str) -> None:
    assert _scan(_program(expr)) is Verdict.SAFE


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os').system('true')",
        f"Symbol.__new__.__globals__['__builtins__']['__import__']('os') or {_SYMBOL}",
        "eval('1+1')",
        "getattr(Integer(1), 'real')",
        "Integer(1).__class__",
    ],
)
def test_expressions_reaching_for_code_are_unsafe(expr: str) -> None:
    assert _scan(_program(expr)) is Verdict.UNSAFE


@pytest.mark.parametrize(
    "expr",
    [
        f"{_SYMBOL} + foo(1)",  # a name neither sympy nor a shape symbol
        "[s0 for s0 in (1, 2)]",
        "lambda: 1",
        "Symbol('a b')",  # a string that is not a symbol name
        "s0!",  # sympy's factorial notation: not Python, so not parsed here
        "Integer(1).real",
        "Symbol('s0', fun=1)",
    ],
)
def test_expressions_not_proven_inert_are_unknown(expr: str) -> None:
    assert _scan(_program(expr)) is Verdict.UNKNOWN


@pytest.mark.parametrize(
    ("guard", "verdict"),
    [
        ("L['x'].size()[0] <= 64", Verdict.SAFE),
        ("math.isnan(L['y']) or L['x'].stride()[1] == 1", Verdict.SAFE),
        ("max(2, L['x'].size()[0]) <= 64 and L['x'].size()[0] % 2 == 0", Verdict.SAFE),
        ("math.floor(L['x'].size()[0] / 2) >= 1", Verdict.SAFE),
        ("(L['x'].size()[0] // 2 if L['x'].size()[0] > 2 else 1) >= 1", Verdict.SAFE),
        ("L['x'].__class__.__init__.__globals__['os'].system('true') == 0", Verdict.UNSAFE),
        ("__import__('os').system('true') == 0", Verdict.UNSAFE),
        ("print(L['x'])", Verdict.UNKNOWN),
    ],
)
def test_guards_code(guard: str, verdict: Verdict) -> None:
    assert _scan(_program(guards=[guard])) is verdict


def test_escaped_keys_are_read_as_json_reads_them() -> None:
    text = json.dumps(_program("__import__('os').system('true')")).replace(
        '"expr_str"', '"\\u0065xpr_str"'
    )
    assert _scan(text.encode()) is Verdict.UNSAFE


def test_unparseable_program_is_not_safe() -> None:
    assert _scan(b'{"graph_module": ') is Verdict.UNKNOWN


def test_old_layout_program_is_checked() -> None:
    # torch.export.load falls back to the pre-pt2 layout (serialized_exported_program.json).
    program = _program("__import__('os').system('true')")
    assert _scan(program, "serialized_exported_program.json") is Verdict.UNSAFE


def test_shared_library_in_an_export_package_is_not_safe() -> None:
    elf = b"\x7fELF\x02\x01\x01" + b"\0" * 57
    data = _archive({"model/data/aotinductor/model/model.so": elf})
    report = scan_bytes(data)
    assert report.verdict is Verdict.UNKNOWN
    assert any(f.rule_id == "torch-export.native-code" for f in report.findings)


@pytest.mark.parametrize(
    "decoy", ["model/data.pkl", "model/code/__torch__/m.py", "model/constants.pkl"]
)
def test_program_is_checked_whatever_else_the_archive_looks_like(decoy: str) -> None:
    # A torch checkpoint's or TorchScript's record beside archive_format: torch.export.load
    # still reads models/*.json (it ignores records it does not use).
    program = json.dumps(_program("__import__('os').system('true')")).encode()
    data = _archive({decoy: b"N.", "model/models/model.json": program})
    assert scan_bytes(data).verdict is Verdict.UNSAFE
