"""Hostile inputs for decide(), shared by tests/test_hostile_decide.py and benchmarks/hostile_decide.py.

Every numeric Observations field is drawn from the issue's menu (None, NaN, 0, -1, 1e-300, 1e308, inf) or an
ordinary value; specs stay within what spec.parse and the CRD accept (with a horizon of at most a day).
`untrusted` is the test's own idea of "what the operator must not act on", written independently of
core/sanitize.py: a present value that is infinite, negative or absurd, a missing rate, unknown freshness.
"""

from __future__ import annotations

import math

from hypothesis import strategies as st

from inferencepool.core import forecast as fc
from inferencepool.core.policy import History, Observations, PoolSpec

NASTY = (None, math.nan, 0.0, -1.0, 1e-300, 1e308, math.inf)
FLOAT_FIELDS = (
    "arrival_rate", "service_time", "service_samples", "arrival_cv", "service_cv", "prefill_time", "waiting",
    "running", "cold_start_seconds", "metrics_age_seconds", "service_concurrency", "kv_cache_usage", "preemptions",
    "rate_window_seconds",
)
# What no real pool shows (orders of magnitude above any fleet): the test's bounds, checked against
# core/sanitize.py's by test_sanitize_bounds_are_no_tighter_than_physics.
ABSURD = {"arrival_rate": 1e7, "kv_cache_usage": 2.0}
ABSURD_DEFAULT = 1e13
SECONDS_FIELDS = ("service_time", "prefill_time", "cold_start_seconds", "rate_window_seconds")


def nasty_or(ordinary: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.sampled_from(NASTY), ordinary)


def ordinary(name: str) -> st.SearchStrategy:
    if name == "kv_cache_usage":
        return st.floats(0.0, 1.0)
    if name in ("arrival_cv", "service_cv"):
        return st.floats(0.0, 5.0)
    if name == "metrics_age_seconds":
        return st.floats(0.0, 200.0)
    if name in SECONDS_FIELDS:
        return st.floats(1e-3, 3600.0)
    return st.floats(0.0, 1000.0)


@st.composite
def specs(draw) -> PoolSpec:
    floor = draw(st.integers(1, 8))
    max_replicas = draw(st.integers(floor, 40))
    gpus = draw(st.integers(1, 8))
    max_gpus = draw(st.one_of(st.none(), st.integers(floor * gpus, 80 * gpus)))
    return PoolSpec(
        slo_metric=draw(st.sampled_from(("wait", "ttft"))),
        slo_percentile=draw(st.one_of(st.none(), st.floats(0.5, 0.999))),
        slo_target_seconds=draw(st.floats(0.01, 600.0)),
        min_replicas=floor,
        max_replicas=max_replicas,
        max_gpus=max_gpus,
        gpus_per_replica=gpus,
        slots_per_replica=draw(st.sampled_from((1, 4, 64, 256))),
        scale_down_window_seconds=draw(st.sampled_from((0.0, 60.0, 300.0))),
        scale_down_max_step=draw(st.integers(1, 5)),
        prediction=draw(st.booleans()),
        prediction_horizon_seconds=draw(st.one_of(st.none(), st.floats(1.0, 86400.0))),
        default_cold_start_seconds=draw(st.floats(1.0, 86400.0)),
        forecast_quantile=draw(st.floats(0.5, 0.99)),
        ramp_detection=draw(st.booleans()),
        max_metrics_age_seconds=draw(st.floats(1.0, 86400.0)),
    )


def _any_float():
    return st.one_of(st.sampled_from(NASTY), st.floats(allow_nan=True, allow_infinity=True))


@st.composite
def forecasters(draw):
    profile = draw(st.sampled_from(((), (1.0,) * fc.SEASON_BINS, (1.0, 2.0))))
    return fc.HoltState(
        time=draw(st.one_of(st.floats(900.0, 1100.0), _any_float().filter(lambda x: x is not None))),
        level=draw(st.one_of(st.floats(0.0, 100.0), _any_float().filter(lambda x: x is not None))),
        trend=draw(st.one_of(st.floats(-1.0, 1.0), _any_float().filter(lambda x: x is not None))),
        residual_var=draw(st.one_of(st.floats(0.0, 10.0), _any_float().filter(lambda x: x is not None))),
        step=draw(st.floats(0.0, 60.0)),
        count=draw(st.integers(-1, 100)),
        start=draw(st.one_of(st.none(), st.floats(0.0, 1000.0), st.just(math.nan))),
        baseline=draw(st.one_of(st.none(), st.floats(0.0, 100.0), st.just(math.inf))),
        profile=profile,
        profile_seconds=draw(st.sampled_from(((), (3600.0,) * len(profile), (-1.0,) * len(profile)))),
        recent=tuple(draw(st.lists(st.tuples(st.one_of(st.floats(800.0, 1100.0), _any_float().filter(lambda x: x is not None)),
                                             st.one_of(st.floats(0.0, 100.0), _any_float().filter(lambda x: x is not None))),
                                   max_size=4))),
    )


@st.composite
def histories(draw) -> History:
    return History(
        forecaster=draw(st.one_of(st.none(), forecasters())),
        recommendations=tuple(draw(st.lists(st.tuples(
            st.one_of(st.floats(0.0, 1000.0), _any_float().filter(lambda x: x is not None)),
            st.integers(-5, 10**6)), max_size=4))),
        last_service_time=draw(nasty_or(st.floats(1e-3, 100.0))),
        last_scale_time=draw(nasty_or(st.floats(0.0, 1000.0))),
        sized_cv=draw(nasty_or(st.floats(0.0, 5.0))),
    )


@st.composite
def observations(draw, spec: PoolSpec) -> Observations:
    values = {name: draw(nasty_or(ordinary(name))) for name in FLOAT_FIELDS}
    return Observations(
        time=draw(st.one_of(st.floats(1000.0, 2000.0), st.sampled_from((math.nan, math.inf, 1e308)))),
        current_replicas=draw(st.integers(0, spec.replica_cap)),
        ready_replicas=draw(st.integers(-1, spec.replica_cap)),
        unschedulable_replicas=draw(st.integers(-1, 3)),
        **values,
    )


def untrusted(obs: Observations, spec: PoolSpec) -> list[str]:
    """The fields whose values the operator must not act on (the pool must hold or rise to its floor)."""
    bad = []
    for name in FLOAT_FIELDS:
        value = getattr(obs, name)
        if value is None or (name != "metrics_age_seconds" and math.isnan(value)):
            continue
        if math.isnan(value) or math.isinf(value) or value < 0 or value > ABSURD.get(name, ABSURD_DEFAULT):
            bad.append(name)
        elif name in SECONDS_FIELDS and value > 2 * 86400:
            bad.append(name)
    if obs.metrics_age_seconds is None:
        bad.append("metrics_age_seconds")
    if obs.arrival_rate is None or math.isnan(obs.arrival_rate):
        bad.append("arrival_rate (missing)")
    if not math.isfinite(obs.time):
        bad.append("time")
    return bad
