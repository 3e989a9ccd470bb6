"""A whole drill: the sandbox, the control run, every group of scenarios, the result table.

Runs go one after the other (on 2 cores a second job would only slow the first, and timing
checks must not see the drill's own contention as an attack). Environment attacks are
undone by the platform after their run, restoring the mirror from its record, so each run
starts from the environment the lock describes; the next run's pre-flight shows anything left.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from trainwarden.drill._attacks.sleeping_optimizer import planned_sleeps
from trainwarden.drill._checks import (
    Observation,
    file_owner,
    seal,
    signed_checkpoints,
    verify_checkpoints,
    verify_ledger_issues,
)
from trainwarden.drill._detection import (
    AttackRecord,
    Target,
    control_result,
    ledger_observations,
    scenario_result,
)
from trainwarden.drill._identity import InsiderAccount, choose_account
from trainwarden.drill._job import Job, JobOutcome, JobSpec, utc_now
from trainwarden.drill._results import DrillResult, Effect, Person, ScenarioResult
from trainwarden.drill._sandbox import IDENTITIES, RunPaths, Sandbox
from trainwarden.drill._scenarios import CONTROL, RUNS, Scenario, select_scenarios
from trainwarden.errors import ConfigError, Error, InputError

__all__ = ["DEFAULT_RANKS", "MAX_RANKS", "DrillProgress", "run_drill"]

DEFAULT_RANKS = 2
MAX_RANKS = 16
_STEPS = 40
_CKPT_EVERY = 10
_JOB_TIMEOUT = 300.0
_INSIDER_TIMEOUT = 300.0
# T6's job trains long enough that the kill always lands mid-run; it never finishes.
_T6_STEPS = 2000
# The guard run trains longer: the timing check judges a step against the robust spread of
# its own history, which a loaded machine makes wide at first; more steps after warm-up give
# the sleeping rank's stalls room to stand out however busy the machine is (a few seconds).
_GUARD_STEPS = 80
# T3: from step 5, sleep 0.4 s with probability 0.15 a step, on the last rank of jobs with
# more than one rank (the incident's "only above 256 GPUs", scaled down). The guard names a
# sleep of 0.15 s even while its own code checks run (they are paced and their slices
# subtracted from the phases); the first check of a process holds the interpreter lock for
# up to ~80 ms per source compile, so the drill sleeps long enough to keep a margin on a
# loaded 2-core machine.
_T3 = {"start": 5, "prob": 0.15, "delay": 0.4, "threshold": 1, "seed": 20240}
_T4_START = 10
_T5_LR = {"start": 10, "factor": 4.0}


@dataclass(frozen=True, slots=True)
class DrillProgress:
    """One progress report of a running drill.

    Attributes:
        stage: ``sandbox``, ``attack``, ``job`` (one job under ``trainwarden run``, its
            pre-flight included), ``check``, ``result``, ``report``.
        message: What is happening, for a human.
        run: The run it is about, when any.
        done: Runs finished so far.
        total: Runs in all.
        result: A scenario's result, when ``stage`` is ``result``.
    """

    stage: str
    message: str
    run: str | None
    done: int
    total: int
    result: ScenarioResult | None = None


ProgressCallback = Callable[[DrillProgress], None]


def run_drill(
    *,
    ranks: int = DEFAULT_RANKS,
    only: Sequence[str] = (),
    keep: Path | None = None,
    progress: ProgressCallback | None = None,
    report: Path | None = None,
    unsafe_no_defenses: bool = False,
) -> DrillResult:
    """Replay T1-T8 against a real training job in a throwaway sandbox; return the table.

    Args:
        ranks: Ranks of every job (at least 2: T3 and T4 act on one rank of several).
        only: Scenario ids or techniques to run (all when empty); the control always runs.
        keep: Build the sandbox in this new (or empty) directory and keep it afterwards.
        progress: Called with a :class:`DrillProgress` as the drill goes.
        report: Write an HTML report here: an index of the result table, and beside it one
            forensic report per run (``trainwarden.report.write_run_report``, compared with
            the control run).
        unsafe_no_defenses: Run the jobs without ``protect()`` and without the guard
            (``trainwarden run --no-protect --no-guard``), so the attacks act unhindered: for
            showing that they are real. Every payload stays harmless, and nothing outside the
            sandbox is touched.

    Returns:
        The result; ``passed`` only if every attack was detected and the control was clean.

    Raises:
        ConfigError: Bad arguments, torch missing, or a sandbox the insider cannot reach.
        InputError: The sandbox could not be built.
    """
    if isinstance(ranks, bool) or not isinstance(ranks, int) or not 2 <= ranks <= MAX_RANKS:
        raise ConfigError(
            f"--ranks must be between 2 and {MAX_RANKS} (T3 and T4 act on one rank of several), "
            f"not {ranks!r}"
        )
    scenarios = select_scenarios(tuple(only))
    if report is not None:
        from trainwarden._fs import check_output_path

        check_output_path(report, [keep] if keep is not None else [])
        if keep is not None and _inside(report, keep):
            # The pages are written while the sandbox still holds the evidence they are
            # about; nothing of the report may land among it.
            raise ConfigError(f"the report {report} lies inside the --keep directory {keep}")
    return _Drill(
        ranks=ranks,
        scenarios=scenarios,
        keep=keep,
        progress=progress,
        defenses=not unsafe_no_defenses,
        report=report,
    ).run()


def _unavailable(*, defenses: bool) -> dict[str, str]:
    """Components the drill cannot use, with the reason shown for their scenarios."""
    out = {}
    if importlib.util.find_spec("trainwarden.guard") is None:
        out["guard"] = (
            "guard not installed (trainwarden.guard, the runtime checks inside each rank)"
        )
    elif not defenses:
        out["guard"] = "guard turned off (unsafe_no_defenses): the attacks acted unhindered"
    if importlib.util.find_spec("trainwarden.supervise") is None:
        out["supervisor"] = (
            "supervisor not installed (trainwarden run, which records exits and signals)"
        )
    return out


@dataclass
class _InsiderRun:
    """One insider process."""

    proc: subprocess.Popen[bytes]
    result_path: Path
    log_path: Path


class _Drill:
    def __init__(
        self,
        *,
        ranks: int,
        scenarios: Sequence[Scenario],
        keep: Path | None,
        progress: ProgressCallback | None,
        defenses: bool,
        report: Path | None = None,
    ) -> None:
        self.report_to = report
        self.ranks = ranks
        self.scenarios = tuple(scenarios)
        self.keep = keep
        self._progress = progress
        self.defenses = defenses
        self.runs = [r for r in RUNS if r == CONTROL or any(s.run == r for s in scenarios)]
        self.done = 0
        self.account: InsiderAccount = choose_account()
        self.unavailable = _unavailable(defenses=defenses)
        self.sandbox: Sandbox | None = None
        self.control: JobOutcome | None = None
        self.control_ckpts: list[Path] = []
        self._insiders = 0
        self._active: list[Job | _InsiderRun] = []

    # -- plumbing ---------------------------------------------------------------------

    def _notify(self, stage: str, message: str, run: str | None = None, **extra: Any) -> None:
        if self._progress is not None:
            self._progress(DrillProgress(stage, message, run, self.done, len(self.runs), **extra))

    @property
    def sb(self) -> Sandbox:
        assert self.sandbox is not None
        return self.sandbox

    def run(self) -> DrillResult:
        start = time.monotonic()
        self._notify("sandbox", "building the sandbox")
        self.sandbox = Sandbox.create(
            self.account, keep=self.keep, progress=lambda m: self._notify("sandbox", m)
        )
        results: list[ScenarioResult] = []
        try:
            control = self._run_control()
            self.done += 1
            for name in self.runs[1:]:
                group = [s for s in self.scenarios if s.run == name]
                try:
                    rows = self._run_group(name, group)
                except Error as exc:
                    # One run going wrong (an insider that cannot start, a job that cannot be
                    # launched) is reported on its rows; the other runs still tell their story.
                    rows = self._unrunnable(name, group, exc.diagnostics())
                    self._repair_environment()
                for row in rows:
                    results.append(row)
                    self._notify("result", _one_line(row), name, result=row)
                self.done += 1
            result = self._result(control, results, start)
            if self.report_to is not None:
                self._write_reports(result, self.report_to)
        finally:
            for item in reversed(self._active):
                with contextlib.suppress(Exception):
                    self._stop(item)
            self.sandbox.close()
        return replace(result, seconds=time.monotonic() - start)

    def _write_reports(self, result: DrillResult, index: Path) -> None:
        """The index page and one forensic report per run, each compared with the control."""
        from trainwarden._fs import atomic_write
        from trainwarden.drill._html import render_index
        from trainwarden.report import write_run_report

        sb = self.sb
        # Every key of the drill is trusted, so nothing shows as "not verified": the
        # platform key signs run's entries and seals its ledgers, the ops key seals them
        # again, the insider's and the colleague's keys sign their own entries.
        keys = [sb.keys[role].public for role in ("platform", "victim", "insider")]
        seal_keys = [sb.keys["seal"].public, sb.keys["platform"].public]
        control_dir = sb.runs / CONTROL
        links: dict[str, str] = {}
        problems: dict[str, str] = {}
        for name in self.runs:
            run_id = f"drill-{sb.token}-{name}"
            target = index.with_name(f"{index.stem}-{name}.html")
            self._notify("report", f"report of run {name}: {target}", name)
            try:
                write_run_report(
                    sb.runs / name,
                    target,
                    against=None if name == CONTROL else control_dir,
                    keys=keys,
                    seal_keys=seal_keys,
                )
            except Error as exc:
                # One run's report failing (a run that never started) must not cost the
                # others, nor the index that says what happened.
                problems[run_id] = exc.diagnostics()
                continue
            links[run_id] = target.name
        self._notify("report", f"writing the drill's report {index}")
        atomic_write(index, render_index(result, links, problems).encode(), what="report")

    def _result(
        self, control: ScenarioResult, results: list[ScenarioResult], start: float
    ) -> DrillResult:
        order = {s.id: i for i, s in enumerate(self.scenarios)}
        results.sort(key=lambda r: order.get(r.scenario, len(order)))
        insider = Person(
            via="drill",
            identity=IDENTITIES["insider"],
            uid=self.account.uid if self.account.uid is not None else os.getuid(),
        )
        notes = [self.account.note]
        if not self.defenses:
            notes.append("defences were off (unsafe_no_defenses): attacks acted unhindered")
        notes.append(
            "every job ran under trainwarden run (pre-flight, guard in warn mode in every rank, "
            "signals and exits, checkpoints signed with the platform key as written); "
            "pre-flight findings and access warnings were recorded and the job let run, so "
            "the runtime checks show what they catch"
        )
        return DrillResult(
            control=control,
            scenarios=tuple(results),
            ranks=self.ranks,
            insider=insider,
            insider_mode=self.account.mode,
            components={
                "scan": True,
                "protect": self.defenses,
                "env": True,
                "sign": True,
                "ledger": True,
                "guard": "guard" not in self.unavailable,
                "supervisor": "supervisor" not in self.unavailable,
            },
            seconds=time.monotonic() - start,
            sandbox=str(self.sb.root) if self.sb.keep else None,
            notes=tuple(notes),
        )

    def _stop(self, item: Job | _InsiderRun) -> None:
        if isinstance(item, Job):
            item.stop()
        elif item.proc.poll() is None:
            item.proc.kill()
            item.proc.wait(timeout=30)

    # -- the insider ----------------------------------------------------------------------

    def _start_insider(
        self,
        run: RunPaths,
        items: Sequence[tuple[Scenario, dict[str, Any]]],
        *,
        keep_kill: bool = False,
    ) -> _InsiderRun:
        sb = self.sb
        self._insiders += 1
        stem = f"{run.name}-{self._insiders}"
        request_path = sb.insider_home / f"{stem}.request.json"
        result_path = sb.insider_home / f"{stem}.result.json"
        log_path = run.run_dir / f"insider-{self._insiders}.log"
        account = self.account
        request = {
            "cwd": str(sb.root),
            "account": None
            if account.uid is None
            else {"uid": account.uid, "gid": account.gid, "groups": list(account.groups)},
            "keep_kill": keep_kill,
            "key": str(sb.keys["insider"].private),
            "ledger": str(run.ledger),
            "run": run.run_id,
            "result": str(result_path),
            "scenarios": [
                {"id": s.id, "technique": s.technique, "attack": s.attack, "params": params}
                for s, params in items
            ],
        }
        request_path.write_text(json.dumps(request), encoding="utf-8")
        request_path.chmod(0o644)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONSTARTUP", "PYTHONINSPECT")}
        with log_path.open("ab") as log:
            try:
                proc = subprocess.Popen(  # noqa: S603  # this interpreter, our module
                    [sys.executable, "-m", "trainwarden.drill._insider", str(request_path)],
                    cwd=sb.root,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            except OSError as exc:
                raise InputError(f"cannot start the insider: {exc.strerror or exc}") from exc
        handle = _InsiderRun(proc, result_path, log_path)
        self._active.append(handle)
        return handle

    def _finish_insider(self, handle: _InsiderRun) -> dict[str, dict[str, Any]]:
        """Wait for the insider; its per-scenario records by scenario id."""
        try:
            handle.proc.wait(timeout=_INSIDER_TIMEOUT)
        except subprocess.TimeoutExpired:
            handle.proc.kill()
            handle.proc.wait(timeout=30)
        with contextlib.suppress(ValueError):
            self._active.remove(handle)
        try:
            result = json.loads(handle.result_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log = handle.log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
            raise InputError(f"the insider process failed without a result:\n{log}") from None
        if not result.get("ok"):
            raise InputError(
                f"the insider process failed: {result.get('error')}\n{result.get('traceback', '')}"
            )
        return {item["id"]: item for item in result.get("scenarios", [])}

    def _attack(
        self, run: RunPaths, items: Sequence[tuple[Scenario, dict[str, Any]]]
    ) -> dict[str, dict[str, Any]]:
        names = ", ".join(s.id for s, _ in items)
        self._notify("attack", f"the insider attacks: {names}", run.name)
        return self._finish_insider(self._start_insider(run, items))

    # -- ledger reading -------------------------------------------------------------------

    def _entries(self, run: RunPaths) -> tuple[Any, ...]:
        from trainwarden.ledger import inspect_ledger

        report = inspect_ledger(run.ledger, keys=self.sb.public_keys())  # type: ignore[arg-type]
        return report.entries

    def _records(
        self,
        run: RunPaths,
        items: Sequence[Scenario],
        outcomes: dict[str, dict[str, Any]],
        targets: dict[str, Target],
    ) -> dict[str, AttackRecord]:
        entries = [e for e in self._entries(run) if e.event == "drill.scenario"]
        out = {}
        for scenario in items:
            outcome = outcomes.get(scenario.id, {"ok": False, "error": "not attempted"})
            entry = next((e for e in entries if e.data.get("scenario") == scenario.id), None)
            insider = started = step = None
            if entry is not None:
                actor = entry.actor
                insider = Person(
                    via="ledger",
                    identity=actor.identity,
                    user=actor.user,
                    uid=actor.uid,
                    host=actor.host,
                    pid=actor.pid,
                    key=actor.key,
                )
                started = entry.data.get("started") or entry.time
                raw_step = entry.data.get("step")
                step = raw_step if isinstance(raw_step, int) else None
            ok = bool(outcome.get("ok")) and entry is not None
            error = outcome.get("error") or (None if entry else "no drill.scenario entry")
            out[scenario.id] = AttackRecord(
                ok=ok,
                error=error,
                target=targets.get(scenario.id, Target()),
                insider=insider,
                started=started,
                step=step,
            )
        return out

    def _results(
        self,
        run: RunPaths,
        items: Sequence[Scenario],
        records: dict[str, AttackRecord],
        observations: Sequence[Observation],
        effects: dict[str, Effect],
    ) -> list[ScenarioResult]:
        siblings = {s: records[s.id].target for s in items}
        return [
            scenario_result(
                s,
                run_id=run.run_id,
                record=records[s.id],
                observations=observations,
                siblings=siblings,
                unavailable=self.unavailable,
                effect=effects.get(s.id),
            )
            for s in items
        ]

    # -- runs ----------------------------------------------------------------------------

    def _job(self, run: RunPaths, spec: JobSpec) -> Job:
        self._notify("job", f"training: {self.ranks} ranks, {spec.steps} steps", run.name)
        job = Job(self.sb, run, spec, ranks=self.ranks)
        job.start()
        self._active.append(job)
        return job

    def _wait(self, job: Job) -> JobOutcome:
        outcome = job.wait(timeout=_JOB_TIMEOUT)
        with contextlib.suppress(ValueError):
            self._active.remove(job)
        # The ops cron seals every run's ledger once its job is over: a run left unsealed
        # was reported "seal missing" (suspected T8) by its own report. A ledger that does
        # not verify is not sealed (seal refuses it), which the run's report then shows.
        with contextlib.suppress(Error):
            seal(self.sb, job.run)
        return outcome

    def _run_control(self) -> ScenarioResult:
        run = self.sb.prepare_run(CONTROL)
        outcome = self._wait(self._job(run, JobSpec(_STEPS, _CKPT_EVERY, protect=self.defenses)))
        self.control = outcome
        problems: list[Observation] = []
        if not outcome.ok:
            problems.append(_job_failure(outcome))
        self._notify("check", "signing, sealing and verifying the checkpoints", run.name)
        checks: list[Observation] = []
        try:
            signatures = signed_checkpoints(self._entries(run))
            self.control_ckpts = [Path(s.path) for s in signatures]
            checks += verify_checkpoints(self.sb, run, self.control_ckpts)
            ledger_checks, _ = verify_ledger_issues(self.sb, run, check_files=True)
            checks += ledger_checks
            if self.control_ckpts:
                checks += _scan_observations(self.control_ckpts)
        except Error as exc:
            problems.append(Observation("drill", None, exc.diagnostics(), utc_now(), "check"))
        observations = ledger_observations(self._entries(run)) + checks
        result = control_result(run_id=run.run_id, observations=observations, problems=problems)
        self._notify("result", _one_line(result), run.name, result=result)
        return result

    def _run_group(self, name: str, group: Sequence[Scenario]) -> list[ScenarioResult]:
        if name == "t1":
            return self._run_t1(group)
        if name.startswith("t6"):
            return self._run_t6(name, group)
        if name == "t7":
            return self._run_t7(group)
        return self._run_environment(name, group)

    def _repair_environment(self) -> None:
        """Put back every environment file an attack may have touched (after a failure)."""
        with contextlib.suppress(Error):
            self.sb.reset()

    def _unrunnable(self, name: str, group: Sequence[Scenario], why: str) -> list[ScenarioResult]:
        run_id = f"drill-{self.sb.token}-{name}"
        return [
            ScenarioResult(
                scenario=s.id,
                technique=s.technique,
                title=s.title,
                run=run_id,
                status="error",
                reason=why,
                checks=s.checks,
            )
            for s in group
        ]

    # T1 -----------------------------------------------------------------------------

    def _run_t1(self, group: Sequence[Scenario]) -> list[ScenarioResult]:
        (scenario,) = group
        source = next((p for p in self.control_ckpts if p.name == "ckpt-000020.pt"), None)
        if source is None or not source.exists():
            return self._unrunnable("t1", group, "the control run left no checkpoint to resume")
        run = self.sb.prepare_run("t1")
        # The team's checkpoint the colleague will resume from.
        ckpt = run.ckpt / source.name
        shutil.copyfile(source, ckpt)
        self.sb.share(ckpt, mode=0o644)
        canary = self.sb.loot / "t1-canary.txt"
        outcomes = self._attack(run, [(scenario, {"checkpoint": str(ckpt), "canary": str(canary)})])
        owners = _owners([ckpt])
        outcome = self._wait(
            self._job(run, JobSpec(_STEPS, resume=ckpt, protect=self.defenses, scan=(ckpt,)))
        )
        entries = self._entries(run)
        observations = _with_owners(ledger_observations(entries), owners)
        # protect() in a rank refusing the checkpoint: as `run` relays it to the signed
        # ledger (load.refused), else as the rank's traceback in the job's output.
        refusal = _ledger_refusal(entries, ckpt) or _refusal(outcome, run.log, ckpt)
        if refusal is not None:
            observations.append(refusal)
        ran = canary.read_text(encoding="utf-8").splitlines() if canary.exists() else []
        if ran:
            effect = Effect(
                True,
                f"the payload ran in {len(ran)} process(es) of the job while it resumed "
                + (
                    "and the job finished normally"
                    if outcome.ok
                    else f"(job status {outcome.status})"
                ),
            )
        else:
            effect = Effect(
                False,
                "the payload never ran: loading was refused"
                if refusal is not None
                else f"the payload did not run (job status {outcome.status})",
            )
        targets = {scenario.id: Target(files=(str(ckpt),))}
        records = self._records(run, group, outcomes, targets)
        return self._results(run, group, records, observations, {scenario.id: effect})

    # T2-T5: the environment ---------------------------------------------------------------

    def _environment_params(self, scenario: Scenario) -> dict[str, Any]:
        site = str(self.sb.site)
        if scenario.id == "T2-torch-source":
            return {"site": site, "offset": 7919}
        if scenario.id == "T2-pth-hook":
            return {"site": site, "recon_log": str(self.sb.loot / "recon.jsonl")}
        if scenario.id == "T3-sleeping-optimizer":
            return {"site": site, **_T3}
        if scenario.id in ("T4-flip-one-rank", "T4-perturb-all-ranks"):
            return {"site": site, "start": _T4_START, "scale": 0.5, "seed": 4242}
        if scenario.id == "T5-seed-data-order":
            return {"site": site, "offset": 104729}
        if scenario.id == "T5-lr-schedule":
            return {"site": site, **_T5_LR}
        raise ConfigError(f"no environment attack for {scenario.id}")

    def _run_environment(self, name: str, group: Sequence[Scenario]) -> list[ScenarioResult]:
        run = self.sb.prepare_run(name)
        outcomes = self._attack(run, [(s, self._environment_params(s)) for s in group])
        touched = [t for o in outcomes.values() for t in o.get("touched", [])]
        # Who owns the edited files now (the restore below puts the platform's back).
        owners = _owners([self.sb.site / t for t in touched])
        try:
            steps = _GUARD_STEPS if name == "guard" else _STEPS
            outcome = self._wait(self._job(run, JobSpec(steps, protect=self.defenses)))
        finally:
            # The platform repairs the environment from its record before the next run.
            self.sb.restore(touched)
        observations = _with_owners(ledger_observations(self._entries(run)), owners)
        if not outcome.ok:
            observations.append(_job_failure(outcome))
        effects = {s.id: self._environment_effect(s, outcome) for s in group}
        targets = {
            s.id: Target(files=tuple(outcomes.get(s.id, {}).get("touched", []))) for s in group
        }
        records = self._records(run, group, outcomes, targets)
        return self._results(run, group, records, observations, effects)

    def _environment_effect(self, scenario: Scenario, outcome: JobOutcome) -> Effect:
        if scenario.id == "T2-pth-hook":
            return _hook_effect(self.sb.loot / "recon.jsonl")
        if scenario.id == "T3-sleeping-optimizer":
            return _timing_effect(outcome, self.control)
        return _digest_effect(outcome, self.control)

    # T6 -----------------------------------------------------------------------------

    def _run_t6(self, name: str, group: Sequence[Scenario]) -> list[ScenarioResult]:
        (scenario,) = group
        run = self.sb.prepare_run(name)
        signal_name = "SIGTERM" if scenario.id == "T6-sigterm" else "SIGKILL"
        params = {
            "trigger": str(run.ckpt / "ckpt-000010.pt"),
            "trigger_step": 10,
            "marker": str(run.ckpt),
            "ranks": self.ranks,
            "signal": signal_name,
            "timeout": _JOB_TIMEOUT,
            # Created when the job is over, so an insider still waiting gives up at once.
            "ended": str(run.run_dir / "job.ended"),
        }
        self._notify("attack", f"the insider waits for step 10 to send {signal_name}", run.name)
        insider = self._start_insider(run, [(scenario, params)], keep_kill=True)
        job = self._job(run, JobSpec(_T6_STEPS, _CKPT_EVERY, protect=self.defenses))
        outcome = self._wait(job)
        (run.run_dir / "job.ended").touch()
        outcomes = self._finish_insider(insider)
        details = outcomes.get(scenario.id, {}).get("details", {})
        observations = ledger_observations(self._entries(run))
        effect = _kill_effect(outcome, details)
        target = Target(pid=details.get("pid"), signal=details.get("signal"))
        records = self._records(run, group, outcomes, {scenario.id: target})
        return self._results(run, group, records, observations, {scenario.id: effect})

    # T7 and T8 ------------------------------------------------------------------------

    def _run_t7(self, group: Sequence[Scenario]) -> list[ScenarioResult]:
        sb = self.sb
        run = sb.prepare_run("t7")
        outcome = self._wait(self._job(run, JobSpec(_STEPS, _CKPT_EVERY, protect=self.defenses)))
        signatures = signed_checkpoints(self._entries(run)) if outcome.ok else []
        if len(signatures) < 4:
            return self._unrunnable(
                "t7", group, f"the colleague's run left {len(signatures)} checkpoint(s), not 4"
            )
        paths = [Path(s.path) for s in signatures]
        sigs = [Path(s.sig_path) for s in signatures]
        t7 = [s for s in group if s.technique == "T7"]
        t8 = [s for s in group if s.technique == "T8"]
        params = {
            "T7-modified": {"target": str(paths[1])},
            "T7-rolled-back": {
                "target": str(paths[-1]),
                "target_sig": str(sigs[-1]),
                "older": str(paths[-2]),
                "older_sig": str(sigs[-2]),
            },
            "T7-deleted": {"target": str(paths[-2]), "target_sig": str(sigs[-2])},
        }
        before = {p: _sha256(p) for p in paths}
        outcomes = self._attack(run, [(s, params[s.id]) for s in t7])
        self._notify("check", "the colleague verifies the checkpoints", run.name)
        observations = ledger_observations(self._entries(run))
        observations += verify_checkpoints(sb, run, paths)
        ledger_checks, _ = verify_ledger_issues(sb, run, check_files=True)
        observations += ledger_checks
        targets = {s.id: Target(files=tuple(outcomes.get(s.id, {}).get("touched", []))) for s in t7}
        effects = {
            "T7-modified": _changed_effect(paths[1], before[paths[1]], "now holds other weights"),
            "T7-rolled-back": _rollback_effect(paths[-1], before[paths[-2]]),
            "T7-deleted": Effect(
                not paths[-2].exists(),
                f"{paths[-2].name} and its signature are gone"
                if not paths[-2].exists()
                else f"{paths[-2].name} is still there",
            ),
        }
        records = self._records(run, t7, outcomes, targets)
        results = self._results(run, t7, records, observations, effects)
        if t8:
            results += self._run_t8(run, t8, outcomes, paths)
        return results

    def _run_t8(
        self,
        run: RunPaths,
        t8: Sequence[Scenario],
        t7_outcomes: dict[str, dict[str, Any]],
        paths: Sequence[Path],
    ) -> list[ScenarioResult]:
        sb = self.sb
        modified = (t7_outcomes.get("T7-modified") or {}).get("entry")
        deleted = (t7_outcomes.get("T7-deleted") or {}).get("entry")
        if not modified or not deleted:
            return self._unrunnable(
                "t7", t8, "T8 rewrites the ledger entries of T7's attacks, which did not happen"
            )
        # The ops cron seals the ledger again before the insider starts covering up.
        seal(sb, run)
        insider_file = Path(modified["file"])
        before = _sha256(insider_file)
        params = {
            "T8-edited": {
                "file": str(insider_file),
                "seq": modified["seq"],
                "from_identity": IDENTITIES["insider"],
                "to_identity": IDENTITIES["victim"],
            },
            "T8-dropped": {"file": str(insider_file), "seq": deleted["seq"]},
            "T8-denied": {
                "ledger": str(run.ledger),
                "run": run.run_id,
                "path": str(paths[-2].resolve()),
                "step": 30,
                "identity": IDENTITIES["victim"],
            },
        }
        outcomes = self._attack(run, [(s, params[s.id]) for s in t8])
        self._notify("check", "ledger verify", run.name)
        observations, _ = verify_ledger_issues(sb, run, check_files=False)
        writer = insider_file.stem
        targets = {
            "T8-edited": Target(writer=writer, seq=modified["seq"]),
            "T8-dropped": Target(writer=writer, seq=deleted["seq"]),
            "T8-denied": Target(
                writer=(outcomes.get("T8-denied") or {}).get("details", {}).get("writer")
            ),
        }
        after = _sha256(insider_file)
        forged = (outcomes.get("T8-denied") or {}).get("details", {})
        effects = {
            "T8-edited": Effect(after != before, "the insider's ledger file was rewritten"),
            "T8-dropped": Effect(after != before, "an entry is missing from the insider's chain"),
            "T8-denied": Effect(
                bool(forged.get("file")) and Path(forged.get("file", "")).exists(),
                f"a ledger file claims {forged.get('claimed_identity')} deleted the checkpoint",
            ),
        }
        records = self._records(run, t8, outcomes, targets)
        return self._results(run, t8, records, observations, effects)


# -- effects and helpers ------------------------------------------------------------------


def _inside(path: Path, directory: Path) -> bool:
    """Whether ``path`` is ``directory`` or lies below it (both resolved, neither need exist)."""
    try:
        Path(path).resolve().relative_to(Path(directory).resolve())
    except ValueError:
        return False
    return True


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _owners(paths: Sequence[Path]) -> dict[str, Person]:
    found = {}
    for path in paths:
        owner = file_owner(path)
        if owner is not None:
            found[os.path.normpath(str(path))] = owner
    return found


def _with_owners(observations: list[Observation], owners: dict[str, Person]) -> list[Observation]:
    """Attach to each observation about a file the owner that file had after the attack."""
    out = []
    for obs in observations:
        owner = owners.get(os.path.normpath(obs.path)) if obs.path else None
        out.append(obs if obs.evidence or owner is None else replace(obs, evidence=owner))
    return out


def _one_line(result: ScenarioResult) -> str:
    first = result.first
    if result.status == "detected" and first is not None:
        return f"{result.scenario}: detected by {first.check}"
    return f"{result.scenario}: {result.status}" + (f" ({result.reason})" if result.reason else "")


def _job_failure(outcome: JobOutcome) -> Observation:
    what = "timed out" if outcome.timed_out else f"ended with status {outcome.status}"
    tail = outcome.log_tail.strip().splitlines()[-1:] or [""]
    return Observation("job", None, f"the job {what}: {tail[0][:200]}", outcome.ended, "check")


def _ledger_refusal(entries: Sequence[Any], ckpt: Path) -> Observation | None:
    """``protect()`` refusing ``ckpt`` in a rank: the ``load.refused`` the supervisor signed."""
    names = {str(ckpt), str(ckpt.resolve())}
    for entry in entries:
        message = entry.data.get("message")
        if entry.event != "load.refused" or not isinstance(message, str):
            continue
        if any(name in message for name in names):
            return Observation(
                "protect()",
                "load.refused",
                message[:300],
                entry.time,
                "ledger",
                path=str(ckpt),
                facts={"step": 0, "rank": entry.data.get("rank"), "pid": entry.data.get("pid")},
                evidence=file_owner(ckpt),
            )
    return None


def _refusal(outcome: JobOutcome, log: Path, ckpt: Path) -> Observation | None:
    """``protect()`` refusing the checkpoint in a rank, as the job's output shows it."""
    if outcome.ok:
        return None
    try:
        with log.open("rb") as fh:
            text = fh.read(1 << 20).decode("utf-8", "replace")
    except OSError:
        return None
    for line in text.splitlines():
        # The exception line of the rank's traceback: "...UnsafeModelError: refused <path>..."
        if "UnsafeModelError: " in line and str(ckpt) in line:
            message = line.split("UnsafeModelError: ", 1)[1].strip()
            return Observation(
                "protect()",
                "load.refused",
                message[:300],
                outcome.ended,
                "check",
                path=str(ckpt),
                facts={"step": 0},
                evidence=file_owner(ckpt),
            )
    return None


