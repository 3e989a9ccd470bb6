"""From what the checks reported to the table: which check caught which scenario, when, whom.

Two sources feed it: the run's ledger (``preflight.*`` from the pre-flight, ``guard.finding``
from the guard in every rank, ``rank.signal``/``rank.exit`` from the supervisor, as
docs/events.md defines them) and the verifications an operator runs afterwards
(``trainwarden verify``, ``ledger verify``). Each observation is matched to the scenario whose
attack it is about, by what the attack touched: the file it edited, the pid it signalled, the
ledger entry it rewrote, or, for the guard, the technique and the check. Time to detection is
measured from the insider's own ``drill.scenario`` entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from trainwarden.drill._checks import Observation
from trainwarden.drill._results import Detection, Effect, Person, ScenarioResult
from trainwarden.drill._scenarios import CONTROL, Scenario

__all__ = [
    "AttackRecord",
    "Target",
    "control_result",
    "ledger_observations",
    "scenario_result",
    "seconds_between",
]

# Events whose every occurrence on the control run is a finding.
_SIGNAL_EVENTS = ("rank.signal", "guard.signal")
_DROP_KINDS = ("dropped", "truncated", "rewritten", "chain_broken", "reordered", "duplicated")


@dataclass(frozen=True, slots=True)
class Target:
    """What an attack touched, as the insider reported it (what detections must name).

    Attributes:
        files: Files it edited, added, replaced or removed: relative to the sandbox's
            site-packages for environment attacks, absolute for others.
        pid: The process it signalled (T6).
        signal: The signal's name (T6).
        writer: The ledger writer whose entries it rewrote, or the forged writer (T8).
        seq: The entry it rewrote or dropped (T8).
    """

    files: tuple[str, ...] = ()
    pid: int | None = None
    signal: str | None = None
    writer: str | None = None
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class AttackRecord:
    """The insider's side of a scenario: its ledger entry and whether the attack worked."""

    ok: bool
    error: str | None
    target: Target
    insider: Person | None = None
    started: str | None = None
    step: int | None = None


def _parse_time(text: str) -> datetime | None:
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    except (TypeError, ValueError):
        return None


def seconds_between(start: str | None, end: str | None) -> float | None:
    """Seconds from ``start`` to ``end`` (ledger time strings), or ``None``."""
    a = _parse_time(start) if start else None
    b = _parse_time(end) if end else None
    if a is None or b is None:
        return None
    return round((b - a).total_seconds(), 3)


def _person_from_sender(sender: object, host: str | None) -> Person | None:
    if not isinstance(sender, Mapping):
        return None
    uid, pid = sender.get("uid"), sender.get("pid")
    return Person(
        via="signal sender",
        user=sender.get("user") if isinstance(sender.get("user"), str) else None,
        uid=uid if isinstance(uid, int) else None,
        pid=pid if isinstance(pid, int) else None,
        host=host,
    )


def ledger_observations(entries: Iterable[Any]) -> list[Observation]:
    """Observations from a run's ledger entries (docs/events.md vocabulary).

    ``entries`` are :class:`trainwarden.ledger.Entry` objects, in timeline order.
    """
    out: list[Observation] = []
    for entry in entries:
        data = entry.data
        event = entry.event
        if event in ("preflight.env", "preflight.scan"):
            for finding in data.get("findings") or ():
                if not isinstance(finding, Mapping) or finding.get("verdict") == "safe":
                    continue
                location = finding.get("location")
                path = location.get("path") if isinstance(location, Mapping) else None
                out.append(
                    Observation(
                        event,
                        _str(finding.get("rule_id")),
                        _str(finding.get("message")) or "",
                        entry.time,
                        "ledger",
                        path=_str(path) or _str(finding.get("path")),
                        facts={"step": 0, "verdict": finding.get("verdict")},
                    )
                )
        elif event == "guard.finding":
            rule = _str(data.get("rule_id")) or "guard"
            out.append(
                Observation(
                    rule,
                    rule,
                    _str(data.get("message")) or "",
                    entry.time,
                    "ledger",
                    facts={
                        "technique": data.get("technique"),
                        "step": data.get("step"),
                        "rank": data.get("rank"),
                        "established": data.get("established"),
                        "pid": data.get("pid"),
                    },
                )
            )
        elif event in _SIGNAL_EVENTS:
            signal = _str(data.get("signal"))
            out.append(
                Observation(
                    event,
                    None,
                    f"{signal} to rank {data.get('rank')} (pid {data.get('pid')})",
                    entry.time,
                    "ledger",
                    facts={"signal": signal, "pid": data.get("pid"), "rank": data.get("rank")},
                    evidence=_person_from_sender(data.get("sender"), entry.actor.host),
                )
            )
        elif event == "rank.exit" and (data.get("signal") or data.get("status") not in (0, None)):
            out.append(
                Observation(
                    event,
                    None,
                    f"rank {data.get('rank')} (pid {data.get('pid')}) ended with "
                    f"status {data.get('status')} signal {data.get('signal')}",
                    entry.time,
                    "ledger",
                    facts={
                        "signal": _str(data.get("signal")),
                        "pid": data.get("pid"),
                        "rank": data.get("rank"),
                    },
                )
            )
        elif event == "rank.hang":
            out.append(
                Observation(
                    event,
                    None,
                    f"rank {data.get('rank')} hung for {data.get('seconds')} s",
                    entry.time,
                    "ledger",
                    facts={"pid": data.get("pid"), "rank": data.get("rank")},
                )
            )
    return out


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _path_matches(path: str | None, files: Sequence[str]) -> bool:
    if not path:
        return False
    norm = path.replace("\\", "/")
    return any(norm == f or norm.endswith("/" + f.lstrip("/")) for f in files)


