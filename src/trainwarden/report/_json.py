"""JSON rendering: the shape of the interface contract, deterministic (sorted, stable).

The document is ``json.dumps(..., indent=2, sort_keys=True, ensure_ascii=False)`` byte for
byte, but CPython's C encoder does not indent: with ``indent`` set, ``json`` falls back to its
pure-Python encoder, a generator per container that yields every token (1.4 CPU-seconds for
a 30 MB report of 20,000 files, 0.9 here: benchmarks/bench_report_json.py). Here the C
encoder writes the document compactly in one call, with a raw control character after each
item separator (raw control characters never occur inside an encoded string: they are
escaped), and the text is then indented with C-level operations per container: one split at
the brackets, a running sum for the depth, one ``str.replace`` of the separators per part.
A bracket inside a string would be taken for structure, so the split is proved to have cut
only outside strings (an even number of quotes in every part), and anything it cannot prove
(a string ending in a backslash), or any input ``json`` would judge (a type it rejects, a
cycle), is left to ``json.dumps`` itself: same bytes, same errors.
"""

from __future__ import annotations

import json
import json.encoder
import operator
import re
from collections.abc import Callable
from itertools import accumulate, repeat
from typing import Any

from trainwarden.findings import Report

_INDENT = "  "
# After each item separator: a character the encoder never writes raw inside a string.
_MARK = ",\x1f"
_BRACKETS = re.compile(r"([{}\[\]])")


class _Unproven(Exception):
    """The fast path cannot prove its output equal to ``json.dumps``'s."""


def render_json(report: Report) -> str:
    """Render ``report`` as the contract's JSON document, with a trailing newline."""
    return dumps_indented(report.to_dict()) + "\n"


def dumps_indented(value: Any) -> str:
    """``json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)``, faster."""
    encoder = _compact_encoder()
    if encoder is None:
        return _slow(value)
    try:
        return _indent("".join(encoder(value, 0)))
    except (_Unproven, RecursionError, TypeError, ValueError):
        return _slow(value)


def _slow(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def _reject(value: object) -> Any:
    raise _Unproven(type(value).__name__)


def _compact_encoder() -> Callable[[Any, int], Any] | None:
    """The C encoder with ``json.dumps``'s settings but marked item separators.

    A new one per document: its cycle check's record of open containers is not cleared
    when encoding fails half-way.
    """
    make: Any = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    encoder: Callable[[Any, int], Any] = make(
        {},  # cycle check, as json.dumps's check_circular
        _reject,  # json.dumps rejects what it cannot encode: so does the slow path
        json.encoder.encode_basestring,  # ensure_ascii=False
        None,
        ": ",
        _MARK,
        True,  # sort_keys
        False,  # skipkeys
        True,  # allow_nan
    )
    return encoder


def _indent(text: str) -> str:
    """Indent the marked compact ``text`` as ``json.dumps(indent=2)`` would have written it.

    Per container only C-level work (``map``, ``accumulate``, ``str.replace``): the depth
    after each bracket is a running sum, each part's separators are replaced for its depth.
    """
    if '\\\\"' in text:
        raise _Unproven("a string ends in a backslash: its quotes cannot be counted")
    # Empty containers stay "{}" / "[]": set aside as raw control characters (never raw in
    # an encoded string, so putting them back restores exactly what was there).
    empties = "{}" in text or "[]" in text
    if empties:
        text = text.replace("{}", "\x0e").replace("[]", "\x0f")
    parts = _BRACKETS.split(text)
    contents, brackets = parts[0::2], parts[1::2]
    # Every cut must be outside strings: an even number of (unescaped) quotes in every part.
    quotes = map(str.count, contents, repeat('"'))
    if '\\"' in text:
        quotes = map(operator.sub, quotes, map(str.count, contents, repeat('\\"')))
    if 1 in map((1).__and__, quotes):
        raise _Unproven("a bracket inside a string")
    depths = list(accumulate(map(_DELTA.__getitem__, brackets)))
    if depths and (min(depths) < 0 or depths[-1] != 0):
        raise _Unproven("unbalanced brackets")
    tables = _tables(max(depths, default=0))
    separators = [t[","] for t in tables]
    out = parts  # reused: contents at even, brackets at odd indexes
    out[2::2] = map(str.replace, contents[1:], repeat(_MARK), map(separators.__getitem__, depths))
    out[1::2] = map(operator.getitem, map(tables.__getitem__, depths), brackets)
    result = "".join(out)
    if empties:
        result = result.replace("\x0e", "{}").replace("\x0f", "[]")
    return result


_DELTA = {"{": 1, "[": 1, "}": -1, "]": -1}


def _tables(deepest: int) -> list[dict[str, str]]:
    """Per depth (after a bracket): what each bracket and the item separator become."""
    out = []
    for depth in range(deepest + 1):
        newline = "\n" + _INDENT * depth
        out.append(
            {
                "{": "{" + newline,
                "[": "[" + newline,
                "}": newline + "}",
                "]": newline + "]",
                ",": "," + newline,
            }
        )
    return out
