"""Startup vectors outside site-packages: PYTHON* variables, shadowing, import hooks."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import subprocess
import sys
from pathlib import Path

from envtools import CanaryLike, Venv

from trainwarden.env import check_environment_variables, check_import_hooks
from trainwarden.findings import Verdict


def test_pythonpath_module_shadowing_stdlib_runs_and_is_reported(
    tmp_path: Path, venv: Venv, canary: CanaryLike
) -> None:
    shadow_dir = tmp_path / "shared"
    shadow_dir.mkdir()
    # A `random.py` planted in a directory that PYTHONPATH puts before the stdlib.
    (shadow_dir / "random.py").write_text(f"{canary.python_code}\n")
    found = check_environment_variables({"PYTHONPATH": str(shadow_dir)})
    [shadow] = [f for f in found if f.rule_id == "env.pythonpath-shadow"]
    assert shadow.verdict is Verdict.UNSAFE
    assert shadow.evidence == "random"
    canary.assert_absent()
    # Real: with that PYTHONPATH, `import random` runs the planted file.
    venv.run("import random", PYTHONPATH=str(shadow_dir))
    canary.assert_present()


def test_pythonpath_shadowing_an_installed_package(tmp_path: Path) -> None:
    from trainwarden.env._dists import discover

    site = tmp_path / "site"
    (site / "torch").mkdir(parents=True)
    (site / "torch" / "__init__.py").write_text("")
    (site / "torch-2.0.dist-info").mkdir()
    (site / "torch-2.0.dist-info" / "RECORD").write_text("torch/__init__.py,,\n")
    shadow = tmp_path / "pp"
    (shadow / "torch").mkdir(parents=True)
    (shadow / "torch" / "__init__.py").write_text("")
    found = check_environment_variables({"PYTHONPATH": str(shadow)}, layouts=[discover(str(site))])
    assert [f.evidence for f in found if f.rule_id == "env.pythonpath-shadow"] == ["torch"]


def test_harmless_pythonpath_is_information(tmp_path: Path) -> None:
    (tmp_path / "mytools.py").write_text("")
    found = check_environment_variables({"PYTHONPATH": str(tmp_path)})
    assert [f.rule_id for f in found] == ["env.pythonpath"]
    assert all(f.verdict is Verdict.SAFE for f in found)


def test_other_startup_variables() -> None:
    found = check_environment_variables(
        {"PYTHONSTARTUP": "/x/startup.py", "PYTHONHOME": "/opt/py", "PYTHONINSPECT": "1"}
    )
    by_rule = {f.rule_id: f for f in found}
    assert by_rule["env.pythonhome"].verdict is Verdict.UNKNOWN
    assert by_rule["env.pythonstartup"].evidence == "/x/startup.py"
    assert "env.pythoninspect" in by_rule
    assert check_environment_variables({}) == [] or all(
        f.rule_id == "env.user-site" for f in check_environment_variables({})
    )


class _SpyFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: object, target: object = None) -> None:
        return None


def test_unknown_meta_path_finder_is_reported() -> None:
    found = check_import_hooks(
        meta_path=[importlib.machinery.PathFinder, _SpyFinder()], path_hooks=[]
    )
    [hook] = [f for f in found if f.verdict is Verdict.UNSAFE]
    assert hook.rule_id == "env.import-hook"
    assert hook.evidence is not None
    assert hook.evidence.endswith("_SpyFinder")


def test_finder_claiming_to_be_importlib_is_not_believed() -> None:
    spoof = type("PathFinder", (_SpyFinder,), {"__module__": "importlib._bootstrap_external"})
    found = check_import_hooks(meta_path=[spoof()], path_hooks=[])
    assert [f.rule_id for f in found] == ["env.import-hook"]


def test_import_system_hooks_are_not_findings() -> None:
    found = check_import_hooks(
        meta_path=[importlib.machinery.BuiltinImporter, importlib.machinery.PathFinder],
        path_hooks=list(sys.path_hooks),
    )
    assert found == []


def test_cli_reports_hook_installed_by_sitecustomize_on_pythonpath(
    tmp_path: Path, canary: CanaryLike
) -> None:
    # A sitecustomize on PYTHONPATH installs a meta-path finder at interpreter start:
    # `env verify`, run by that very interpreter, names the variable, the file and the hook.
    planted = tmp_path / "pp"
    planted.mkdir()
    (planted / "sitecustomize.py").write_text(
        f"{canary.python_code}\n"
        "import sys\n"
        "class Spy:\n"
        "    def find_spec(self, *args, **kwargs):\n"
        "        return None\n"
        "sys.meta_path.insert(0, Spy())\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "trainwarden", "env", "verify", "--format", "json", "--skip-pyc"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(planted), "PATH": "/usr/bin:/bin"},
        timeout=300,
        check=False,
    )
    canary.assert_present()  # the startup file really ran in that process
    assert result.returncode == 1, result.stderr
    rules = {
        f["rule_id"]: f for file in json.loads(result.stdout)["files"] for f in file["findings"]
    }
    assert rules["env.sitecustomize"]["verdict"] == "unsafe"
    assert rules["env.import-hook"]["evidence"] == "sitecustomize.Spy"
    assert rules["env.pythonpath"]["evidence"] == str(planted)
