"""Arrival dispersion over several windows (issue 11), checked against the independent FCFS simulator
(tests/fcfs_sim.py): bursts of 30-60 s are measured at 15 s, 60 s and 300 s windows the way Prometheus
counts them (per-window rates, their population variance and mean: stdvar_over_time / avg_over_time), and
decide() sizes with the dispersion at its time scale (service time + wait target). The simulated p99 at
that size meets the target; sized on 15 s counts alone it misses; on 300 s counts it over-provisions."""

import math

import numpy as np
import pytest
from fcfs_sim import _positive, fcfs_waits, modulated_arrivals, summarise

from inferencepool.core import signals
from inferencepool.core.policy import Observations, PoolSpec, decide, dispersion_timescale


def _measured(arrivals: np.ndarray, windows=(15.0, 60.0, 300.0)) -> tuple[tuple[float, float | None], ...]:
    """(window, index of dispersion) as observe.py reads it: rates per window, then signals.dispersion."""
    out = []
    for window in windows:
        rates = np.bincount((arrivals // window).astype(int))[:-1] / window
        out.append((window, signals.dispersion(float(rates.var()), float(rates.mean()), window)))
    return tuple(out)


def _required(rate: float, service: float, target: float, dispersion) -> int:
    spec = PoolSpec(slo_target_seconds=target, slo_percentile=0.99, prediction=False, max_replicas=200,
                    dispersion_windows=True)
    obs = Observations(time=0.0, current_replicas=1, ready_replicas=1, arrival_rate=rate, service_time=service,
                       arrival_dispersion=dispersion)
    return decide(spec, obs).required_replicas


def test_dispersion_at_interpolates_in_log_window_and_clamps():
    measured = ((15.0, 2.0), (60.0, 6.0), (300.0, None))
    assert signals.dispersion_at(measured, 5.0) == 2.0  # below the shortest window: its value
    assert signals.dispersion_at(measured, 30.0) == pytest.approx(4.0)  # halfway in log(15) .. log(60)
    assert signals.dispersion_at(measured, 1000.0) == 6.0  # the unmeasured 300 s is skipped
    assert signals.dispersion_at(((15.0, None),), 30.0) is None
    assert signals.dispersion(0.2, 3.0, 15.0) == pytest.approx(1.0)  # Poisson: Var(r) = E(r) / window
    assert signals.dispersion(0.2, 0.5, 15.0) is None  # under 10 requests per window: noise


def test_slow_bursts_need_the_dispersion_at_the_slo_time_scale():
    # 20 s requests, p99 wait <= 40 s: the time scale is 60 s; the rate swings 0.6 <-> 1.4 /s for ~60 s at a time
    rng = np.random.default_rng(1)
    arrivals = modulated_arrivals(rng, (0.6, 1.4), 60.0, 500_000)
    services = _positive(rng, 20.0, 1.0, len(arrivals), "gamma")
    rate, measured = len(arrivals) / arrivals[-1], _measured(arrivals)
    assert dispersion_timescale(20.0, 40.0) == 60.0
    i15, i60, i300 = (i for _, i in measured)
    assert i15 < i60 < i300  # slower bursts show only in longer windows

    chosen = _required(rate, 20.0, 40.0, measured)
    short = _required(rate, 20.0, 40.0, measured[:1])  # 15 s counts only (the reader before)
    long = _required(rate, 20.0, 40.0, measured[2:])  # 300 s counts only
    assert short < chosen < long

    def p99(servers):
        result = summarise(fcfs_waits(arrivals, services, servers))
        return result.quantile(0.99), result.quantile_ci(0.99)

    at_chosen, ci = p99(chosen)
    assert at_chosen <= 40.0 + ci, (chosen, at_chosen, ci)  # meets the SLO in the simulation
    at_short, ci_short = p99(short)
    assert at_short > 40.0 + ci_short, (short, at_short)  # 15 s counts under-provision: the SLO is missed
    below, ci_below = p99(chosen - 1)
    assert below > 40.0 - ci_below  # and one server fewer than chosen does not meet it: chosen is not padded


def test_fast_bursts_keep_the_short_window():
    # 5 s requests, p99 wait <= 10 s: time scale 15 s; bursts of ~30 s at 2 <-> 4 /s
    rng = np.random.default_rng(2)
    arrivals = modulated_arrivals(rng, (2.0, 4.0), 30.0, 400_000)
    services = _positive(rng, 5.0, 1.0, len(arrivals), "gamma")
    rate, measured = len(arrivals) / arrivals[-1], _measured(arrivals)
    chosen = _required(rate, 5.0, 10.0, measured)
    assert chosen == _required(rate, 5.0, 10.0, measured[:1])  # 5 + 10 = 15 s: the 15 s window decides
    assert chosen < _required(rate, 5.0, 10.0, measured[2:])
    fits = summarise(fcfs_waits(arrivals, services, chosen))
    assert fits.quantile(0.99) <= 10.0 + fits.quantile_ci(0.99)
    short = summarise(fcfs_waits(arrivals, services, chosen - 1))
    assert short.quantile(0.99) > 10.0 - short.quantile_ci(0.99)


def test_the_simulated_fleet_reports_the_same_windows_from_its_completions():
    """simulate/fleet.py reads the dispersion as observe.py does: completions per 15/60/300 s window, 8 of each
    (within the rate window for 15 s), through signals.dispersion; slow bursts show at 60 s and 300 s."""
    from dataclasses import replace as swap

    from inferencepool.simulate.fleet import ColdStarts, FleetConfig, simulate

    class Recorder:
        name = "recorder"

        def __init__(self):
            self.seen = []

        def initial_replicas(self, default):
            return 40

        def reconcile(self, obs, fleet):
            self.seen.append(obs)
            return 40

    rng = np.random.default_rng(5)
    arrivals = modulated_arrivals(rng, (2.0, 6.0), 120.0, 40_000)
    service = np.full(len(arrivals), 1.0)  # 40 replicas never queue: completions are arrivals 1 s later
    config = swap(FleetConfig(), cold_start_distribution="fixed", scrape_delay_seconds=0.0)
    policy = Recorder()
    simulate(arrivals, service, np.zeros(len(arrivals)), policy, config, 40, ColdStarts(config, 0))
    late = [o for o in policy.seen if o.time > 3000.0]
    assert late and all([w for w, _ in o.arrival_dispersion] == [15.0, 60.0, 300.0] for o in late)
    mean = {w: np.mean([dict(o.arrival_dispersion)[w] for o in late]) for w in (15.0, 60.0, 300.0)}
    assert 1.0 < mean[15.0] < mean[60.0] < mean[300.0]
    # the same estimate straight from the arrivals, as the FCFS check above measures it
    exact = dict(_measured(arrivals))
    assert mean[60.0] == pytest.approx(exact[60.0], rel=0.35) and mean[300.0] == pytest.approx(exact[300.0], rel=0.5)
    assert all(o.arrival_cv == pytest.approx(math.sqrt(dict(o.arrival_dispersion)[15.0])) for o in late)


def test_dispersion_windows_are_opt_in():
    """By default decide() sizes with the burst window's CV (obs.arrival_cv): the long windows also read a
    rate shift as burstiness (see PoolSpec.dispersion_windows)."""
    obs = Observations(time=0.0, current_replicas=1, ready_replicas=1, arrival_rate=3.0, service_time=2.0,
                       arrival_cv=1.0, arrival_dispersion=((15.0, 1.0), (60.0, 16.0), (300.0, 16.0)))
    default = decide(PoolSpec(slo_target_seconds=58.0, prediction=False, max_replicas=200), obs)
    opted = decide(PoolSpec(slo_target_seconds=58.0, prediction=False, max_replicas=200, dispersion_windows=True), obs)
    assert default.dispersion_timescale is None and default.arrival_cv == 1.0
    assert opted.arrival_cv == pytest.approx(4.0) and opted.required_replicas > default.required_replicas
