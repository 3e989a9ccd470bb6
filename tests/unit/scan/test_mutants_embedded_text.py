"""Pickles kept as base64 or hex text, in every spelling the decoders accept (mutation campaign).

``scripts/mutate_attacks.py`` rewrote ``peer-embedded-pickle-*`` and found text the second
stage decodes but the scanner did not recognise, so the file was ``safe``: base64 split into
lines (``base64.encodebytes``, MIME's 76 columns, CRLF), text after leading whitespace or
other characters ``b64decode`` discards, hex after whitespace (``bytes.fromhex`` skips it),
the URL-safe alphabet, the text kept in a bytes literal, and the text pushed by UNICODE,
STRING, BINSTRING or SHORT_BINSTRING (escapes spelling ``gA`` or ``80``). Each sample is proven
real by a second stage that really decodes and unpickles the field, in a fresh interpreter,
and must scan ``unknown`` (``pickle.embedded-pickle``) without the canary appearing. Benign
text that merely looks encoded stays ``safe``.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from attacks import call, enc, g, p4
from canary import Canary
from trainwarden.findings import Verdict
from trainwarden.scan import scan_path


class _System:
    """Pickled by ``pickle.dumps`` as a call of ``posix.system`` (protocols 0 and 1: no PROTO)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


def _inner(canary: Canary, protocol: int = 4) -> bytes:
    # The shell comment's "~~~~~~" puts "+" (URL-safe: "-") into the base64, wherever it falls.
    command = f"touch {canary.path} #~~~~~~"
    if protocol < 2:
        return pickle.dumps(
            {"cb": _System(command)} if protocol == 0 else _System(command), protocol
        )
    return p4(call(g("posix", "system"), command))


def _unicode_op(text: str) -> bytes:
    """UNICODE (raw-unicode-escape, one line): ``g`` and ``8`` written as \\u escapes."""
    esc = text.replace("g", "\\u0067").replace("8", "\\u0038")
    return b"V" + esc.encode("ascii") + b"\n"


def _string_op(text: str) -> bytes:
    """STRING (quoted, escape-decoded): the first character written as a \\x escape."""
    return b"S'\\x" + f"{ord(text[0]):02x}".encode() + text[1:].encode("ascii") + b"'\n"


def _binstring(text: str) -> bytes:
    data = text.encode("ascii")
    return b"T" + struct.pack("<i", len(data)) + data


def _short_binstring(text: str) -> bytes:
    data = text.encode("ascii")
    assert len(data) < 256
    return b"U" + bytes([len(data)]) + data


def _urlsafe(data: bytes) -> str:
    text = base64.urlsafe_b64encode(data).decode()
    assert "-" in text or "_" in text, "the sample must use the URL-safe characters"
    return text


def _field(value: bytes | str) -> bytes:
    return enc(value)


# id -> (how the field is written, the second stage that decodes it).
Writer = Callable[[bytes], bytes]
CASES: dict[str, tuple[Writer, str]] = {
    "base64-mime-lines": (lambda p: _field(base64.encodebytes(p).decode()), "b64"),
    "base64-crlf-lines": (
        lambda p: _field(base64.encodebytes(p).decode().replace("\n", "\r\n")),
        "b64",
    ),
    "base64-leading-newline": (lambda p: _field("\n" + base64.b64encode(p).decode()), "b64"),
    "base64-leading-junk": (lambda p: _field("--- " + base64.b64encode(p).decode()), "b64"),
    "base64-urlsafe": (lambda p: _field(_urlsafe(p)), "urlsafe"),
    "base64-in-bytes": (lambda p: _field(base64.b64encode(p)), "b64"),
    "hex-leading-space": (lambda p: _field("  " + p.hex()), "hex"),
    "hex-in-bytes": (lambda p: _field(p.hex().encode()), "hexbytes"),
    "base64-unicode-op": (lambda p: _unicode_op(base64.b64encode(p).decode()), "b64"),
    "hex-unicode-op": (lambda p: _unicode_op(p.hex()), "hex"),
    "base64-string-op": (lambda p: _string_op(base64.b64encode(p).decode()), "b64"),
    "base64-binstring": (lambda p: _binstring(base64.b64encode(p).decode()), "b64"),
    "hex-short-binstring": (lambda p: _short_binstring(p.hex()), "hex"),
}
# Protocols 0 and 1 write no PROTO: the pickle starts with GLOBAL ("c") or MARK ("(").
PROTOCOL_0_1: dict[str, int] = {
    "protocol0-raw-bytes": 0,
    "protocol1-raw-bytes": 1,
    "protocol0-base64": 0,
    "protocol1-base64-mime-lines": 1,
    "protocol0-hex": 0,
    "protocol1-hex-in-bytes": 1,
}
CASES.update(
    {
        "protocol0-raw-bytes": (_field, "raw"),
        "protocol1-raw-bytes": (_field, "raw"),
        "protocol0-base64": (lambda p: _field(base64.b64encode(p).decode()), "b64"),
        "protocol1-base64-mime-lines": (
            lambda p: _field(base64.encodebytes(p).decode()),
            "b64",
        ),
        "protocol0-hex": (lambda p: _field(p.hex()), "hex"),
        "protocol1-hex-in-bytes": (lambda p: _field(p.hex().encode()), "hexbytes"),
    }
)