def _scan_observations(paths: Sequence[Path]) -> list[Observation]:
    from trainwarden.scan import scan_path

    report = scan_path(*paths)
    now = utc_now()
    return [
        Observation("scan", finding.rule_id, finding.message, now, "check", path=file.path)
        for file in report.files
        for finding in file.findings
        if finding.verdict.value != "safe"
    ]


def _digest_effect(outcome: JobOutcome, control: JobOutcome | None) -> Effect:
    if outcome.result is None or control is None or control.result is None:
        return Effect(None, f"no result to compare (job status {outcome.status})")
    mine, theirs = outcome.result, control.result
    if mine.get("digest") != theirs.get("digest"):
        return Effect(
            True,
            f"final weights differ from the control run (loss {_num(mine.get('loss'))} vs "
            f"{_num(theirs.get('loss'))})",
        )
    return Effect(False, "final weights are identical to the control run's")


def _timing_effect(outcome: JobOutcome, control: JobOutcome | None) -> Effect:
    if outcome.result is None:
        return Effect(None, f"no result (job status {outcome.status})")
    steps = outcome.result.get("step_seconds") or []
    planned = planned_sleeps(
        start=int(_T3["start"]), prob=float(_T3["prob"]), seed=int(_T3["seed"]), steps=len(steps)
    )
    # Rank 0 waits for the sleeping rank at its next collective: the guard's per-step
    # exchange in the same step, or (without the guard) the next step's gradient all-reduce.
    waits = [k for k in planned if k + 1 <= len(steps)]
    slow = [k for k in waits if max(steps[k - 1], steps[k]) >= 0.9 * float(_T3["delay"])]
    base = control.result.get("seconds") if control and control.result else None
    return Effect(
        bool(waits) and len(slow) >= 0.8 * len(waits),
        f"rank 0 waited >= {_T3['delay']} s at {len(slow)} of the {len(waits)} steps after a "
        f"sleep; training took {_num(outcome.result.get('seconds'))} s "
        f"(control {_num(base)} s)",
    )


