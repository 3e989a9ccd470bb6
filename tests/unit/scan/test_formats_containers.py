"""Containers: zip, tar, 7z, gzip/bz2/xz/lz4 nesting, npz and joblib; bombs and tricks.

Hostile archives must end in a verdict with a reason, in bounded time and memory, never safe.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

from trainwarden.findings import FileReport, Verdict
from trainwarden.scan import DEFAULT_LIMITS, Limits, scan_bytes, scan_path, sniff_format


class _Payload:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


def _evil(canary) -> bytes:  # type: ignore[no-untyped-def]
    return pickle.dumps(_Payload(canary.shell_command))


def _scan(data: bytes, tmp_path: Path, *, limits: Limits = DEFAULT_LIMITS) -> FileReport:
    path = tmp_path / "input.bin"
    path.write_bytes(data)
    report = scan_path(path, limits=limits)
    return report.files[0]


def _rules(report: FileReport) -> set[str]:
    return {f.rule_id for f in report.findings}


def _tar(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return out.getvalue()


def test_malicious_pickle_nested_in_tar_gz_zip(tmp_path: Path, canary) -> None:  # type: ignore[no-untyped-def]
    tar_gz = gzip.compress(_tar({"inner/model.pkl": _evil(canary), "ok.pkl": pickle.dumps(1)}))
    data = _zip({"bundle.tar.gz": tar_gz}, zipfile.ZIP_DEFLATED)
    report = _scan(data, tmp_path)
    canary.assert_absent()
    assert report.format == "zip"
    assert report.verdict is Verdict.UNSAFE
    members = {f.location.member for f in report.findings if f.verdict is Verdict.UNSAFE}
    assert any(m and m.endswith("inner/model.pkl") and "bundle.tar.gz" in m for m in members)


@pytest.mark.parametrize(
    ("compress", "fmt"),
    [
        (gzip.compress, "gzip"),
        (bz2.compress, "bz2"),
        (lzma.compress, "xz"),
    ],
)
def test_compressed_pickle_streams(tmp_path: Path, canary, compress, fmt: str) -> None:  # type: ignore[no-untyped-def]
    report = _scan(compress(_evil(canary)), tmp_path)
    canary.assert_absent()
    assert report.format == fmt
    assert report.verdict is Verdict.UNSAFE


def test_lz4_frame(tmp_path: Path, canary) -> None:  # type: ignore[no-untyped-def]
    lz4_frame = pytest.importorskip("lz4.frame")
    report = _scan(lz4_frame.compress(_evil(canary)), tmp_path)
    assert report.format == "lz4"
    assert report.verdict is Verdict.UNSAFE


def test_7z_archive(tmp_path: Path, canary) -> None:  # type: ignore[no-untyped-def]
    py7zr = pytest.importorskip("py7zr")
    src = tmp_path / "evil.pkl"
    src.write_bytes(_evil(canary))
    path = tmp_path / "a.7z"
    with py7zr.SevenZipFile(path, "w") as archive:
        archive.write(src, "evil.pkl")
        archive.writestr(b"just text\n", "notes.txt")
    report = scan_path(path).files[0]
    canary.assert_absent()
    assert report.format == "7z"
    assert report.verdict is Verdict.UNSAFE
    assert any((f.location.member or "").endswith("evil.pkl") for f in report.findings)


def test_bz2_bomb_is_bounded(tmp_path: Path) -> None:
    bomb = bz2.compress(b"\0" * (64 << 20))
    assert len(bomb) < 1000
    report = _scan(bomb, tmp_path)
    assert report.verdict is not Verdict.SAFE
    assert _rules(report) & {"limit.compression-ratio", "limit.member-bytes"}


def test_member_size_limit(tmp_path: Path) -> None:
    data = gzip.compress(b"x" * (2 << 20))
    limits = DEFAULT_LIMITS.replace(max_member_bytes=1 << 20)
    report = _scan(data, tmp_path, limits=limits)
    assert "limit.member-bytes" in _rules(report)
    assert report.verdict is Verdict.UNKNOWN


def test_deep_nesting_hits_limit(tmp_path: Path) -> None:
    data = pickle.dumps({"a": 1})
    for _ in range(12):
        data = gzip.compress(data)
    report = _scan(data, tmp_path, limits=DEFAULT_LIMITS.replace(max_nesting=4))
    assert "limit.nesting" in _rules(report)
    assert report.verdict is Verdict.UNKNOWN


def test_member_count_limit(tmp_path: Path) -> None:
    data = _zip({f"f{i}.txt": b"hello" for i in range(20)})
    report = _scan(data, tmp_path, limits=DEFAULT_LIMITS.replace(max_archive_members=5))
    assert "limit.members" in _rules(report)
    assert report.verdict is Verdict.UNKNOWN


def test_overlapping_zip_members(tmp_path: Path) -> None:
    # Point the second central-directory record at the first member's local header.
    data = bytearray(_zip({"a.txt": b"A" * 100, "b.txt": b"B" * 100}))
    second = data.find(b"PK\x01\x02", data.find(b"PK\x01\x02") + 4)
    struct.pack_into("<I", data, second + 42, 0)
    report = _scan(bytes(data), tmp_path)
    assert "archive.overlap" in _rules(report)
    assert report.verdict is not Verdict.SAFE


def test_encrypted_member_is_unknown(tmp_path: Path) -> None:
    data = bytearray(_zip({"x.pkl": pickle.dumps(1)}))
    cd = data.find(b"PK\x01\x02")
    struct.pack_into("<H", data, cd + 8, 1)  # general-purpose flag: encrypted
    report = _scan(bytes(data), tmp_path)
    assert "archive.encrypted" in _rules(report)
    assert report.verdict is Verdict.UNKNOWN


def test_two_end_records_reported(tmp_path: Path) -> None:
    data = _zip({"a.txt": b"hello"})
    # A fake end record inside the archive comment.
    comment = b"PK\x05\x06" + b"\0" * 18
    data = data[:-2] + struct.pack("<H", len(comment)) + comment
    report = _scan(data, tmp_path)
    assert report.verdict is not Verdict.SAFE


def test_truncated_zip_is_not_safe(tmp_path: Path) -> None:
    data = _zip({"a.pkl": pickle.dumps(list(range(100)))})
    report = _scan(data[: len(data) // 2], tmp_path)
    assert report.verdict is not Verdict.SAFE


def test_truncated_gzip_is_not_safe(tmp_path: Path) -> None:
    data = gzip.compress(pickle.dumps(list(range(1000))))
    report = _scan(data[:-20], tmp_path)
    assert report.verdict is not Verdict.SAFE


def test_tar_links_reported_not_followed(tmp_path: Path) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        sym = tarfile.TarInfo("link")
        sym.type = tarfile.SYMTYPE
        sym.linkname = "/etc/passwd"
        tar.addfile(sym)
        hard = tarfile.TarInfo("hard")
        hard.type = tarfile.LNKTYPE
        hard.linkname = "link"
        tar.addfile(hard)
    report = _scan(out.getvalue(), tmp_path)
    assert report.format == "tar"
    assert {"archive.symlink", "archive.hardlink"} <= _rules(report)
    assert report.verdict is Verdict.UNKNOWN


def test_tar_duplicate_names(tmp_path: Path, canary) -> None:  # type: ignore[no-untyped-def]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for data in (_evil(canary), pickle.dumps(1)):
            info = tarfile.TarInfo("model.pkl")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    report = _scan(out.getvalue(), tmp_path)
    assert "archive.duplicate-name" in _rules(report)
    assert report.verdict is Verdict.UNSAFE


def test_npz_benign_and_object(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    buf = io.BytesIO()
    np.savez(buf, a=np.arange(4), b=np.ones((2, 2)))
    assert sniff_format(buf.getvalue()) == "numpy-npz"
    report = _scan(buf.getvalue(), tmp_path)
    assert report.format == "numpy-npz"
    assert report.verdict is Verdict.SAFE, report.findings
    buf = io.BytesIO()
    np.savez_compressed(buf, a=np.arange(4))
    assert _scan(buf.getvalue(), tmp_path).verdict is Verdict.SAFE


def test_npz_with_malicious_object_array(tmp_path: Path, canary) -> None:  # type: ignore[no-untyped-def]
    np = pytest.importorskip("numpy")
    arr = np.empty(1, dtype=object)
    arr[0] = _Payload(canary.shell_command)
    buf = io.BytesIO()
    np.savez(buf, evil=arr)
    path = tmp_path / "evil.npz"
    path.write_bytes(buf.getvalue())
    np.load(path, allow_pickle=True)["evil"]
    canary.assert_present()
    canary.reset()
    report = scan_path(path).files[0]
    canary.assert_absent()
    assert report.verdict is Verdict.UNSAFE


def test_joblib_numpy_arrays_are_spliced(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    joblib = pytest.importorskip("joblib")
    path = tmp_path / "arrays.joblib"
    data = {"f": np.arange(50, dtype=np.float32), "o": np.array([1, "x", None], dtype=object)}
    joblib.dump(data, path)
    report = scan_path(path).files[0]
    assert report.format == "joblib"
    assert report.verdict is Verdict.SAFE, report.findings


@pytest.mark.parametrize("compress", [("zlib", 3), ("gzip", 3), ("bz2", 3), ("xz", 3), ("lzma", 3)])
def test_joblib_compressed(tmp_path: Path, canary, compress) -> None:  # type: ignore[no-untyped-def]
    np = pytest.importorskip("numpy")
    joblib = pytest.importorskip("joblib")
    good = tmp_path / "good.joblib"
    joblib.dump({"w": np.ones(10)}, good, compress=compress)
    report = scan_path(good).files[0]
    assert report.format == "joblib"
    assert report.verdict is Verdict.SAFE, report.findings
    bad = tmp_path / "bad.joblib"
    joblib.dump({"w": np.ones(10), "x": _Payload(canary.shell_command)}, bad, compress=compress)
    joblib.load(bad)
    canary.assert_present()
    canary.reset()
    report = scan_path(bad).files[0]
    canary.assert_absent()
    assert report.verdict is Verdict.UNSAFE


def test_joblib_object_array_nested_pickle_is_analysed(tmp_path: Path, canary) -> None:  # type: ignore[no-untyped-def]
    np = pytest.importorskip("numpy")
    joblib = pytest.importorskip("joblib")
    arr = np.empty(2, dtype=object)
    arr[0] = _Payload(canary.shell_command)
    path = tmp_path / "nested.joblib"
    joblib.dump({"a": np.arange(3), "objs": arr}, path)
    joblib.load(path)
    canary.assert_present()
    canary.reset()
    report = scan_path(path).files[0]
    canary.assert_absent()
    assert report.verdict is Verdict.UNSAFE


def test_scan_bytes_of_archive() -> None:
    report = scan_bytes(_zip({"a.txt": b"hello"}), name="mem.zip")
    assert report.path == "mem.zip"
    assert report.format == "zip"
    assert report.verdict is Verdict.SAFE


def test_plain_zip_names_differing_in_case_are_fine(tmp_path: Path) -> None:
    report = _scan(_zip({"README": b"a\n", "readme": b"b\n"}), tmp_path)
    assert report.verdict is Verdict.SAFE, report.findings


def test_joblib_compat_zfile(tmp_path: Path, canary) -> None:  # type: ignore[no-untyped-def]
    import zlib

    # joblib < 0.9.3: "ZF", the hex length padded to 19 characters, then zlib data.
    payload = _evil(canary)
    data = b"ZF" + hex(len(payload)).encode().ljust(19) + zlib.compress(payload)
    report = _scan(data, tmp_path)
    canary.assert_absent()
    assert report.format == "joblib"
    assert report.verdict is Verdict.UNSAFE


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_zip_compression_methods(tmp_path: Path, canary, method: int) -> None:  # type: ignore[no-untyped-def]
    report = _scan(_zip({"model.pkl": _evil(canary), "ok.txt": b"hi"}, method), tmp_path)
    canary.assert_absent()
    assert report.verdict is Verdict.UNSAFE


def test_gzip_is_never_mistaken_for_tar() -> None:
    # gzip headers carry a timestamp; whatever it is, the strong magic wins.
    for mtime in range(0, 2000, 7):
        data = gzip.compress(b"x" * 4096, mtime=mtime)
        assert sniff_format(data) == "gzip"


def test_zip_symlink_entry_content_is_still_analysed(tmp_path: Path, canary) -> None:  # type: ignore[no-untyped-def]
    # Readers that do not extract (torch, zipfile.read) see the link text as the member's bytes.
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        info = zipfile.ZipInfo("model.pkl")
        info.create_system = 3
        info.external_attr = 0o120777 << 16
        zf.writestr(info, _evil(canary))
    report = _scan(out.getvalue(), tmp_path)
    assert "archive.symlink" in _rules(report)
    assert report.verdict is Verdict.UNSAFE


def test_torch_package_modules_are_unknown(tmp_path: Path) -> None:
    data = _zip(
        {
            "pkg/.data/extern_modules": b"",
            "pkg/.data/version": b"6\n",
            "pkg/mymodel/model.py": b"import os\n",
            "pkg/mymodel/weights.pkl": pickle.dumps({"a": 1}),
        }
    )
    report = _scan(data, tmp_path)
    assert "torch.package-code" in _rules(report)
    assert report.verdict is Verdict.UNKNOWN


def test_legacy_tar_link_to_outside_file_is_high(tmp_path: Path) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name in ("tensors", "pickle"):
            data = pickle.dumps(0)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("storages")
        link.type = tarfile.SYMTYPE
        link.linkname = "/shared/elsewhere/evil.pkl"
        tar.addfile(link)
    report = _scan(out.getvalue(), tmp_path)
    assert report.format == "torch-legacy-tar"
    links = [f for f in report.findings if f.rule_id == "archive.symlink"]
    assert links
    assert links[0].severity.label == "high"
    assert report.verdict is Verdict.UNKNOWN


@pytest.mark.parametrize(
    "make",
    [
        lambda np: np.array(["ab", "cdefg"]),  # unicode: 4 bytes a character
        lambda np: np.zeros(3, dtype=[("a", "i4"), ("b", "f8")]),  # structured
        lambda np: np.array([(1, "x")], dtype=[("a", "i4"), ("b", "O")]),  # object field
        lambda np: np.zeros(2, dtype=("f4", (3,))),  # subarray
        lambda np: np.array(3.0),  # 0-d
    ],
)
def test_joblib_array_sizes_follow_numpy(tmp_path: Path, make) -> None:  # type: ignore[no-untyped-def]
    # A wrong size would read array bytes as opcodes (or skip real opcodes): the pickle
    # after the array must still parse, with no finding.
    np = pytest.importorskip("numpy")
    joblib = pytest.importorskip("joblib")
    path = tmp_path / "a.joblib"
    joblib.dump({"x": make(np), "after": [1, 2, 3]}, path)
    report = scan_path(path).files[0]
    assert report.format == "joblib"
    assert report.findings == ()
