"""The model still computes with the tensors the optimizer updates.

Every check of the update looks at the optimizer's parameters. Swapping a module's parameter
for a copy (``linear.weight = nn.Parameter(...)``, a submodule replaced by a deep copy, a
parameter re-registered as a buffer) leaves those tensors and their updates intact while the
model computes with tensors nothing trains: that part of the network silently stops learning.
At attach the guard records every module's parameter and submodule containers; each step it
compares them in bulk (identity, length and contents, in C), and only a difference walks the
model to name the parameters the optimizer updates that the model no longer uses.
"""

from __future__ import annotations

from typing import Any

from trainwarden.findings import Severity
from trainwarden.guard._findings import GuardFinding
from trainwarden.guard._hooks import _Family

__all__ = ["ModelTopology"]


class ModelTopology:
    """Baseline of the model's ``_parameters`` and ``_modules`` containers, and its diff.

    Args:
        model: The (unwrapped) model.
        params: The optimizer's parameters by display name.
        rank: For findings.
    """

    def __init__(self, model: Any, params: dict[str, Any], *, rank: int) -> None:
        self.model = model
        self.params = params
        self.rank = rank
        self._reported: set[str] = set()
        self._families: list[_Family] = []
        self.baseline()

    def baseline(self) -> None:
        """Record the containers as they are now (at attach, and after a declared change)."""
        modules = [m.__dict__ for m in self.model.modules()]
        self._families = [
            _Family.build(modules, [attr] * len(modules), None, [d.get(attr) for d in modules])
            for attr in ("_parameters", "_modules")
        ]

    def check(self, step: int) -> list[GuardFinding]:
        """Findings for optimizer parameters the model no longer holds (cheap when none)."""
        try:
            if all(family.unchanged() for family in self._families):
                return []
        except (AttributeError, TypeError, RuntimeError):  # a container gone or replaced
            pass
        try:
            return self._diff(step)
        finally:
            self.baseline()

    def _diff(self, step: int) -> list[GuardFinding]:
        held = {id(p) for p in self.model.parameters()}
        gone = [
            name
            for name, p in self.params.items()
            if id(p) not in held and name not in self._reported
        ]
        if not gone:
            return []
        self._reported.update(gone)
        shown = ", ".join(gone[:4]) + (f" and {len(gone) - 4} more" if len(gone) > 4 else "")
        return [
            GuardFinding(
                rule_id="guard.weights",
                severity=Severity.CRITICAL,
                message=(
                    f"the model no longer computes with {shown}: the optimizer updates tensors "
                    "the model stopped using (a parameter or module was replaced after attach)"
                ),
                rank=self.rank,
                step=step,
                evidence=f"{len(gone)} optimizer parameter(s) no longer in the model",
                established=True,
                subject=f"topology:{gone[0]}",
            )
        ]
