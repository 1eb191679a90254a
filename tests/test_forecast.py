"""The arrival-rate forecaster: trend, steps, upper quantiles, the daily profile and a JSON-safe state."""

import gzip
import json
import math
from pathlib import Path
from dataclasses import asdict

import numpy as np

import pytest

from inferencepool.core import forecast as fc

TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"  # ../shared beside the checkout, as CI lays it

SERVEGEN = f"{TRACES}/servegen-m-large-rate-600s.csv.gz"
DAY = 86_400.0


def run(times, rates, seasonal=True):
    state = None
    for t, r in zip(times, rates):
        state = fc.update(state, float(t), float(r), seasonal=seasonal)
    return state


def errors(times, rates, ahead, seasonal, skip_until, truth=None):
    """Absolute errors of the point forecast `ahead` seconds out (against `truth`, default the observed
    rates), once time passes `skip_until`."""
    truth = rates if truth is None else truth
    step = times[1] - times[0]
    k = int(round(ahead / step))
    state, out = None, []
    for i, (t, r) in enumerate(zip(times, rates)):
        state = fc.update(state, float(t), float(r), seasonal=seasonal)
        if t >= skip_until and i + k < len(rates):
            out.append(abs(fc.point(state, ahead) - truth[i + k]))
    return np.array(out)


def test_a_linear_ramp_is_tracked_with_its_trend():
    times = np.arange(0, 4 * 3600, 15.0)
    rates = 1.0 + 0.002 * times  # +7.2 requests/s per hour
    state = run(times, rates)
    assert state.trend == pytest.approx(0.002, rel=0.05)
    truth = 1.0 + 0.002 * (times[-1] + 180)
    assert fc.point(state, 180) == pytest.approx(truth, rel=0.01)
    assert fc.point(state, 180) > rates[-1]  # it extrapolates, not just follows


def test_a_step_is_followed():
    times = np.arange(0, 3600, 15.0)
    rates = np.where(times < 1800, 2.0, 6.0)
    state = run(times, rates)
    assert fc.point(state, 0) == pytest.approx(6.0, rel=0.05)
    assert fc.point(state, 180) == pytest.approx(6.0, rel=0.1)


def test_upper_quantile_is_above_the_mean_and_widens_with_the_horizon():
    rng = np.random.default_rng(1)
    times = np.arange(0, 7200, 15.0)
    rates = 5.0 + rng.normal(0, 0.5, len(times))
    state = run(times, rates)
    assert state.residual_var > 0
    for ahead in (15, 180, 600):
        assert fc.upper(state, ahead, 0.9) > fc.point(state, ahead)
    assert fc.upper(state, 180, 0.99) > fc.upper(state, 180, 0.9)
    peaks = [fc.upper_peak(state, h, 0.9) for h in (60, 180, 600, 1800)]
    assert peaks == sorted(peaks) and peaks[0] < peaks[-1]


def test_the_upper_bound_covers_about_its_quantile_of_a_windowed_poisson_rate():
    rng = np.random.default_rng(2)
    arrivals = np.cumsum(rng.exponential(1 / 5.0, 120_000))  # Poisson at 5/s, read as rate over 60 s every 15 s
    times = np.arange(60.0, 6 * 3600, 15.0)
    rates = (np.searchsorted(arrivals, times) - np.searchsorted(arrivals, times - 60)) / 60.0
    state, covered = None, {1: [], 12: []}
    for i, (t, r) in enumerate(zip(times, rates)):
        state = fc.update(state, float(t), float(r))
        if 240 <= i < len(times) - 12:
            for k in covered:
                covered[k].append(rates[i + k] <= fc.upper(state, 15.0 * k, 0.9))
    for k, hits in covered.items():
        assert 0.85 <= np.mean(hits) <= 0.95, (k, np.mean(hits))


