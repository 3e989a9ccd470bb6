"""NumPy ``.npy``: parse the header; object arrays carry a pickle, which is analysed.

``numpy.load`` unpickles what follows the header when the dtype holds objects (and
``allow_pickle=True``); any other dtype is raw data that cannot run code.
"""

from __future__ import annotations

import ast
import io
import re
import struct
import tokenize
from typing import Any

from trainwarden.scan._formats._base import Blob, Context

__all__ = ["analyse_npy", "parse_npy_header"]

# numpy refuses headers above 10000 bytes unless told otherwise; a loader that allows pickles
# ignores that bound, so we parse larger ones too, up to this size.
_MAX_HEADER = 1 << 20
# The exact header numpy writes for simple dtypes; anything else goes to literal_eval.
_SIMPLE_HEADER = re.compile(
    r"\{'descr': '([<>|=]?[a-zA-Z]\d*)', 'fortran_order': (True|False), "
    r"'shape': \(((?:\d+, ?)*\d*)\), \} *\n?"
)


def parse_npy_header(blob: Blob) -> tuple[dict[str, Any] | None, int, str]:
    """Return ``(header, data_offset, problem)``; ``header`` is ``None`` when malformed."""
    magic = bytes(blob.read(0, 12))
    if len(magic) < 10 or magic[:6] != b"\x93NUMPY":
        return None, 0, "bad magic"
    major = magic[6]
    if major == 1:
        (length,) = struct.unpack("<H", magic[8:10])
        start = 10
    elif major in (2, 3):
        if len(magic) < 12:
            return None, 0, "truncated header length"
        (length,) = struct.unpack("<I", magic[8:12])
        start = 12
    else:
        return None, 0, f"unknown format version {major}"
    if length > _MAX_HEADER:
        return None, 0, f"header of {length} bytes is larger than the scanner parses"
    raw = bytes(blob.read(start, length))
    if len(raw) < length:
        return None, 0, "truncated header"
    try:
        text = raw.decode("utf-8" if major == 3 else "latin1")
        simple = _SIMPLE_HEADER.fullmatch(text)
        if simple is not None:
            dims = [int(d) for d in simple.group(3).replace(" ", "").split(",") if d]
            return (
                {
                    "descr": simple.group(1),
                    "fortran_order": simple.group(2) == "True",
                    "shape": tuple(dims),
                },
                start + length,
                "",
            )
        try:
            header = ast.literal_eval(text)
        except SyntaxError:
            if major > 2:
                raise
            header = ast.literal_eval(_drop_py2_long_suffix(text))
    except (
        ValueError,
        SyntaxError,
        MemoryError,
        RecursionError,
        TypeError,
        tokenize.TokenError,
    ) as exc:
        return None, 0, f"header is not a Python literal ({type(exc).__name__})"
    if not isinstance(header, dict) or not {"descr", "fortran_order", "shape"} <= header.keys():
        return None, 0, "header lacks descr/fortran_order/shape"
    return header, start + length, ""


def _drop_py2_long_suffix(text: str) -> str:
    # Python 2 wrote long integers as "2L": numpy.load reads such a version 1/2 header by
    # dropping every NAME token "L" that follows a NUMBER token, then parses it again. Doing
    # the same keeps both parsers on the same header (a file numpy loads is never malformed
    # here, and what numpy parses is what we check for objects).
    tokens = []
    after_number = False
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if after_number and token.type == tokenize.NAME and token.string == "L":
            continue
        tokens.append(token)
        after_number = token.type == tokenize.NUMBER
    return tokenize.untokenize(tokens)


# The dtype strings np.save writes (``dtype.str``): byte order, one type code, item size,
# and a unit for datetimes. Anything else (``object``, ``i4,O``, ``(2,)O``...) is parsed by
# numpy.dtype in ways we do not replay, and may well hold objects: it is treated as if it did.
_PLAIN_DESCR = re.compile(r"[<>|=]?([a-zA-Z?])(\d*)(?:\[[0-9A-Za-z]+\])?")
# Type codes whose dtype never holds objects (numbers, bools, bytes, str, void, datetimes).
# Listed, not the reverse: "O" is not the only code with ``hasobject`` (NumPy 2's StringDType
# "T" has it, and numpy.load unpickles its data), and a code a later numpy adds is unknown
# here, so it is treated as holding objects.
_PLAIN_KINDS = frozenset("?BDFGHILMNPQSUVabcdefghilmnpqu")


def _has_object(descr: Any, depth: int = 0) -> bool:
    """Whether numpy could build a dtype with ``hasobject`` from ``descr`` (then it unpickles).

    Mirrors ``numpy.lib.format.descr_to_dtype``: a string, a ``(base, shape)`` tuple, or a
    list of ``(name, descr[, shape])`` fields. Whatever does not fit is assumed to hold objects.
    """
    if depth > 32:
        return True
    if isinstance(descr, str):
        match = _PLAIN_DESCR.fullmatch(descr)
        return match is None or match.group(1) not in _PLAIN_KINDS
    if isinstance(descr, tuple):
        return len(descr) != 2 or _has_object(descr[0], depth + 1)
    if isinstance(descr, list):
        return any(
            not isinstance(field, tuple)
            or len(field) not in (2, 3)
            or _has_object(field[1], depth + 1)
            for field in descr
        )
    return True


def analyse_npy(ctx: Context, blob: Blob, member: str | None) -> str:
    """Analyse an ``.npy`` file or member."""
    header, data_offset, problem = parse_npy_header(blob)
    if header is None:
        ctx.unknown("numpy.malformed-header", f"malformed .npy header: {problem}", member)
        return "numpy-npy"
    if _has_object(header["descr"]):
        from trainwarden.scan._formats._pickles import analyse_stream, report_trailing

        ctx.info(
            "numpy.object-array",
            "object array: numpy.load(allow_pickle=True) unpickles the data",
            member,
        )
        # numpy.load calls pickle.load once on the bytes after the header.
        _, end = analyse_stream(ctx, blob, member, start=data_offset, max_pickles=1)
        report_trailing(ctx, blob, member, end)
    return "numpy-npy"
