"""Paths where a file that was not fully analysed could have come out safe: one test each."""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

from canary import Canary
from trainwarden.findings import Verdict
from trainwarden.scan import DEFAULT_LIMITS, scan_bytes, scan_path, sniff_format


def _rules(report: object) -> set[str]:
    return {f.rule_id for f in report.findings}  # type: ignore[attr-defined]


def _system(canary: Canary) -> bytes:
    return b"cos\nsystem\n(S" + repr(canary.shell_command).encode() + b"\ntR."


def _tar(
    members: list[tuple[str, bytes]], *, kind: bytes = tarfile.REGTYPE, encoding: str = "utf-8"
) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT, encoding=encoding) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.type = kind
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# -- a limit hit before the first import is never "data" ----------------------------------------


@pytest.mark.parametrize(
    ("prefix", "limit"),
    [
        (b"N0" * 2000, {"max_opcodes": 1000}),  # NONE, POP: no import for 4000 opcodes
        (b"(" * 10_000, {"max_stack_depth": 100}),  # MARKs nest deeper than the bound
    ],
)
def test_limit_before_first_import_is_not_data(
    canary: Canary, prefix: bytes, limit: dict[str, int]
) -> None:
    data = prefix + _system(canary)
    limits = DEFAULT_LIMITS.replace(**limit)
    report = scan_bytes(data, limits=limits)
    canary.assert_absent()
    assert report.format == "pickle"
    assert report.verdict is Verdict.UNKNOWN
    assert any(rule.startswith("limit.") for rule in _rules(report))
    assert sniff_format(data) == "pickle"
    # Without the limit the same bytes are plainly unsafe.
    assert scan_bytes(data).verdict is Verdict.UNSAFE


def test_limit_in_a_polyglot_prefix_is_not_ignored() -> None:
    # A tar whose first member name is pickle opcodes: a plain unpickler runs 100 opcodes of
    # it. With a smaller opcode budget the machine stops before it knows what follows.
    data = _tar([("N0" * 50, b"hello")])
    assert scan_bytes(data).verdict is Verdict.SAFE
    report = scan_bytes(data, limits=DEFAULT_LIMITS.replace(max_opcodes=20))
    assert report.verdict is Verdict.UNKNOWN
    assert "format.pickle-polyglot" in _rules(report)


# -- tar members tarfile reads that the scanner skipped -----------------------------------------


def test_tar_member_of_unknown_type_is_analysed(tmp_path: Path, canary: Canary) -> None:
    sample = tmp_path / "model.tar"
    sample.write_bytes(_tar([("model.pkl", _system(canary))], kind=b"Z"))
    report = scan_path(sample).files[0]
    assert report.verdict is Verdict.UNSAFE
    canary.assert_absent()
    # Extraction writes an unknown-type member as a regular file with its data.
    with tarfile.open(sample) as tar:
        tar.extractall(tmp_path / "out", filter="fully_trusted")
    extracted = tmp_path / "out" / "model.pkl"
    with extracted.open("rb") as f:
        pickle.load(f)  # the point: the extracted member runs its payload
    canary.assert_present()


def test_members_hidden_after_the_end_of_a_tar_are_not_safe(canary: Canary) -> None:
    first = _tar([("ok.pkl", pickle.dumps({"a": 1}))])
    second = _tar([("evil.pkl", _system(canary))])
    data = first + second  # tarfile stops at the zero blocks; ignore_zeros readers go on
    with tarfile.open(fileobj=io.BytesIO(data), ignore_zeros=True) as tar:
        assert "evil.pkl" in tar.getnames()
    report = scan_bytes(data)
    assert report.verdict is Verdict.UNKNOWN
    assert "archive.trailing-data" in _rules(report)
    # A garbage block between members (GNU tar skips it with a warning) is caught too.
    garbage = first[:1024] + b"\xff" * 512 + second
    assert "archive.trailing-data" in _rules(scan_bytes(garbage))
    canary.assert_absent()


def test_plain_tar_padding_is_not_trailing_data() -> None:
    data = _tar([("ok.pkl", pickle.dumps([1, 2, 3])), ("notes.txt", b"hi\n")])
    report = scan_bytes(data)
    assert report.verdict is Verdict.SAFE, report.findings


def _header_with_checksum(data: bytes, how: str) -> bytes:
    header = bytearray(data[:512])
    header[148:156] = b"\0" * 8
    if how == "base-256":
        unsigned, _ = tarfile.calc_chksums(bytes(header))
        header[148:156] = b"\x80" + unsigned.to_bytes(7, "big")
    else:
        # An empty field reads as 0 to tarfile: drive the signed sum to 0 through the
        # link name, which a regular member never uses.
        total = sum(struct.unpack("148b8x356b", bytes(header))) + 256
        pos = 157
        while total:
            current = struct.unpack("b", header[pos : pos + 1])[0]
            new = max(-128, current - total)
            total -= current - new
            header[pos] = new & 0xFF
            pos += 1
    return bytes(header) + data[512:]