def diurnal(days, step, rng):
    """(times, noisy rates, the true rate): a daily swing of +-60% with a second harmonic, 5% noise."""
    times = np.arange(0, days * DAY, step)
    truth = 5.0 * (1 + 0.6 * np.sin(2 * np.pi * times / DAY) + 0.25 * np.sin(4 * np.pi * times / DAY + 1))
    return times, truth * rng.lognormal(0, 0.05, len(times)), truth


def test_the_profile_is_used_only_after_a_full_day():
    times, rates, _ = diurnal(3, 60.0, np.random.default_rng(3))
    early = run(times[times < 0.9 * DAY], rates[times < 0.9 * DAY])
    assert not fc.seasonal_active(early) and fc.seasonal_factor(early, 1000.0) == 1.0
    later = run(times[times < 1.1 * DAY], rates[times < 1.1 * DAY])
    assert fc.seasonal_active(later)
    assert len(later.profile) == fc.SEASON_BINS


def test_the_daily_profile_reduces_error_on_a_synthetic_diurnal_series():
    times, rates, truth = diurnal(3, 60.0, np.random.default_rng(4))
    for ahead, gain in ((3600.0, 0.9), (3 * 3600.0, 0.75)):  # over hours, the daily shape is what matters
        with_season = errors(times, rates, ahead, True, 2 * DAY, truth).mean()
        without = errors(times, rates, ahead, False, 2 * DAY, truth).mean()
        assert with_season < gain * without, (ahead, with_season, without)
    # over a cold start Holt's trend already follows the curve: the profile must at least not hurt
    with_season = errors(times, rates, 180.0, True, 2 * DAY, truth).mean()
    assert with_season < 1.02 * errors(times, rates, 180.0, False, 2 * DAY, truth).mean()


def servegen():
    with gzip.open(SERVEGEN, "rt") as f:
        table = np.loadtxt(f, delimiter=",", skiprows=1, usecols=(0, 1))
    assert table[-1, 0] - table[0, 0] >= 13 * DAY
    return table[:, 0], table[:, 1]


def test_the_daily_profile_does_no_harm_on_the_servegen_trace():
    times, rates = servegen()
    for ahead in (600.0, 3600.0, 6 * 3600.0):
        with_season = errors(times, rates, ahead, True, 2 * DAY).mean()
        without = errors(times, rates, ahead, False, 2 * DAY).mean()
        assert with_season < 1.03 * without, (ahead, with_season, without)


@pytest.mark.xfail(strict=True, reason="ServeGen m-large's daily cycle (hourly profile std 10%) is small against its "
                   "day-to-day swings (25%): even the in-sample 14-day profile cuts 6-hour persistence error by only 4%")
def test_the_daily_profile_reduces_error_on_the_servegen_trace():
    times, rates = servegen()
    for ahead in (600.0, 3600.0):
        with_season = errors(times, rates, ahead, True, 2 * DAY).mean()
        without = errors(times, rates, ahead, False, 2 * DAY).mean()
        assert with_season < 0.97 * without, (ahead, with_season, without)


def test_the_state_is_small_and_survives_json():
    times, rates, _ = diurnal(2, 300.0, np.random.default_rng(5))
    state = run(times, rates)
    data = json.loads(json.dumps(asdict(state)))
    assert fc.HoltState(**data) == state
    assert len(json.dumps(data)) < 2000
    restored = fc.HoltState(**data)
    assert fc.upper_peak(restored, 180, 0.9) == fc.upper_peak(state, 180, 0.9)


def test_irregular_steps_and_repeated_times_are_harmless():
    state = fc.update(None, 0.0, 3.0)
    assert fc.update(state, 0.0, 100.0) == state  # no time has passed: nothing to learn
    for t in (5.0, 40.0, 41.0, 200.0):
        state = fc.update(state, t, 3.0)
    assert fc.point(state, 180) == pytest.approx(3.0, rel=1e-6)
    assert math.isfinite(fc.upper_peak(state, 180, 0.9))
