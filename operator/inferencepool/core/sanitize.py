"""What decide() refuses to believe: observations no real pool can produce, and history no run could leave.

decide() calls `clean` once at its entry. Missing values (None, NaN) stay "unknown", as before. A value
that is present but impossible (infinite, negative, or beyond the physical bounds below) means the
metrics pipeline is broken (a bad recording rule, an exporter bug, a hostile Prometheus): the pool holds,
as with missing metrics, and the reason names the field. Bounds are far above any real fleet, so no
real reading trips them:

- arrival_rate, minute_rate <= 1e6 requests/s (10,000 replicas x 100 requests/s each);
- service_time, prefill_time, cold_start_seconds <= 86,400 s (a day);
- arrival_cv, service_cv <= 100 (an index of dispersion of 10,000; observe.py caps the service CV at 10), and
  each arrival_dispersion entry a window in (0, a day] with an index in [0, 10,000] or unknown;
- waiting, running, service_samples, preemptions <= 1e12 requests; service_concurrency <= 1e6 per replica;
- kv_cache_usage in [0, 1.001] (a fraction; the slack is rounding of an average); wait_exceed_share in [0, 1],
  wait_exceed_requests <= 1e12, wait_window_seconds and rate_window_seconds <= a day;
- metrics_age_seconds >= 0 (unknown freshness, None or NaN, is treated as invalid too).

History comes from the pool's status, which anyone allowed to patch it can edit: entries that are not
finite or out of range are dropped (a forecaster with any such number restarts from scratch).
"""

from __future__ import annotations

import math
from dataclasses import astuple, replace

from inferencepool.core import forecast as fc

MAX_RATE = 1e6  # requests / s
MAX_SECONDS = 86_400.0  # a day
MAX_CV = 100.0
MAX_COUNT = 1e12
MAX_CONCURRENCY = 1e6
MAX_KV_USAGE = 1.001
MAX_FORECAST_VALUE = 1e12  # any HoltState number beyond this is corrupt (rates are <= MAX_RATE)
MAX_FORECAST_GAP = 1e9  # seconds since the forecaster's last point beyond which it restarts

# field: (upper bound, replacement when missing: None keeps it unknown)
BOUNDS = {
    "arrival_rate": (MAX_RATE, None),
    "service_time": (MAX_SECONDS, None),
    "service_samples": (MAX_COUNT, None),
    "arrival_cv": (MAX_CV, 1.0),
    "service_cv": (MAX_CV, 1.0),
    "prefill_time": (MAX_SECONDS, None),
    "waiting": (MAX_COUNT, None),
    "running": (MAX_COUNT, None),
    "cold_start_seconds": (MAX_SECONDS, None),
    "service_concurrency": (MAX_CONCURRENCY, None),
    "kv_cache_usage": (MAX_KV_USAGE, None),
    "preemptions": (MAX_COUNT, None),
    "kv_sequences": (MAX_CONCURRENCY, None),
    "wait_exceed_share": (1.0, None),
    "wait_exceed_requests": (MAX_COUNT, None),
    "wait_window_seconds": (MAX_SECONDS, None),
    "minute_rate": (MAX_RATE, None),
    "rate_window_seconds": (MAX_SECONDS, None),
}


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def invalid_reason(obs) -> str | None:
    """Why these observations cannot be trusted (naming the field), or None if they can."""
    if not _finite(obs.time):
        return f"observation time {obs.time!r} is not a finite number"
    age = obs.metrics_age_seconds
    if _missing(age) or not isinstance(age, (int, float)) or age < 0:
        return f"metrics_age_seconds {age!r} is unknown or negative"
    for name, (high, _) in BOUNDS.items():
        value = getattr(obs, name)
        if _missing(value):
            continue
        if not _finite(value) or value < 0 or value > high:
            return f"{name} {value!r} is invalid (must be a finite number in [0, {high:g}])"
    for window, index in obs.arrival_dispersion:
        if not (_finite(window) and 0 < window <= MAX_SECONDS) or not (_missing(index) or _finite(index) and 0 <= index <= MAX_CV**2):
            return (f"arrival_dispersion ({window!r}, {index!r}) is invalid (a window in (0, {MAX_SECONDS:g}] s and an "
                    f"index of dispersion in [0, {MAX_CV**2:g}] or unknown)")
    return None


