"""Fuzz the verifiers' inputs: a mutated signature bundle, ledger file, provenance statement or
run directory never escapes as an exception, and gets an exit code of the contract.

The inputs are real: a checkpoint directory signed by ``trainwarden sign``, a ledger written
by ``ledger append`` and sealed, and a complete run directory (ledger, telemetry, provenance,
checkpoints). Each example flips bits, cuts the file, inserts bytes, or rewrites one JSON
value (a line's, for JSON Lines) with a hostile one, then runs the command in process; a
verifier must also never accept a signed payload it was not given.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainwarden.cli import main
from trainwarden.report._synthetic import SyntheticRun, write_synthetic_run

HOSTILE: list[Any] = [
    None,
    0,
    -1,
    2**64,
    1e308,
    "",
    "x" * 5000,
    "../../etc/passwd",
    [],
    {},
    True,
    [[[[[]]]]],
    "sha256:" + "0" * 64,
]


def _cli(*argv: object) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    assert "Traceback" not in err.getvalue(), err.getvalue()[-2000:]
    return code, err.getvalue()


def _paths(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [at]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*at, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += _paths(item, (*at, index))
    return out


def _rewrite(value: Any, where: int, hostile: Any) -> Any:
    paths = _paths(value)
    path = paths[where % len(paths)]
    if not path:
        return hostile
    parent = value
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = hostile
    return value


@st.composite
def mutations(draw: st.DrawFn, data: bytes) -> bytes:
    kind = draw(st.sampled_from(["flip", "cut", "insert", "json"]))
    size = len(data)
    at = draw(st.integers(0, max(size - 1, 0)))
    if kind == "flip":
        return data[:at] + bytes([data[at] ^ (1 << draw(st.integers(0, 7)))]) + data[at + 1 :]
    if kind == "cut":
        return data[:at]
    if kind == "insert":
        return data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:]
    where, hostile = draw(st.integers(0, 10_000)), draw(st.sampled_from(HOSTILE))
    try:  # a JSON document
        return json.dumps(_rewrite(json.loads(data), where, hostile), indent=2).encode()
    except ValueError:
        pass
    try:  # JSON Lines: one value rewritten in one line
        lines = data.decode().splitlines(keepends=True)
        line = draw(st.integers(0, len(lines) - 1))
        value = _rewrite(json.loads(lines[line]), where, hostile)
    except ValueError:  # not JSON at all (a checkpoint): bytes inverted
        return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :] if data else b"\0"
    lines[line] = json.dumps(value) + ("\n" if lines[line].endswith("\n") else "")
    return "".join(lines).encode()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fuzz")
    for name in ("writer", "sealer"):
        assert _cli("keygen", root / name)[0] == 0
    checkpoint = root / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "weights.bin").write_bytes(bytes(range(256)) * 20)
    (checkpoint / "config.json").write_text('{"width": 64}')
    signed = _cli("sign", checkpoint, "--key", root / "writer", "--run", "r1", "--no-progress")
    assert signed[0] == 0, signed[1]
    ledger = root / "ledger"
    assert _cli("ledger", "init", ledger)[0] == 0
    for i in range(3):
        data = json.dumps({"i": i, "what": "step"})
        appended = _cli(
            "ledger", "append", ledger, "--key", root / "writer", "--event", "test.step",
            "--run", "r1", "--data", data,
        )  # fmt: skip
        assert appended[0] == 0, appended[1]
    writer = root / "writer.pub"
    sealed = _cli("ledger", "seal", ledger, "--key", root / "sealer", "--pubkey", writer)
    assert sealed[0] == 0, sealed[1]
    return {"root": root, "checkpoint": checkpoint, "ledger": ledger}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> SyntheticRun:
    return write_synthetic_run(tmp_path_factory.mktemp("run") / "run", ranks=2, steps=50)


@contextlib.contextmanager
def _mutated(path: Path, data: bytes) -> Any:
    original = path.read_bytes()
    path.write_bytes(data)
    try:
        yield
    finally:
        path.write_bytes(original)


FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None
)


def _signed_payload(document: bytes) -> bytes | None:
    """The DSSE payload and signature of a bundle or a bare envelope (what a signature covers
    and proves; key hints and key ids are not covered)."""
    try:
        envelope = json.loads(document)
        envelope = envelope.get("dsseEnvelope", envelope)
        return base64.b64decode(envelope["payload"]) + base64.b64decode(
            envelope["signatures"][0]["sig"]
        )
    except (ValueError, KeyError, IndexError, TypeError):
        return None


@FUZZ
@given(st.data())
def test_a_mutated_signature_bundle(world: dict[str, Path], data: st.DataObject) -> None:
    bundle = Path(f"{world['checkpoint']}.sig")
    original = bundle.read_bytes()
    mutated = data.draw(mutations(original))
    with _mutated(bundle, mutated):
        code, _ = _cli("verify", world["checkpoint"], "--pubkey", world["root"] / "writer.pub",
                       "--no-progress")  # fmt: skip
    assert code in (0, 1, 2)
    if code == 0:  # only fields the signature does not cover (key hints) may change
        assert _signed_payload(mutated) == _signed_payload(original)


@FUZZ
@given(st.data())
def test_a_mutated_ledger_file(world: dict[str, Path], data: st.DataObject) -> None:
    files = sorted(p for p in world["ledger"].rglob("*") if p.is_file())
    path = data.draw(st.sampled_from(files))
    original = path.read_bytes()
    mutated = data.draw(mutations(original))
    with _mutated(path, mutated):
        root = world["root"]
        keys = ("--pubkey", root / "writer.pub", "--seal-pubkey", root / "sealer.pub")
        verified, _ = _cli("ledger", "verify", world["ledger"], *keys)
        shown, _ = _cli("ledger", "show", world["ledger"])
    assert verified == (0 if mutated == original else 1)
    assert shown in (0, 1, 2)


@FUZZ
@given(st.data())
def test_a_mutated_provenance_statement(run: SyntheticRun, data: st.DataObject) -> None:
    statement = run.run_dir / "provenance.intoto.json"
    original = statement.read_bytes()
    mutated = data.draw(mutations(original))
    with _mutated(statement, mutated):
        keys = [a for key in run.keys for a in ("--pubkey", key)]
        code, _ = _cli("provenance", "verify", statement, *keys)
        shown, _ = _cli("provenance", "show", statement)
    assert code in (0, 1, 2)
    if code == 0:
        assert _signed_payload(mutated) == _signed_payload(original)
    assert shown in (0, 1, 2)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(st.data())
def test_a_mutated_file_of_a_run_directory(
    run: SyntheticRun, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    files = sorted(
        p for p in run.run_dir.rglob("*") if p.is_file() and p.stat().st_size < 1_000_000
    )
    path = data.draw(st.sampled_from(files))
    original = path.read_bytes()
    out = tmp_path_factory.mktemp("report") / "report.html"
    keys = [a for key in run.keys for a in ("--pubkey", key)]
    with _mutated(path, data.draw(mutations(original))):
        code, err = _cli("report", run.run_dir, *keys, "--seal-pubkey", run.seal_key, "-o", out,
                         "--no-progress")  # fmt: skip
    assert code in (0, 1, 2), err
    if code != 2:
        assert out.stat().st_size > 0


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Real torch checkpoints: a state dict, a model and optimizer, the legacy format."""
    torch = pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    out = {}
    for name, obj, legacy in (
        ("weights", model.state_dict(), False),
        ("training", {"model": model.state_dict(), "optim": optimizer.state_dict()}, False),
        ("legacy", model.state_dict(), True),
    ):
        path = root / f"{name}.pt"
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
        out[name] = path.read_bytes()
    return out


