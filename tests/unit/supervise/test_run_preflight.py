"""Pre-flight checks and the policy that decides on them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from canary import Canary
from trainwarden.errors import ConfigError, InputError
from trainwarden.supervise import CHECKS, Policy, load_policy
from trainwarden.supervise._preflight import (
    check_code,
    check_environment,
    check_inputs,
    check_scan,
    decide,
)

EXAMPLES = Path(__file__).resolve().parents[3] / "src" / "trainwarden" / "examples" / "checkpoints"
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _git(repo: Path, *args: str) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q")
    (root / "train.py").write_text("print('train')\n")
    _git(root, "add", "train.py")
    _git(root, "commit", "-qm", "init")
    return root


@needs_git
def test_code_identity_of_a_clean_checkout(repo: Path) -> None:
    result = check_code(str(repo), script=str(repo / "train.py"))
    data = result.data
    assert result.check is None
    assert len(data["commit"]) == 40
    assert (data["dirty"], data["dirty_digest"], data["untracked"]) == (False, None, 0)
    assert data["script"]["sha256"].startswith("sha256:")


@needs_git
def test_uncommitted_changes_have_a_digest_that_follows_them(repo: Path) -> None:
    (repo / "train.py").write_text("print('sabotaged')\n")
    first = check_code(str(repo)).data
    assert first["dirty"] is True
    (repo / "train.py").write_text("print('sabotaged again')\n")
    second = check_code(str(repo)).data
    assert first["dirty_digest"] != second["dirty_digest"]
    assert check_code(str(repo)).check == "code-dirty"


@needs_git
def test_untracked_files_are_counted_and_digested(repo: Path) -> None:
    (repo / "helper.py").write_text("x = 1\n")
    one = check_code(str(repo)).data
    assert (one["untracked"], one["dirty"]) == (1, False)
    (repo / "helper.py").write_text("x = 2\n")
    assert check_code(str(repo)).data["dirty_digest"] != one["dirty_digest"]


@needs_git
def test_credentials_in_the_remote_url_are_never_recorded(repo: Path) -> None:
    _git(repo, "remote", "add", "origin", "https://alice:ghp_secret@example.com/ml/train.git")
    data = check_code(str(repo)).data
    assert data["remote"] == "https://example.com/ml/train.git"


@needs_git
def test_programs_named_by_the_repositorys_config_do_not_run(repo: Path, canary: Canary) -> None:
    # A planted repository config would otherwise run code in the supervisor.
    _git(repo, "config", "core.fsmonitor", f"touch {canary.path}; echo")
    _git(repo, "config", "filter.evil.clean", f"touch {canary.path}; cat")
    (repo / ".gitattributes").write_text("*.py filter=evil\n")
    (repo / "train.py").write_text("print('changed')\n")
    data = check_code(str(repo)).data
    assert data["dirty"] is True
    canary.assert_absent()
    # The attack is real: plain git runs the planted program.
    subprocess.run(["git", "-C", str(repo), "diff", "HEAD"], capture_output=True, check=False)
    canary.assert_present()


def test_code_outside_git_records_the_script(tmp_path: Path) -> None:
    (tmp_path / "t.py").write_text("pass\n")
    result = check_code(str(tmp_path), script=str(tmp_path / "t.py"))
    assert result.check == "code-unknown"
    assert result.data["commit"] is None
    assert result.data["script"]["size"] == 5


def test_scan_of_a_malicious_resume_checkpoint_is_unsafe(tmp_path: Path) -> None:
    result = check_scan([str(EXAMPLES / "malicious_checkpoint.pt"), str(EXAMPLES / "tiny_mlp.pt")])
    assert result is not None
    assert result.check == "scan-unsafe"
    verdicts = {Path(f["path"]).name: f["verdict"] for f in result.data["files"]}
    assert verdicts["malicious_checkpoint.pt"] == "unsafe"
    assert verdicts["tiny_mlp.pt"] == "safe"
    assert result.data["findings"]
    assert check_scan([str(tmp_path / "missing.pt")]) is None


def test_inputs_are_digested_and_missing_ones_are_errors(tmp_path: Path) -> None:
    (tmp_path / "manifest.txt").write_text("shard-0\nshard-1\n")
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "0.bin").write_bytes(b"x" * 100)
    result = check_inputs(
        [str(tmp_path / "manifest.txt"), str(tmp_path / "shards")], kind="data-manifest"
    )
    files = result.data["files"]
    assert files[0]["size"] == 16
    assert files[1]["directory"] is True
    assert all(f["sha256"].startswith("sha256:") for f in files)
    with pytest.raises(InputError, match="does not exist"):
        check_inputs([str(tmp_path / "nope")], kind="config")


def test_environment_check_of_a_tampered_site_directory(tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    dist = site / "pkg-1.0.dist-info"
    (site / "pkg").mkdir(parents=True)
    dist.mkdir()
    (site / "pkg" / "__init__.py").write_text("x = 1\n")
    import base64
    import hashlib

    digest = base64.urlsafe_b64encode(hashlib.sha256(b"x = 1\n").digest()).rstrip(b"=").decode()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: pkg\nVersion: 1.0\n")
    (dist / "RECORD").write_text(
        f"pkg/__init__.py,sha256={digest},6\npkg-1.0.dist-info/METADATA,,\n"
        "pkg-1.0.dist-info/RECORD,,\n"
    )
    clean = check_environment([str(site)], lock=None, lock_key=None, mode="fast")
    assert clean.data["verdict"] in ("safe", "unknown"), clean.data
    (site / "pkg" / "__init__.py").write_text("x = 2  # the insider's edit\n")
    tampered = check_environment([str(site)], lock=None, lock_key=None, mode="fast")
    assert tampered.check == "env-unsafe"
    assert tampered.data["findings"]
    off = check_environment([str(site)], lock=None, lock_key=None, mode="off")
    assert (off.check, off.data["verdict"]) == (None, "skipped")


def test_policy_defaults_overrides_and_decisions() -> None:
    policy = Policy()
    assert set(policy.actions) == set(CHECKS)
    assert policy.action("scan-unsafe") == "refuse"
    assert policy.action("access") == "warn"
    strict = policy.with_overrides(["access=refuse", "env-unknown=ignore"])
    assert strict.action("access") == "refuse"
    from trainwarden.supervise._preflight import CheckResult

    results = [
        CheckResult("preflight.access", {}, "access", "group g can write x"),
        CheckResult("preflight.env", {}, "env-unknown", "unknown"),
        CheckResult("preflight.code", {}, None, "clean"),
    ]
    assert decide(results, policy) == (
        "proceed",
        [],
        ["access: group g can write x", "env-unknown: unknown"],
    )
    assert decide(results, strict) == ("refuse", ["access: group g can write x"], [])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("access", "CHECK=ACTION"),
        ("nope=warn", "unknown check"),
        ("access=maybe", "unknown action"),
    ],
)
def test_bad_overrides(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Policy().with_overrides([override])


def test_policy_files(tmp_path: Path) -> None:
    good = tmp_path / "policy.toml"
    good.write_text('[policy]\naccess = "refuse"\n\n[access]\ntrusted-groups = ["ml-platform"]\n')
    policy = load_policy(good)
    assert policy.action("access") == "refuse"
    assert policy.trusted_groups == ("ml-platform",)
    for text, message in [
        ("[policy\n", "not valid TOML"),
        ('[policy]\nfoo = "warn"\n', "unknown check"),
        ("[other]\n", "unknown table"),
        ('[access]\ntrusted-users = "bob"\n', "list of names"),
    ]:
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_policy(bad)


def test_checkpoints_named_in_config_files_are_found(tmp_path: Path) -> None:
    from trainwarden.supervise._config import config_values, referenced_files

    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "init.pt").write_bytes(b"x")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "base.safetensors").write_bytes(b"x")
    config = tmp_path / "conf" / "train.json"
    config.write_text(
        json.dumps(
            {
                "model": {"init_from": "ckpt/init.pt", "base": "base.safetensors", "width": 64},
                "optim": {"lr": 3e-4, "betas": [0.9, 0.95]},
                "out": "not-there.pt",
                "name": "tiny",
            }
        )
    )
    assert sorted(referenced_files(config, base=tmp_path)) == [
        str(tmp_path / "ckpt" / "init.pt"),
        str(tmp_path / "conf" / "base.safetensors"),
    ]
    values = config_values(config, limit=100)
    assert values["train.json:optim.lr"] == 3e-4
    assert values["train.json:model.width"] == 64
    assert "train.json:optim.betas" not in values  # lists are not flattened
    toml = tmp_path / "c.toml"
    toml.write_text("[data]\nshards = 4\n")
    assert config_values(toml, limit=100) == {"c.toml:data.shards": 4}
    (tmp_path / "bad.json").write_text("{")
    assert config_values(tmp_path / "bad.json", limit=100) == {}
