"""Never ``safe`` without analysis (issue 8): model-named files no reader recognises, and
archive members whose names leave the archive."""

from __future__ import annotations

import io
import os
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

from trainwarden.findings import Verdict
from trainwarden.scan import scan_path

SUFFIXES = [
    ".pt", ".pth", ".bin", ".ckpt", ".pkl", ".joblib", ".npy", ".npz", ".safetensors", ".h5",
    ".keras", ".pb", ".onnx", ".gguf",
]  # fmt: skip


def _contents() -> dict[str, bytes]:
    rng = __import__("random").Random(7)
    return {
        "empty": b"",
        "random": bytes(rng.randrange(256) for _ in range(4096)),
        "corrupt-safetensors": struct.pack("<Q", 1 << 40) + b"{not json",
        "text": b"just some words\n",
    }


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("kind", sorted(_contents()))
def test_model_named_files_that_no_reader_recognises_are_not_safe(
    tmp_path: Path, suffix: str, kind: str
) -> None:
    path = tmp_path / f"model{suffix}"
    path.write_bytes(_contents()[kind])
    report = scan_path(path).files[0]
    assert report.verdict in (Verdict.UNKNOWN, Verdict.ERROR, Verdict.UNSAFE), (kind, report)
    assert report.findings  # with a reason


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("config.json", b'{"hidden_size": 8}'),
        ("notes.txt", b"hello\n"),
        ("image.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64),
        ("vocab.txt", b"a\nb\nc\n"),
        ("empty.txt", b""),
    ],
)
def test_plain_data_files_stay_safe(tmp_path: Path, name: str, data: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    assert scan_path(path).verdict is Verdict.SAFE


def test_model_named_member_of_an_archive_is_checked_too(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("weights/model.pt", os.urandom(256))
        zf.writestr("README.txt", b"hi")
    path = tmp_path / "bundle.zip"
    path.write_bytes(buf.getvalue())
    report = scan_path(path).files[0]
    assert report.verdict is Verdict.UNKNOWN
    assert any(f.rule_id == "format.unrecognised-model-file" for f in report.findings)


@pytest.mark.parametrize("name", ["../evil.txt", "a/../../evil.txt", "/etc/cron.d/x", "C:/x.txt"])
def test_zip_member_escaping_the_archive_is_reported(tmp_path: Path, name: str) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ok.txt", b"fine")
        info = zipfile.ZipInfo("placeholder")
        info.filename = name  # zipfile would sanitise it on write otherwise
        zf.writestr(info, b"payload")
    path = tmp_path / "slip.zip"
    path.write_bytes(buf.getvalue())
    report = scan_path(path).files[0]
    assert report.verdict is Verdict.UNKNOWN
    assert any(f.rule_id == "archive.path-escape" for f in report.findings)


def test_tar_member_escaping_the_archive_is_reported(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("../../home/user/.bashrc")
        data = b"echo pwned\n"
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    path = tmp_path / "slip.tar"
    path.write_bytes(buf.getvalue())
    report = scan_path(path).files[0]
    assert any(f.rule_id == "archive.path-escape" for f in report.findings)
    assert report.verdict is Verdict.UNKNOWN


def test_inner_dotdot_that_stays_inside_is_fine(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("placeholder")
        info.filename = "a/b/../c.txt"
        zf.writestr(info, b"x")
    path = tmp_path / "ok.zip"
    path.write_bytes(buf.getvalue())
    assert not any(f.rule_id == "archive.path-escape" for f in scan_path(path).findings)
