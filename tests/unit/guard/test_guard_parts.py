"""Small parts: findings and their conversions, configuration, telemetry files, anomalies."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from trainwarden.errors import ConfigError
from trainwarden.findings import Severity, Verdict
from trainwarden.guard import RULES, GuardConfig, GuardFinding, Technique
from trainwarden.guard._anomaly import AnomalyCheck
from trainwarden.guard._telemetry import release, writer_for


def test_every_rule_has_a_technique_and_converts() -> None:
    for rule, (technique, check) in RULES.items():
        finding = GuardFinding(rule, Severity.HIGH, "m", rank=3, step=7, evidence="e")
        assert finding.technique is technique
        assert finding.check is check
        shared = finding.to_finding()
        assert shared.rule_id == rule
        assert shared.location.extra["rank"] == 3
        assert shared.location.extra["step"] == 7
        data = finding.event_data()
        assert data["technique"] == technique.value
        assert data["established"] is True
        assert json.dumps(data)
    with pytest.raises(ValueError):
        GuardFinding("guard.nonsense", Severity.LOW, "m", rank=0, step=0)


def test_what_halts() -> None:
    def make(rule: str, severity: Severity, established: bool = True) -> GuardFinding:
        return GuardFinding(rule, severity, "m", rank=0, step=1, established=established)

    assert make("guard.update", Severity.CRITICAL).halts
    assert make("guard.timing", Severity.HIGH, established=False).halts
    assert not make("guard.code", Severity.MEDIUM, established=False).halts
    assert not make("guard.anomaly", Severity.CRITICAL).halts
    assert not make("guard.signal", Severity.CRITICAL).halts
    assert make("guard.update", Severity.CRITICAL).to_finding().verdict is Verdict.UNSAFE
    assert make("guard.timing", Severity.HIGH, False).to_finding().verdict is Verdict.UNKNOWN
    assert Technique("T3") is Technique.T3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"k": 0},
        {"verify_fraction": 0.0},
        {"checks": frozenset({"update", "astrology"})},
        {"telemetry_flush": 10.0},
        {"watchdog_interval": 0},
        {"timing_min_excess": -1.0},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        GuardConfig(**kwargs)  # type: ignore[arg-type]


def test_config_variants() -> None:
    config = GuardConfig()
    assert "timing" not in config.without("timing").checks
    assert config.only("update").checks == frozenset({"update"})


def test_telemetry_digest_covers_exactly_what_was_written(tmp_path: Path) -> None:
    (tmp_path / "rank-2.jsonl").write_text('{"earlier": true}\n')
    writer = writer_for(tmp_path, 2)
    for step in range(1, 4):
        writer.write({"step": step, "rank": 2, "loss": 1.5})
    same = writer_for(tmp_path, 2)  # a second guard of the process shares the file
    assert same is writer
    assert release(same) is None
    data = release(writer)
    assert data is not None
    content = (tmp_path / "rank-2.jsonl").read_bytes()
    assert data["lines"] == 3
    assert data["offset"] == len('{"earlier": true}\n')
    mine = content[data["offset"] : data["offset"] + data["bytes"]]
    assert hashlib.sha256(mine).hexdigest() == data["sha256"]
    assert [json.loads(x)["step"] for x in mine.decode().splitlines()] == [1, 2, 3]


def test_telemetry_refuses_a_planted_symlink(tmp_path: Path) -> None:
    from trainwarden.errors import InputError

    target = tmp_path / "elsewhere"
    target.write_text("")
    (tmp_path / "rank-0.jsonl").symlink_to(target)
    with pytest.raises(InputError):
        writer_for(tmp_path, 0)


def test_anomalies_are_context_not_proof() -> None:
    check = AnomalyCheck(rank=0, window=50, z=12.0)
    values = [2.0 + 0.01 * (i % 5) for i in range(30)]
    assert all(check.observe(i, "loss", v) == [] for i, v in enumerate(values))
    spike = check.observe(31, "loss", 50.0)
    assert spike
    assert spike[0].rule_id == "guard.anomaly"
    assert not spike[0].halts
    assert not spike[0].established
    nan = check.observe(32, "grad_norm", float("nan"))
    assert nan
    assert "nan" in nan[0].message


def _audited() -> tuple[Any, Any, Any]:
    import torch

    from trainwarden.guard._hooks import HookAudit

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    # A parameter whose hook dict exists but is empty (a hook was added and removed before
    # attach): later hooks go into that very dict, in place.
    model[0].weight.register_hook(lambda g: g).remove()
    audit = HookAudit(optimizer, model, rank=0)
    audit.baseline()
    return model, optimizer, audit


def _tamperings() -> dict[str, Any]:
    import torch

    def scale(*args: Any) -> None:
        return None

    return {
        "parameter hook into an existing empty dict": lambda m, o: m[0].weight.register_hook(
            lambda g: g * 2
        ),
        "parameter hook, first one": lambda m, o: m[2].bias.register_hook(lambda g: g * 2),
        "post-accumulate hook": lambda m, o: m[2].weight.register_post_accumulate_grad_hook(scale),
        "module forward hook": lambda m, o: m[1].register_forward_hook(scale),
        "module hook written into its dict": lambda m, o: m[0]._forward_pre_hooks.__setitem__(
            10_000, scale
        ),
        "instance forward": lambda m, o: setattr(m[2], "forward", lambda x: x),
        "optimizer post-hook": lambda m, o: o.register_step_post_hook(scale),
        "optimizer hook container replaced": lambda m, o: setattr(
            o, "_optimizer_step_pre_hooks", {1: scale}
        ),
        "global forward hook": lambda m, o: torch.nn.modules.module.register_module_forward_hook(
            scale
        ),
    }


@pytest.mark.torch
@pytest.mark.parametrize("what", sorted(_tamperings()))
def test_hook_audit_bulk_check_sees_every_kind_of_added_hook(what: str) -> None:
    model, optimizer, audit = _audited()
    assert audit._fast is not None  # the bulk comparison is in use
    assert audit.check(1) == []
    handle = _tamperings()[what](model, optimizer)
    try:
        found = audit.check(2)
        assert [f.rule_id for f in found] == ["guard.hooks"], what
        assert audit.check(3) == []  # reported once, then the new state is the baseline
        assert audit._fast is not None
    finally:
        if hasattr(handle, "remove"):
            handle.remove()


# -- timing: what a phase's own work is ----------------------------------------------------


@pytest.mark.parametrize(
    ("wall", "end", "workers", "own"),
    [
        # Uncontended: the wall time less collections and the guard's slices.
        (0.010, (0.002, 0.0), True, 0.008),
        # Contended, measured with two intra-op threads: 244 ms of wall, 123 ms queued,
        # 121 ms spinning for queued workers, 2 ms of work.
        (0.244, (0.123, 0.123), True, 0.0),
        # Spinning, then blocked on a queued worker: at most as much again as the queueing.
        (0.300, (0.120, 0.120), True, 0.060),
        # Without intra-op workers nothing spins: busy work under contention stays whole (a
        # loop of gc.collect() in the step, half of it queued on a loaded machine).
        (1.200, (0.600, 0.600), False, 0.600),
        # A 0.4 s sleep under contention stays whole either way.
        (0.600, (0.100, 0.100), True, 0.400),
        (0.600, (0.100, 0.100), False, 0.500),
        # A collection (no queueing) is subtracted once, not twice.
        (0.300, (0.250, 0.0), True, 0.050),
    ],
)
def test_a_phase_own_work_excludes_contention_but_never_a_sleep(
    wall: float, end: tuple[float, float], workers: bool, own: float
) -> None:
    from trainwarden.guard._timing import _own

    assert _own(wall, (0.0, 0.0), end, workers=workers) == pytest.approx(own, abs=1e-9)


def test_run_queue_delay_is_read_for_the_training_thread_from_any_thread() -> None:
    # On CUDA the last-gradient hook runs on an autograd thread: the delays it marks must be
    # the training thread's, or the backward's own work mixes two threads' counters. The
    # same goes for its time on a CPU.
    import threading

    from trainwarden.guard._timing import _schedstat

    main = threading.get_native_id()
    seen: list[tuple[float, float]] = []
    worker = threading.Thread(target=lambda: seen.append(_schedstat(main)))
    before = _schedstat()
    if before[1] == 0.0:
        pytest.skip("no run-queue delay recorded for this thread (or no schedstat)")
    worker.start()
    worker.join()
    after = _schedstat()
    assert before[1] <= seen[0][1] <= after[1]
    assert 0.0 < before[0] <= seen[0][0] <= after[0]


@pytest.mark.torch
def test_a_guard_without_its_extra_is_refused_at_attach(monkeypatch: pytest.MonkeyPatch) -> None:
    # The full digest hashes with blake3 every full_digest_every steps: without the package
    # the job would fail a hundred steps in, inside the optimizer step. It fails at attach.
    import importlib.util

    import torch

    from trainwarden.guard import Guard

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "blake3" else real(name, *a)
    )
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match=r"blake3.*trainwarden\[torch\]"):
        Guard(model, optimizer)
    assert not optimizer._optimizer_step_pre_hooks  # nothing attached
