"""Arrival-rate forecasts over the cold-start horizon, with an upper quantile from their own residuals.

Holt's linear (double exponential) smoothing on irregular time steps, plus a multiplicative time-of-day
profile once a full day has been seen. Why an upper quantile: a replica ordered now is Ready only after a
cold start, so we size for the demand we might see by then, not the mean. The state is a few dozen numbers,
JSON-ready via dataclasses.asdict, so it lives in the pool's status and a restarted operator resumes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from statistics import NormalDist

# Gains are per REFERENCE_STEP of time and rescaled for other steps, so the smoothing does not depend on how
# often the operator reconciles. Tuned in the simulator on the Azure code/conv traces and days of ServeGen
# (benchmarks/SIMULATE.md): a stiffer trend or a wider bound cost GPU-hours without buying SLO minutes,
# because Erlang-C's own margin and the scale-down window already absorb the noise of a windowed rate.
REFERENCE_STEP = 15.0  # seconds
ALPHA = 0.3  # level gain per reference step
BETA = 0.01  # trend gain (fraction of the level correction) per reference step
RESIDUAL_MEMORY = 0.02  # weight of the newest squared error in the residual variance, per reference step

DAY = 86_400.0
SEASON_BINS = 24  # time-of-day profile: one mean rate per hour
SEASON_MEMORY_DAYS = 7.0  # each bin averages roughly the last week
MIN_SEASONAL_FACTOR = 0.05  # a near-empty hour must not blow up the deseasonalised level
PEAK_SAMPLES = 6  # points at which the horizon is searched for its peak


@dataclass(frozen=True)
class HoltState:
    """Smoothing state. Level and trend are deseasonalised once the profile is in use."""

    time: float  # when the last observation was folded in
    level: float  # requests / s
    trend: float  # requests / s per second
    residual_var: float  # EWMA of squared one-step errors, deseasonalised (requests / s)^2
    step: float  # typical seconds between observations (EWMA)
    count: int  # observations folded in
    start: float | None = None  # first observation; the profile is used after a full day
    baseline: float | None = None  # slow (one-day) EWMA of the rate: the profile is rate / baseline
    profile: tuple[float, ...] = ()  # mean of rate / baseline per time-of-day bin
    profile_seconds: tuple[float, ...] = ()  # seconds observed per bin (capped at the memory)

    def __post_init__(self) -> None:  # JSON turns tuples into lists; keep equality and hashing
        object.__setattr__(self, "profile", tuple(float(x) for x in self.profile))
        object.__setattr__(self, "profile_seconds", tuple(float(x) for x in self.profile_seconds))


def _gain(per_step: float, dt: float) -> float:
    """A per-reference-step gain turned into the gain for a step of dt seconds."""
    return 1.0 - (1.0 - per_step) ** (dt / REFERENCE_STEP)


def seasonal_active(state: HoltState) -> bool:
    """The profile is used only after a full day in which every bin was observed."""
    return (
        bool(state.profile)
        and state.start is not None
        and state.time - state.start >= DAY
        and min(state.profile_seconds) > 0
    )


def seasonal_factor(state: HoltState, time: float) -> float:
    """Expected rate at `time` relative to the daily mean (1 while the profile is not in use)."""
    if not seasonal_active(state):
        return 1.0
    bins = len(state.profile)
    mean = sum(state.profile) / bins
    if mean <= 0:
        return 1.0
    x = (time % DAY) / (DAY / bins) - 0.5  # linear between bin centres: no jumps at bin edges
    low = math.floor(x)
    frac = x - low
    value = (1 - frac) * state.profile[low % bins] + frac * state.profile[(low + 1) % bins]
    return max(value / mean, MIN_SEASONAL_FACTOR)


def _fold_into_profile(state: HoltState, time: float, rate: float, dt: float) -> tuple[float, tuple, tuple]:
    """Learn the time-of-day shape as rate / (a one-day average), so days busier than others do not bend it."""
    bins = SEASON_BINS
    baseline = state.baseline if state.baseline is not None else state.level
    profile = list(state.profile) or [1.0] * bins
    seconds = list(state.profile_seconds) or [0.0] * bins
    b = int((time % DAY) // (DAY / bins))
    seconds[b] = min(seconds[b] + dt, SEASON_MEMORY_DAYS * DAY / bins)
    ratio = rate / baseline if baseline > 0 else 1.0
    profile[b] += dt / seconds[b] * (ratio - profile[b])  # a time-weighted mean, then an EWMA
    baseline += (1 - math.exp(-dt / DAY)) * (rate - baseline)
    return baseline, tuple(profile), tuple(seconds)


def update(state: HoltState | None, time: float, rate: float, seasonal: bool = True) -> HoltState:
    """Fold one observed rate into the state (error-correction form of Holt's method on the deseasonalised
    rate, while the time-of-day profile learns alongside). seasonal=False: Holt alone, for comparisons."""
    if state is None:
        return HoltState(time=time, level=rate, trend=0.0, residual_var=0.0, step=0.0, count=1, start=time)
    dt = time - state.time
    if dt <= 0:
        return state
    factor = seasonal_factor(state, time)
    predicted = state.level + state.trend * dt
    error = rate / factor - predicted
    alpha, beta = _gain(ALPHA, dt), _gain(BETA, dt)
    memory = _gain(RESIDUAL_MEMORY, dt)
    residual_var = error * error if state.count == 1 else (1 - memory) * state.residual_var + memory * error * error
    level, trend = max(predicted + alpha * error, 0.0), state.trend + alpha * beta * error / dt
    baseline, profile, seconds = _fold_into_profile(state, time, rate, dt) if seasonal else (None, (), ())
    new = HoltState(
        time=time,
        level=level,
        trend=trend,
        residual_var=residual_var,
        step=dt if state.step == 0 else 0.8 * state.step + 0.2 * dt,
        count=state.count + 1,
        start=state.time if state.start is None else state.start,
        baseline=baseline,
        profile=profile,
        profile_seconds=seconds,
    )
    if seasonal_active(new) and not seasonal_active(state):  # switch to the deseasonalised scale, where
        f = seasonal_factor(new, time)  # the trend learnt so far (mostly the daily swing) no longer applies
        new = replace(new, level=level / f, trend=0.0, residual_var=residual_var / f**2)
    return new


def horizon_std(state: HoltState, horizon: float) -> float:
    """Standard deviation of the deseasonalised forecast `horizon` seconds ahead.

    Holt's additive-error variance, sigma^2 [1 + (h-1)(a^2 + a b h + b^2 h (2h-1) / 6)], with h counted in
    reference steps and b the trend's share a*BETA of each error.
    """
    h = max(1.0, horizon / REFERENCE_STEP)
    a, b = ALPHA, ALPHA * BETA
    growth = 1 + (h - 1) * (a * a + a * b * h + b * b * h * (2 * h - 1) / 6)
    return math.sqrt(state.residual_var * growth)


def point(state: HoltState, ahead: float) -> float:
    """The mean forecast `ahead` seconds after the last observation."""
    base = max(state.level + state.trend * ahead, 0.0)
    return base * seasonal_factor(state, state.time + ahead)


def upper(state: HoltState, ahead: float, quantile: float) -> float:
    """The `quantile` upper bound of the rate `ahead` seconds after the last observation."""
    z = NormalDist().inv_cdf(quantile)
    spread = horizon_std(state, ahead) * seasonal_factor(state, state.time + ahead)
    return max(point(state, ahead) + z * spread, 0.0)


def upper_peak(state: HoltState, horizon: float, quantile: float) -> float:
    """The `quantile` upper bound of the highest rate expected within `horizon` seconds."""
    return max(upper(state, horizon * i / (PEAK_SAMPLES - 1), quantile) for i in range(PEAK_SAMPLES))
