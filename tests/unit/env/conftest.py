"""Real virtual environments for the env tests: one built per session, copied per test."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from envtools import Venv

# Small, pure-Python, real wheels: `idna` is a package (a directory to plant files in),
# `six` a single top-level module (a top-level __pycache__ entry).
WHEELS = ("idna", "six")


def _site_of(root: Path) -> Path:
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return root / "lib" / version / "site-packages"


@pytest.fixture(scope="session")
def env_wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test wheels, fetched once a session from the configured package index."""
    target = tmp_path_factory.mktemp("wheels")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(target), *WHEELS],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0 or len(list(target.glob("*.whl"))) != len(WHEELS):
        pytest.skip(f"cannot download test wheels {WHEELS}: {result.stderr.strip()[-300:]}")
    return target


@pytest.fixture(scope="session")
def base_venv(tmp_path_factory: pytest.TempPathFactory, env_wheels: Path) -> Venv:
    """A venv without pip, with the wheels installed (and compiled) by our pip."""
    if sysconfig.get_config_var("Py_ENABLE_SHARED") is None and sys.platform == "win32":
        pytest.skip("POSIX venv layout expected")
    root = tmp_path_factory.mktemp("venv") / "base"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            *(str(w) for w in sorted(env_wheels.glob("*.whl"))),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return Venv(root, python, _site_of(root))


@pytest.fixture
def venv(base_venv: Venv, tmp_path: Path) -> Venv:
    """A private copy of the base venv (copying keeps mtimes, so pyc headers stay valid)."""
    root = tmp_path / "venv"
    shutil.copytree(base_venv.root, root, symlinks=True)
    return Venv(root, root / "bin" / "python", _site_of(root))
