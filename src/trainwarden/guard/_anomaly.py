"""Loss and gradient anomalies: non-finite values and spikes, recorded as context, never proof.

A diverging run has many innocent causes (a bad batch, a learning rate too high); these
findings are there so that the timeline of a sabotaged run shows the symptom next to the
cause the other checks establish. They never halt a job.
"""

from __future__ import annotations

import math
import statistics
from collections import deque

from trainwarden.findings import Severity
from trainwarden.guard._findings import GuardFinding

__all__ = ["AnomalyCheck"]


class AnomalyCheck:
    """Robust spike detection over a window of losses and gradient norms."""

    def __init__(self, *, rank: int, window: int, z: float) -> None:
        self.rank = rank
        self.z = z
        self._series: dict[str, deque[float]] = {
            "loss": deque(maxlen=window),
            "grad_norm": deque(maxlen=window),
        }

    def observe(self, step: int, name: str, value: float | None) -> list[GuardFinding]:
        """Judge one value of ``name`` (``loss`` or ``grad_norm``)."""
        if value is None:
            return []
        if not math.isfinite(value):
            return [
                self._finding(
                    step,
                    name,
                    f"the {_label(name)} of step {step} is {value}",
                    f"{name}={value}",
                    f"anomaly:{name}:nonfinite",
                )
            ]
        series = self._series[name]
        findings = []
        if len(series) >= 16:
            median = statistics.median(series)
            mad = statistics.median(abs(v - median) for v in series) or 1e-12
            score = (value - median) / (1.4826 * mad)
            if score > self.z and value > 2 * abs(median):
                findings.append(
                    self._finding(
                        step,
                        name,
                        f"the {_label(name)} of step {step} ({value:.4g}) is {score:.0f} robust "
                        f"deviations above its recent median ({median:.4g})",
                        f"{name}={value:.4g} median={median:.4g}",
                        f"anomaly:{name}:{step}",
                    )
                )
        series.append(value)
        return findings

    def _finding(
        self, step: int, name: str, message: str, evidence: str, subject: str
    ) -> GuardFinding:
        del name
        return GuardFinding(
            rule_id="guard.anomaly",
            severity=Severity.LOW,
            message=message,
            rank=self.rank,
            step=step,
            evidence=evidence,
            established=False,
            subject=subject,
        )


def _label(name: str) -> str:
    return "loss" if name == "loss" else "gradient norm"
