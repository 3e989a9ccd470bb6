"""The insider's attacks, one module per technique, each acting on the sandbox for real.

Every attack is a function ``(AttackContext) -> AttackOutcome`` run inside the insider's own
process (another uid where the drill runs as root). It calls ``ctx.begin()`` at the moment the
attack begins, which records ``drill.scenario`` in the run's ledger with the insider's key, so
time to detection is measured from the ledger itself. Attacks use only modules imported when
the insider starts: after it switches uid it may not be able to read the Python installation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AttackContext", "AttackFailed", "AttackOutcome", "all_attacks"]


class AttackFailed(Exception):
    """The attack could not be carried out (the target was not there, a write failed)."""


@dataclass(frozen=True)
class AttackContext:
    """What an attack gets: its scenario, parameters, and the callback that marks its start.

    Attributes:
        scenario: Scenario id (``T4-flip-one-rank``...).
        technique: ``T1``..``T8``.
        params: Attack parameters chosen by the drill (paths, steps, ranks, signal...).
        begin: Records ``drill.scenario`` in the ledger; call it when the attack begins,
            optionally with the training step it first acts on. Returns the entry's
            ``writer``, ``seq``, ``time`` and ``file``.
    """

    scenario: str
    technique: str
    params: Mapping[str, Any]
    begin: Callable[..., dict[str, Any]]


@dataclass
class AttackOutcome:
    """What an attack did.

    Attributes:
        touched: Files it created, replaced or removed (relative to the sandbox's
            site-packages for environment attacks, absolute otherwise).
        details: Facts the detection mapping needs (target pid, writer and seq...).
    """

    touched: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


def all_attacks() -> Mapping[str, Callable[[AttackContext], AttackOutcome]]:
    """Every attack, by scenario id (imports every attack module)."""
    if _ATTACKS:
        return _ATTACKS
    from trainwarden.drill._attacks import (
        checkpoint_payload,
        checkpoint_tampering,
        ledger_tampering,
        rank_kill,
        reproducibility,
        sleeping_optimizer,
        startup_hook,
        torch_source,
        update_tampering,
    )

    _ATTACKS.update(
        {
            "T1-resume-checkpoint": checkpoint_payload.attack,
            "T2-torch-source": torch_source.attack,
            "T2-pth-hook": startup_hook.attack,
            "T3-sleeping-optimizer": sleeping_optimizer.attack,
            "T4-flip-one-rank": update_tampering.attack_flip,
            "T4-perturb-all-ranks": update_tampering.attack_perturb,
            "T5-seed-data-order": reproducibility.attack_data_order,
            "T5-lr-schedule": reproducibility.attack_lr,
            "T6-sigterm": rank_kill.attack,
            "T6-sigkill": rank_kill.attack,
            "T7-modified": checkpoint_tampering.attack_modify,
            "T7-rolled-back": checkpoint_tampering.attack_rollback,
            "T7-deleted": checkpoint_tampering.attack_delete,
            "T8-edited": ledger_tampering.attack_edit,
            "T8-dropped": ledger_tampering.attack_drop,
            "T8-denied": ledger_tampering.attack_deny,
        }
    )
    return _ATTACKS


_ATTACKS: dict[str, Callable[[AttackContext], AttackOutcome]] = {}
