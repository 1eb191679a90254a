"""The queueing model against the independent FCFS simulator (tests/fcfs_sim.py), where Allen-Cunneen
is known to be off: batch arrivals, bursty renewal arrivals on a large fleet, heavy-tailed service on a
small one.  Each band is the approximation's budget plus twice the simulation's own 95% CI half-width;
each case also shows Allen-Cunneen off (P(W>0) less than half the simulated, or a p99 low by more than
the CI), so the correction is what passes.  Wider tables:
benchmarks/queueing_accuracy.py."""

import math

import pytest
from fcfs_sim import simulate

from inferencepool.core.queueing import Queue, erlang_c


def _relative_band(model: float, sim: float, ci: float, low: float, high: float) -> bool:
    """sim (1 + low) - 2 ci <= model <= sim (1 + high) + 2 ci."""
    return sim * (1 + low) - 2 * ci <= model <= sim * (1 + high) + 2 * ci


def test_batch_arrivals_raise_the_probability_of_waiting():
    # issue 11: rho 0.7, c 16, counts with index of dispersion 4 (Poisson batches, geometric sizes of mean 2.5)
    sim = simulate(16, 0.7, batch_mean=2.5, customers=600_000, seed=34)
    measured = Queue(11.2, 1.0, arrival_cv=2.0)  # what the operator sees: sqrt of the count dispersion
    described = Queue(11.2, 1.0, batch_size=2.5, batch_cv=math.sqrt(0.6))  # geometric: cv^2 = (m - 1) / m
    assert described.dispersion == pytest.approx(4.0) and described.prob_wait(16) == pytest.approx(measured.prob_wait(16))
    old = Queue(11.2, 1.0, arrival_cv=2.0, approximation="allen-cunneen")
    assert _relative_band(measured.prob_wait(16), sim.p_wait, sim.p_wait_ci, -0.2, 0.2), (measured.prob_wait(16), sim.p_wait)
    assert old.prob_wait(16) < 0.5 * sim.p_wait  # Erlang C: 0.13 against ~0.36
    p99 = sim.quantile(0.99)
    assert _relative_band(measured.wait_quantile(16, 0.99), p99, sim.quantile_ci(0.99), -0.15, 0.2)
    assert old.wait_quantile(16, 0.99) < p99 - sim.quantile_ci(0.99)  # low by more than the CI


def test_bursty_renewal_arrivals_on_a_large_fleet():
    sim = simulate(64, 0.85, ca=2.0, customers=800_000, seed=24)
    new = Queue(64 * 0.85, 1.0, arrival_cv=2.0)
    old = Queue(64 * 0.85, 1.0, arrival_cv=2.0, approximation="allen-cunneen")
    assert _relative_band(new.prob_wait(64), sim.p_wait, sim.p_wait_ci, -0.1, 0.1), (new.prob_wait(64), sim.p_wait)
    assert old.prob_wait(64) < 0.5 * sim.p_wait
    p99, ci = sim.quantile(0.99), sim.quantile_ci(0.99)
    assert _relative_band(new.wait_quantile(64, 0.99), p99, ci, -0.1, 0.15), (new.wait_quantile(64, 0.99), p99, ci)
    assert old.wait_quantile(64, 0.99) < p99 - ci


def test_heavy_tailed_service_on_one_server_is_not_reported_too_low():
    # lognormal service with CV 2.5: M/G/1's wait tail is far heavier than an exponential with the same mean
    sim = simulate(1, 0.5, cs=2.5, service_dist="lognormal", customers=1_000_000, seed=32)
    new = Queue(0.5, 1.0, service_cv=2.5)
    old = Queue(0.5, 1.0, service_cv=2.5, approximation="allen-cunneen")
    p99, ci = sim.quantile(0.99), sim.quantile_ci(0.99)
    assert _relative_band(new.wait_quantile(1, 0.99), p99, ci, -0.1, 0.3), (new.wait_quantile(1, 0.99), p99, ci)
    assert old.wait_quantile(1, 0.99) < 0.9 * p99 - 2 * ci  # about half the simulated p99
    assert new.mean_wait(1) == old.mean_wait(1) == pytest.approx(0.5 * (1 + 2.5**2) / (2 * 0.5))  # P-K, exact


def test_both_models_are_exactly_mmc_with_poisson_arrivals_and_exponential_service():
    for c in (3, 12, 40):
        a = 0.8 * c
        new, old = Queue(a, 1.0), Queue(a, 1.0, approximation="allen-cunneen")
        assert new.prob_wait(c) == old.prob_wait(c) == erlang_c(c, a)
        assert new.wait_quantile(c, 0.99) == old.wait_quantile(c, 0.99) == pytest.approx(math.log(erlang_c(c, a) / 0.01) / (c - a))
