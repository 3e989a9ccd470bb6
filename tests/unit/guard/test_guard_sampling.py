"""Secret sampling: the arithmetic of k, and detection rates measured against it.

With a fixed secret and many trials, an update flipped on a random 1 % of coordinates is caught
on every trial at the default k; at a small k the measured miss rate matches (1 - f) ** k.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainwarden.errors import ConfigError
from trainwarden.guard import GuardConfig, required_k
from trainwarden.guard._sampling import Sampler, commitment

SECRET = b"a fixed secret for sampling tests"


def test_required_k_for_one_percent_at_four_nines() -> None:
    assert required_k(0.01, 0.9999) == 917
    assert GuardConfig().k >= 917
    assert GuardConfig().miss_probability < 1e-4
    with pytest.raises(ConfigError):
        required_k(0.0, 0.9)


def test_samples_are_deterministic_per_secret_and_step() -> None:
    sizes = [1000, 37, 250_000, 5]
    a = Sampler(SECRET, k=1024).coordinates(3, sizes)
    b = Sampler(SECRET, k=1024).coordinates(3, sizes)
    c = Sampler(SECRET, k=1024).coordinates(4, sizes)
    d = Sampler(b"another secret of enough length", k=1024).coordinates(3, sizes)
    flat = [(i, tuple(p.tolist())) for i, p in a.per_param]
    assert flat == [(i, tuple(p.tolist())) for i, p in b.per_param]
    assert flat != [(i, tuple(p.tolist())) for i, p in c.per_param]
    assert flat != [(i, tuple(p.tolist())) for i, p in d.per_param]
    for index, positions in a.per_param:
        assert positions.min() >= 0
        assert positions.max() < sizes[index]
        assert np.all(np.diff(positions) > 0)  # sorted, no duplicates


def test_samples_cover_the_index_space_uniformly() -> None:
    sizes = [100_000, 300_000, 600_000]
    sampler = Sampler(SECRET, k=2048)
    counts = np.zeros(3)
    for step in range(200):
        for index, positions in sampler.coordinates(step, sizes).per_param:
            counts[index] += positions.size
    shares = counts / counts.sum()
    assert np.allclose(shares, [0.1, 0.3, 0.6], atol=0.01)


def _miss_rate(k: int, fraction: float, trials: int, size: int = 200_000) -> float:
    """Trials in which no sampled coordinate falls on a tampered one."""
    sampler = Sampler(SECRET, k=k)
    rng = np.random.default_rng(7)
    misses = 0
    for trial in range(trials):
        tampered = np.zeros(size, dtype=bool)
        tampered[rng.choice(size, int(size * fraction), replace=False)] = True
        sample = sampler.coordinates(trial, [size])
        hit = any(tampered[positions].any() for _, positions in sample.per_param)
        misses += not hit
    return misses / trials


def test_default_k_catches_a_one_percent_flip_every_time() -> None:
    assert _miss_rate(GuardConfig().k, 0.01, 400) == 0.0


def test_measured_miss_rate_matches_the_formula() -> None:
    k, f, trials = 60, 0.01, 2000
    expected = (1 - f) ** k  # 0.547
    measured = _miss_rate(k, f, trials)
    sd = math.sqrt(expected * (1 - expected) / trials)
    assert abs(measured - expected) < 4 * sd


def test_verify_fraction_picks_steps_by_secret() -> None:
    sampler = Sampler(SECRET, k=10, verify_fraction=0.25)
    chosen = [s for s in range(4000) if sampler.verified(s)]
    assert 0.22 < len(chosen) / 4000 < 0.28
    assert chosen == [
        s for s in range(4000) if Sampler(SECRET, k=10, verify_fraction=0.25).verified(s)
    ]


def test_commitment_does_not_reveal_the_secret() -> None:
    value = commitment(SECRET)
    assert value == commitment(SECRET)
    assert value != commitment(SECRET + b"!")
    assert SECRET.hex() not in value
    assert "secret" not in repr(Sampler(SECRET, k=1))


def test_a_block_of_samples_is_each_steps_own_sample() -> None:
    sizes = [1000, 37, 250_000, 5, 1]
    sampler = Sampler(SECRET, k=300)
    block = sampler.block(21, sizes)
    assert [s.step for s in block] == list(range(16, 32))
    fresh = Sampler(SECRET, k=300)
    for sample in block:
        alone = fresh.coordinates(sample.step, sizes)
        np.testing.assert_array_equal(sample.owners, alone.owners)
        np.testing.assert_array_equal(sample.local, alone.local)
        # Runs of one parameter: where the owner changes, to the end.
        change = np.flatnonzero(np.diff(sample.owners, prepend=-1))
        np.testing.assert_array_equal(sample.starts, change)
        np.testing.assert_array_equal(sample.ends, np.append(change[1:], sample.count))
    # Negative steps (tests only) fall in their own blocks too.
    assert [s.step for s in sampler.block(-3, sizes)] == list(range(-16, 0))
