"""Bytecode checks in isolation: every invalidation mode, the process pool, odd names."""

from __future__ import annotations

import importlib.util
import marshal
import py_compile
import sys
import threading
from pathlib import Path

import pytest

from trainwarden.env._hashing import HashFailure, hash_files, new_hasher
from trainwarden.env._pyc import PycCheck, check_pycs, pyc_source


def _module(tmp_path: Path, name: str, body: str = "X = 1\n") -> Path:
    source = tmp_path / f"{name}.py"
    source.write_text(body)
    return source


def _compile(source: Path, mode: py_compile.PycInvalidationMode) -> Path:
    cfile = importlib.util.cache_from_source(str(source))
    py_compile.compile(str(source), cfile=cfile, doraise=True, invalidation_mode=mode)
    return Path(cfile)


def _task(pyc: Path) -> PycCheck:
    task = pyc_source(str(pyc))
    assert task is not None
    return task


@pytest.mark.parametrize(
    "mode",
    [
        py_compile.PycInvalidationMode.TIMESTAMP,
        py_compile.PycInvalidationMode.CHECKED_HASH,
        py_compile.PycInvalidationMode.UNCHECKED_HASH,
    ],
)
def test_genuine_pyc_is_ok_in_every_mode(
    tmp_path: Path, mode: py_compile.PycInvalidationMode
) -> None:
    pyc = _compile(_module(tmp_path, "m", "def f(x):\n    return x + 1\n"), mode)
    [result] = check_pycs([_task(pyc)])
    assert result.status == "ok"


def test_checked_hash_pyc_with_wrong_hash_is_stale(tmp_path: Path) -> None:
    source = _module(tmp_path, "m")
    pyc = _compile(source, py_compile.PycInvalidationMode.CHECKED_HASH)
    source.write_text("X = 2\n")  # CPython sees the hash mismatch and recompiles
    [result] = check_pycs([_task(pyc)])
    assert result.status == "stale"


def test_unchecked_hash_pyc_of_changed_source_is_flagged(tmp_path: Path) -> None:
    source = _module(tmp_path, "m")
    pyc = _compile(source, py_compile.PycInvalidationMode.UNCHECKED_HASH)
    source.write_text("X = 2\n")  # CPython keeps importing the old bytecode
    [result] = check_pycs([_task(pyc)])
    assert result.status == "forged"


def test_optimised_pyc_is_compared_at_its_level(tmp_path: Path) -> None:
    source = _module(tmp_path, "m", '"""doc"""\nassert False, "x"\nY = 2\n')
    cfile = importlib.util.cache_from_source(str(source), optimization=2)
    py_compile.compile(str(source), cfile=cfile, doraise=True, optimize=2)
    task = _task(Path(cfile))
    assert task.optimize == 2
    assert check_pycs([task])[0].status == "ok"


def test_other_interpreters_pycs_are_not_ours(tmp_path: Path) -> None:
    cache = tmp_path / "__pycache__"
    cache.mkdir()
    assert pyc_source(str(cache / "m.cpython-27.pyc")) is None
    assert pyc_source(str(cache / "m.pypy39.pyc")) is None
    tag = sys.implementation.cache_tag
    assert pyc_source(str(cache / f"m.{tag}.opt-7.pyc")) is None
    assert pyc_source(str(tmp_path / f"m.{tag}.pyc")) is None  # not in __pycache__


def test_foreign_magic_is_reported_as_such(tmp_path: Path) -> None:
    pyc = _compile(_module(tmp_path, "m"), py_compile.PycInvalidationMode.TIMESTAMP)
    pyc.write_bytes(b"\x00\x00\r\n" + pyc.read_bytes()[4:])
    assert check_pycs([_task(pyc)])[0].status == "foreign"


def _forge(pyc: Path, source: Path) -> None:
    code = compile(source.read_text() + "\nEVIL = 1\n", str(source), "exec")
    pyc.write_bytes(pyc.read_bytes()[:16] + marshal.dumps(code))


@pytest.mark.parametrize("with_thread", [False, True])
def test_process_pool_finds_the_one_forged_pyc(tmp_path: Path, with_thread: bool) -> None:
    # Enough files to use the pool; with another thread alive the pool must not fork.
    tasks = []
    for i in range(80):
        source = _module(tmp_path, f"mod{i}", f"VALUE = {i}\n")
        tasks.append(_task(_compile(source, py_compile.PycInvalidationMode.TIMESTAMP)))
    _forge(Path(tasks[41].pyc), Path(tasks[41].source))
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    if with_thread:
        thread.start()
    try:
        results = check_pycs(tasks, workers=2)
    finally:
        stop.set()
    forged = [r.pyc for r in results if r.status == "forged"]
    assert forged == [tasks[41].pyc]
    assert sum(r.status == "ok" for r in results) == 79


def test_hash_files_reports_missing_and_unreadable(tmp_path: Path) -> None:
    good = tmp_path / "a"
    good.write_bytes(b"x" * (3 << 20))  # above the one-read limit: streamed
    directory = tmp_path / "d"
    directory.mkdir()
    results = hash_files([str(good), str(tmp_path / "gone"), str(directory)], workers=2)
    import hashlib

    ok = results[str(good)]
    assert not isinstance(ok, HashFailure)
    assert ok.digest == hashlib.sha256(good.read_bytes()).digest()
    gone = results[str(tmp_path / "gone")]
    assert isinstance(gone, HashFailure)
    assert gone.missing
    bad = results[str(directory)]
    assert isinstance(bad, HashFailure)
    assert not bad.missing


def test_blake3_is_optional() -> None:
    if importlib.util.find_spec("blake3") is None:
        with pytest.raises(ValueError, match="blake3"):
            new_hasher("blake3")
    else:
        assert new_hasher("blake3") is not None