def _repack(archive: bytes, mutate: Callable[[bytes], bytes]) -> bytes:
    """The zip checkpoint with its pickle mutated and the archive itself valid."""
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info.filename, mutate(data) if info.filename.endswith(".pkl") else data)
    return out.getvalue()


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(st.data())
def test_convert_of_a_corrupt_checkpoint(
    checkpoints: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    # Torch's deserialiser raised AssertionError and TypeError on some of these, which
    # escaped convert as exceptions.
    name = data.draw(st.sampled_from(sorted(checkpoints)))
    original = checkpoints[name]
    inside = name != "legacy" and data.draw(st.booleans())
    if inside:
        mutated = _repack(original, lambda pkl: data.draw(mutations(pkl)))
    else:
        mutated = data.draw(mutations(original))
    root = tmp_path_factory.mktemp("convert")
    (root / "in.pt").write_bytes(mutated)
    code, err = _cli("convert", root / "in.pt", root / "out.safetensors")
    assert code in (0, 1, 2), err
    if code == 2:
        assert err.startswith("trainwarden: error: "), err


class _RebuiltAs:
    """Pickles as torch's own tensor rebuild with a size torch's deserialiser chokes on."""

    def __init__(self, size: object) -> None:
        self.size = size

    def __reduce_ex__(self, protocol: object) -> tuple[Any, ...]:
        import collections
        import warnings

        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TypedStorage is deprecated, still what torch reads
            storage = torch.zeros(4).storage()
        rebuild = torch._utils._rebuild_tensor_v2
        return (rebuild, (storage, 0, self.size, (1,), False, collections.OrderedDict()))


@pytest.mark.parametrize("size", ["abc", (2, "x"), None, (-3,), (1 << 62,)])
def test_convert_of_a_tensor_torch_cannot_rebuild(tmp_path: Path, size: object) -> None:
    # Only allowed calls (the scan finds nothing), and torch raises TypeError: it escaped.
    torch = pytest.importorskip("torch")
    torch.save({"weight": _RebuiltAs(size)}, tmp_path / "in.pt")
    code, err = _cli("convert", tmp_path / "in.pt", tmp_path / "out.safetensors")
    assert code == 2
    assert "is not a checkpoint torch can read" in err
    assert not (tmp_path / "out.safetensors").exists()