def clean(obs, history):
    """(observations with missing values made explicit, history without corrupt entries, why invalid or None).

    Missing CVs become 1.0 (Poisson / exponential, what observe.py reports when it cannot tell); other
    missing fields become None. Negative pod counts (impossible from the API) read as 0.
    """
    changes = {name: default for name, (_, default) in BOUNDS.items() if _missing(getattr(obs, name))}
    for name in ("ready_replicas", "unschedulable_replicas"):
        if not isinstance(getattr(obs, name), int) or getattr(obs, name) < 0:
            changes[name] = 0
    if any(_missing(index) and index is not None for _, index in obs.arrival_dispersion):
        changes["arrival_dispersion"] = tuple((w, None if _missing(i) else i) for w, i in obs.arrival_dispersion)
    if changes:
        obs = replace(obs, **changes)
    return obs, clean_history(history, obs.time), invalid_reason(obs)


def clean_history(history, now: float):
    """The history without entries that no run of decide() could have written."""
    changes = {}
    last = history.last_service_time
    if last is not None and not (_finite(last) and 0 < last <= MAX_SECONDS):
        changes["last_service_time"] = None
    if history.last_scale_time is not None and not _finite(history.last_scale_time):
        changes["last_scale_time"] = None
    kept = tuple((t, r) for t, r in history.recommendations if _finite(t) and isinstance(r, int) and r >= 0)
    if kept != tuple(history.recommendations):
        changes["recommendations"] = kept
    if history.sized_cv is not None and not (_finite(history.sized_cv) and 0 <= history.sized_cv <= MAX_CV):
        changes["sized_cv"] = None
    tails = (history.tail_observed, history.tail_predicted)
    if not all(_finite(x) and 0 <= x <= MAX_COUNT for x in tails) or not (
            history.tail_time is None or _finite(history.tail_time)):
        changes.update(tail_observed=0.0, tail_predicted=0.0, tail_time=None)  # the fitted correction restarts at 1
    needs = tuple((t, r) for t, r in history.minute_needs if _finite(t) and isinstance(r, int) and r >= 0)
    if needs != tuple(history.minute_needs):
        changes["minute_needs"] = needs
    peaks = tuple((t, c) for t, c in history.cv_peaks if _finite(t) and _finite(c) and 0 <= c <= MAX_CV)
    if peaks != tuple(history.cv_peaks):
        changes["cv_peaks"] = peaks
    state = history.forecaster
    if state is not None and not _forecaster_ok(state, now):
        changes["forecaster"] = None
    return replace(history, **changes) if changes else history


def _forecaster_ok(state, now: float) -> bool:
    numbers = [x for x in astuple(state) if not isinstance(x, tuple) and x is not None]
    numbers += [*state.profile, *state.profile_seconds, *(r for _, r in state.recent)]
    times = [t for t, _ in state.recent]
    if not all(_finite(t) for t in times) or any(b <= a for a, b in zip(times, times[1:])) or any(r < 0 for _, r in state.recent):
        return False
    if times and times[-1] > state.time:
        return False
    if not all(_finite(x) and abs(x) <= MAX_FORECAST_VALUE for x in numbers[1:]) or not _finite(state.time):
        return False
    if state.start is not None and not _finite(state.start):
        return False
    if state.level < 0 or state.residual_var < 0 or state.step < 0 or not isinstance(state.count, int) or state.count < 1:
        return False
    if (state.profile or state.profile_seconds) and not (
        len(state.profile) == len(state.profile_seconds) == fc.SEASON_BINS and min(state.profile_seconds) >= 0
    ):
        return False
    gap = now - state.time
    return math.isfinite(gap) and gap <= MAX_FORECAST_GAP
