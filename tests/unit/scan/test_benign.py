"""Legitimate files written by real libraries get the verdict they deserve (tests/benign.py).

Pure data is safe under the default policy; framework checkpoints are safe once their profile
is enabled; nothing legitimate is ever unsafe.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from benign import BENIGN, Benign
from trainwarden.findings import Report, Verdict


@dataclass(frozen=True)
class BuiltFile:
    """A benign file on disk, or why it could not be built."""

    path: Path | None
    error: str | None = None


def _missing(b: Benign) -> list[str]:
    return [r for r in b.requires if importlib.util.find_spec(r) is None]


@pytest.fixture(scope="session")
def benign_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BuiltFile]:
    """Every benign file, built once per session (framework runs share one build)."""
    root = tmp_path_factory.mktemp("benign")
    out: dict[str, BuiltFile] = {}
    for b in BENIGN:
        if _missing(b):
            out[b.id] = BuiltFile(None, f"needs {', '.join(_missing(b))}")
            continue
        try:
            out[b.id] = BuiltFile(b.build(root / b.id))
        except Exception as exc:  # a builder bug fails that entry's tests, not the session
            out[b.id] = BuiltFile(None, f"build failed: {exc!r}")
    return out


def _path(b: Benign, files: dict[str, BuiltFile]) -> Path:
    built = files[b.id]
    if built.error and built.error.startswith("needs "):
        pytest.skip(built.error)
    assert built.path is not None, built.error
    return built.path


def _describe(report: Report) -> str:
    lines = []
    for f in report.files:
        lines.append(f"{f.path} [{f.format}] {f.verdict.value}")
        lines.extend(
            f"    {x.rule_id} {x.verdict.value} {x.evidence or ''} {x.message}" for x in f.findings
        )
    return "\n".join(lines)


PARAMS = [
    pytest.param(b, id=b.id, marks=[pytest.mark.torch] if "torch" in b.requires else [])
    for b in BENIGN
]


def test_catalogue_covers_every_library() -> None:
    required = {r for b in BENIGN for r in b.requires}
    assert {"torch", "numpy", "joblib", "sklearn", "transformers", "lightning", "accelerate"} <= (
        required
    )
    assert sum(b.pure_data for b in BENIGN) >= 20
    assert all(b.expected_default is not Verdict.UNSAFE for b in BENIGN)


@pytest.mark.parametrize("benign", PARAMS)
def test_default_policy_verdict(benign: Benign, benign_files: dict[str, BuiltFile]) -> None:
    from trainwarden.scan import Policy, scan_path

    report = scan_path(_path(benign, benign_files), policy=Policy.default())
    assert report.verdict is not Verdict.UNSAFE, _describe(report)
    assert report.verdict is benign.expected_default, (
        f"{benign.id}: {report.verdict.value}, expected {benign.expected_default.value}\n"
        + _describe(report)
    )


@pytest.mark.parametrize("benign", PARAMS)
def test_profile_verdict(benign: Benign, benign_files: dict[str, BuiltFile]) -> None:
    from trainwarden.scan import Policy, scan_path

    policy = Policy.default(profiles=benign.profiles)
    report = scan_path(_path(benign, benign_files), policy=policy)
    assert report.verdict is not Verdict.UNSAFE, _describe(report)
    assert report.verdict is benign.expected_with_profiles, (
        f"{benign.id} with profiles {benign.profiles}: {report.verdict.value}, expected "
        f"{benign.expected_with_profiles.value}\n" + _describe(report)
    )


def _torch_weights_only_loadable(data: bytes) -> bool:
    import numpy as np
    import torch
    from numpy._core.multiarray import _reconstruct

    # Trainer and accelerate load RNG states with numpy's reconstruct functions allowed.
    extra: list[Any] = [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    with torch.serialization.safe_globals(extra):
        torch.load(io.BytesIO(data), weights_only=True)
    return True


def _torch_bytes(path: Path) -> bytes | None:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return data if any(n.endswith("/data.pkl") for n in z.namelist()) else None
    legacy = data[:2] == b"\x80\x02" and path.suffix in {".pt", ".pth", ".bin", ".ckpt", ".gz"}
    return data if legacy else None


@pytest.mark.torch
@pytest.mark.parametrize(
    "benign",
    [pytest.param(b, id=b.id) for b in BENIGN if b.pure_data and "torch" in b.requires],
)
def test_pure_data_claim_matches_torch_weights_only(
    benign: Benign, benign_files: dict[str, BuiltFile]
) -> None:
    # Ground truth for "pure data": torch's own weights_only unpickler accepts the file.
    path = _path(benign, benign_files)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    torch_files = [(f, data) for f in files if (data := _torch_bytes(f)) is not None]
    for f, data in torch_files:
        assert _torch_weights_only_loadable(data), f
    if benign.requires == ("torch",):
        assert torch_files, f"{benign.id}: expected a torch file"


def test_cli_pure_data_exits_zero(benign_files: dict[str, BuiltFile], tmp_path: Path) -> None:
    from trainwarden.cli import main

    paths = [
        str(benign_files[b.id].path)
        for b in BENIGN
        if b.pure_data and benign_files[b.id].path is not None
    ]
    assert paths
    out = tmp_path / "report.json"
    code = main(["scan", "--format", "json", "--output", str(out), *paths])
    doc = json.loads(out.read_text(encoding="utf-8"))
    not_safe = [(f["path"], f["verdict"]) for f in doc["files"] if f["verdict"] != "safe"]
    assert not not_safe
    assert code == 0
