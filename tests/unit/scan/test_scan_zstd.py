"""zstd streams (pandas ``read_pickle`` of ``.zst``): entered, bounded, never safe unread.

Frames are written by hand (``attacks.zstd_frame``: raw and RLE blocks), so the tests build
without the zstandard package; reading them needs it, and without it the verdict must be
unknown, never safe.
"""

from __future__ import annotations

import pickle
import struct
import sys
import time

import pytest

from attacks import zstd_frame
from trainwarden.findings import Verdict
from trainwarden.scan import DEFAULT_LIMITS, scan_bytes

_EVIL = (
    b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00\x8c\x05posix\x8c\x06system\x93\x8c\x04true\x85R."
)
# posix.system("true #xxxx..."): long enough to split across frames larger than one input step.
_LONG_COMMAND = b"true #" + b"x" * 6000
_EVIL_LONG = (
    b"\x80\x04\x8c\x05posix\x8c\x06system\x93X"
    + struct.pack("<I", len(_LONG_COMMAND))
    + _LONG_COMMAND
    + b"\x85R."
)
_SKIPPABLE = b"\x50\x2a\x4d\x18" + struct.pack("<I", 4) + b"pad!"


def _rle_bomb(blocks: int) -> bytes:
    # No content size, 128 KiB window; each 4-byte RLE block expands to 128 KiB of zeros.
    body = b"".join(
        ((1 << 17) << 3 | 1 << 1 | int(i == blocks - 1)).to_bytes(3, "little") + b"\0"
        for i in range(blocks)
    )
    return b"\x28\xb5\x2f\xfd\x00" + bytes([7 << 3]) + body


@pytest.fixture
def zstandard() -> object:
    return pytest.importorskip("zstandard")


@pytest.mark.parametrize(
    "data",
    [
        zstd_frame(_EVIL),
        zstd_frame(_EVIL, sized=False),
        _SKIPPABLE + zstd_frame(_EVIL),
        zstd_frame(b"") + zstd_frame(_EVIL),  # a later frame: analysed too
        zstd_frame(_EVIL_LONG[:3000]) + zstd_frame(_EVIL_LONG[3000:]),  # frames over 1 KiB
    ],
    ids=["sized", "streamed", "skippable-first", "second-frame", "split-long-frames"],
)
def test_pickle_inside_zstd_is_judged(zstandard: object, data: bytes) -> None:
    assert scan_bytes(data).verdict is Verdict.UNSAFE


def test_plain_data_inside_zstd_is_safe(zstandard: object) -> None:
    report = scan_bytes(zstd_frame(pickle.dumps({"a": [1, 2.5, "x"]})))
    assert report.verdict is Verdict.SAFE, report.findings


@pytest.mark.parametrize(
    "data",
    [
        zstd_frame(_EVIL)[:-3],  # truncated: no end of the last block
        zstd_frame(_EVIL)[:9],
        b"\x28\xb5\x2f\xfd" + b"\xff" * 40,  # reserved header bits: corrupt
        _SKIPPABLE[:-2],  # a skippable frame shorter than it declares
    ],
    ids=["truncated", "header-only", "corrupt", "skippable-truncated"],
)
def test_unreadable_zstd_is_not_safe(zstandard: object, data: bytes) -> None:
    assert scan_bytes(data).verdict is not Verdict.SAFE


def test_zstd_bomb_stops_at_a_limit_quickly(zstandard: object) -> None:
    data = _rle_bomb(8192)  # 32 KiB expanding to 1 GiB
    start = time.process_time()
    report = scan_bytes(data, limits=DEFAULT_LIMITS.replace(max_member_bytes=64 << 20))
    assert time.process_time() - start < 5
    assert report.verdict is Verdict.UNKNOWN
    assert {f.rule_id for f in report.findings} & {
        "limit.compression-ratio",
        "limit.member-bytes",
    }


def test_without_zstandard_zstd_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    # An environment without the package (it is optional): import fails, nothing is read.
    monkeypatch.setitem(sys.modules, "zstandard", None)
    report = scan_bytes(zstd_frame(pickle.dumps({"a": 1})))
    assert report.verdict is Verdict.UNKNOWN
    assert any(f.rule_id == "archive.unsupported" for f in report.findings)
