"""`trainwarden convert`: exit 0 written, 1 refused, 2 errors; never a traceback."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
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
    assert out["schema_version"] == 1
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
    # Said once, by the command: the loader's log line ("refused ... (sha256 ...)", printed by
    # Python's last-resort handler outside pytest) repeated it above the command's own message.
    proc = subprocess.run(
        [sys.executable, "-m", "trainwarden", "convert", str(src), str(tmp_path / "o.safetensors")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert [line for line in lines if not line.startswith(("trainwarden:", "  "))] == []


def test_convert_allow_flag_and_left_out_objects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import ipaddress

    src = tmp_path / "m.pt"
    torch.save({"w": torch.ones(1), "a": [ipaddress.IPv4Address("10.0.0.1")], "step": 3}, src)
    dst = str(tmp_path / "o.safetensors")
    assert main(["convert", str(src), dst]) == 1
    capsys.readouterr()
    # Allowed, but an IPv4Address is no tensor and no JSON value: left out, and said so.
    args = ["convert", str(src), dst, "--allow", "ipaddress.IPv4Address"]
    assert main(args) == 0
    assert "LEFT OUT: 1 value(s)" in capsys.readouterr().out
    assert main([*args, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema_version"] == 1
    assert doc["left_out"] == {"a": "ipaddress.IPv4Address"}
    assert doc["kept"] == ["step"]


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


# ------------------------------------------------------------------------ bad input, all of it

BAD_KINDS = ("missing", "empty", "directory", "fifo", "symlink-loop", "garbage", "unreadable")


def _bad_source(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"bad-{kind}.pt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink-loop":
        path.symlink_to(path)
    elif kind == "garbage":
        path.write_bytes(bytes(range(256)) * 8)
    elif kind == "unreadable":
        torch.save({"w": torch.ones(1)}, path)
        path.chmod(0)
    return path


def _convert_child(argv: list[str], *, as_other_user: bool = False) -> tuple[int, str]:
    """Run ``main(argv)`` in a forked child (a FIFO cannot hang the run; root can drop to
    another uid, since root reads every file). Returns the exit code and stderr."""
    import locale  # noqa: F401  # what argparse needs, imported before privileges drop

    import safetensors.torch  # noqa: F401

    import trainwarden.load  # noqa: F401
    from trainwarden.cli import build_parser

    build_parser()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            os.dup2(write_end, 2)
            sys.stderr = os.fdopen(2, "w", closefd=False)
            if as_other_user and os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            signal.alarm(60)
            code = main(argv)
            sys.stderr.flush()
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as stream:
        err = stream.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), err


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_sources_exit_2_without_traceback(tmp_path: Path, kind: str) -> None:
    src = _bad_source(tmp_path, kind)
    dst = tmp_path / "out.safetensors"
    code, err = _convert_child(["convert", str(src), str(dst)], as_other_user=kind == "unreadable")
    assert code == 2, err
    assert "Traceback" not in err
    assert err.startswith("trainwarden: error:"), err
    assert not dst.exists()


def test_outputs_over_the_input_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import save_file

    src = tmp_path / "model.safetensors"
    save_file({"w": torch.ones(2)}, str(src))
    before = src.read_bytes()
    assert main(["convert", str(src), str(src)]) == 2
    assert main(["convert", str(src), str(tmp_path / "o.safetensors"), "-o", str(src)]) == 2
    assert "refusing" in capsys.readouterr().err
    assert src.read_bytes() == before
    assert not (tmp_path / "o.safetensors").exists()


def test_summary_to_a_full_device_is_exit_2(tmp_path: Path) -> None:
    src = tmp_path / "model.pt"
    torch.save({"w": torch.ones(2)}, src)
    full = tmp_path / "full"
    if os.geteuid() == 0:
        os.mknod(full, 0o666 | stat.S_IFCHR, os.makedev(1, 7))  # a private /dev/full
    elif Path("/dev/full").exists():
        full = Path("/dev/full")
    else:
        pytest.skip("needs /dev/full")
    code, err = _convert_child(
        ["convert", str(src), str(tmp_path / "o.safetensors"), "-o", str(full)]
    )
    assert code == 2, err
    assert "No space left" in err
    assert stat.S_ISCHR(full.stat().st_mode)


def test_convert_without_torch_is_a_clear_error(tmp_path: Path) -> None:
    src = tmp_path / "model.pt"
    torch.save({"w": torch.ones(2)}, src)
    # A fresh interpreter where torch and safetensors cannot be imported, as on a machine
    # with the core install only.
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'safetensors'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from trainwarden.cli import main\n"
        f"sys.exit(main(['convert', {str(src)!r}, {str(tmp_path / 'o.safetensors')!r}]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", blocker], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "pip install 'trainwarden[torch]'" in done.stderr


def test_a_destination_written_as_a_directory_is_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The README's `trainwarden convert ckpt.pt out/ --shard-size 2GB` failed on a fresh
    # directory ("out: the destination must end in .safetensors or be a directory"): the
    # trailing slash says what the user means. One missing level is created, like keygen's.
    monkeypatch.chdir(tmp_path)
    torch.save({"w": torch.ones(2)}, tmp_path / "ckpt.pt")
    assert main(["convert", "ckpt.pt", "out/", "--shard-size", "2GB"]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
    capsys.readouterr()
    assert main(["convert", "ckpt.pt", "out2"]) == 2  # no slash, no such file: a typo
    assert main(["convert", "ckpt.pt", "deep/er/"]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()
    assert not (tmp_path / "deep").exists()
