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


def windowed_rates(rate, start, end, window, step, seed, batch=1):
    """(times, rates over `window` every `step` s) of a Poisson process of batches of `batch` requests at
    rate(t) / batch batches per second (thinning), so the index of dispersion of counts is `batch`."""
    rng = np.random.default_rng(seed)
    peak = max(rate(t) for t in np.arange(start - window, end, 1.0)) / batch
    t, arrivals = start - window, []
    while t < end:
        t += rng.exponential(1 / peak)
        if rng.random() < rate(t) / batch / peak:
            arrivals += [t] * batch
    arrivals = np.array(arrivals)
    times = np.arange(start, end, step)
    return times, (np.searchsorted(arrivals, times) - np.searchsorted(arrivals, times - window)) / window


def e2e_ramp(t):
    """The closed-loop e2e test's profile: 2/s, a 90 s ramp to 14/s, 30 s there, back to 2/s."""
    return 2.0 if t < 30 else 2 + 12 * (t - 30) / 90 if t < 120 else 14.0 if t < 150 else 2.0


@pytest.mark.parametrize("seed", range(4))
def test_a_ramp_within_the_horizon_is_extrapolated_within_a_window_of_its_start(seed):
    """Holt's level trails a 90 s ramp seen through a 15 s rate window (its trend learns over hours); the
    ramp test sees it within about a window and puts the horizon's rate near the truth 15 s later."""
    window, horizon = 15.0, 15.0
    times, rates = windowed_rates(e2e_ramp, -600, 150, window, 2.0, seed)
    state, seen, errors_on_ramp, holt_short = None, None, [], []
    for t, r in zip(times, rates):
        state = fc.update(state, float(t), float(r), rate_window=window)
        on_ramp = fc.ramp(state, horizon, window)
        if on_ramp is not None and t >= 30 and seen is None:
            seen = t
        if 60 <= t <= 105:  # the ramp's middle: half a window behind the truth, a horizon ahead of now
            holt_short.append(e2e_ramp(t + horizon) - fc.upper_peak(state, horizon, 0.9))
            if on_ramp is not None:
                errors_on_ramp.append(on_ramp / e2e_ramp(t + horizon) - 1)
    assert seen is not None and seen <= 30 + 2 * window, seen
    assert min(holt_short) > 2.0  # Holt alone is more than 2/s short all through the ramp's middle
    assert len(errors_on_ramp) >= 0.5 * 23, len(errors_on_ramp)  # of 23 observations
    assert abs(np.median(errors_on_ramp)) < 0.15 and max(map(abs, errors_on_ramp)) < 0.35, errors_on_ramp


@pytest.mark.parametrize("level", [2.0, 20.0])
def test_a_flat_rate_rarely_looks_like_a_ramp(level):
    times, rates = windowed_rates(lambda t: level, 0, 3600, 15.0, 2.0, seed=int(level))
    state, ramps = None, 0
    for t, r in zip(times, rates):
        state = fc.update(state, float(t), float(r), rate_window=15.0)
        ramps += fc.ramp(state, 15.0, 15.0) is not None
    assert ramps / len(times) < 0.04, ramps / len(times)  # one-sided 2 sigma: about 2.3%


def test_bursty_arrivals_need_their_dispersion_to_not_look_like_ramps():
    """Requests in batches of 8: counts vary 8 times a Poisson's. Read as Poisson, noise passes for ramps;
    with the measured index of dispersion it rarely does."""
    times, rates = windowed_rates(lambda t: 4.0, 0, 3600, 15.0, 2.0, seed=3, batch=8)
    state, as_poisson, as_measured = None, 0, 0
    for t, r in zip(times, rates):
        state = fc.update(state, float(t), float(r), rate_window=15.0)
        as_poisson += fc.ramp(state, 15.0, 15.0) is not None
        as_measured += fc.ramp(state, 15.0, 15.0, dispersion=8.0) is not None
    assert as_poisson / len(times) > 0.1 and as_measured / len(times) < 0.04, (as_poisson, as_measured, len(times))


def test_the_ramp_needs_two_windows_of_history_and_a_window():
    state = None
    for t in range(0, 30, 2):
        state = fc.update(state, float(t), 1.0 + t, rate_window=15.0)
    assert fc.ramp(state, 15.0, 15.0) is None  # 28 s of history: no baseline two 15 s windows old yet
    state = fc.update(state, 32.0, 33.0, rate_window=15.0)
    assert fc.ramp(state, 15.0, 15.0) == pytest.approx(33.0 + 1.0 * 22.5)  # 1/s per s, from half a window back
    assert fc.ramp(state, 60.0, 15.0) == pytest.approx(33.0 + 1.0 * 30.0)  # no further than the 30 s seen
    assert fc.ramp(state, 15.0, None) is None
    assert fc.update(None, 0.0, 1.0).recent == ()  # no window known: nothing kept
    assert state.recent[0][0] == 2.0 and len(state.recent) == 15  # back to the newest point two windows older


def test_a_fast_reconcile_keeps_few_recent_points_and_still_sees_the_ramp():
    """Every 0.5 s on a 2-minute window: 480 points over two windows would bloat the status; thinned, the
    state keeps at most RAMP_POINTS and still reaches back two windows."""
    state = None
    for t in np.arange(0.0, 600.0, 0.5):
        state = fc.update(state, float(t), 2.0 + max(t - 300.0, 0.0) * 0.02, rate_window=120.0)
    assert len(state.recent) <= fc.RAMP_POINTS and state.recent[0][0] <= state.time - 240.0
    assert state.recent[-1] == (state.time, 2.0 + 0.02 * (state.time - 300.0))
    assert fc.ramp(state, 180.0, 120.0) == pytest.approx(state.recent[-1][1] + 0.02 * 240.0, rel=0.05)
