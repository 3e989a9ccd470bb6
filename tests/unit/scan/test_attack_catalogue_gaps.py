"""Names that run code, open files or call what they are given are known dangerous (unsafe).

Every name here was ``unknown`` before (never safe: it is not allowlisted), but a scanner that
knows them says why: a shell through mailcap, ``eval`` through sympy's parsers (sympy ships
with torch), file creation through codecs/wave/sunau/aifc/uu, nested loads through sklearn's
joblib shim, and callables hidden behind ``__getitem__`` (a defaultdict's factory) or numpy's
and torch's function wrappers. The ones a canary can prove are in tests/attacks.py.
"""

from __future__ import annotations

import pytest

from trainwarden.findings import Verdict
from trainwarden.scan.policy import Policy

DANGEROUS = (
    ("mailcap", "findmatch"),
    ("mailcap", "getcaps"),
    ("sympy", "sympify"),
    ("sympy.core.sympify", "sympify"),
    ("sympy.parsing.sympy_parser", "parse_expr"),
    ("sympy", "parse_expr"),
    ("codecs", "open"),
    ("codecs", "EncodedFile"),
    ("tokenize", "open"),
    ("wave", "open"),
    ("sunau", "open"),
    ("aifc", "open"),
    ("uu", "decode"),
    ("scipy.io", "loadmat"),
    ("sklearn.utils._joblib", "load"),
    ("operator", "getitem"),
    ("_operator", "itemgetter"),
    ("numpy", "vectorize"),
    ("numpy", "frompyfunc"),
    ("numpy", "apply_along_axis"),
    ("torch.utils.checkpoint", "checkpoint"),
    ("cmd", "Cmd"),
)


@pytest.mark.parametrize(("module", "name"), DANGEROUS)
def test_name_is_known_dangerous(module: str, name: str) -> None:
    assert Policy.default().classify(module, name).verdict is Verdict.UNSAFE


@pytest.mark.parametrize(
    ("module", "name"),
    [("codecs", "encode"), ("_codecs", "encode"), ("collections", "defaultdict")],
)
def test_allowlisted_neighbours_stay_safe(module: str, name: str) -> None:
    assert Policy.default().classify(module, name).verdict is Verdict.SAFE
