"""PyTorch formats: zip checkpoints as torch's own reader sees them, legacy, tar and TorchScript.

Each tampered archive is first shown to REALLY run its payload under torch.load (the canary
appears), then shown to be caught by the scanner (the canary stays absent while scanning).
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

from trainwarden.findings import FileReport, Verdict
from trainwarden.scan import scan_bytes, scan_path, sniff_format

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.torch


class _Payload:
    """Unpickling runs a shell command that creates the canary."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


def _benign_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}, buf)
    return buf.getvalue()


def _evil_pickle(canary) -> bytes:  # type: ignore[no-untyped-def]
    import pickle

    return pickle.dumps(_Payload(canary.shell_command), protocol=2)


def _entries(raw: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        return [(i.filename, zf.read(i.filename)) for i in zf.infolist()]


def _rebuild(entries: list[tuple[str, bytes]]) -> bytes:
    import warnings

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are the point
        with zipfile.ZipFile(buf, "w") as zf:
            for name, data in entries:
                zf.writestr(name, data)
    return buf.getvalue()


def _torch_load_runs(data: bytes, canary, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The natural loader really executes the payload (the attack is real)."""
    path = tmp_path / "natural.pt"
    path.write_bytes(data)
    # The payload runs during unpickling, before any later failure of the load.
    with contextlib.suppress(Exception):
        torch.load(path, weights_only=False)
    canary.assert_present()
    canary.reset()


def _scan(data: bytes, tmp_path: Path, canary=None) -> FileReport:  # type: ignore[no-untyped-def]
    path = tmp_path / "scanned.pt"
    path.write_bytes(data)
    report = scan_path(path)
    if canary is not None:
        canary.assert_absent()
    assert len(report.files) == 1
    return report.files[0]


def _rules(report: FileReport) -> set[str]:
    return {f.rule_id for f in report.findings}


def test_benign_state_dict_is_safe_torch_zip(tmp_path: Path) -> None:
    report = _scan(_benign_bytes(), tmp_path)
    assert report.format == "torch-zip"
    assert report.verdict is Verdict.SAFE, report.findings


def test_malicious_data_pkl_is_unsafe(tmp_path: Path, canary) -> None:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    torch.save({"x": _Payload(canary.shell_command)}, buf)
    _torch_load_runs(buf.getvalue(), canary, tmp_path)
    report = _scan(buf.getvalue(), tmp_path, canary)
    assert report.verdict is Verdict.UNSAFE
    assert any(f.evidence and "system" in f.evidence for f in report.findings)
    assert any((f.location.member or "").endswith("data.pkl") for f in report.findings)


def test_uppercase_member_name_torch_still_loads(tmp_path: Path, canary) -> None:  # type: ignore[no-untyped-def]
    # torch's miniz lookup is case-insensitive: ARCHIVE/DATA.PKL is what it unpickles.
    entries = [
        (n.replace("data.pkl", "DATA.PKL"), _evil_pickle(canary) if n.endswith("data.pkl") else d)
        for n, d in _entries(_benign_bytes())
    ]
    data = _rebuild(entries)
    _torch_load_runs(data, canary, tmp_path)
    report = _scan(data, tmp_path, canary)
    assert report.verdict is Verdict.UNSAFE


@pytest.mark.parametrize("evil_first", [True, False])
def test_duplicate_data_pkl_every_copy_analysed(
    tmp_path: Path,
    canary,  # type: ignore[no-untyped-def]
    evil_first: bool,
) -> None:
    entries = _entries(_benign_bytes())
    prefix = entries[0][0].split("/")[0]
    evil = (f"{prefix}/data.pkl", _evil_pickle(canary))
    data = _rebuild([evil, *entries] if evil_first else [*entries, evil])
    report = _scan(data, tmp_path, canary)
    assert report.verdict is Verdict.UNSAFE
    assert "archive.duplicate-name" in _rules(report)


def test_bad_crc_zipfile_refuses_torch_loads(tmp_path: Path, canary) -> None:  # type: ignore[no-untyped-def]
    entries = [
        (n, _evil_pickle(canary) if n.endswith("data.pkl") else d)
        for n, d in _entries(_benign_bytes())
    ]
    data = bytearray(_rebuild(entries))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith("data.pkl"))
    crc = struct.pack("<I", info.CRC)
    data = bytearray(bytes(data).replace(crc, b"\0\0\0\0"))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf, pytest.raises(zipfile.BadZipFile):
        zf.read(info.filename)
    _torch_load_runs(bytes(data), canary, tmp_path)
    report = _scan(bytes(data), tmp_path, canary)
    assert report.verdict is Verdict.UNSAFE
    assert "archive.crc-mismatch" in _rules(report)


@pytest.mark.parametrize(
    "spoil", ["zip64-entries-on-disk", "zip64-disk-number", "member-disk-number", "stored-sizes"]
)
def test_archives_torch_refuses_as_multi_disk_are_not_safe(tmp_path: Path, spoil: str) -> None:
    # Fields zipfile ignores and torch's reader (miniz) checks: the scanner reads what torch
    # would refuse to load, so it cannot vouch for it (found by byte-level damage).
    raw = bytearray(_benign_bytes())
    if spoil == "zip64-entries-on-disk":
        pos = raw.rfind(b"PK\x06\x06")
        count = struct.unpack_from("<Q", raw, pos + 24)[0]
        struct.pack_into("<Q", raw, pos + 24, count + 1)
    elif spoil == "zip64-disk-number":
        pos = raw.rfind(b"PK\x06\x06")
        struct.pack_into("<I", raw, pos + 16, 1)  # the number of this disk
    elif spoil == "member-disk-number":
        pos = raw.find(b"PK\x01\x02")
        struct.pack_into("<H", raw, pos + 34, 40)  # the disk the member starts on
    else:
        pos = raw.find(b"PK\x01\x02")  # the first member (data.pkl), stored
        size = struct.unpack_from("<I", raw, pos + 24)[0]
        struct.pack_into("<I", raw, pos + 24, size + 1000)  # its uncompressed size
    with pytest.raises(RuntimeError):
        torch.load(io.BytesIO(bytes(raw)), weights_only=True)
    report = _scan(bytes(raw), tmp_path)
    assert report.verdict is Verdict.UNKNOWN
    assert "archive.malformed" in _rules(report)


def test_local_name_differs_from_central_name(tmp_path: Path) -> None:
    raw = bytearray(_benign_bytes())
    # Rename data.pkl in its local header only (same length): central says data.pkl.
    pos = raw.find(b"PK\x03\x04")
    name_len = struct.unpack("<H", raw[pos + 26 : pos + 28])[0]
    name = bytes(raw[pos + 30 : pos + 30 + name_len])
    assert name.endswith(b"data.pkl")
    raw[pos + 30 : pos + 30 + name_len] = name.replace(b"data.pkl", b"xxxx.pkl")
    report = _scan(bytes(raw), tmp_path)
    assert "archive.name-mismatch" in _rules(report)
    assert report.verdict is not Verdict.SAFE


def test_member_outside_archive_prefix_still_analysed(tmp_path: Path) -> None:
    import pickle

    entries = [*_entries(_benign_bytes()), ("elsewhere/extra.pkl", pickle.dumps(_Payload("true")))]
    report = _scan(_rebuild(entries), tmp_path)
    assert report.verdict is Verdict.UNSAFE
    assert any("extra.pkl" in (f.location.member or "") for f in report.findings)


def test_tensor_members_are_not_read(tmp_path: Path) -> None:
    # A storage member full of pickle opcodes is raw bytes to torch: never analysed as code.
    buf = io.BytesIO()
    torch.save(
        {"t": torch.frombuffer(bytearray(b"cos\nsystem\n(S'x'\ntR."), dtype=torch.uint8)}, buf
    )
    report = _scan(buf.getvalue(), tmp_path)
    assert report.verdict is Verdict.SAFE, report.findings


def test_truncated_storage_is_reported(tmp_path: Path) -> None:
    entries = _entries(_benign_bytes())
    entries = [(n, d[:4] if "/data/" in n else d) for n, d in entries]
    report = _scan(_rebuild(entries), tmp_path)
    assert "torch.storage-size-mismatch" in _rules(report)


def test_missing_storage_is_reported(tmp_path: Path) -> None:
    entries = [(n, d) for n, d in _entries(_benign_bytes()) if "/data/" not in n]
    report = _scan(_rebuild(entries), tmp_path)
    assert "torch.missing-storage" in _rules(report)


def test_legacy_format_benign_and_malicious(tmp_path: Path, canary) -> None:  # type: ignore[no-untyped-def]
    good = io.BytesIO()
    torch.save({"w": torch.ones(3)}, good, _use_new_zipfile_serialization=False)
    report = _scan(good.getvalue(), tmp_path)
    assert report.format == "torch-legacy"
    assert report.verdict is Verdict.SAFE, report.findings
    bad = io.BytesIO()
    torch.save({"w": _Payload(canary.shell_command)}, bad, _use_new_zipfile_serialization=False)
    _torch_load_runs(bad.getvalue(), canary, tmp_path)
    report = _scan(bad.getvalue(), tmp_path, canary)
    assert report.format == "torch-legacy"
    assert report.verdict is Verdict.UNSAFE


def test_legacy_storage_bytes_are_not_pickles(tmp_path: Path) -> None:
    # Raw storage data after the five pickles may look like opcodes; torch never unpickles it.
    buf = io.BytesIO()
    tensor = torch.frombuffer(bytearray(b"\x80\x02cos\nsystem\nq\x00."), dtype=torch.uint8)
    torch.save({"t": tensor}, buf, _use_new_zipfile_serialization=False)
    report = _scan(buf.getvalue(), tmp_path)
    assert report.verdict is Verdict.SAFE, report.findings


def _legacy_tar(pickle_member: bytes) -> bytes:
    import pickle

    storages = io.BytesIO()
    pickle.dump(1, storages, protocol=2)
    pickle.dump(("0", "cpu", torch.FloatStorage), storages, protocol=2)
    storages.write(struct.pack("<q", 2) + struct.pack("<2f", 1.0, 2.0))
    pickle.dump([], storages, protocol=2)
    tensors = io.BytesIO()
    pickle.dump(0, tensors, protocol=2)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (
            ("storages", storages.getvalue()),
            ("tensors", tensors.getvalue()),
            ("pickle", pickle_member),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_legacy_tar_format(tmp_path: Path, canary) -> None:  # type: ignore[no-untyped-def]
    import pickle

    good = _legacy_tar(pickle.dumps({"a": 1}, protocol=2))
    report = _scan(good, tmp_path)
    assert report.format == "torch-legacy-tar"
    assert report.verdict is Verdict.SAFE, report.findings
    bad = _legacy_tar(_evil_pickle(canary))
    _torch_load_runs(bad, canary, tmp_path)
    report = _scan(bad, tmp_path, canary)
    assert report.format == "torch-legacy-tar"
    assert report.verdict is Verdict.UNSAFE


def _scripted() -> bytes:
    class Small(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.lin(x))

    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(Small()), buf)
    return buf.getvalue()


def test_torchscript_is_unknown_but_not_unsafe(tmp_path: Path) -> None:
    # Its code runs at load and is not provably harmless: unknown, with nothing worse.
    report = _scan(_scripted(), tmp_path)
    assert report.format == "torchscript"
    assert report.verdict is Verdict.UNKNOWN
    assert _rules(report) == {"torchscript.code"}


def test_torchscript_extension_op_is_unknown(tmp_path: Path) -> None:
    entries = _entries(_scripted())
    entries = [
        (n, d + b"\ndef f(x):\n    return ops.evil_ns.run(x)\n" if n.endswith(".py") else d)
        for n, d in entries
    ]
    report = _scan(_rebuild(entries), tmp_path)
    assert report.verdict is Verdict.UNKNOWN
    assert any(f.evidence == "ops.evil_ns.run" for f in report.findings)


def test_torchscript_undefined_class_is_unknown(tmp_path: Path) -> None:
    entries = [(n, d) for n, d in _entries(_scripted()) if "/code/" not in n]
    report = _scan(_rebuild(entries), tmp_path)
    assert "torchscript.undefined-class" in _rules(report)


def test_sniff_format_torch_family() -> None:
    assert sniff_format(_benign_bytes()) == "torch-zip"
    assert sniff_format(_scripted()) == "torchscript"
    legacy = io.BytesIO()
    torch.save([1], legacy, _use_new_zipfile_serialization=False)
    assert sniff_format(legacy.getvalue()) == "torch-legacy"


def test_scan_bytes_matches_scan_path(tmp_path: Path) -> None:
    data = _benign_bytes()
    from_bytes = scan_bytes(data, name="x.pt")
    assert from_bytes.format == "torch-zip"
    assert from_bytes.verdict is Verdict.SAFE
    assert from_bytes.sha256 is not None
    assert len(from_bytes.sha256) == 64


def test_zip64_and_large_member_count(tmp_path: Path) -> None:
    # torch writes a zip64 end record; many tensors exercise the central-directory reader.
    buf = io.BytesIO()
    torch.save({f"t{i}": torch.full((2,), float(i)) for i in range(300)}, buf)
    report = _scan(buf.getvalue(), tmp_path)
    assert report.verdict is Verdict.SAFE, report.findings[:3]


def test_case_only_duplicates_flagged_in_torch_archives(tmp_path: Path) -> None:
    import pickle

    entries = _entries(_benign_bytes())
    prefix = entries[0][0].split("/")[0]
    data = _rebuild([*entries, (f"{prefix}/DATA.PKL", pickle.dumps({"a": 1}))])
    assert "archive.duplicate-name" in _rules(_scan(data, tmp_path))
