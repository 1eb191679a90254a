"""Estimators of a queue's parameters from what Prometheus holds: histogram CV and quantiles, arrival CV.

Pure functions on plain numbers, shared by the operator's Prometheus reader and the simulator's fleet,
so that both read a histogram the same way.
"""

from __future__ import annotations

import math


def histogram_cv(buckets: list[tuple[float, float]], mean: float | None) -> float | None:
    """Coefficient of variation of a Prometheus histogram, or None when it holds nothing usable.

    Each finite bucket's mass sits at its midpoint (which undoes most of the spread that a uniform
    within-bucket assumption would add); the +Inf bucket's mass gets the mean that the exact `mean`
    (sum/count) leaves for it, spread as an exponential tail beyond the last bound. With vLLM's buckets
    this reads an exponential's CV of 1 as about 1.05-1.1: slightly conservative.
    """
    if not buckets or buckets[-1][0] != math.inf or not mean or mean <= 0:
        return None
    total = buckets[-1][1]
    if total <= 0:
        return None
    first = second = 0.0
    lower, below = 0.0, 0.0
    for bound, cumulative in buckets:
        mass = max(cumulative - below, 0.0)
        if bound == math.inf:
            if mass > 0:
                tail_mean = max((mean * total - first) / mass, lower)
                spread = tail_mean - lower
                first += mass * tail_mean
                second += mass * (lower * lower + 2 * lower * spread + 2 * spread * spread)
        else:
            middle = (lower + bound) / 2
            first += mass * middle
            second += mass * middle * middle
            lower = bound
        below = max(cumulative, below)
    variance = second / total - (first / total) ** 2
    return math.sqrt(max(variance, 0.0)) / mean


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus's histogram_quantile: linear within the bucket; the last finite bound if in +Inf."""
    if not buckets or buckets[-1][0] != math.inf or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank:
            if bound == math.inf:
                return lower
            if cumulative == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (cumulative - below)
        lower, below = bound, cumulative
    return lower


def dispersion(rate_var: float | None, rate_mean: float | None, window_seconds: float) -> float | None:
    """Index of dispersion of counts in `window_seconds`, Var(N)/E(N), from the variance and mean of the
    per-window rates r = N/window (Var(N)/E(N) = Var(r) * window / E(r)); floored at 1 (Poisson), capped
    at 16. None with fewer than 10 requests per window: the estimate would be noise."""
    if rate_var is None or rate_mean is None or rate_mean * window_seconds < 10:
        return None
    return min(max(rate_var * window_seconds / rate_mean, 1.0), 16.0)


def share_above(buckets: list[tuple[float, float]], target: float) -> float | None:
    """The share of a Prometheus histogram's observations above `target`, linear within the bucket that
    holds it (the first bucket's lower bound is 0), as histogram_quantile interpolates; above the last
    finite bound every +Inf observation counts as above. None without observations."""
    if not buckets or buckets[-1][0] != math.inf or buckets[-1][1] <= 0:
        return None
    total, lower, below = buckets[-1][1], 0.0, 0.0
    for bound, cumulative in buckets:
        if bound == math.inf:
            return max(total - below, 0.0) / total
        if target <= bound:
            within = below + (cumulative - below) * (target - lower) / (bound - lower) if bound > lower else cumulative
            return min(max(total - within, 0.0) / total, 1.0)
        lower, below = bound, cumulative
    return None


def arrival_cv(rate_var: float | None, rate_mean: float | None, window_seconds: float) -> float:
    """sqrt of the index of dispersion of counts in `window_seconds`, clamped to [1, 4]; 1 without enough
    requests. For a renewal process Var(N)/E(N) -> ca^2 over long windows."""
    value = dispersion(rate_var, rate_mean, window_seconds)
    return 1.0 if value is None else math.sqrt(value)


DISPERSION_SCALES = (1, 4, 20)  # windows as multiples of the shortest (15 s, 60 s, 300 s at a fast scrape)
DISPERSION_SAMPLES = 8  # windows per estimate: the range is max(rate window, 8 x window)


def dispersion_at(dispersions, timescale: float) -> float | None:
    """The index of dispersion at `timescale` seconds from (window seconds, I or None) pairs measured at a
    few windows: log-linear in the window between the two around it, the nearest end outside them; None
    when no window was measured.

    Why a time scale: bursts shorter than a window average out of its counts, so I(T) grows with T up to
    the slowest burst; the queueing model wants the dispersion of the arrivals that compete for the same
    servers, and decide() asks at T = service time + wait target (policy.dispersion_timescale).
    """
    known = sorted((float(t), float(i)) for t, i in dispersions if i is not None and t > 0)
    if not known:
        return None
    if timescale <= known[0][0]:
        return known[0][1]
    for (t0, i0), (t1, i1) in zip(known, known[1:]):
        if timescale <= t1:
            return i0 + (i1 - i0) * math.log(timescale / t0) / math.log(t1 / t0)
    return known[-1][1]
