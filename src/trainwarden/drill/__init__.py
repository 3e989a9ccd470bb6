"""``trainwarden drill``: replay the 2024 incident, T1-T8, against a real training job.

:func:`run_drill` builds a throwaway sandbox (its own Python environment with a mirror of the
installed torch, keys, team directories, ledgers), runs a clean control job and then each
attack of DESIGN.md, done by a second "insider" identity (another uid when run as root), against
a small real training job (tinygpt, several ranks over gloo, launched under ``trainwarden run``
with the guard in every rank). It returns a
:class:`DrillResult`: per scenario, whether it was detected, by which check, how long after the
attack began (seconds and steps, measured from the insider's ``drill.scenario`` ledger entry)
and whom the ledger names. ``DrillResult.passed`` is what the command's exit status 0 means:
every attack detected and the control run clean. A scenario whose detecting component is not
installed is reported ``unavailable``, never as detected. See docs/drill.md.
"""

from __future__ import annotations

from trainwarden.drill._results import (
    SCHEMA_VERSION,
    STATUSES,
    Detection,
    DrillResult,
    Effect,
    Person,
    ScenarioResult,
)
from trainwarden.drill._runner import DEFAULT_RANKS, MAX_RANKS, DrillProgress, run_drill
from trainwarden.drill._scenarios import CONTROL, SCENARIOS, Scenario, select_scenarios

__all__ = [
    "CONTROL",
    "DEFAULT_RANKS",
    "MAX_RANKS",
    "SCENARIOS",
    "SCHEMA_VERSION",
    "STATUSES",
    "Detection",
    "DrillProgress",
    "DrillResult",
    "Effect",
    "Person",
    "Scenario",
    "ScenarioResult",
    "run_drill",
    "select_scenarios",
]