def _hook_effect(log: Path) -> Effect:
    try:
        lines = [json.loads(x) for x in log.read_text(encoding="utf-8").splitlines() if x]
    except (OSError, ValueError):
        lines = []
    ranks = sorted({str(x.get("rank")) for x in lines if x.get("rank") is not None})
    pids = {x.get("pid") for x in lines}
    return Effect(
        bool(ranks),
        f"the hook ran in {len(pids)} process(es) of the job: the launcher and ranks "
        f"{', '.join(ranks)}"
        if ranks
        else "the hook never ran in a rank",
    )


def _kill_effect(outcome: JobOutcome, details: dict[str, Any]) -> Effect:
    pid = details.get("pid")
    signal_name = details.get("signal")
    died = outcome.status not in (0, None) and not outcome.timed_out
    said = next(
        (line.strip() for line in outcome.log_tail.splitlines() if f"PID {pid}" in line), None
    )
    return Effect(
        died and pid is not None,
        f"{signal_name} to pid {pid}: the job ended with status {outcome.status}"
        + (f" ({said})" if said else ""),
    )


def _changed_effect(path: Path, before: str | None, what: str) -> Effect:
    after = _sha256(path)
    return Effect(after is not None and after != before, f"{path.name} {what}")


def _rollback_effect(path: Path, older: str | None) -> Effect:
    after = _sha256(path)
    return Effect(
        after is not None and after == older,
        f"{path.name} now holds the previous checkpoint, with that checkpoint's valid signature",
    )


def _num(value: object) -> str:
    return f"{value:.6g}" if isinstance(value, (int, float)) else "?"
