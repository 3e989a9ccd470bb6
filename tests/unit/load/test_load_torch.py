"""trainwarden.load returns what torch.load returns for safe input and refuses the rest."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import pytest
from load_helpers import assert_same, sharing_signature

from canary import Canary
from trainwarden.errors import ConfigError, UnsafeModelError
from trainwarden.findings import Verdict

torch = pytest.importorskip("torch")

import trainwarden  # noqa: E402
from trainwarden.load._unpickler import make_pickle_module, validate_persistent_id  # noqa: E402
from trainwarden.scan import Policy  # noqa: E402

pytestmark = pytest.mark.torch


def _state() -> dict[str, object]:
    torch.manual_seed(0)
    base = torch.randn(6, 4)
    return {
        "w": base,
        "view": base[1:3],  # shares base's storage
        "t": base.t(),  # non-contiguous view
        "bf16": torch.randn(3).to(torch.bfloat16),
        "f8": torch.randn(4).to(torch.float8_e4m3fn),
        "c64": torch.randn(2, dtype=torch.complex64),
        "u16": torch.arange(5).to(torch.uint16),
        "u64": torch.arange(5).to(torch.uint64),
        "b": torch.tensor([True, False]),
        "empty": torch.empty(0),
        "nested": {"list": [torch.ones(2), 3, "x"], "tuple": (1.5, None)},
        "grad": torch.nn.Parameter(torch.ones(2)),
    }


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "model.pt"
    torch.save(_state(), path)
    return path


def test_same_result_as_torch_load(ckpt: Path) -> None:
    expected = torch.load(ckpt, weights_only=False)
    got = trainwarden.load(ckpt)
    assert_same(got, expected)
    assert sharing_signature(got) == sharing_signature(expected)
    assert got["view"].untyped_storage().data_ptr() == got["w"].untyped_storage().data_ptr()


@pytest.mark.parametrize(
    "map_location",
    ["cpu", "meta", {"cpu": "meta"}, "torch.device", "callable"],
)
def test_map_location_variants(ckpt: Path, map_location: object) -> None:
    if map_location == "torch.device":
        map_location = torch.device("cpu")
    elif map_location == "callable":
        map_location = lambda storage, _location: storage  # noqa: E731
    expected = torch.load(ckpt, map_location=map_location, weights_only=False)
    assert_same(trainwarden.load(ckpt, map_location=map_location), expected)


def test_path_like_file_object_and_mmap(ckpt: Path) -> None:
    expected = torch.load(ckpt, weights_only=False)
    assert_same(trainwarden.load(str(ckpt)), expected)
    with ckpt.open("rb") as f:
        assert_same(trainwarden.load(f), expected)
    assert_same(trainwarden.load(io.BytesIO(ckpt.read_bytes())), expected)
    mapped = trainwarden.load(ckpt, mmap=True)
    assert_same(mapped, torch.load(ckpt, mmap=True, weights_only=False))
    assert sharing_signature(mapped) == sharing_signature(expected)


def test_mmap_needs_a_path_like_torch(ckpt: Path) -> None:
    with ckpt.open("rb") as f, pytest.raises(ValueError, match="file path"):
        trainwarden.load(f, mmap=True)


def test_legacy_format(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    state = _state()
    del state["f8"], state["u16"], state["u64"]  # the legacy writer predates these dtypes
    torch.save(state, path, _use_new_zipfile_serialization=False)
    expected = torch.load(path, weights_only=False)
    got = trainwarden.load(path)
    assert_same(got, expected)
    assert sharing_signature(got) == sharing_signature(expected)


def test_weights_only_true_runs_both_checks(ckpt: Path) -> None:
    assert_same(trainwarden.load(ckpt, weights_only=True), torch.load(ckpt, weights_only=True))


def test_custom_pickle_module_is_refused(ckpt: Path) -> None:
    import types

    with pytest.raises(ConfigError, match="pickle_module"):
        trainwarden.load(ckpt, pickle_module=types.ModuleType("dill"))
    assert_same(trainwarden.load(ckpt, pickle_module=pickle), torch.load(ckpt, weights_only=False))


class _System:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


def test_unsafe_checkpoint_refused_with_report(tmp_path: Path, canary: Canary) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2), "x": _System(canary.shell_command)}, path)
    with pytest.raises(UnsafeModelError) as info:
        trainwarden.load(path)
    canary.assert_absent()
    report = info.value.report
    assert report.verdict is Verdict.UNSAFE
    (file,) = report.files
    assert file.sha256
    assert len(file.sha256) == 64
    finding = next(f for f in file.findings if f.verdict is Verdict.UNSAFE)
    assert finding.evidence in ("posix.system", "os.system", "nt.system")
    assert finding.location.member is not None
    assert finding.location.member.endswith("data.pkl")
    assert finding.location.offset is not None
    assert "system" in info.value.diagnostics()


def test_allow_extends_the_policy(tmp_path: Path) -> None:
    import ipaddress

    path = tmp_path / "addr.pt"
    address = ipaddress.IPv4Address("10.0.0.1")
    torch.save({"a": address}, path)
    with pytest.raises(UnsafeModelError) as info:
        trainwarden.load(path)
    assert info.value.report.verdict is Verdict.UNKNOWN
    assert trainwarden.load(path, allow=["ipaddress.IPv4Address"]) == {"a": address}


def test_find_class_refuses_even_without_the_scan(canary: Canary) -> None:
    # Defence in depth: the Unpickler alone refuses, whatever a scan said.
    module = make_pickle_module(Policy.default())
    data = pickle.dumps(_System(canary.shell_command), protocol=2)
    with pytest.raises(UnsafeModelError) as info:
        module.loads(data)
    canary.assert_absent()
    assert info.value.report.files[0].findings[0].rule_id == "load.refused-global"


@pytest.mark.parametrize(
    "pid",
    [
        ("storage", "not a storage type", "0", "cpu", 4),
        ("storage", None, "../../etc/passwd", "cpu", 4),
        ("evil", 1),
        [1, 2],
    ],
)
def test_malformed_persistent_ids_are_refused(pid: object) -> None:
    assert validate_persistent_id(pid) is not None


def test_torch_persistent_ids_are_accepted() -> None:
    from torch.serialization import StorageType

    assert validate_persistent_id(("storage", StorageType("FloatStorage"), "0", "cpu", 4)) is None
    assert validate_persistent_id(("storage", torch.UntypedStorage, "12", "cuda:1", 0)) is None


def test_persistent_id_checked_during_torch_load(tmp_path: Path) -> None:
    # A zip checkpoint whose pickle carries a persistent id torch never writes.
    class P(pickle.Pickler):
        def persistent_id(self, obj: object) -> object:
            return ("storage", "FloatStorage", "../x", "cpu", 1) if obj == "PID" else None

    import zipfile

    buf = io.BytesIO()
    P(buf, protocol=2).dump({"x": "PID"})
    path = tmp_path / "pid.pt"
    torch.save({"a": torch.ones(1)}, path)
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    data_pkl = next(n for n in members if n.endswith("data.pkl"))
    members[data_pkl] = buf.getvalue()
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    with pytest.raises(UnsafeModelError):
        trainwarden.load(path)


def _tar_checkpoint(path: Path, main_obj: object) -> None:
    """Write the pre-0.4 tar checkpoint format, which torch.load still reads."""
    import struct
    import tarfile

    data = torch.arange(6, dtype=torch.float32)

    def member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))

    storages = io.BytesIO()
    pickle.dump(1, storages, protocol=2)
    pickle.dump((0, "cpu", torch.FloatStorage), storages, protocol=2)
    storages.write(struct.pack("<q", data.numel()) + data.numpy().tobytes())
    pickle.dump([], storages, protocol=2)
    tensors = io.BytesIO()
    pickle.dump(1, tensors, protocol=2)
    pickle.dump((1, 0, torch.FloatTensor), tensors, protocol=2)
    # ndim, 4 padding bytes, sizes, strides, storage offset
    tensors.write(struct.pack("<i4xqqq", 1, 3, 1, 2))

    class P(pickle.Pickler):
        def persistent_id(self, obj: object) -> object:
            return "1" if obj == "TENSOR" else None

    main = io.BytesIO()
    P(main, protocol=2).dump(main_obj)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        member(tar, "sys_info", pickle.dumps({}, protocol=2))
        member(tar, "storages", storages.getvalue())
        member(tar, "tensors", tensors.getvalue())
        member(tar, "pickle", main.getvalue())


def test_legacy_tar_format(tmp_path: Path, canary: Canary) -> None:
    path = tmp_path / "tar.pt"
    _tar_checkpoint(path, {"t": "TENSOR", "n": 5})
    expected = torch.load(path, weights_only=False)
    assert expected["t"].tolist() == [2.0, 3.0, 4.0]
    assert_same(trainwarden.load(path), expected)
    evil = tmp_path / "evil-tar.pt"
    _tar_checkpoint(evil, {"t": "TENSOR", "x": _System(canary.shell_command)})
    with pytest.raises(UnsafeModelError):
        trainwarden.load(evil)
    canary.assert_absent()


def test_missing_file_raises_what_torch_raises(tmp_path: Path) -> None:
    from trainwarden.errors import InputError

    with pytest.raises(FileNotFoundError) as info:
        trainwarden.load(tmp_path / "missing.pt")
    assert isinstance(info.value, InputError)  # and the CLI maps it to exit 2
    with pytest.raises(IsADirectoryError):
        trainwarden.load(tmp_path)
