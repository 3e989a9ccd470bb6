"""Editable installs: unverifiable without a lock (and said so), anchored file by file with one.

Real editable installs made by pip and setuptools (PEP 660): a src-layout project (a ``.pth``
path line) and a flat-layout one (setuptools' import-hook finder with a ``MAPPING``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from trainwarden.env import read_lock, snapshot_environment, verify_environment, write_lock
from trainwarden.findings import Report, Verdict

# pip builds two real editable installs once (setuptools from the package index): seconds.
pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Editable:
    site: Path
    src_pkg: Path  # a package of the src-layout project (under a .pth path entry)
    flat_pkg: Path  # the package of the flat-layout project (under a finder MAPPING)
    project: Path  # the src-layout project's checkout


def _project(root: Path, name: str, *, src: bool) -> Path:
    root.mkdir(parents=True)
    (root / "pyproject.toml").write_text(
        "[build-system]\nrequires = ['setuptools']\nbuild-backend = 'setuptools.build_meta'\n"
        f"[project]\nname = '{name}'\nversion = '0.1'\n"
        + ("" if src else f"[tool.setuptools]\npackages = ['{name}']\n")
    )
    pkg = (root / "src" / name) if src else (root / name)
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("def answer():\n    return 42\n")
    (pkg / "util.py").write_text("X = 1\n")
    return pkg


@pytest.fixture(scope="module")
def editable_base(tmp_path_factory: pytest.TempPathFactory) -> Editable:
    root = tmp_path_factory.mktemp("editable")
    src_pkg = _project(root / "srcproj", "twsrcpkg", src=True)
    flat_pkg = _project(root / "flatproj", "twflatpkg", src=False)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "-q",
            "--no-deps",
            "-e",
            str(root / "srcproj"),
            "-e",
            str(root / "flatproj"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot make editable installs with setuptools: {done.stderr[-300:]}")
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return Editable(venv / "lib" / version / "site-packages", src_pkg, flat_pkg, root / "srcproj")


@pytest.fixture
def editable(editable_base: Editable, tmp_path: Path) -> Iterator[Editable]:
    """A private copy (the installs point at absolute paths, so copy the projects in place)."""
    backup = tmp_path / "backup"
    base = editable_base.project.parent
    shutil.copytree(base, backup, symlinks=True)
    yield editable_base
    shutil.rmtree(base)
    shutil.copytree(backup, base, symlinks=True)


def _editable_findings(report: Report) -> dict[str, tuple[Verdict, str]]:
    return {
        f.evidence or "": (f.verdict, f.message)
        for f in report.findings
        if f.rule_id == "env.editable-install"
    }


def _bad(report: Report) -> set[tuple[str, str]]:
    return {(f.rule_id, f.location.path) for f in report.findings if f.verdict is not Verdict.SAFE}


def test_without_a_lock_editable_installs_are_unknown_and_the_finding_says_how(
    editable: Editable,
) -> None:
    report = verify_environment([str(editable.site)], check_pyc=False)
    found = _editable_findings(report)
    assert set(found) == {"twsrcpkg 0.1", "twflatpkg 0.1"}
    verdict, message = found["twsrcpkg 0.1"]
    assert verdict is Verdict.UNKNOWN
    assert str(editable.src_pkg.parent) in message  # where the code lives
    assert "env snapshot --lock" in message
    assert "env verify --lock" in message
    assert report.fails(Verdict.UNKNOWN)


def test_a_lock_records_the_source_trees_and_then_verifies_them(
    editable: Editable, tmp_path: Path
) -> None:
    lock, report = snapshot_environment([str(editable.site)], check_pyc=False)
    assert {root: entry.scope for root, entry in lock.editable.items()} == {
        str(editable.src_pkg.parent): "importable",
        str(editable.flat_pkg): "tree",
    }
    assert "twsrcpkg/util.py" in lock.files[str(editable.src_pkg.parent)]
    assert "util.py" in lock.files[str(editable.flat_pkg)]
    assert all(v is Verdict.SAFE for v, _ in _editable_findings(report).values())
    path = tmp_path / "env.lock"
    write_lock(lock, path)
    again = read_lock(path)
    assert again.editable == lock.editable
    clean = verify_environment(lock=again, check_pyc=False)
    assert not clean.fails(Verdict.UNKNOWN), _bad(clean)
    assert all(v is Verdict.SAFE for v, _ in _editable_findings(clean).values())

    # Tampering with either source tree shows, file by file.
    (editable.src_pkg / "util.py").write_text("X = 2  # changed\n")
    (editable.flat_pkg / "planted.py").write_text("import os\n")
    # What import cannot reach from the sys.path entry is not the environment's code.
    (editable.src_pkg.parent / "NOTES.txt").write_text("not code\n")
    tampered = verify_environment(lock=again, check_pyc=False)
    assert _bad(tampered) == {
        ("env.lock-modified", str(editable.src_pkg / "util.py")),
        ("env.lock-added", str(editable.flat_pkg / "planted.py")),
    }


def test_an_editable_tree_that_disappears_shows_every_file_removed(
    editable: Editable, tmp_path: Path
) -> None:
    lock, _ = snapshot_environment([str(editable.site)], check_pyc=False)
    shutil.rmtree(editable.flat_pkg)
    report = verify_environment(lock=lock, check_pyc=False)
    removed = {p for rule, p in _bad(report) if rule == "env.lock-removed"}
    assert str(editable.flat_pkg / "util.py") in removed


def test_the_cli_names_the_editable_installs_and_the_way_to_verify_them(
    editable: Editable, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trainwarden.cli import main

    site = str(editable.site)
    assert main(["env", "verify", "--path", site, "--skip-pyc"]) == 1
    err = capsys.readouterr().err
    assert "2 editable install(s) not verified (twflatpkg 0.1, twsrcpkg 0.1)" in err
    assert "trainwarden env snapshot --lock env.lock" in err
    lock = tmp_path / "env.lock"
    assert main(["env", "snapshot", "--path", site, "--lock", str(lock)]) == 0
    assert "2 editable source tree(s)" in capsys.readouterr().err
    assert main(["env", "verify", "--lock", str(lock)]) == 0
    assert "editable" not in capsys.readouterr().err