def _specific_match(scenario: Scenario, obs: Observation, target: Target) -> bool:
    """Whether ``obs`` is about this scenario's attack specifically."""
    check = obs.check
    if check in ("preflight.env", "preflight.scan", "protect()", "trainwarden verify"):
        return _path_matches(obs.path, target.files)
    if check.startswith("ledger verify"):
        kind = str(obs.facts.get("kind") or "")
        if not kind:  # a file check (--check-files)
            return _path_matches(obs.path, target.files)
        if obs.facts.get("writer") != target.writer or target.writer is None:
            return False
        if scenario.id == "T8-edited":
            return kind == "altered" and obs.facts.get("seq") == target.seq
        if scenario.id == "T8-dropped":
            return kind in _DROP_KINDS
        if scenario.id == "T8-denied":
            return kind == "forged"
        return False
    if check in (*_SIGNAL_EVENTS, "rank.exit", "rank.hang"):
        if target.pid is None:
            return False
        pid_ok = obs.facts.get("pid") == target.pid
        signal = obs.facts.get("signal")
        return pid_ok and (signal is None or target.signal is None or signal == target.signal)
    if check.startswith("guard."):
        return obs.facts.get("technique") == scenario.technique and check in scenario.checks
    return False


def _steps(obs: Observation, attack_step: int | None) -> int | None:
    step = obs.facts.get("step")
    if not isinstance(step, int) or isinstance(step, bool):
        return None
    if step == 0 or attack_step is None:
        return step
    return step - attack_step


def _detection(obs: Observation, record: AttackRecord, *, counts: bool) -> Detection:
    return Detection(
        check=obs.check,
        rule_id=obs.rule_id,
        message=obs.message,
        time=obs.time,
        seconds=seconds_between(record.started, obs.time),
        steps=_steps(obs, record.step),
        counts=counts,
        source=obs.source,
        evidence=obs.evidence,
    )


def scenario_result(
    scenario: Scenario,
    *,
    run_id: str,
    record: AttackRecord,
    observations: Sequence[Observation],
    siblings: Mapping[Scenario, Target],
    unavailable: Mapping[str, str],
    effect: Effect | None,
) -> ScenarioResult:
    """The result row of ``scenario`` from everything observed on its run.

    An observation about this attack (its file, its pid, its entry, or a guard check of
    its technique) is listed, and counts when its check covers the technique. One about a
    sibling's attack is left to the sibling. One about no attack in particular is listed as
    seen on the run, without counting.

    Args:
        scenario: The scenario.
        run_id: Its run's id.
        record: The insider's record of the attack.
        observations: Everything the checks reported on the run.
        siblings: The target of every scenario sharing the run (``scenario`` included).
        unavailable: Components that are not installed or not wired in, with the reason.
        effect: What the attack changed.
    """

    def row(
        status: str, reason: str | None = None, found: Sequence[Detection] = ()
    ) -> ScenarioResult:
        return ScenarioResult(
            scenario=scenario.id,
            technique=scenario.technique,
            title=scenario.title,
            run=run_id,
            status=status,
            reason=reason,
            detections=tuple(found),
            insider=record.insider,
            attack_started=record.started,
            attack_step=record.step,
            effect=effect,
            checks=scenario.checks,
        )

    if not record.ok:
        return row("error", f"the attack could not be carried out: {record.error}")
    detections: list[Detection] = []
    seen: set[tuple[str, str | None, str]] = set()
    for obs in observations:
        specific = _specific_match(scenario, obs, record.target)
        claimed = any(
            _specific_match(other, obs, target)
            for other, target in siblings.items()
            if other.id != scenario.id
        )
        if not specific and claimed:
            continue
        key = (obs.check, obs.rule_id, obs.message)
        if key in seen:
            continue
        seen.add(key)
        counts = specific and obs.check in scenario.checks
        detections.append(_detection(obs, record, counts=counts))
    # Same time (one pre-flight event lists many findings): the attacked file first.
    primary = record.target.files[:1]
    detections.sort(
        key=lambda d: (d.time or "", not d.counts, primary[0] not in d.message if primary else 0)
    )
    if any(d.counts for d in detections):
        return row("detected", None, detections)
    reason = unavailable.get(scenario.detector)
    if reason is not None:
        return row("unavailable", reason, detections)
    checks = ", ".join(scenario.checks)
    return row("missed", f"no finding from {checks} about this attack", detections)


def control_result(
    *, run_id: str, observations: Sequence[Observation], problems: Sequence[Observation]
) -> ScenarioResult:
    """The control run's row: ``clean`` only when no check reported anything at all."""
    found = [*observations, *problems]
    detections = tuple(
        sorted(
            (
                Detection(
                    check=o.check,
                    rule_id=o.rule_id,
                    message=o.message,
                    time=o.time,
                    seconds=None,
                    steps=None,
                    counts=True,
                    source=o.source,
                    evidence=o.evidence,
                )
                for o in found
            ),
            key=lambda d: (d.time or "", d.check),
        )
    )
    if detections:
        first = detections[0]
        return ScenarioResult(
            scenario=CONTROL,
            technique="-",
            title="clean control run",
            run=run_id,
            status="findings",
            reason=f"{len(detections)} finding(s) on the clean run; first: {first.check}: "
            f"{first.message}",
            detections=detections,
        )
    return ScenarioResult(
        scenario=CONTROL, technique="-", title="clean control run", run=run_id, status="clean"
    )
