"""``.lzma`` (alone) streams: every header liblzma takes, and raw tensors that look like one.

joblib reads any file starting 5d 00 as lzma and pandas' ``.xz`` reader (``lzma.open``) any
file that is not xz, whatever dictionary size the header asks for; the scanner knew only the
header Python writes by default (``5d 00 00``) and refused dictionaries over its memory limit.
The catalogue proves the loaders (``joblib-lzma-*``, ``pandas-lzma-alone-properties``).
"""

from __future__ import annotations

import lzma

import pytest

from trainwarden.findings import Verdict
from trainwarden.scan import scan_bytes

_EVIL = b"\x80\x04\x8c\x05posix\x8c\x06system\x93\x8c\x04true\x85R."


def _alone(data: bytes, **options: int) -> bytes:
    filters = [{"id": lzma.FILTER_LZMA1, **options}]
    return lzma.compress(data, format=lzma.FORMAT_ALONE, filters=filters)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"dict_size": 1 << 12},  # 5d 00 10 00 00
        {"dict_size": 1 << 30},  # over the decoder memory limit
        {"lc": 0},  # properties byte 5a
        {"lc": 1, "lp": 3, "pb": 4},  # properties byte d0
    ],
    ids=["default", "dict-4k", "dict-1g", "lc0", "lc1-lp3-pb4"],
)
def test_every_header_liblzma_takes_is_entered(options: dict[str, int]) -> None:
    assert scan_bytes(_alone(_EVIL, **options)).verdict is Verdict.UNSAFE


def test_truncated_stream_is_judged_on_what_decodes() -> None:
    # pickle.load on an LZMAFile unpickles what decodes before the fault.
    data = _alone(_EVIL + b"\0" * 4000)
    assert scan_bytes(data[: len(data) // 2 + 40]).verdict is Verdict.UNSAFE


@pytest.mark.parametrize(
    "raw",
    [
        b"\0\0\x80\x3f" * 4096,  # float32 ones: passes the header test, then is corrupt
        b"".join(i.to_bytes(8, "little") for i in range(4096)),  # int64 arange
        bytes(16384),
    ],
    ids=["float32-ones", "int64-arange", "zeros"],
)
def test_raw_tensors_that_look_like_lzma_stay_safe(raw: bytes) -> None:
    report = scan_bytes(raw)
    assert report.verdict is Verdict.SAFE, report.findings


def test_bytes_behind_an_lzma_looking_header_get_their_own_checks() -> None:
    # 14 bytes an alone decoder takes, then a zip (zipfile reads it despite the prefix): the
    # zip's pickle is judged, whatever the lzma view decodes.
    import io
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("model.pkl", _EVIL)
    data = b"\0\0\x80\x3f" * 4 + out.getvalue()
    assert scan_bytes(data).verdict is Verdict.UNSAFE
