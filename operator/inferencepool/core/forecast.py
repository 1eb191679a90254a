"""Arrival-rate forecasts over the cold-start horizon, with an upper quantile from their own residuals.

Holt's linear (double exponential) smoothing on irregular time steps, plus a multiplicative time-of-day
profile once a full day has been seen, plus a ramp test over the last two rate windows. Why the ramp: Holt's
trend gain is kept small (a stiff trend chases noise on the traces it was tuned on), so its trend learns
over hours and a ramp of a minute or two is followed by the level alone, behind it; the rates of two
windows that share no arrival are two independent counts, so the noise of their difference is known from
the rate (Poisson, times the measured index of dispersion) and a rise well beyond it is a ramp. Why an
upper quantile: a replica ordered now is Ready only after a cold start, so we size for the demand we might
see by then, not the mean. The state is a few dozen numbers, JSON-ready via dataclasses.asdict, so it
lives in the pool's status and a restarted operator resumes.
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
RAMP_Z = 2.0  # a rise beyond this many standard deviations of two windows' counts is a ramp (one-sided 2.3%)
RAMP_SPAN = 2.0  # rate windows between the two rates compared (1 shares no arrival; 2 doubles a ramp's rise)
RAMP_POINTS = 64  # at most this many recent rates are kept (two windows' worth, thinned if the interval is short)


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
    recent: tuple[tuple[float, float], ...] = ()  # (time, rate) back to RAMP_SPAN rate windows before the last

    def __post_init__(self) -> None:  # JSON turns tuples into lists; keep equality and hashing
        object.__setattr__(self, "profile", tuple(float(x) for x in self.profile))
        object.__setattr__(self, "profile_seconds", tuple(float(x) for x in self.profile_seconds))
        object.__setattr__(self, "recent", tuple((float(t), float(r)) for t, r in self.recent))


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


def _keep_recent(recent: tuple, time: float, rate: float, window: float | None) -> tuple:
    """The recent rates plus this one, back to the newest that is RAMP_SPAN windows older (the ramp's baseline)."""
    if window is None:
        return ()
    points = list(recent)
    if len(points) >= 2 and time - points[-2][0] < RAMP_SPAN * window / (RAMP_POINTS / 2):
        points.pop()  # a fast reconcile: the newest point replaces one too close to its predecessor
    points = (*points, (time, rate))[-RAMP_POINTS:]
    older = [i for i, (t, _) in enumerate(points) if t <= time - RAMP_SPAN * window]
    return points[older[-1]:] if older else points


def update(state: HoltState | None, time: float, rate: float, seasonal: bool = True,
           rate_window: float | None = None) -> HoltState:
    """Fold one observed rate into the state (error-correction form of Holt's method on the deseasonalised
    rate, while the time-of-day profile learns alongside, and the rates of the last RAMP_SPAN x `rate_window`
    seconds are kept for the ramp test). seasonal=False: Holt alone, for comparisons."""
    if state is None:
        return HoltState(time=time, level=rate, trend=0.0, residual_var=0.0, step=0.0, count=1, start=time,
                         recent=_keep_recent((), time, rate, rate_window))
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
        recent=_keep_recent(state.recent, time, rate, rate_window),
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


def ramp(state: HoltState, ahead: float, rate_window: float | None, dispersion: float = 1.0) -> float | None:
    """The rate `ahead` seconds after the last observation if demand is on a ramp, else None.

    A ramp: the newest window's rate r1 exceeds r0, the rate RAMP_SPAN windows earlier (no shared arrivals),
    by more than RAMP_Z standard deviations of the difference, sqrt(I (r0 + r1) / window) with I the index of
    dispersion of counts. Extrapolated along the slope from the middle of the newest window (a windowed rate
    is the true rate half a window ago, on a ramp) to `ahead`, but no further than the rise was seen. Why not
    the newest rates alone: overlapping windows share most of their arrivals, so their differences hide
    their noise. Why two windows apart, not one: a ramp's rise doubles against the same noise, and a step
    (a burst that has already arrived) reads as half the slope. Chosen on the frontier benchmark
    (benchmarks/SIMULATE.md, "A ramp test"): on the bursty trace one window apart needed 1.29x the
    oracle's GPU-hours for 90-95% of windows, two apart 1.22-1.27x.
    """
    if not rate_window or len(state.recent) < 2 or state.recent[0][0] > state.time - RAMP_SPAN * rate_window:
        return None
    (t0, r0), (t1, r1) = state.recent[0], state.recent[-1]
    rise = r1 - r0
    if t1 <= t0 or rise <= RAMP_Z * math.sqrt(max(dispersion, 0.0) * (r0 + r1) / rate_window):
        return None
    reach = min(rate_window / 2 + ahead, t1 - t0)  # no further ahead than the rise was seen
    return r1 + rise / (t1 - t0) * reach


def upper_peak(state: HoltState, horizon: float, quantile: float) -> float:
    """The `quantile` upper bound of the highest rate expected within `horizon` seconds."""
    return max(upper(state, horizon * i / (PEAK_SAMPLES - 1), quantile) for i in range(PEAK_SAMPLES))
