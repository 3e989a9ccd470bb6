"""`trainwarden convert`: exit 0 written, 1 refused, 2 errors; never a traceback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from canary import Canary
from trainwarden.cli import main

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.torch


def test_convert_writes_safetensors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, dst = tmp_path / "model.pt", tmp_path / "model.safetensors"
    torch.save({"w": torch.ones(2, 2)}, src)
    assert main(["convert", str(src), str(dst), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["files"] == [str(dst)]
    assert out["tensors"] == 1
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(dst))["w"], torch.ones(2, 2))


def test_convert_shards(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "model.pt"
    torch.save({f"t{i}": torch.ones(256) for i in range(4)}, src)
    assert main(["convert", str(src), str(tmp_path / "m.safetensors"), "--shard-size", "2KiB"]) == 0
    assert (tmp_path / "m.safetensors.index.json").exists()
    assert "index" in capsys.readouterr().out


def test_convert_refuses_unsafe(
    tmp_path: Path, canary: Canary, capsys: pytest.CaptureFixture[str]
) -> None:
    class System:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (canary.shell_command,))

    src = tmp_path / "evil.pt"
    torch.save({"x": System()}, src)
    assert main(["convert", str(src), str(tmp_path / "out.safetensors")]) == 1
    canary.assert_absent()
    assert "system" in capsys.readouterr().err


def test_convert_allow_flag(tmp_path: Path) -> None:
    import ipaddress

    src = tmp_path / "m.pt"
    torch.save({"w": torch.ones(1), "a": [ipaddress.IPv4Address("10.0.0.1")]}, src)
    dst = str(tmp_path / "o.safetensors")
    assert main(["convert", str(src), dst]) == 1
    # Allowed, but an IPv4Address is no tensor and no JSON value: a clear error, exit 2.
    assert main(["convert", str(src), dst, "--allow", "ipaddress.IPv4Address"]) == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["convert", "missing.pt", "out.safetensors"],
        ["convert", "model.pt", "out.bin"],
        ["convert", "model.pt", "out.safetensors", "--shard-size", "lots"],
        ["convert", "model.pt", "out.safetensors", "--profile", "nope"],
        ["convert", "model.pt", "out.safetensors", "--allow", "not a name"],
    ],
)
def test_convert_errors_exit_2(
    tmp_path: Path,
    argv: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    torch.save({"w": torch.ones(1)}, tmp_path / "model.pt")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("trainwarden: error:")
    assert "Traceback" not in err
