"""One regression test per attack technique and published scanner bypass (see tests/attacks.py).

For every sample: the natural loader really runs the payload in a fresh interpreter (so the
sample is real), and ``trainwarden scan`` (API and CLI) flags it without running it. Each
attack's advisory (URL, CVE or GHSA) is its ``advisory`` field in the catalogue.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from attacks import ATTACKS, Attack, attacks_by_id, missing_requirements, run_natural_loads
from canary import Canary
from trainwarden.findings import Report, Verdict


@dataclass(frozen=True)
class Built:
    """A sample on disk and the canary its payload would create (or why it failed to build)."""

    path: Path | None
    canary: Canary
    error: str | None = None


def _build_all(root: Path) -> dict[str, Built]:
    out: dict[str, Built] = {}
    for attack in ATTACKS:
        canary = Canary(root / attack.id / "canary-payload-ran")
        try:
            path = attack.build(root / attack.id / "sample", canary)
        except Exception as exc:  # a builder bug must fail that attack's tests, not the session
            out[attack.id] = Built(None, canary, f"build failed: {exc!r}")
        else:
            out[attack.id] = Built(path, canary)
    return out


@pytest.fixture(scope="session")
def scan_samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    """Every sample, built once, for the scanner (its canary must never appear)."""
    return _build_all(tmp_path_factory.mktemp("attacks-scan"))


@pytest.fixture(scope="session")
def natural_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Every sample built again and loaded naturally, all in one fresh interpreter."""
    root = tmp_path_factory.mktemp("attacks-natural")
    built = _build_all(root)
    jobs = [
        (attack_id, b.path, b.canary.path)
        for attack_id, b in built.items()
        if b.path is not None and not missing_requirements(attacks_by_id()[attack_id])
    ]
    # Remote code, inductor and HF caches go to the temporary tree, never to the home dir.
    env = {
        "HF_HOME": str(root / "_hf"),
        "HF_MODULES_CACHE": str(root / "_hf_modules"),
        "TORCHINDUCTOR_CACHE_DIR": str(root / "_inductor"),
        "PIP_NO_INPUT": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    results = run_natural_loads(jobs, env=env)
    results.update({i: f"not-run: {b.error}" for i, b in built.items() if b.error})
    return results


def _param(attack: Attack) -> object:
    marks = [pytest.mark.torch] if "torch" in attack.requires else []
    return pytest.param(attack, id=attack.id, marks=marks)


PARAMS = [_param(a) for a in ATTACKS]


def test_catalogue_is_large_and_unique() -> None:
    ids = [a.id for a in ATTACKS]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 60


@pytest.mark.parametrize("attack", PARAMS)
def test_advisory_is_a_reference(attack: Attack) -> None:
    # Each attack cites its advisory (URL, CVE or GHSA id) or says it is a generic technique.
    ref = attack.advisory
    assert ref == "technique" or ref.startswith("https://") or re.fullmatch(r"CVE-\d{4}-\d+", ref)


@pytest.mark.parametrize("attack", PARAMS)
def test_natural_loader_runs_payload(attack: Attack, natural_results: dict[str, str]) -> None:
    missing = missing_requirements(attack)
    if missing:
        # Documented gap (e.g. keras is not installed here): the scan test still runs.
        pytest.skip(f"natural loader needs {', '.join(missing)}, not installed here")
    outcome = natural_results[attack.id]
    if attack.executes:
        assert outcome == "ran", f"{attack.id}: sample is not real: {outcome}"
    else:
        # Documented as patched in the installed library: its natural load must not run it.
        assert outcome != "ran", f"{attack.id}: expected to be patched, but the payload ran"


# Top-level modules that only a payload would import (gadgets and the planted modules).
PAYLOAD_MODULES = frozenset(
    {
        "pty",
        "webbrowser",
        "_xxsubinterpreters",
        "imaplib",
        "idlelib",
        "lib2to3",
        "venv",
        "ensurepip",
        "pip",
        "timeit",
        "cProfile",
        "profile",
        "trace",
        "pdb",
        "bdb",
        "runpy",
        "ctypes",
        "_osx_support",
        "distutils",
        "torch",
        "numpy",
        "joblib",
        "sklearn",
        "transformers",
        "keras",
        "jinja2",
        "tw_head",
    }
)


def _verdict_ok(attack: Attack, verdict: Verdict) -> bool:
    if attack.expected is Verdict.UNSAFE:
        return verdict is Verdict.UNSAFE
    return verdict in (Verdict.UNKNOWN, Verdict.UNSAFE)


def _describe(report: Report) -> str:
    lines = []
    for f in report.files:
        lines.append(f"{f.path} [{f.format}] {f.verdict.value}")
        lines.extend(
            f"    {x.rule_id} {x.verdict.value} {x.evidence or ''} {x.message}" for x in f.findings
        )
    return "\n".join(lines)


@pytest.mark.parametrize("attack", PARAMS)
def test_scan_flags_attack(attack: Attack, scan_samples: dict[str, Built]) -> None:
    from trainwarden.scan import scan_path

    sample = scan_samples[attack.id]
    assert sample.path is not None, sample.error
    before = set(sys.modules)
    report = scan_path(sample.path)
    sample.canary.assert_absent()
    # The scanner never imports what a sample names (planted modules, payload gadgets).
    imported = {
        m
        for m in set(sys.modules) - before
        if m.split(".")[0] in PAYLOAD_MODULES or m.startswith("tw_")
    }
    assert not imported, f"scanning imported {sorted(imported)}"
    assert report.files, "the scanner reported no file"
    assert _verdict_ok(attack, report.verdict), (
        f"{attack.id} ({attack.technique}; {attack.advisory}) scanned as "
        f"{report.verdict.value}, expected {attack.expected.value}:\n{_describe(report)}"
    )


def test_cli_flags_every_attack(scan_samples: dict[str, Built], tmp_path: Path) -> None:
    from trainwarden.cli import main

    samples = {i: b for i, b in scan_samples.items() if b.path is not None}
    out = tmp_path / "report.json"
    paths = [str(b.path) for b in samples.values()]
    code = main(["scan", "--format", "json", "--output", str(out), *paths])
    assert code == 1
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["schema_version"] == 1
    worst: dict[str, str] = {}
    rank = {"safe": 0, "unknown": 1, "unsafe": 2, "error": 3}
    for entry in doc["files"]:
        for attack_id, b in samples.items():
            assert b.path is not None
            mine = entry["path"] == str(b.path) or entry["path"].startswith(f"{b.path}/")
            if mine and rank[entry["verdict"]] >= rank[worst.get(attack_id, "safe")]:
                worst[attack_id] = entry["verdict"]
    catalogue = attacks_by_id()
    missed = sorted(
        f"{i}: {worst.get(i, 'absent')}"
        for i in samples
        if not _verdict_ok(catalogue[i], Verdict(worst.get(i, "safe")))
    )
    assert not missed, "CLI missed: " + ", ".join(missed)
    for b in samples.values():
        b.canary.assert_absent()
