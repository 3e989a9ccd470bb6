"""Reading the job command like its launcher would, and rewriting it for the bootstrap."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from trainwarden.errors import ConfigError
from trainwarden.supervise import parse_command
from trainwarden.supervise._launch import plan_launch
from trainwarden.supervise._names import BOOTSTRAP_MODULE
from trainwarden.supervise._site import started_through_bootstrap

PY = sys.executable
# torchrun is installed beside this interpreter (the tests may run without the venv on PATH).
ENV = {"PATH": f"{Path(PY).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


@pytest.mark.parametrize(
    ("argv", "kind", "target", "options", "args"),
    [
        ([PY, "train.py", "--lr", "3"], "script", "train.py", (), ("--lr", "3")),
        ([PY, "-u", "-X", "dev", "train.py"], "script", "train.py", ("-u", "-X", "dev"), ()),
        ([PY, "-Wignore", "-m", "pkg.train", "-x"], "module", "pkg.train", ("-Wignore",), ("-x",)),
        ([PY, "-um", "pkg.train"], "module", "pkg.train", ("-u",), ()),
        ([PY, "-mpkg.train"], "module", "pkg.train", (), ()),
        ([PY, "-c", "print(1)", "a"], "code", "print(1)", (), ("a",)),
        ([PY, "-W", "error", "--", "train.py"], "script", "train.py", ("-W", "error"), ()),
        (["python3.11", "-B", "t.py"], "script", "t.py", ("-B",), ()),
    ],
)
def test_python_forms(
    argv: list[str], kind: str, target: str, options: tuple[str, ...], args: tuple[str, ...]
) -> None:
    job = parse_command(argv)
    assert job.launcher == "python"
    assert job.python is not None
    assert (job.python.kind, job.python.target, job.python.options, job.python.args) == (
        kind,
        target,
        options,
        args,
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([PY, "-S", "t.py"], "-S disables site-packages"),
        ([PY, "-BS", "t.py"], "-S disables"),
        ([PY, "-"], "standard input"),
        ([PY, "-Z", "t.py"], "unknown python option -Z"),
        ([PY, "--frobnicate", "t.py"], "unknown python option"),
        ([PY], "names no script"),
        ([PY, "-m"], "needs an argument"),
        ([PY, "--version"], "does not run a program"),
        ([], "no command"),
    ],
)
def test_python_forms_that_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_command(argv)


def test_a_script_with_a_python_shebang_is_a_python_job(tmp_path: Path) -> None:
    script = tmp_path / "train"
    script.write_text("#!/usr/bin/env python3 -u\nprint(1)\n")
    script.chmod(0o755)
    job = parse_command([str(script), "--steps", "3"], cwd=tmp_path)
    assert job.launcher == "python"
    assert job.python is not None
    assert (job.python.interpreter, job.python.target) == ("python3", str(script))


def test_other_programs_are_other(tmp_path: Path) -> None:
    job = parse_command(["bash", "-c", "true"], cwd=tmp_path)
    assert job.launcher == "other"


@pytest.mark.parametrize(
    ("argv", "kind", "target", "nproc"),
    [
        (["torchrun", "--nproc-per-node", "2", "train.py", "--lr", "1"], "script", "train.py", 2),
        (["torchrun", "--nproc_per_node=4", "-m", "pkg.train"], "module", "pkg.train", 4),
        (["torchrun", "--nproc", "2", "--standalone", "t.py"], "script", "t.py", 2),
        (["torchrun", "--no-python", "--nproc-per-node", "1", "./run.sh"], "exec", "./run.sh", 1),
        (
            [PY, "-m", "torch.distributed.run", "--nproc-per-node", "3", "--module", "m"],
            "module",
            "m",
            3,
        ),
    ],
)
def test_torchrun_forms(argv: list[str], kind: str, target: str, nproc: int) -> None:
    job = parse_command(argv, environ=ENV)
    assert job.launcher == "torchrun"
    assert job.torchrun is not None
    assert (job.torchrun.kind, job.torchrun.target) == (kind, target)
    assert job.world_size == nproc
    assert job.interpreter is not None


def test_torchrun_multi_node() -> None:
    job = parse_command(
        [
            "torchrun",
            "--nnodes",
            "2",
            "--node-rank",
            "1",
            "--nproc-per-node",
            "2",
            "--rdzv-endpoint",
            "localhost:29400",
            "t.py",
        ],
        environ=ENV,
    )
    assert (job.nnodes, job.node_rank, job.world_size) == (2, 1, 4)
    assert job.torchrun is not None
    assert job.torchrun.values["rdzv-endpoint"] == "localhost:29400"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["torchrun", "--nproc-per-node", "2", "--frobnicate", "t.py"], "unknown torchrun option"),
        (["torchrun", "--run-path", "t.py"], "--run-path"),
        (["torchrun", "-m", "--no-python", "x"], "cannot combine"),
        (["torchrun", "--nproc-per-node"], "needs a value"),
        (["torchrun", "--nproc-per-node", "2"], "names no training script"),
        (["srun", "python", "t.py"], "inside srun"),
    ],
)
def test_torchrun_forms_that_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_command(argv, environ=ENV)


def test_torchrun_not_installed_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="torchrun is not installed"):
        parse_command(["torchrun", "t.py"], environ={"PATH": str(tmp_path)}, cwd=tmp_path)


def test_a_python_rank_of_an_srun_step_is_srun() -> None:
    env = {
        "SLURM_PROCID": "3",
        "SLURM_STEP_ID": "0",
        "SLURM_NTASKS": "8",
        "SLURM_NNODES": "2",
        "SLURM_NODEID": "1",
    }
    job = parse_command([PY, "t.py"], environ=env)
    assert (job.launcher, job.world_size, job.nnodes, job.node_rank) == ("srun", 8, 2, 1)


def test_facts_from_the_scripts_arguments(tmp_path: Path) -> None:
    (tmp_path / "resume.pt").write_bytes(b"x")
    (tmp_path / "cfg.yaml").write_text("lr: 1\n")
    (tmp_path / "data").mkdir()
    job = parse_command(
        [
            PY,
            "train.py",
            "--ckpt-dir",
            "ck",
            "--resume",
            "resume.pt",
            "--config",
            "cfg.yaml",
            "--data_dir",
            "data",
            "--out",
            "result.json",
            "--lr",
            "3e-4",
            "--steps",
            "40",
            "--fp16",
            "--resume_from_checkpoint",
            "latest",
            "--name=tiny",
            "--warmup",
            "-1",
        ],
        cwd=tmp_path,
    )
    facts = job.facts
    assert facts.checkpoint_dirs == ("ck",)
    assert facts.resume == ("resume.pt",)
    assert facts.configs == ("cfg.yaml",)
    assert facts.data == ("data",)
    assert facts.outputs == ("result.json",)
    assert facts.hyperparameters == {
        "lr": 3e-4,
        "steps": 40,
        "fp16": True,
        "resume_from_checkpoint": "latest",
        "name": "tiny",
        "warmup": -1,
    }


def test_plan_for_python_rewrites_only_the_front() -> None:
    job = parse_command([PY, "-u", "train.py", "--lr", "1"])
    plan = plan_launch(
        job,
        environ={"PYTHONPATH": "/mine", "HOME": "/h"},
        channel="/s.sock",
        run_id="r",
        run_dir="/rd",
        ledger="/l",
        site_dir="/site",
        protect=True,
    )
    assert plan.argv == (PY, "-u", "-m", BOOTSTRAP_MODULE, "rank", "--", "train.py", "--lr", "1")
    assert plan.env["PYTHONPATH"] == f"/site{os.pathsep}/mine"
    assert plan.env["TRAINWARDEN_RUN_CHANNEL"] == "/s.sock"
    assert plan.env["TRAINWARDEN_PROTECT"] == "1"
    # Nothing secret travels in the environment.
    assert not any("SECRET" in k or "KEY" in k for k in plan.env)


def test_plan_for_torchrun_puts_a_shim_in_front_of_each_rank() -> None:
    job = parse_command(
        ["torchrun", "--nproc-per-node", "2", "-m", "pkg.train", "--x", "1"], environ=ENV
    )
    plan = plan_launch(
        job,
        environ={},
        channel="/s",
        run_id="r",
        run_dir="/rd",
        ledger="/l",
        site_dir="/site",
        protect=False,
    )
    argv = list(plan.argv)
    assert argv[:4] == ["torchrun", "--nproc-per-node", "2", "--no-python"]
    python = job.interpreter
    assert argv[4:9] == [python, "-m", BOOTSTRAP_MODULE, "shim", "--"]
    assert argv[9:] == [
        python,
        "-u",
        "-m",
        BOOTSTRAP_MODULE,
        "rank",
        "--",
        "-m",
        "pkg.train",
        "--x",
        "1",
    ]
    assert "-m" not in argv[1:4]
    assert "TRAINWARDEN_PROTECT" not in plan.env
    assert plan.shim


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["python", "-m", BOOTSTRAP_MODULE, "rank"], True),
        (["python", "-u", "-X", "dev", "-m", BOOTSTRAP_MODULE], True),
        (["python", f"-m{BOOTSTRAP_MODULE}"], True),
        (["python", "/venv/bin/torchrun", "--no-python", "python", "-m", BOOTSTRAP_MODULE], False),
        (["python", "-c", f"import {BOOTSTRAP_MODULE}"], False),
        (["python", "-m", "other"], False),
    ],
)
def test_started_through_bootstrap(argv: list[str], expected: bool) -> None:
    assert started_through_bootstrap(argv) is expected
