"""protect(): natural loaders obey the policy while enabled, and everything is restored after."""

from __future__ import annotations

import io
import logging
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from canary import Canary
from trainwarden.errors import ConfigError, UnsafeModelError
from trainwarden.load import active_protection, protect, protect_from_environment


class _System:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


def _originals() -> dict[str, object]:
    import joblib
    import numpy
    import torch

    return {
        "pickle.load": pickle.load,
        "pickle.loads": pickle.loads,
        "pickle.Unpickler": pickle.Unpickler,
        "torch.load": torch.load,
        "torch.serialization.load": torch.serialization.load,
        "numpy.load": numpy.load,
        "joblib.load": joblib.load,
    }


def test_patches_are_installed_and_restored() -> None:
    before = _originals()
    with protect() as protection:
        assert active_protection() is protection
        during = _originals()
        assert all(during[k] is not before[k] for k in before), "every loader is patched"
    assert _originals() == before
    assert active_protection() is None


def test_restored_after_an_exception_and_nested_use(canary: Canary) -> None:
    before = _originals()
    evil = pickle.dumps(_System(canary.shell_command))
    with pytest.raises(UnsafeModelError), protect():
        pickle.loads(evil)
    assert _originals() == before
    outer = protect()
    with outer:
        with protect(mode="unsafe-audit") as inner:
            assert active_protection() is inner
        assert active_protection() is outer
        with pytest.raises(UnsafeModelError):
            pickle.loads(evil)
    assert _originals() == before
    canary.assert_absent()


def test_enable_disable_process_wide() -> None:
    before = _originals()
    protection = protect().enable()
    try:
        assert protection.enabled
        with pytest.raises(ConfigError):
            protection.enable()
    finally:
        protection.disable()
    protection.disable()  # idempotent
    assert not protection.enabled
    assert _originals() == before


def test_invalid_mode_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        protect(mode="warn")


def test_every_pickle_entry_point_refuses(canary: Canary) -> None:
    evil = pickle.dumps(_System(canary.shell_command))
    with protect():
        with pytest.raises(UnsafeModelError):
            pickle.loads(evil)
        with pytest.raises(UnsafeModelError):
            pickle.load(io.BytesIO(evil))
        with pytest.raises(UnsafeModelError):
            pickle.Unpickler(io.BytesIO(evil)).load()

        class Sub(pickle.Unpickler):  # subclassed while protected: still checked
            pass

        with pytest.raises(UnsafeModelError):
            Sub(io.BytesIO(evil)).load()
        assert pickle.loads(pickle.dumps({"ok": [1, 2.5, "x"]})) == {"ok": [1, 2.5, "x"]}
    canary.assert_absent()


