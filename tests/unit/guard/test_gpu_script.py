"""``benchmarks/gpu_guard.py`` runs, on its CPU path, against the guard's current internals.

The script waits for a session with a GPU; it reaches into the update check (the judgement,
the reference's arithmetic) to measure residuals, and once those internals were renamed it
failed with an AttributeError before its first row. Its CPU path is the same code with small
sizes: run here, the script cannot rot unseen. Its figures are checked too: honest fp32 runs
replay bit for bit with no finding, and a flipped update is caught at every step.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.torch

SCRIPT = Path(__file__).parents[3] / "benchmarks" / "gpu_guard.py"


@pytest.fixture(scope="module")
def script() -> Any:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        spec = importlib.util.spec_from_file_location("gpu_guard_script", SCRIPT)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(SCRIPT.parent))


def test_honest_and_tampered_runs_and_the_table(script: Any) -> None:
    honest = script.residuals("cpu", 3, 256, False)
    assert len(honest) == 6  # two dtypes x three AdamW paths
    for row in honest:
        assert row["findings"] == 0, row
        if row["dtype"].startswith("fp32"):
            assert row["residual"] == 0.0, row  # replayed kernels: bit for bit
            assert row["ulps"] <= 2, row  # own arithmetic: within the documented tolerance
    flipped = script.residuals("cpu", 3, 256, False, "flip")
    for row in flipped:
        row["tamper"] = "sign flipped"
        assert row["caught"] == 3, row
    costs = script.overhead("cpu", 2, [256], False)
    assert costs[0]["own"] > 0
    text = script.table("cpu", honest, flipped, costs)
    assert "NO GPU WAS AVAILABLE" in text
    assert text.count("| fp32 (master weights) |") == 6
