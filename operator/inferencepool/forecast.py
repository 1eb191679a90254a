"""Arrival-rate forecasts over the cold-start horizon, with an upper quantile from their own residuals.

Holt's linear (double exponential) smoothing on irregular time steps: the state is small enough to live
in a pool's status, so a restarted operator resumes its forecast. Why an upper quantile: a replica ordered
now is Ready only after a cold start, so we size for the demand we might see by then, not the mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

ALPHA = 0.3  # level smoothing per observation
BETA = 0.05  # trend smoothing per observation
RESIDUAL_MEMORY = 0.05  # weight of the newest squared error in the residual variance


@dataclass(frozen=True)
class HoltState:
    time: float  # when the last observation was folded in
    level: float  # requests / s
    trend: float  # requests / s per second
    residual_var: float  # EWMA of squared one-step-ahead errors, (requests / s)^2
    step: float  # typical seconds between observations (EWMA)
    count: int  # observations folded in


def update(state: HoltState | None, time: float, rate: float) -> HoltState:
    """Fold one observed rate into the state (error-correction form of Holt's method)."""
    if state is None:
        return HoltState(time=time, level=rate, trend=0.0, residual_var=0.0, step=0.0, count=1)
    dt = time - state.time
    if dt <= 0:
        return state
    predicted = state.level + state.trend * dt
    error = rate - predicted
    residual_var = error * error if state.count == 1 else (1 - RESIDUAL_MEMORY) * state.residual_var + RESIDUAL_MEMORY * error * error
    return HoltState(
        time=time,
        level=max(predicted + ALPHA * error, 0.0),
        trend=state.trend + ALPHA * BETA * error / dt,
        residual_var=residual_var,
        step=dt if state.step == 0 else 0.8 * state.step + 0.2 * dt,
        count=state.count + 1,
    )


def horizon_std(state: HoltState, horizon: float) -> float:
    """Standard deviation of the forecast `horizon` seconds ahead (Holt's additive-error variance)."""
    steps = max(1.0, horizon / state.step) if state.step > 0 else 1.0
    growth = 1 + (steps - 1) * (ALPHA**2 + ALPHA * BETA * steps + BETA**2 * steps * (2 * steps - 1) / 6)
    return math.sqrt(state.residual_var * growth)


def point(state: HoltState, ahead: float) -> float:
    """The mean forecast `ahead` seconds after the last observation."""
    return max(state.level + state.trend * ahead, 0.0)


def upper_peak(state: HoltState, horizon: float, quantile: float) -> float:
    """The `quantile` upper bound of the highest rate expected within `horizon` seconds."""
    peak = max(point(state, 0.0), point(state, horizon))
    z = NormalDist().inv_cdf(quantile)
    return max(peak + z * horizon_std(state, horizon), 0.0)
