"""The test simulator itself, checked against exact results before anything is checked against it:
Erlang C for M/M/c (P(W>0), mean wait, wait quantiles) and Pollaczek-Khinchine for M/G/1."""

import math

import numpy as np
import pytest
from fcfs_sim import arrival_times, fcfs_waits, simulate, summarise

from inferencepool.core.queueing import erlang_c


def _mmc_quantile(c: int, rho: float, p: float) -> float:
    """Exact M/M/c: P(W > t) = C exp(-(c - a) t) with S = 1."""
    waits = erlang_c(c, rho * c)
    return 0.0 if waits <= 1 - p else math.log(waits / (1 - p)) / (c * (1 - rho))


def _within(estimate: float, exact: float, half_width: float, slack: float = 1.5) -> bool:
    """Inside slack x the 95% CI half-width (a floor of 1e-3 relative for estimates with no spread)."""
    return abs(estimate - exact) <= slack * half_width + 1e-3 * abs(exact)


@pytest.mark.parametrize("c,rho,seed", [(1, 0.7, 1), (2, 0.85, 2), (8, 0.5, 3), (16, 0.7, 4), (64, 0.9, 5)])
def test_mmc_matches_erlang_c(c, rho, seed):
    sim = simulate(c, rho, customers=600_000, seed=seed)
    a = rho * c
    assert _within(sim.p_wait, erlang_c(c, a), sim.p_wait_ci), (sim.p_wait, erlang_c(c, a), sim.p_wait_ci)
    exact_mean = erlang_c(c, a) / (c - a)
    assert _within(sim.mean_wait, exact_mean, sim.mean_wait_ci), (sim.mean_wait, exact_mean, sim.mean_wait_ci)
    for p in (0.9, 0.99):
        exact = _mmc_quantile(c, rho, p)
        if exact > 0:
            assert _within(sim.quantile(p), exact, sim.quantile_ci(p)), (p, sim.quantile(p), exact, sim.quantile_ci(p))


@pytest.mark.parametrize("cs,dist", [(0.0, "gamma"), (2.0, "gamma"), (1.6, "lognormal")])
def test_mg1_mean_is_pollaczek_khinchine(cs, dist):
    rho = 0.7
    sim = simulate(1, rho, customers=800_000, cs=cs, service_dist=dist, seed=11)
    exact = rho * (1 + cs * cs) / (2 * (1 - rho))
    assert sim.p_wait == pytest.approx(rho, abs=2 * sim.p_wait_ci)  # M/G/1: P(W > 0) = rho exactly
    assert _within(sim.mean_wait, exact, sim.mean_wait_ci, slack=2.0), (sim.mean_wait, exact, sim.mean_wait_ci)


def test_batch_arrivals_have_the_asked_rate_and_dispersion():
    rng = np.random.default_rng(3)
    t = arrival_times(rng, 2.0, 400_000, batch_mean=2.5)  # geometric batches: index of dispersion 2m - 1 = 4
    assert len(t) == 400_000 and np.all(np.diff(t) >= 0)
    assert 400_000 / t[-1] == pytest.approx(2.0, rel=0.01)
    counts = np.bincount((t // 10.0).astype(int))[:-1]  # counts in 10 s windows
    assert counts.var() / counts.mean() == pytest.approx(4.0, rel=0.08)


def test_fcfs_recursion_by_hand():
    # two servers: customers at 0, 0, 0, 1 with services 3, 1, 2, 5 -> third waits 1 (server 2 frees at 1),
    # fourth arrives at 1, servers free at 3 and 3 -> waits 2
    waits = fcfs_waits(np.array([0.0, 0.0, 0.0, 1.0]), np.array([3.0, 1.0, 2.0, 5.0]), 2)
    assert waits.tolist() == [0.0, 0.0, 1.0, 2.0]
    summary = summarise(np.array([0.0] * 50 + [1.0] * 50), ps=(0.5,), batches=10, warmup=0.0)
    assert summary.p_wait == 0.5 and summary.mean_wait == 0.5