def test_refusal_is_logged_with_the_digest(
    tmp_path: Path, canary: Canary, caplog: pytest.LogCaptureFixture
) -> None:
    import hashlib

    import torch

    path = tmp_path / "evil.pt"
    torch.save({"x": _System(canary.shell_command)}, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    caplog.set_level(logging.WARNING, logger="trainwarden.load")
    with protect(), pytest.raises(UnsafeModelError):
        torch.load(path, weights_only=False)
    canary.assert_absent()
    assert any(digest in r.getMessage() and r.name == "trainwarden.load" for r in caplog.records)


def test_unsafe_audit_mode_logs_and_loads(
    tmp_path: Path, canary: Canary, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    path = tmp_path / "evil.pt"
    torch.save({"x": _System(canary.shell_command)}, path)
    caplog.set_level(logging.WARNING, logger="trainwarden.load")
    with protect(mode="unsafe-audit"):
        torch.load(path, weights_only=False)
    # The unsafe mode refuses nothing: the (harmless) payload ran, and the log says so.
    canary.assert_present()
    assert any("unsafe-audit: would refuse" in r.getMessage() for r in caplog.records)


def test_the_old_audit_name_still_works_with_a_deprecation_warning(canary: Canary) -> None:
    with pytest.warns(DeprecationWarning, match="unsafe-audit"):
        protection = protect(mode="audit")
    assert protection.mode == "unsafe-audit"
    with protection:
        pickle.loads(pickle.dumps(_System(canary.shell_command)))
    canary.assert_present()  # it still means what it meant: load anyway


def test_env_variable_audit_is_deprecated_too(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="trainwarden.load")
    environ = {"TRAINWARDEN_PROTECT": "1", "TRAINWARDEN_PROTECT_MODE": "audit"}
    with pytest.warns(DeprecationWarning, match="unsafe-audit"):
        protection = protect_from_environment(environ)
    assert protection is not None
    try:
        assert protection.mode == "unsafe-audit"
    finally:
        protection.disable()
    assert any("TRAINWARDEN_PROTECT_MODE=unsafe-audit" in r.getMessage() for r in caplog.records)


def test_unknown_modes_never_let_anything_through(canary: Canary) -> None:
    from trainwarden.load import Protection
    from trainwarden.scan import Policy

    with pytest.raises(ConfigError):
        protect(mode="log")
    with pytest.raises(ConfigError):
        Protection(Policy.default(), mode="permissive")
    # Below the public API, an unexpected mode string enforces (fails closed).
    from trainwarden.load._pickle import safe_pickle_loads

    with pytest.raises(UnsafeModelError):
        safe_pickle_loads(
            pickle.dumps(_System(canary.shell_command)), policy=Policy.default(), mode="log"
        )
    canary.assert_absent()


@pytest.mark.parametrize("kind", ["missing", "directory", "fifo", "module"])
def test_runner_refuses_what_it_cannot_run_with_exit_2(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "train.py"
    if kind == "directory":
        target = tmp_path / "pkg"
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)
    args = ["-m", "no_such_module_tw"] if kind == "module" else [str(target)]
    proc = _run("-m", "trainwarden.protect", *args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("trainwarden: error:"), proc.stderr
    assert "Traceback" not in proc.stderr


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )


def test_modules_imported_later_are_patched_by_the_import_hook() -> None:
    proc = _run(
        "-c",
        textwrap.dedent(
            """
        import sys
        import trainwarden
        assert "numpy" not in sys.modules and "joblib" not in sys.modules
        p = trainwarden.protect().enable()
        import joblib, numpy
        assert getattr(numpy.load, "__trainwarden_wrapper__", False)
        assert getattr(joblib.load, "__trainwarden_wrapper__", False)
        p.disable()
        assert not getattr(numpy.load, "__trainwarden_wrapper__", False)
        assert not getattr(joblib.load, "__trainwarden_wrapper__", False)
        print("OK")
        """
        ),
    )
    assert proc.stdout.strip() == "OK", proc.stderr


def test_python_m_trainwarden_protect(tmp_path: Path, canary: Canary) -> None:
    sample = tmp_path / "evil.pkl"
    sample.write_bytes(pickle.dumps(_System(canary.shell_command)))
    script = tmp_path / "train.py"
    script.write_text(
        "import pickle, sys\n"
        "with open(sys.argv[1], 'rb') as f:\n"
        "    pickle.load(f)\n"
        "print('loaded')\n"
    )
    proc = _run("-m", "trainwarden.protect", str(script), str(sample))
    assert proc.returncode != 0
    assert "UnsafeModelError" in proc.stderr
    canary.assert_absent()
    # The same command with protection switched off shows the sample is real.
    proc = _run(
        "-m", "trainwarden.protect", str(script), str(sample), env={"TRAINWARDEN_PROTECT": "0"}
    )
    assert proc.returncode == 0, proc.stderr
    canary.assert_present()


def test_python_m_trainwarden_protect_audit_and_module_form(tmp_path: Path) -> None:
    proc = _run(
        "-m",
        "trainwarden.protect",
        "-m",
        "json.tool",
        "--help",
        env={"TRAINWARDEN_PROTECT_MODE": "unsafe-audit"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "json.tool" in proc.stdout or "usage" in proc.stdout
    script = tmp_path / "noop.py"
    script.write_text("print('ran')\n")
    proc = _run("-m", "trainwarden.protect", str(script), env={"TRAINWARDEN_PROTECT_MODE": "bogus"})
    assert proc.returncode == 2
    assert "mode" in proc.stderr
    assert "ran" not in proc.stdout


def test_concurrent_protections_in_threads(canary: Canary) -> None:
    import threading

    before = _originals()
    evil = pickle.dumps(_System(canary.shell_command))
    refused: list[bool] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(20):
                with protect():
                    try:
                        pickle.loads(evil)
                    except UnsafeModelError:
                        refused.append(True)
                    assert pickle.loads(pickle.dumps([1, "a"])) == [1, "a"]
        except BaseException as exc:  # surfaced below; a thread cannot fail the test itself
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(refused) == 6 * 20
    canary.assert_absent()
    assert _originals() == before
    assert active_protection() is None
