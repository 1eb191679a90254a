"""simulate/budget.py: the static split worked by hand, and the shared allocator on synthetic Poisson pools."""

from __future__ import annotations

import numpy as np
import pytest

from inferencepool.core.policy import PoolSpec
from inferencepool.simulate import budget as sb
from inferencepool.simulate.baselines import size

SPEC = PoolSpec(slo_target_seconds=1.0, slo_percentile=0.99, min_replicas=1, max_replicas=32, slots_per_replica=2,
                prediction=False, scale_down_window_seconds=60.0, scale_down_max_step=4)


def poisson(rate_of, seconds, seed):
    """Arrivals of a Poisson process whose rate is rate_of(t), by thinning; service 1 s exponential."""
    rng = np.random.default_rng(seed)
    top = max(rate_of(t) for t in range(int(seconds)))
    t = np.cumsum(rng.exponential(1 / top, int(top * seconds * 1.2)))
    t = t[t < seconds]
    t = t[rng.random(len(t)) < np.array([rate_of(x) for x in t]) / top]
    return t, rng.exponential(1.0, len(t))


def pool(name, rate_of, priority=0, seed=0, seconds=1800):
    arrivals, service = poisson(rate_of, seconds, seed)
    return sb.SharedPool(name, arrivals, service, SPEC, priority=priority)


def test_static_split_is_proportional_to_the_peak_needs_by_largest_remainder():
    a, b = pool("a", lambda t: 6.0, seed=1), pool("b", lambda t: 2.0, seed=2)
    needs = sb.static_split([a, b], 10**6)  # no shortage: each pool's own peak need
    assert needs["a"] > needs["b"] >= 1
    gpus = needs["a"] + needs["b"] - 2
    split = sb.static_split([a, b], gpus)
    assert sum(split.values()) == gpus
    exact = {n: needs[n] * gpus / (needs["a"] + needs["b"]) for n in needs}
    assert all(abs(split[n] - exact[n]) < 1 for n in needs)


def test_the_priority_pool_is_protected_when_the_peaks_do_not_coincide():
    # a peaks in the first half hour, b in the second; each alone needs ~ size(8/s) at its peak
    a = pool("a", lambda t: 8.0 if t < 900 else 1.0, priority=1, seed=3)
    b = pool("b", lambda t: 1.0 if t < 900 else 8.0, seed=4)
    peak = size(SPEC, 8.0, 1.0)
    gpus = peak + 2
    static, shared = sb.run([a, b], gpus, "static"), sb.run([a, b], gpus, "shared")
    assert shared.peak_gpus <= gpus and static.peak_gpus <= gpus
    for name in ("a", "b"):  # each gets its peak when it needs it: beats a fixed half of the budget
        assert shared.pools[name].attainment > static.pools[name].attainment
    assert shared.pools["a"].attainment >= 0.97
    assert sb.run([a, b], gpus, "shared") == shared  # deterministic


def test_strict_priority_starves_the_lower_pool_first_when_both_peak_together():
    a = pool("a", lambda t: 8.0, priority=1, seed=5, seconds=900)
    b = pool("b", lambda t: 8.0, seed=6, seconds=900)
    gpus = size(SPEC, 8.0, 1.0) + 1
    shared = sb.run([a, b], gpus, "shared").pools
    assert shared["a"].attainment >= 0.97 and shared["b"].attainment < 0.5
    # a is short only when its window reads above the peak and b's floor leaves it one replica less
    assert shared["b"].limited_share > 0.9 and shared["a"].limited_share < 0.2


def test_bad_mode_is_refused():
    with pytest.raises(ValueError, match="mode must be shared or static"):
        sb.run([pool("a", lambda t: 1.0, seconds=60)], 2, "greedy")
