"""The fitted wait correction (policy.fit_correction / correction_factor): it learns how much heavier the
real tail is than the model's, stays in [1, 3] whatever it is fed, survives a restart through the History
in status, and on a mis-modelled simulated fleet it moves the fleet towards the SLO."""

import math
from dataclasses import replace

import numpy as np
import pytest

from inferencepool.core.policy import (MAX_WAIT_CORRECTION, History, Observations, PoolSpec, correction_factor,
                                       decide)
from inferencepool.core.queueing import Queue

SPEC = PoolSpec(slo_target_seconds=5.0, slo_percentile=0.99, prediction=False, max_replicas=60, min_replicas=1)
RATE, SERVICE, REPLICAS, WINDOW = 2.0, 10.0, 28, 120.0


def _run(ratio: float, ticks: int = 2000, seed: int = 0, spec: PoolSpec = SPEC) -> tuple[History, list[float]]:
    """A pool whose real P(wait > target) is `ratio` x the model's at its Ready slots; each 15 s read sees a
    2 m window's requests, a binomial draw of them over the target."""
    rng = np.random.default_rng(seed)
    model = Queue(RATE, SERVICE).prob_wait_exceeds(REPLICAS, SPEC.slo_target_seconds)
    history, factors = History(), []
    for k in range(ticks):
        requests = rng.poisson(RATE * WINDOW)
        over = rng.binomial(requests, min(ratio * model, 1.0))
        obs = Observations(time=15.0 * k, current_replicas=REPLICAS, ready_replicas=REPLICAS, arrival_rate=RATE,
                           service_time=SERVICE, wait_exceed_share=over / requests, wait_exceed_requests=float(requests),
                           wait_window_seconds=WINDOW)
        decision = decide(spec, obs, history)
        history = decision.history
        factors.append(decision.wait_correction)
    return history, factors


def test_the_factor_converges_to_the_real_tails_ratio():
    history, factors = _run(2.0)
    assert factors[0] == 1.0  # nothing seen yet
    assert np.mean(factors[-400:]) == pytest.approx(2.0, rel=0.12)  # the last 100 minutes
    assert max(factors[-400:]) - min(factors[-400:]) < 0.5  # settled, not wandering
    assert correction_factor(history) == factors[-1]


def test_the_factor_never_goes_below_the_model_nor_above_its_cap():
    assert set(_run(0.5, ticks=600)[1]) == {1.0}  # a model heavier than reality is kept: the safe side
    assert _run(10.0, ticks=600)[1][-1] == MAX_WAIT_CORRECTION


def test_the_factor_raises_the_fleet_and_is_shown_in_the_reason():
    history, _ = _run(2.0, ticks=800)
    obs = Observations(time=1e5, current_replicas=REPLICAS, ready_replicas=REPLICAS, arrival_rate=RATE, service_time=SERVICE)
    plain, fitted = decide(SPEC, obs), decide(SPEC, obs, history)
    assert fitted.wait_correction > 1.5 and fitted.required_replicas > plain.required_replicas
    assert f"model tail x{fitted.wait_correction:.2f}" in fitted.reason
    n = fitted.replicas
    assert fitted.p_wait_exceeds[n] == pytest.approx(min(1.0, fitted.wait_correction * Queue(RATE, SERVICE).prob_wait_exceeds(n, 5.0)))
    off = decide(replace(SPEC, wait_correction=False), obs, history)
    assert off.wait_correction == 1.0 and off.required_replicas == plain.required_replicas


def test_a_restarted_operator_keeps_the_factor_through_status():
    history, factors = _run(2.0, ticks=800)
    restored = History.from_dict(history.to_dict())
    assert correction_factor(restored) == factors[-1] > 1.5


@pytest.mark.parametrize("share, requests, window", [
    (float("nan"), 240.0, WINDOW), (2.0, 240.0, WINDOW), (-0.1, 240.0, WINDOW), (0.5, float("inf"), WINDOW),
    (0.5, -5.0, WINDOW), (0.5, 1e13, WINDOW), (0.5, 240.0, 0.0), (0.5, 240.0, -1.0), (1.0, 1e12, 1e-9),
])
def test_garbage_tails_keep_the_factor_bounded(share, requests, window):
    history = History()
    for k in range(50):
        obs = Observations(time=15.0 * k, current_replicas=3, ready_replicas=3, arrival_rate=RATE, service_time=1.0,
                           wait_exceed_share=share, wait_exceed_requests=requests, wait_window_seconds=window)
        decision = decide(SPEC, obs, history)
        history = decision.history
        assert 1.0 <= decision.wait_correction <= MAX_WAIT_CORRECTION
        assert decision.replicas >= 3 or decision.constraint in ("slo", "stabilization")  # never below from garbage
    for data in ({"tail_observed": "x"}, {"tail_observed": float("nan"), "tail_predicted": 1.0},
                 {"tail_observed": 1e300, "tail_predicted": -1.0}, {"tail_time": float("inf"), "tail_observed": 50.0}):
        restored = decide(SPEC, Observations(time=0.0, current_replicas=3, ready_replicas=3, arrival_rate=RATE,
                                             service_time=1.0), History.from_dict(data))
        assert restored.wait_correction == 1.0  # corrupt status restarts the fit


def test_on_a_mis_modelled_simulated_fleet_the_correction_moves_towards_the_slo():
    """decide() is told the service is nearly deterministic (CV 0: what a too-coarse histogram can read,
    issue 11 item 4) while the simulated fleet's is exponential: the model's tail is too light. With the
    fleet reporting the share of each window's requests over the target, the factor rises and fewer
    requests wait over 5 s than without it."""
    from inferencepool.simulate.fleet import ColdStarts, FleetConfig, simulate

    class Misled:
        name = "misled"

        def __init__(self, spec):
            self.spec, self.history, self.factors = spec, History(), []

        def initial_replicas(self, default):
            return 25

        def reconcile(self, obs, fleet):
            decision = decide(self.spec, replace(obs, service_cv=0.0), self.history)
            self.history = decision.history
            self.factors.append(decision.wait_correction)
            return decision.replicas

    rng = np.random.default_rng(2)
    arrivals = np.cumsum(rng.exponential(1 / RATE, int(RATE * 3600 * 8)))
    service = rng.exponential(SERVICE, len(arrivals))
    config = FleetConfig(cold_start_seconds=60.0, cold_start_distribution="fixed", wait_tail_target_seconds=5.0)
    over = {}
    for on in (False, True):
        policy = Misled(replace(SPEC, wait_correction=on))
        run = simulate(arrivals, service, np.zeros(len(arrivals)), policy, config, 25, ColdStarts(config, 0))
        over[on] = float(np.mean(run.waits[arrivals > 4 * 3600] > 5.0))  # the last 4 hours
        assert all(1.0 <= f <= MAX_WAIT_CORRECTION for f in policy.factors)
        if on:
            assert policy.factors[-1] > 1.3
        else:
            assert set(policy.factors) == {1.0}
    assert over[True] < 0.7 * over[False], over
