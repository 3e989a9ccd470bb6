"""The drill's scenarios: one row of the result table each, grouped into shared job runs.

A scenario is one attack of DESIGN.md's T1-T8 done by the insider, plus the checks that must
catch it. Scenarios share a job run only where every detection still points at one of them
alone: T2's two edits name different files, and T4's perturbation of every rank rides along
(only the guard's update checks count for it, and nothing else in that run is T4); T3, T4's
flip of one rank and T5's two attacks share the "guard" run, since the guard runs in warn
mode and each of them is caught by checks of its own technique and rule; T7's three attacks
hit different checkpoints; T8 tampers with the ledger of T7's run after T7's detections are
recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CONTROL", "RUNS", "SCENARIOS", "Scenario", "select_scenarios"]

#: Id of the clean control run (not an attack; it must produce no finding at all).
CONTROL = "control"


@dataclass(frozen=True, slots=True)
class Scenario:
    """One attack of the drill.

    Attributes:
        id: Stable id (JSON, ``--only``), e.g. ``T4-flip-one-rank``.
        technique: ``T1``..``T8`` of DESIGN.md.
        title: What happens, in a few words (the table's scenario column).
        attack: What the insider does (``attack`` of the ``drill.scenario`` event).
        run: The job run the scenario is part of.
        detector: The component whose checks must catch it: ``scan``, ``env``, ``guard``,
            ``supervisor``, ``sign`` or ``ledger``.
        checks: The checks that count as catching it (others that fire are listed as well,
            but do not make the row pass: T3's sleeping optimizer arrives through an edited
            torch file, and ``env verify`` flagging that file says nothing about whether the
            runtime timing check works).
    """

    id: str
    technique: str
    title: str
    attack: str
    run: str
    detector: str
    checks: tuple[str, ...]


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "T1-resume-checkpoint",
        "T1",
        "malicious checkpoint on the resume path",
        "replaced the team's resume checkpoint with one whose unpickling runs code",
        "t1",
        "scan",
        ("preflight.scan", "protect()"),
    ),
    Scenario(
        "T2-torch-source",
        "T2",
        "seeding code of the installed torch edited",
        "edited torch/random.py so manual_seed silently uses another seed",
        "t2",
        "env",
        ("preflight.env",),
    ),
    Scenario(
        "T2-pth-hook",
        "T2",
        ".pth startup hook in site-packages",
        "added a .pth file whose import line runs in every Python process of the environment",
        "t2",
        "env",
        ("preflight.env",),
    ),
    Scenario(
        "T3-sleeping-optimizer",
        "T3",
        "optimizer sleeps at random on one rank when world size > 1",
        "edited torch/optim/optimizer.py: a step pre-hook sleeps at random on the last rank, "
        "only in jobs above the world-size threshold",
        "guard",
        "guard",
        ("guard.timing",),
    ),
    Scenario(
        "T4-flip-one-rank",
        "T4",
        "update direction flipped on one rank",
        "edited torch/optim/optimizer.py: step hooks reverse every update on the last rank",
        "guard",
        "guard",
        ("guard.update", "guard.cross-rank", "guard.weights"),
    ),
    Scenario(
        "T4-perturb-all-ranks",
        "T4",
        "update perturbed identically on all ranks",
        "edited torch/optim/optimizer.py: step hooks add the same noise to the update on every "
        "rank, so cross-rank checksums still agree",
        "t2",
        "guard",
        ("guard.update", "guard.weights"),
    ),
    Scenario(
        "T5-seed-data-order",
        "T5",
        "data order changed and RNG reseeded",
        "edited torch/utils/data/distributed.py: the sampler shuffles with another seed and "
        "reseeds torch's RNG",
        "guard",
        "guard",
        ("guard.data-order", "guard.reseed", "guard.rng"),
    ),
    Scenario(
        "T5-lr-schedule",
        "T5",
        "learning rate changed outside the schedule",
        "edited torch/optim/lr_scheduler.py: a step hook multiplies the learning rate mid-run",
        "guard",
        "guard",
        ("guard.hyperparam",),
    ),
    Scenario(
        "T6-sigterm",
        "T6",
        "a rank killed with SIGTERM by another process",
        "sent SIGTERM to one rank of the running job",
        "t6-term",
        "supervisor",
        ("rank.signal", "guard.signal", "rank.exit"),
    ),
    Scenario(
        "T6-sigkill",
        "T6",
        "a rank killed with SIGKILL by another process",
        "sent SIGKILL to one rank of the running job",
        "t6-kill",
        "supervisor",
        ("rank.signal", "rank.exit"),
    ),
    Scenario(
        "T7-modified",
        "T7",
        "colleague's signed checkpoint modified",
        "rewrote a colleague's signed checkpoint with altered weights",
        "t7",
        "sign",
        ("trainwarden verify", "ledger verify --check-files"),
    ),
    Scenario(
        "T7-rolled-back",
        "T7",
        "colleague's checkpoint rolled back to an older signed one",
        "replaced a colleague's newest checkpoint (and signature) with an older signed one",
        "t7",
        "sign",
        ("trainwarden verify", "ledger verify --check-files"),
    ),
    Scenario(
        "T7-deleted",
        "T7",
        "colleague's checkpoint deleted",
        "deleted a colleague's signed checkpoint and its signature",
        "t7",
        "sign",
        ("trainwarden verify", "ledger verify --check-files"),
    ),
    Scenario(
        "T8-edited",
        "T8",
        "ledger entry edited to blame a colleague",
        "edited the ledger entry recording the checkpoint modification to name a colleague",
        "t7",
        "ledger",
        ("ledger verify",),
    ),
    Scenario(
        "T8-dropped",
        "T8",
        "ledger entry dropped",
        "removed the ledger entry recording the checkpoint deletion",
        "t7",
        "ledger",
        ("ledger verify",),
    ),
    Scenario(
        "T8-denied",
        "T8",
        "forged entry: a colleague 'did it'",
        "appended an entry, with a key labelled as the colleague, claiming the colleague "
        "deleted the checkpoint",
        "t7",
        "ledger",
        ("ledger verify",),
    ),
)

#: Job runs in the order the drill performs them; the control run comes first (the baseline
#: every effect is measured against, and the source of T1's resume checkpoint).
RUNS: tuple[str, ...] = (
    CONTROL,
    "t1",
    "t6-term",
    "t6-kill",
    "t7",
    "t2",
    "guard",
)


def select_scenarios(only: tuple[str, ...] = ()) -> tuple[Scenario, ...]:
    """The scenarios named by ``only`` (ids or techniques such as ``T4``); all when empty.

    Raises:
        ConfigError: A name matches no scenario.
    """
    if not only:
        return SCENARIOS
    from trainwarden.errors import ConfigError

    chosen: dict[str, Scenario] = {}
    for name in only:
        matched = [s for s in SCENARIOS if name.upper() == s.technique or name == s.id]
        if not matched:
            known = ", ".join(sorted({s.technique for s in SCENARIOS} | {s.id for s in SCENARIOS}))
            raise ConfigError(f"unknown drill scenario {name!r} (known: {known})")
        for scenario in matched:
            chosen[scenario.id] = scenario
    # T8 tampers with the ledger of T7's run: its edits target the entries T7 left behind.
    if any(s.technique == "T8" for s in chosen.values()):
        for scenario in SCENARIOS:
            if scenario.technique == "T7":
                chosen.setdefault(scenario.id, scenario)
    return tuple(s for s in SCENARIOS if s.id in chosen)
