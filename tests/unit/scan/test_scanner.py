"""Orchestration: directory walks, symlinks, special files, parallel jobs, budgets, progress."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from trainwarden.errors import InputError
from trainwarden.findings import Verdict
from trainwarden.scan import DEFAULT_LIMITS, Policy, scan_path


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("true",))


def _tree(root: Path, n: int = 5) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    for i in range(n):
        (root / f"ok{i}.pkl").write_bytes(pickle.dumps({"i": i}))
    (root / "sub" / "bad.pkl").write_bytes(pickle.dumps(_Payload()))
    (root / "sub" / "deeper" / "notes.txt").write_text("hello\n")


def test_walk_reports_every_file_in_order(tmp_path: Path) -> None:
    _tree(tmp_path)
    report = scan_path(tmp_path)
    paths = [f.path for f in report.files]
    assert len(paths) == 7
    assert paths == sorted(paths)
    verdicts = {Path(f.path).name: f.verdict for f in report.files}
    assert verdicts["bad.pkl"] is Verdict.UNSAFE
    assert verdicts["notes.txt"] is Verdict.SAFE
    assert report.verdict is Verdict.UNSAFE


def test_parallel_equals_serial(tmp_path: Path) -> None:
    _tree(tmp_path, n=40)  # jobs=2 forces the pool (auto mode would stay serial)
    serial = scan_path(tmp_path, jobs=1)
    parallel = scan_path(tmp_path, jobs=2)
    assert serial.to_dict()["files"] == parallel.to_dict()["files"]


def test_progress_called_once_per_file(tmp_path: Path) -> None:
    _tree(tmp_path)
    seen: list[str] = []
    report = scan_path(tmp_path, progress=seen.append)
    assert sorted(seen) == sorted(f.path for f in report.files)


def test_missing_path_raises_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        scan_path(tmp_path / "nope")
    with pytest.raises(InputError):
        scan_path()


def test_symlink_inside_tree_is_noted_not_followed(tmp_path: Path) -> None:
    (tmp_path / "real.pkl").write_bytes(pickle.dumps(1))
    (tmp_path / "link.pkl").symlink_to(tmp_path / "real.pkl")
    report = scan_path(tmp_path)
    by_name = {Path(f.path).name: f for f in report.files}
    assert by_name["link.pkl"].format == "symlink"
    assert by_name["link.pkl"].verdict is Verdict.SAFE
    assert by_name["real.pkl"].format == "pickle"


def test_symlink_leaving_tree_is_scanned_or_unknown(tmp_path: Path) -> None:
    outside = tmp_path / "outside.pkl"
    outside.write_bytes(pickle.dumps(_Payload()))
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "escape.pkl").symlink_to(outside)
    (tree / "subdir-link").symlink_to(tmp_path, target_is_directory=True)
    (tree / "dangling").symlink_to(tmp_path / "missing")
    report = scan_path(tree)
    by_name = {Path(f.path).name: f for f in report.files}
    assert len(report.files) == 3
    # A link to a file is what a loader opening it reads: the file it leads to is scanned.
    assert by_name["escape.pkl"].verdict is Verdict.UNSAFE
    assert by_name["escape.pkl"].findings[0].rule_id == "file.symlink-followed"
    for name in ("subdir-link", "dangling"):
        assert by_name[name].verdict is Verdict.UNKNOWN
        assert by_name[name].findings[0].rule_id == "file.symlink-outside"


def test_named_symlink_is_followed(tmp_path: Path) -> None:
    (tmp_path / "real.pkl").write_bytes(pickle.dumps(_Payload()))
    (tmp_path / "named.pkl").symlink_to(tmp_path / "real.pkl")
    report = scan_path(tmp_path / "named.pkl")
    assert report.files[0].verdict is Verdict.UNSAFE


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs fifos")
def test_fifo_is_reported_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    report = scan_path(tmp_path)
    assert report.files[0].format == "special"
    assert report.files[0].verdict is Verdict.UNKNOWN


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads everything")
def test_unreadable_file_is_error(tmp_path: Path) -> None:
    path = tmp_path / "secret.pkl"
    path.write_bytes(pickle.dumps(1))
    path.chmod(0)
    report = scan_path(tmp_path)
    assert report.files[0].verdict is Verdict.ERROR


def test_time_budget_is_reported(tmp_path: Path) -> None:
    # A long pickle and a budget too small for it: never safe, and the limit is named.
    (tmp_path / "big.pkl").write_bytes(pickle.dumps(list(range(200_000)), protocol=2))
    limits = DEFAULT_LIMITS.replace(max_seconds=1e-6)
    report = scan_path(tmp_path, limits=limits)
    file = report.files[0]
    assert file.verdict is not Verdict.SAFE
    assert any("seconds" in f.rule_id for f in file.findings)


def test_large_file_is_read_lazily_without_digest(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    with path.open("wb") as f:
        f.write(b"\x00" * 16)
        f.seek(64 << 20)
        f.write(b"\x00")
    report = scan_path(path)
    assert report.files[0].format == "data"
    assert report.files[0].sha256 is None
    assert report.files[0].size == (64 << 20) + 1


def test_small_file_gets_digest(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "a.pkl"
    path.write_bytes(pickle.dumps(1))
    report = scan_path(path)
    assert report.files[0].sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_user_allowlist_changes_verdict(tmp_path: Path) -> None:
    path = tmp_path / "c.pkl"
    path.write_bytes(b"ctrainwarden_test_mod\nThing\n)R.")
    assert scan_path(path).files[0].verdict is Verdict.UNKNOWN
    policy = Policy.default(allow=["trainwarden_test_mod.Thing"])
    assert scan_path(path, policy=policy).files[0].verdict is Verdict.SAFE


def test_auto_map_marks_the_python_files_it_names(tmp_path: Path) -> None:
    import json

    config = {"model_type": "x", "auto_map": {"AutoModel": "modeling_x.XModel"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "modeling_x.py").write_text("import os\n")
    (tmp_path / "unrelated.py").write_text("x = 1\n")
    by_name = {Path(f.path).name: f for f in scan_path(tmp_path).files}
    assert by_name["config.json"].verdict is Verdict.UNKNOWN
    assert by_name["modeling_x.py"].verdict is Verdict.UNKNOWN
    assert by_name["modeling_x.py"].findings[-1].rule_id == "hf.remote-code-file"
    assert by_name["unrelated.py"].verdict is Verdict.SAFE


def test_very_deep_tree_does_not_exhaust_recursion(tmp_path: Path) -> None:
    import sys

    # Deeper than the (lowered) recursion limit. The tree is removed here, bottom-up and
    # iteratively: left behind, it makes pytest's recursive basetemp cleanup overflow later.
    levels = [tmp_path / "d"]
    for _ in range(399):
        levels.append(levels[-1] / "d")
    old = sys.getrecursionlimit()
    try:
        levels[-1].mkdir(parents=True)
        (levels[-1] / "x.pkl").write_bytes(pickle.dumps(1))
        sys.setrecursionlimit(300)
        try:
            report = scan_path(tmp_path)
        finally:
            sys.setrecursionlimit(old)
    finally:
        (levels[-1] / "x.pkl").unlink(missing_ok=True)
        for level in reversed(levels):
            if level.exists():
                level.rmdir()
    assert [Path(f.path).name for f in report.files] == ["x.pkl"]
    assert not (tmp_path / "d").exists()
