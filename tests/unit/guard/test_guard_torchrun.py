"""The one-line guard in the example job under torchrun: two real ranks over gloo, DDP."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from guarddist import free_port

pytestmark = [pytest.mark.torch, pytest.mark.distributed, pytest.mark.slow]


def test_torchrun_two_ranks_with_the_guard_have_no_findings(tmp_path: Path) -> None:
    telemetry = tmp_path / "telemetry"
    result = tmp_path / "result.json"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "-m",
        "trainwarden.examples.tinygpt",
        "--steps",
        "16",
        "--guard",
        "--guard-telemetry",
        str(telemetry),
        "--out",
        str(result),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(result.read_text())
    assert outcome["world_size"] == 2
    assert outcome["guard_findings"] == []
    for rank in (0, 1):
        lines = [json.loads(x) for x in (telemetry / f"rank-{rank}.jsonl").read_text().splitlines()]
        assert [x["step"] for x in lines] == list(range(1, 17))
        assert {x["rank"] for x in lines} == {rank}
        assert all(x["checked"] > 0 for x in lines)
        assert all(x["residual"] == 0.0 for x in lines)


def test_digest_of_the_job_is_the_same_with_and_without_the_guard(tmp_path: Path) -> None:
    digests = []
    for extra in ([], ["--guard"]):
        out = tmp_path / f"r{len(extra)}.json"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "trainwarden.examples.tinygpt",
                "--steps",
                "8",
                "--out",
                str(out),
                *extra,
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
        digests.append(json.loads(out.read_text())["digest"])
    assert digests[0] == digests[1]
