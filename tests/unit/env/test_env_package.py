"""package_digest: the on-disk digest of an installed package, by content or by metadata."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from trainwarden.env import package_digest
from trainwarden.errors import InputError


@pytest.fixture
def pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "site"
    package = root / "twdigestpkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("X = 1\n")
    (package / "sub" / "mod.py").write_text("def f():\n    return 1\n")
    (package / "data.bin").write_bytes(os.urandom(4096))
    monkeypatch.syspath_prepend(str(root))
    return package


@pytest.mark.parametrize("content", [True, False])
def test_any_edit_changes_the_digest_and_names_the_file(pkg: Path, content: bool) -> None:
    before = package_digest("twdigestpkg", content=content, workers=1)
    assert before.root == str(pkg)
    assert before.files == 3
    assert package_digest("twdigestpkg", content=content, workers=1) == before
    mod = pkg / "sub" / "mod.py"
    # Same size and the old mtime put back: what a careful saboteur does.
    stat = mod.stat()
    mod.write_text("def f():\n    return 2\n")
    os.utime(mod, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    (pkg / "sub" / "extra.py").write_text("")
    after = package_digest("twdigestpkg", content=content, workers=1)
    assert after.digest != before.digest
    assert before.changed(after) == ("sub/extra.py", "sub/mod.py")


def test_bytecode_can_be_left_out(pkg: Path) -> None:
    with_all = package_digest("twdigestpkg", workers=1)
    cache = pkg / "sub" / "__pycache__"
    cache.mkdir()
    (cache / "mod.cpython-311.pyc").write_bytes(b"\0" * 16)
    assert package_digest("twdigestpkg", workers=1).digest != with_all.digest
    assert (
        package_digest("twdigestpkg", include_bytecode=False, workers=1).digest == with_all.digest
    )


def test_the_loaded_module_is_what_is_digested(pkg: Path) -> None:
    import twdigestpkg  # type: ignore[import-not-found]

    try:
        assert package_digest("twdigestpkg").root == str(Path(twdigestpkg.__file__).parent)
    finally:
        sys.modules.pop("twdigestpkg", None)


@pytest.mark.torch
def test_torch_is_digested_where_it_was_imported_from() -> None:
    import torch

    found = package_digest("torch", content=False)
    assert found.root == str(Path(torch.__file__).parent)
    assert found.files > 1000
    assert "optim/adamw.py" in found.entries


def test_unknown_or_submodule_names_are_clear_errors() -> None:
    with pytest.raises(InputError, match="no package"):
        package_digest("no_such_package_tw")
    with pytest.raises(InputError, match="parent"):
        package_digest("no_such_parent_tw.child")