@pytest.mark.parametrize("how", ["empty", "base-256"])
def test_tar_checksum_spellings_tarfile_accepts(canary: Canary, how: str) -> None:
    data = _header_with_checksum(_tar([("evil.pkl", _system(canary))]), how)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getnames() == ["evil.pkl"]
    report = scan_bytes(data)
    assert report.format == "tar"
    assert report.verdict is Verdict.UNSAFE
    canary.assert_absent()


def test_file_that_is_also_a_tar_is_analysed_as_one(canary: Canary) -> None:
    # The HDF5 signature as the first member's name: an HDF5 reader sees no Keras config
    # (plain data), tarfile (and torch's legacy loader) sees a tar holding a pickle.
    data = _tar([("\x89HDF\r\n\x1a\nx.pkl", _system(canary))], encoding="latin-1")
    assert data[:8] == b"\x89HDF\r\n\x1a\n"
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert len(tar.getnames()) == 1
    report = scan_bytes(data)
    assert report.verdict is Verdict.UNSAFE
    assert "format.tar-polyglot" in _rules(report)
    canary.assert_absent()


# -- pickles a loader could read that were only noted as trailing data ---------------------------


def test_second_pickle_in_a_zip_member_is_judged(tmp_path: Path, canary: Canary) -> None:
    sample = tmp_path / "bundle.zip"
    with zipfile.ZipFile(sample, "w") as archive:
        archive.writestr("model.pkl", pickle.dumps({"a": 1}) + _system(canary))
    report = scan_path(sample).files[0]
    assert report.verdict is Verdict.UNSAFE
    assert any(f.location.member == "model.pkl" for f in report.findings)
    canary.assert_absent()
    with zipfile.ZipFile(sample) as archive, archive.open("model.pkl") as f:
        pickle.load(f)  # the first pickle is harmless
        pickle.load(f)  # the second one is the payload
    canary.assert_present()


# -- .npy dtypes that hold objects under another spelling ---------------------------------------


def _npy(descr: str, payload: bytes) -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": (1,)}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + payload


@pytest.mark.parametrize("descr", ["object", "object_", "i4,O", "(2,)O"])
def test_npy_object_dtype_spellings(tmp_path: Path, canary: Canary, descr: str) -> None:
    np = pytest.importorskip("numpy")
    sample = tmp_path / "array.npy"
    sample.write_bytes(_npy(descr, _system(canary)))
    report = scan_path(sample).files[0]
    assert report.verdict is Verdict.UNSAFE
    canary.assert_absent()
    np.load(sample, allow_pickle=True)  # numpy unpickles whatever follows the header
    canary.assert_present()


# -- a joblib file read by pickle.load instead of joblib.load ------------------------------------


def _short(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def test_joblib_array_bytes_read_as_opcodes_by_pickle_load(tmp_path: Path, canary: Canary) -> None:
    joblib = pytest.importorskip("joblib")
    payload = _system(canary)
    # A wrapper for a uint8 array whose bytes are the payload, without alignment padding:
    # joblib.load reads them as array data, pickle.load as opcodes that run the payload.
    state = (
        b"}("
        + _short("subclass")
        + b"cnumpy\nndarray\n"
        + _short("shape")
        + b"M"
        + struct.pack("<H", len(payload))
        + b"\x85"
        + _short("order")
        + _short("C")
        + _short("dtype")
        + b"cnumpy\ndtype\n("
        + _short("u1")
        + b"\x89\x88tR"
        + _short("allow_mmap")
        + b"\x89u"
    )
    sample = tmp_path / "model.joblib"
    sample.write_bytes(
        b"\x80\x02cjoblib.numpy_pickle\nNumpyArrayWrapper\n)\x81" + state + b"b" + payload + b"."
    )
    report = scan_path(sample).files[0]
    assert report.format == "joblib"
    assert report.verdict is Verdict.UNSAFE
    canary.assert_absent()
    assert bytes(joblib.load(sample)) == payload  # joblib sees an array of the bytes
    canary.assert_absent()
    with sample.open("rb") as f:
        pickle.load(f)  # pickle.load runs them
    canary.assert_present()


def test_tar_with_a_large_blocking_factor_is_not_trailing_data() -> None:
    # `tar -b 256` pads to 128 KiB records: all zeros after the end-of-archive blocks.
    data = _tar([("ok.pkl", pickle.dumps({"a": 1}))]) + b"\0" * (128 << 10)
    assert scan_bytes(data).verdict is Verdict.SAFE
    assert "archive.trailing-data" in _rules(scan_bytes(data + b"\1"))