# The second stage: load the outer pickle, decode the field, unpickle it (a fresh interpreter).
SECOND_STAGE = """
import base64, json, pickle, sys
for path, how in json.loads(sys.stdin.read()):
    with open(path, "rb") as f:
        value = pickle.load(f)["w"]
    try:
        if how == "raw":
            data = value
        elif how == "b64":
            data = base64.b64decode(value)
        elif how == "urlsafe":
            data = base64.urlsafe_b64decode(value)
        elif how == "hexbytes":
            data = bytes.fromhex(value.decode())
        else:
            data = bytes.fromhex(value)
        pickle.loads(data)
    except Exception as exc:
        print(path, repr(exc), file=sys.stderr)
"""


def _build(tmp_path: Path) -> dict[str, tuple[Path, Canary, str]]:
    out = {}
    for case, (write, how) in CASES.items():
        canary = Canary(tmp_path / case / "canary")
        canary.path.parent.mkdir(parents=True)
        path = tmp_path / case / "state.pkl"
        inner = _inner(canary, PROTOCOL_0_1.get(case, 4))
        path.write_bytes(b"\x80\x04}(" + _field("w") + write(inner) + b"u.")
        out[case] = (path, canary, how)
    return out


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Canary, str]]:
    return _build(tmp_path_factory.mktemp("embedded-text"))


def test_second_stage_really_runs_every_sample(tmp_path: Path) -> None:
    built = _build(tmp_path)
    request = json.dumps([[str(p), how] for p, _c, how in built.values()])
    proc = subprocess.run(
        [sys.executable, "-c", SECOND_STAGE],
        input=request,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    missing = [case for case, (_p, canary, _h) in built.items() if not canary.exists()]
    assert not missing, f"payload did not run for {missing}: {proc.stderr}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_scan_flags_the_embedded_pickle(
    case: str, samples: dict[str, tuple[Path, Canary, str]]
) -> None:
    path, canary, _how = samples[case]
    report = scan_path(path)
    canary.assert_absent()
    assert report.verdict is Verdict.UNKNOWN, [f.to_dict() for f in report.files]
    rules = {f.rule_id for fr in report.files for f in fr.findings}
    assert "pickle.embedded-pickle" in rules


@pytest.mark.parametrize(
    "value",
    [
        "  gA " + "x" * 40,  # looks like base64 of a pickle, decodes to nothing loadable
        "\n" + base64.encodebytes(pickle.dumps({"lr": 0.1}, protocol=4)).decode(),  # benign
        "-- 80 " + "ff" * 30,
        b"gAAAAA" + b"\x00" * 40,
        "note: " + "g" * 60,
        pickle.dumps({"lr": 0.1, "betas": [0.9, 0.99]}, protocol=0),  # benign, no PROTO
        base64.b64encode(pickle.dumps([1, 2, 3] * 10, protocol=1)).decode(),
        b"cats and dogs " * 4,  # starts like GLOBAL, is no pickle
        "KGRw" + "A" * 40,  # base64 of "(dp" then nothing loadable
        "2023-12-04T02:15:33+00:00 run started",
    ],
)
def test_text_that_only_looks_encoded_stays_safe(value: str | bytes, tmp_path: Path) -> None:
    path = tmp_path / "state.pkl"
    path.write_bytes(b"\x80\x04}(" + _field("w") + _field(value) + b"u.")
    assert scan_path(path).verdict is Verdict.SAFE
